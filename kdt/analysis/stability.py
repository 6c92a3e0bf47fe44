"""Stability of (sub)network training to SGD noise and to pruning: distances, angles, verdicts.

From "Stabilizing the Lottery Ticket Hypothesis" (Frankle, Dziugaite, Roy & Carbin; docs/methods.md
§3.2). With :math:`\\mathcal{A}^t(W, u)` training ``t`` steps from ``W`` under data order ``u``
and a mask ``m``, distances are taken between the **masked trained parameters**:

.. math::

   d(W, W') = \\lVert m \\odot W - m \\odot W' \\rVert_2, \\qquad
   \\angle(W, W') = \\arccos \\frac{\\langle m \\odot W, m \\odot W' \\rangle}
                                   {\\lVert m \\odot W \\rVert\\, \\lVert m \\odot W' \\rVert}

* **stability to data order**: :math:`d(\\mathcal{A}^{T-k}(m \\odot W_k, u),
  \\mathcal{A}^{T-k}(m \\odot W_k, u'))` — two copies of the subnetwork, different data orders;
* **stability to pruning**: :math:`d(\\mathcal{A}^{T-k}(W_k, u), \\mathcal{A}^{T-k}(m \\odot W_k,
  u))` — the subnetwork trained inside the full network vs alone, same data order;
* the control is a random mask with the IMP mask's per-layer counts
  (:func:`kdt.pruning.random_mask_like`).

The linear-path *instability* of the LMC paper is in :mod:`kdt.analysis.interpolation`; the
verdicts :func:`is_stable` / :func:`is_matching` use its thresholds (2 % and 0.2 %).

All metrics are pure and jit-able; distances are accumulated in float32.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp

STABLE_THRESHOLD = 0.02
"""Instability below this (an error difference, 2 percentage points) counts as stable (LMC)."""

MATCHING_TOLERANCE = 0.002
"""Accuracy within this of the dense network's (0.2 percentage points) counts as matching (LMC)."""


def _masked_leaves(tree: Any, mask: Any | None, leaves: Any | None) -> list[jax.Array]:
  """The float32 leaves of ``tree`` (times ``mask``), restricted to ``leaves`` flags if given."""
  values = jax.tree.leaves(tree)
  masks = jax.tree.leaves(mask) if mask is not None else [None] * len(values)
  flags = jax.tree.leaves(leaves) if leaves is not None else [True] * len(values)
  if not len(values) == len(masks) == len(flags):
    raise ValueError(f"tree, mask and leaves differ in structure ({len(values)}, {len(masks)}, "
                     f"{len(flags)} leaves).")
  out = []
  for value, m, flag in zip(values, masks, flags):
    if not flag:
      continue
    value = jnp.asarray(value, jnp.float32)
    out.append(value if m is None else jnp.where(m, value, 0.0))
  return out


def _dot(xs: list[jax.Array], ys: list[jax.Array]) -> jax.Array:
  return sum((jnp.vdot(x, y) for x, y in zip(xs, ys)), jnp.zeros((), jnp.float32))


def global_norm(tree: Any, mask: Any | None = None, *, leaves: Any | None = None) -> jax.Array:
  """:math:`\\lVert m \\odot W \\rVert_2` over all leaves (or the leaves flagged in ``leaves``).

  Args:
    tree: a parameter pytree.
    mask: optional bool pytree of the same structure.
    leaves: optional static pytree of Python bools (e.g. the prunable leaves) to restrict to.

  Returns:
    float32 scalar.
  """
  xs = _masked_leaves(tree, mask, leaves)
  return jnp.sqrt(_dot(xs, xs))


def l2_distance(tree_a: Any, tree_b: Any, mask: Any | None = None, *,
                leaves: Any | None = None) -> jax.Array:
  """:math:`\\lVert m \\odot a - m \\odot b \\rVert_2` over all leaves.

  Args:
    tree_a: a parameter pytree.
    tree_b: another one with the same structure.
    mask: optional bool pytree; both trees are masked with it.
    leaves: optional static pytree of Python bools restricting the leaves.

  Returns:
    float32 scalar.

  Examples:
    >>> import numpy as np
    >>> float(l2_distance({"w": np.array([0.0, 0.0])}, {"w": np.array([3.0, 4.0])}))
    5.0
  """
  xs = _masked_leaves(tree_a, mask, leaves)
  ys = _masked_leaves(tree_b, mask, leaves)
  diffs = [x - y for x, y in zip(xs, ys)]
  return jnp.sqrt(_dot(diffs, diffs))


def angle(tree_a: Any, tree_b: Any, mask: Any | None = None, *, leaves: Any | None = None,
          degrees: bool = False) -> jax.Array:
  """The angle between two parameter vectors (as one flat vector each), masked.

  Computed as :math:`2\\,\\mathrm{atan2}(\\lVert \\hat a - \\hat b\\rVert, \\lVert \\hat a +
  \\hat b\\rVert)` with unit vectors :math:`\\hat a, \\hat b` (Kahan), which stays accurate for
  nearly parallel vectors where ``arccos`` of the cosine loses all digits. NaN if either vector is
  zero.

  Args:
    tree_a: a parameter pytree.
    tree_b: another one with the same structure.
    mask: optional bool pytree; both trees are masked with it.
    leaves: optional static pytree of Python bools restricting the leaves.
    degrees: return degrees instead of radians.

  Returns:
    float32 scalar in [0, pi] (or [0, 180]).

  Examples:
    >>> import numpy as np
    >>> float(angle({"w": np.array([1.0, 0.0])}, {"w": np.array([1.0, 1.0])}, degrees=True))
    45.0
  """
  xs = _masked_leaves(tree_a, mask, leaves)
  ys = _masked_leaves(tree_b, mask, leaves)
  norm_x, norm_y = jnp.sqrt(_dot(xs, xs)), jnp.sqrt(_dot(ys, ys))
  ux = [x / norm_x for x in xs]
  uy = [y / norm_y for y in ys]
  minus = [x - y for x, y in zip(ux, uy)]
  plus = [x + y for x, y in zip(ux, uy)]
  theta = 2.0 * jnp.arctan2(jnp.sqrt(_dot(minus, minus)), jnp.sqrt(_dot(plus, plus)))
  theta = jnp.where((norm_x > 0) & (norm_y > 0), theta, jnp.nan)
  return jnp.degrees(theta) if degrees else theta


def pair_metrics(trained_a: Any, trained_b: Any, mask: Any, origin: Any | None = None, *,
                 leaves: Any | None = None) -> dict:
  """Distance, angle and (with ``origin``) the distance relative to the distance travelled.

  "Stabilizing the Lottery Ticket Hypothesis" (Frankle et al. 2019) measures both over the
  (masked) prunable weights: pass ``leaves`` = the prunable tree for that (experiment ``lmc``'s
  default, ``lmc.distance_weights="prunable"``); ``None`` uses every parameter (BatchNorm scales
  and shifts, biases, the head).

  Args:
    trained_a: one trained copy's parameters.
    trained_b: the other copy's.
    mask: the subnetwork's mask (all True for a dense network).
    origin: the common starting point (theta_k) or None.
    leaves: static pytree of Python bools restricting the leaves, or None for all.

  Returns:
    ``{"l2": d, "angle": degrees}`` plus, with ``origin``, ``"travelled"`` (the mean of
    :math:`\\lVert m\\odot(a - \\theta_k)\\rVert` and the same for ``b``) and
    ``"l2_relative" = l2 / travelled`` (LMC: 25-45 % even for stable pairs). Scalars, jit-able.
  """
  out = {"l2": l2_distance(trained_a, trained_b, mask, leaves=leaves),
         "angle": angle(trained_a, trained_b, mask, leaves=leaves, degrees=True)}
  if origin is not None:
    travelled = 0.5 * (l2_distance(trained_a, origin, mask, leaves=leaves) +
                       l2_distance(trained_b, origin, mask, leaves=leaves))
    out["travelled"] = travelled
    out["l2_relative"] = out["l2"] / travelled
  return out


def is_stable(instability: float, threshold: float = STABLE_THRESHOLD) -> bool:
  """Whether a linear-path instability (an error difference in [0, 1]) is below ``threshold``."""
  return bool(instability < threshold)


def is_matching(accuracy: float, dense_accuracy: float,
                tolerance: float = MATCHING_TOLERANCE) -> bool:
  """Whether ``accuracy`` is within ``tolerance`` of (or above) the dense network's accuracy."""
  return bool(accuracy >= dense_accuracy - tolerance)


def onset(steps: Sequence[int], flags: Sequence[bool]) -> int | None:
  """The first rewind step from which every later (larger) step is flagged (e.g. stable).

  Args:
    steps: rewind steps.
    flags: one bool per step.

  Returns:
    The smallest ``k`` with ``flags`` true at ``k`` and every larger step, or None.

  Examples:
    >>> onset([0, 100, 500, 2000], [False, True, True, True])
    100
    >>> onset([0, 100, 500], [True, False, True])
    500
    >>> onset([0, 100], [False, False]) is None
    True
  """
  result = None
  for step, flag in sorted(zip(steps, flags), reverse=True):
    if not flag:
      break
    result = step
  return result


def finite_or_none(value: Any) -> float | None:
  """``float(value)``, or None for NaN / inf (JSON has neither)."""
  value = float(value)
  return value if math.isfinite(value) else None
