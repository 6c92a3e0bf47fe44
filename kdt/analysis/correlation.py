"""Init <-> trained weight correlation and mask overlap.

Liu, Yuan et al., "Lottery Ticket Preserves Weight Correlation: Is It Desirable or Not?" (ICML
2021; docs/methods.md §5) explain the winning property by the correlation between the initial weights
:math:`\\theta_0` and the trained weights :math:`\\theta_T`, which is high when the learning rate
is small and fades as it grows. Two diagnostics, per layer and over the **surviving** weights only
(the entries where the mask is True):

* Pearson correlation of the weights, signed (:math:`\\rho(\\theta_0, \\theta_T)`) and of their
  magnitudes (:math:`\\rho(|\\theta_0|, |\\theta_T|)`, docs/methods.md §5.2);
* the overlap of the top-``p`` magnitude sets,
  :math:`|\\mathrm{top}_p(|\\theta_0|) \\cap \\mathrm{top}_p(|\\theta_T|)| / |\\mathrm{top}_p|`,
  whose chance level is ``p``. A high overlap means the magnitude mask could have been read off
  the initialisation.

Mask overlap between masks of different rounds, seeds, recipes or learning rates uses
:func:`kdt.pruning.mask_overlap` (Jaccard, normalised Hamming); :func:`pairwise_mask_overlap`
fills the matrices.

Everything is pure and jit-able (layer names are static Python strings).
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from kdt import pruning


def pearson(x: Any, y: Any, where: Any | None = None) -> jax.Array:
  """Pearson correlation of two equally shaped arrays over the entries where ``where`` is True.

  .. math::  \\rho = \\frac{\\sum_i (x_i - \\bar x)(y_i - \\bar y)}
                         {\\sqrt{\\sum_i (x_i - \\bar x)^2 \\sum_i (y_i - \\bar y)^2}}

  Args:
    x: array.
    y: array of the same shape.
    where: optional bool array of the same shape (default: all entries).

  Returns:
    float32 scalar in [-1, 1]; NaN when either side is constant (or nothing is selected).

  Examples:
    >>> import numpy as np
    >>> round(float(pearson(np.array([1.0, 2.0, 3.0]), np.array([2.0, 4.0, 7.0]))), 4)
    0.9934
  """
  x = jnp.ravel(jnp.asarray(x, jnp.float32))
  y = jnp.ravel(jnp.asarray(y, jnp.float32))
  w = jnp.ones(x.shape, bool) if where is None else jnp.ravel(jnp.asarray(where, bool))
  n = jnp.maximum(jnp.sum(w), 1).astype(jnp.float32)
  mx = jnp.sum(jnp.where(w, x, 0.0)) / n
  my = jnp.sum(jnp.where(w, y, 0.0)) / n
  dx = jnp.where(w, x - mx, 0.0)
  dy = jnp.where(w, y - my, 0.0)
  sxx, syy = jnp.sum(dx * dx), jnp.sum(dy * dy)
  denom = jnp.sqrt(sxx) * jnp.sqrt(syy)
  return jnp.where(denom > 0, jnp.clip(jnp.sum(dx * dy) / jnp.where(denom > 0, denom, 1.0),
                                       -1.0, 1.0), jnp.nan)


def top_fraction(scores: Any, fraction: float, where: Any | None = None) -> jax.Array:
  """The ``ceil(fraction * n)`` highest-scoring of the ``n`` selected entries (ties: lower index).

  Args:
    scores: array.
    fraction: in (0, 1].
    where: optional bool array; only these entries compete (``n`` = their count).

  Returns:
    bool array of ``scores``' shape.

  Examples:
    >>> import numpy as np
    >>> top_fraction(np.array([0.1, 0.9, 0.5, 0.7]), 0.5).tolist()
    [False, True, False, True]
  """
  scores = jnp.asarray(scores, jnp.float32)
  shape = scores.shape
  flat = jnp.ravel(scores)
  w = jnp.ones(flat.shape, bool) if where is None else jnp.ravel(jnp.asarray(where, bool))
  count = jnp.sum(w, dtype=jnp.int32)
  k = jnp.ceil(jnp.float32(fraction) * count.astype(jnp.float32)).astype(jnp.int32)
  order = jnp.argsort(-jnp.where(w, flat, -jnp.inf), stable=True)
  rank = jnp.zeros(flat.shape, jnp.int32).at[order].set(jnp.arange(flat.size, dtype=jnp.int32))
  return ((rank < k) & w).reshape(shape)


def top_overlap(x: Any, y: Any, fraction: float, where: Any | None = None) -> jax.Array:
  """Overlap of the top-``fraction`` magnitude sets of ``x`` and ``y``: chance level = fraction.

  .. math::  \\frac{|\\mathrm{top}_p(|x|) \\cap \\mathrm{top}_p(|y|)|}{\\lceil p\\, n \\rceil}

  Args:
    x: array (e.g. a layer's initial weights).
    y: array of the same shape (the trained weights).
    fraction: ``p`` in (0, 1].
    where: optional bool array: only surviving entries count (``n`` = their number).

  Returns:
    float32 scalar in [0, 1] (1 when nothing is selected).

  Examples:
    >>> import numpy as np
    >>> float(top_overlap(np.array([4.0, -3.0, 2.0, 1.0]), np.array([1.0, 5.0, -6.0, 0.0]), 0.5))
    0.5
  """
  top_x = top_fraction(jnp.abs(jnp.asarray(x, jnp.float32)), fraction, where)
  top_y = top_fraction(jnp.abs(jnp.asarray(y, jnp.float32)), fraction, where)
  k = jnp.sum(top_x, dtype=jnp.int32)
  both = jnp.sum(top_x & top_y, dtype=jnp.int32)
  return jnp.where(k > 0, both / jnp.maximum(k, 1), 1.0).astype(jnp.float32)


def weight_correlation(init: Any, trained: Any, mask: Any, prunable: Any,
                       top_p: float = 0.2) -> dict[str, dict[str, jax.Array]]:
  """Per-layer init <-> trained correlation over the surviving weights of each prunable layer.

  Args:
    init: the starting parameters (theta_0, or the rewind point theta_k).
    trained: the trained parameters, same structure.
    mask: bool pytree (all True for a dense network); entries outside it are ignored.
    prunable: static pytree of Python bools (:func:`kdt.pruning.prunable_leaves`): the layers
      reported.
    top_p: the fraction for :func:`top_overlap`.

  Returns:
    ``{layer path: {"pearson", "magnitude_pearson", "top_overlap", "kept"}}`` plus ``"mean"``
    (the survivor-weighted mean of each metric over layers). Scalars; jit-able.
  """
  names = pruning.leaf_names(init)
  inits, trains = jax.tree.leaves(init), jax.tree.leaves(trained)
  masks, flags = jax.tree.leaves(mask), jax.tree.leaves(prunable)
  if not len(names) == len(trains) == len(masks) == len(flags):
    raise ValueError("init, trained, mask and prunable must have the same structure.")
  out: dict[str, dict[str, jax.Array]] = {}
  for name, a, b, m, flag in zip(names, inits, trains, masks, flags):
    if not flag:
      continue
    out[name] = {"pearson": pearson(a, b, m),
                 "magnitude_pearson": pearson(jnp.abs(a), jnp.abs(b), m),
                 "top_overlap": top_overlap(a, b, top_p, m),
                 "kept": jnp.sum(jnp.asarray(m, bool), dtype=jnp.int32)}
  out["mean"] = _weighted_mean(out)
  return out


def _weighted_mean(per_layer: dict[str, dict[str, jax.Array]]) -> dict[str, jax.Array]:
  """Survivor-weighted mean of each metric over the layers (NaN layers are skipped)."""
  mean = {}
  for metric in ("pearson", "magnitude_pearson", "top_overlap"):
    num = jnp.zeros((), jnp.float32)
    den = jnp.zeros((), jnp.float32)
    for values in per_layer.values():
      value, weight = values[metric], values["kept"].astype(jnp.float32)
      ok = jnp.isfinite(value)
      num += jnp.where(ok, value * weight, 0.0)
      den += jnp.where(ok, weight, 0.0)
    mean[metric] = jnp.where(den > 0, num / jnp.maximum(den, 1.0), jnp.nan)
  mean["kept"] = sum((v["kept"] for v in per_layer.values()), jnp.zeros((), jnp.int32))
  return mean


def pairwise_mask_overlap(masks: Sequence[Any], prunable: Any) -> dict[str, np.ndarray]:
  """Jaccard and normalised Hamming matrices between every pair of masks (host arrays).

  Args:
    masks: a list of masks with the same structure.
    prunable: static pytree of Python bools.

  Returns:
    ``{"jaccard": [n, n], "hamming": [n, n]}`` numpy float arrays (symmetric; diagonal 1 and 0).
  """
  n = len(masks)
  jaccard, hamming = np.eye(n), np.zeros((n, n))
  overlap = jax.jit(lambda a, b: pruning.mask_overlap(a, b, prunable))
  for i in range(n):
    for j in range(i + 1, n):
      values = to_python(overlap(masks[i], masks[j]))
      jaccard[i, j] = jaccard[j, i] = float(values["jaccard"])
      hamming[i, j] = hamming[j, i] = float(values["hamming"])
  return {"jaccard": jaccard, "hamming": hamming}


def to_python(tree: Any) -> Any:
  """Device scalars of a (nested dict) result as Python floats/ints, NaN as None (for JSON)."""
  def convert(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      x = x.addressable_data(0)  # replicated on a multi-host mesh: the local copy is the whole
    value = np.asarray(jax.device_get(x))
    if np.issubdtype(value.dtype, np.integer):
      return int(value)
    value = float(value)
    return value if np.isfinite(value) else None
  return jax.tree.map(convert, tree)
