"""Masks: thresholding scores to exact counts, applying masks, mask statistics.

A **mask** is a pytree with exactly the structure of ``params``; every leaf is a
``bool`` array of the leaf's shape. Non-prunable leaves are all ``True``; a leaf is
never ``None``. A **prunable** tree (see :mod:`kdt.pruning.selectors`) is a pytree
of Python bools with the structure of ``params``; it is static, so close over it
(``functools.partial``) when jitting, never pass it as a traced argument.

Conventions used by every function here:

* **Lowest score is removed first.** All scores follow "remove lowest"; GraSP is
  signed accordingly in :mod:`kdt.pruning.scores`.
* **Already-pruned weights stay pruned.** Only currently unpruned prunable weights
  are candidates, whatever their scores.
* **Ties are deterministic.** Candidates are ordered by ``(score, flat index)``
  with a stable sort, where the flat index runs over the concatenation of the
  raveled prunable leaves in ``jax.tree.flatten`` order (row-major inside a leaf).
  Among equal scores the *lower* flat index is pruned first (equivalently the
  higher index is kept). ``-0.0`` and ``0.0`` are equal; ``NaN`` counts as the
  largest score.
* **Counts.** Iterative pruning removes :math:`\\lceil f\\cdot R\\rceil` of the
  :math:`R` remaining prunable weights (``convention="exact"``), or follows
  open_lth's arithmetic (``convention="open_lth"``, see
  :func:`iterative_kept_count`); one-shot pruning to a
  density :math:`d` keeps :math:`\\lceil d\\cdot N\\rceil` of :math:`N` weights,
  i.e. prunes :math:`\\lfloor (1-d)\\,N\\rfloor` (the RigL / Synaptic-Flow
  "number of zeros" convention, without its float round-off). Both products are
  evaluated **exactly** by :func:`ceil_count`: a Python-float ``fraction`` is read
  as the nearest rational with denominator at most :math:`2^{20}` (exact for any
  decimal with up to six digits, e.g. 0.2 → 1/5) and the ceiling is computed in
  integer arithmetic, on device too (int32, counts below :math:`2^{31}`). A traced
  (jax array) fraction falls back to floating point and is exact only while
  :math:`f\\cdot R` is exactly representable, so prefer Python floats.

Everything except :func:`sparsity_summary` and :func:`erk_densities` (host-side
helpers) is pure and jit-able.
"""

from __future__ import annotations

import fractions
import math
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from kdt.pruning import selectors

__all__ = [
    "ALLOCATIONS",
    "COUNT_CONVENTIONS",
    "any_pruned_nonzero",
    "apply_mask",
    "ceil_count",
    "erk_densities",
    "iterative_kept_count",
    "mask_checksum",
    "mask_for_count",
    "mask_for_density",
    "mask_overlap",
    "ones_like_params",
    "prune_global",
    "prune_layerwise",
    "random_mask_like",
    "sparsity_summary",
]

ALLOCATIONS: tuple[str, ...] = ("global", "layerwise", "uniform", "erk")
"""The allowed values of ``mask_for_density(..., allocation=...)``."""

COUNT_CONVENTIONS: tuple[str, ...] = ("exact", "open_lth")
"""The allowed values of ``convention`` in :func:`iterative_kept_count` and
:func:`prune_global`."""

_MAX_DENOMINATOR = 2**20
_STEM_RE = re.compile(r"(^|/)stem(/|$)")


# --------------------------------------------------------------------------- #
# Exact counts.
# --------------------------------------------------------------------------- #


def _is_static_number(x: Any) -> bool:
  return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(
      x, jax.Array
  )


def _as_ratio(fraction: float) -> tuple[int, int]:
  """The nearest rational p/q (q <= 2**20) to a Python float in [0, 1]."""
  f = float(fraction)
  if not 0.0 <= f <= 1.0:
    raise ValueError(f"fraction/density must lie in [0, 1], got {fraction!r}.")
  r = fractions.Fraction(f).limit_denominator(_MAX_DENOMINATOR)
  return r.numerator, r.denominator


def _ceil_mul_int32(p: int, q: int, n: jax.Array) -> jax.Array:
  """ceil(p * n / q) in int32 without overflow (0 <= p <= q <= 2**20, n < 2**31).

  Write n = q*s + t and t = 2**10*th + tl; then p*t = q*(2**10*(a // q)) +
  2**10*(a % q) + p*tl with a = p*th, and every intermediate stays below 2**31.
  """
  n = jnp.asarray(n, jnp.int32)
  s, t = n // q, n % q
  th, tl = t >> 10, t & 1023
  a = p * th
  rest = ((a % q) << 10) + p * tl
  return p * s + ((a // q) << 10) + (rest + (q - 1)) // q


def ceil_count(fraction: Any, n: Any) -> Any:
  """Exact :math:`\\lceil \\mathrm{fraction}\\cdot n\\rceil` for counts of weights.

  .. math::  c = \\lceil \\tfrac{p}{q}\\, n \\rceil, \\qquad
             \\tfrac{p}{q} = \\text{nearest rational to fraction with } q\\le 2^{20}

  Args:
    fraction: a number in ``[0, 1]``. A Python/NumPy number is evaluated exactly
      (see the module docstring); a jax array (e.g. traced) in floating point.
    n: a non-negative count: a Python int (then the result is a Python int) or an
      integer jax array (then an int32 array; jit-able).

  Returns:
    The count, clipped to ``[0, n]``.

  Examples:
    >>> ceil_count(0.2, 1001)
    201
    >>> ceil_count(0.2, 1000)   # exactly 200, no float round-off
    200
    >>> int(jax.jit(lambda r: ceil_count(0.2, r))(1001))
    201
  """
  if _is_static_number(fraction):
    p, q = _as_ratio(fraction)
    if _is_static_number(n):
      n = int(n)
      if n < 0:
        raise ValueError(f"count must be non-negative, got {n}.")
      return -((-p * n) // q)
    return _ceil_mul_int32(p, q, n)
  # Traced fraction: floating point (float64 when x64 is enabled).
  n_arr = jnp.asarray(n)
  fraction = jnp.asarray(fraction)
  dtype = jnp.promote_types(fraction.dtype, jnp.float32)
  c = jnp.ceil(fraction.astype(dtype) * n_arr.astype(dtype)).astype(jnp.int32)
  return jnp.clip(c, 0, n_arr.astype(jnp.int32))


def iterative_kept_count(fraction: Any, remaining: Any, *, convention: str = "exact",
                         ignored: Any = 0) -> Any:
  """Prunable weights kept after one round of global iterative pruning.

  With :math:`R` the unpruned prunable weights before the round, :math:`I` the
  weights of the weight matrices that are never pruned (``ignored``: e.g. the
  output layer ``fc.weight`` of open_lth's LeNet and VGG) and :math:`f` the
  pruning fraction, the round keeps

  .. math::
     K_\\text{exact} = R - \\lceil f R\\rceil, \\qquad
     K_\\text{open\\_lth} = \\max\\big(0,\\ R - \\lceil f\\,(R + I)\\rceil - 1\\big).

  ``"open_lth"`` is the arithmetic of open_lth's ``pruning/sparse_global.py``
  (``Strategy.prune``): its mask holds *every* conv / linear weight
  (``Mask.ones_like`` over ``model.prunable_layer_names``, including the layers
  of ``pruning_layers_to_ignore``), so ``number_of_remaining_weights`` is
  :math:`R + I` and ``number_of_weights_to_prune`` is
  :math:`n = \\lceil f (R + I)\\rceil`; it then takes
  ``threshold = sort(|w|)[n]`` over the :math:`R` unpruned prunable weights and
  keeps ``|w| > threshold``, which removes the :math:`n + 1` smallest (indices
  ``0..n``), all from the prunable layers. Departure: open_lth also removes any
  further weights that tie with the threshold; kdt removes exactly
  :math:`n + 1` (ties broken by index, see the module docstring). open_lth
  fails with an index error when :math:`n \\ge R`; kdt keeps 0.

  Args:
    fraction: the pruning fraction :math:`f` in ``[0, 1]`` (exact for Python
      floats, see :func:`ceil_count`).
    remaining: :math:`R`, a Python int or an integer jax array (jit-able).
    convention: one of :data:`COUNT_CONVENTIONS`.
    ignored: :math:`I`, read by ``"open_lth"`` only.

  Returns:
    :math:`K`, of the type of ``remaining``.

  Raises:
    ValueError: for an unknown convention.

  Examples:
    >>> iterative_kept_count(0.2, 265_200)                    # LeNet-300-100 hidden weights
    212160
    >>> iterative_kept_count(0.2, 265_200, convention="open_lth", ignored=1_000)
    211959
  """
  if convention not in COUNT_CONVENTIONS:
    raise ValueError(f"Unknown count convention {convention!r}; allowed values: "
                     f"{', '.join(COUNT_CONVENTIONS)}.")
  if convention == "exact":
    return remaining - ceil_count(fraction, remaining)
  kept = remaining - ceil_count(fraction, remaining + ignored) - 1
  if _is_static_number(kept):
    return max(int(kept), 0)
  return jnp.maximum(kept, 0)


# --------------------------------------------------------------------------- #
# Tree helpers.
# --------------------------------------------------------------------------- #


def _flags(prunable: Any, treedef: Any, what: str = "scores") -> list[bool]:
  """Flattens ``prunable`` and checks it against ``treedef``."""
  flags, pdef = jax.tree.flatten(prunable)
  if pdef != treedef:
    raise ValueError(
        f"prunable tree structure {pdef} does not match the {what} structure "
        f"{treedef}."
    )
  for f in flags:
    if not isinstance(f, (bool, np.bool_)):
      raise TypeError(
          "prunable leaves must be static Python bools (from "
          "kdt.pruning.prunable_leaves); close over the prunable tree instead of "
          f"passing it through jit. Got a leaf of type {type(f).__name__}."
      )
  return [bool(f) for f in flags]


def _leaves(tree: Any, treedef: Any, what: str) -> list[Any]:
  leaves, tdef = jax.tree.flatten(tree)
  if tdef != treedef:
    raise ValueError(
        f"{what} tree structure {tdef} does not match the expected structure "
        f"{treedef}."
    )
  return leaves


def _bool_mask_leaves(mask: Any, treedef: Any) -> list[Any] | None:
  """Mask leaves as bool arrays; ``mask=None`` gives ``None`` (all True)."""
  if mask is None:
    return None
  return [jnp.asarray(m).astype(bool) for m in _leaves(mask, treedef, "mask")]


def _assemble(treedef, shapes, flags, flat_keep_per_leaf) -> Any:
  """Builds a mask tree: prunable leaves from ``flat_keep_per_leaf``, rest True."""
  out = []
  for shape, flag, keep in zip(shapes, flags, flat_keep_per_leaf):
    out.append(keep.reshape(shape) if flag else jnp.ones(shape, dtype=bool))
  return treedef.unflatten(out)


def _keep_top(scores: jax.Array, eligible: jax.Array, n_keep: Any) -> jax.Array:
  """Among ``eligible`` entries of a 1-D array keep the ``n_keep`` highest scores.

  Order is ``(eligible, score, index)`` ascending: non-eligible entries come
  first, then eligible ones by score, ties by index (lower index first, i.e.
  pruned first). The last ``n_keep`` positions of that order are kept.
  ``n_keep`` is clipped to ``[0, #eligible]``.
  """
  n = scores.shape[0]
  if n == 0:
    return eligible
  idx = lax.iota(jnp.int32, n)
  _, _, order = lax.sort((eligible, scores, idx), num_keys=3, is_stable=True)
  n_eligible = jnp.sum(eligible, dtype=jnp.int32)
  n_keep = jnp.clip(jnp.asarray(n_keep, jnp.int32), 0, n_eligible)
  keep_sorted = idx >= n - n_keep
  return jnp.zeros((n,), dtype=bool).at[order].set(keep_sorted)


def _split(flat: jax.Array, sizes: list[int]) -> list[jax.Array]:
  out, start = [], 0
  for s in sizes:
    out.append(flat[start:start + s])
    start += s
  return out


def _global_select(scores, mask, prunable, n_keep_fn):
  """Shared body of the global functions.

  ``n_keep_fn(remaining, total)`` returns the number to keep among eligible.
  """
  s_leaves, treedef = jax.tree.flatten(scores)
  flags = _flags(prunable, treedef)
  m_leaves = _bool_mask_leaves(mask, treedef)
  shapes = [jnp.shape(s) for s in s_leaves]
  idx = [i for i, f in enumerate(flags) if f]
  keeps = [None] * len(s_leaves)
  if idx:
    sizes = [math.prod(shapes[i]) for i in idx]
    flat_s = jnp.concatenate([jnp.ravel(s_leaves[i]) for i in idx])
    if m_leaves is None:
      flat_m = jnp.ones(flat_s.shape, dtype=bool)
    else:
      flat_m = jnp.concatenate([jnp.ravel(m_leaves[i]) for i in idx])
    remaining = jnp.sum(flat_m, dtype=jnp.int32)
    keep = _keep_top(flat_s, flat_m, n_keep_fn(remaining, sum(sizes)))
    for i, k in zip(idx, _split(keep, sizes)):
      keeps[i] = k
  return _assemble(treedef, shapes, flags, keeps)


def _layer_select(scores, mask, prunable, n_keep_fns):
  """Per-layer selection; ``n_keep_fns[j](remaining_j, total_j)`` for prunable j."""
  s_leaves, treedef = jax.tree.flatten(scores)
  flags = _flags(prunable, treedef)
  m_leaves = _bool_mask_leaves(mask, treedef)
  shapes = [jnp.shape(s) for s in s_leaves]
  keeps = [None] * len(s_leaves)
  j = 0
  for i, flag in enumerate(flags):
    if not flag:
      continue
    flat_s = jnp.ravel(s_leaves[i])
    if m_leaves is None:
      flat_m = jnp.ones(flat_s.shape, dtype=bool)
    else:
      flat_m = jnp.ravel(m_leaves[i])
    remaining = jnp.sum(flat_m, dtype=jnp.int32)
    keeps[i] = _keep_top(flat_s, flat_m, n_keep_fns[j](remaining, flat_s.size))
    j += 1
  return _assemble(treedef, shapes, flags, keeps)


# --------------------------------------------------------------------------- #
# Basic mask operations.
# --------------------------------------------------------------------------- #


def ones_like_params(params: Any) -> Any:
  """The all-True (dense) mask for ``params``.

  Args:
    params: a parameter pytree (arrays or ``jax.ShapeDtypeStruct``).

  Returns:
    A mask with every leaf ``jnp.ones(leaf.shape, bool)``.

  Examples:
    >>> import numpy as np
    >>> ones_like_params({'w': np.zeros((2, 3))})['w'].dtype
    dtype('bool')
  """
  return jax.tree.map(lambda p: jnp.ones(p.shape, dtype=bool), params)


def apply_mask(params: Any, mask: Any) -> Any:
  """Zeroes the pruned weights: :math:`\\theta \\odot m`.

  Uses ``jnp.where`` so pruned entries are exactly ``+0.0`` (no ``-0.0``, no NaN
  propagation) and each leaf keeps its dtype.

  Args:
    params: a parameter pytree.
    mask: a mask with the structure of ``params``.

  Returns:
    The masked parameters.

  Examples:
    >>> import numpy as np
    >>> apply_mask({'w': np.array([1., -2.])}, {'w': np.array([True, False])})['w']
    Array([1., 0.], dtype=float32)
  """
  return jax.tree.map(
      lambda p, m: jnp.where(jnp.asarray(m, bool), p, jnp.zeros_like(p)),
      params, mask)


@jax.jit
def any_pruned_nonzero(params: Any, mask: Any) -> jax.Array:
  """Whether any weight outside ``mask`` is non-zero (the invariant after masked training).

  One jitted program for the whole tree (not one small op per leaf).

  Args:
    params: a parameter pytree.
    mask: a bool mask with the structure of ``params``.

  Returns:
    A bool scalar.

  Examples:
    >>> import numpy as np
    >>> bool(any_pruned_nonzero({'w': np.array([1., 0.])}, {'w': np.array([True, False])}))
    False
    >>> bool(any_pruned_nonzero({'w': np.array([1., 2.])}, {'w': np.array([True, False])}))
    True
  """
  flags = [jnp.any(jnp.where(jnp.asarray(m, bool), 0.0, p) != 0.0)
           for p, m in zip(jax.tree.leaves(params), jax.tree.leaves(mask))]
  return jnp.any(jnp.stack(flags))


# --------------------------------------------------------------------------- #
# Pruning.
# --------------------------------------------------------------------------- #


def prune_global(scores: Any, mask: Any, prunable: Any, fraction: Any, *,
                 convention: str = "exact", ignored: Any = 0) -> Any:
  """Prunes a fraction of the remaining prunable weights globally (exact or open_lth count).

  With :math:`R` the number of currently unpruned prunable weights, keeps the
  :func:`iterative_kept_count` of them with the highest scores across all
  prunable leaves (``"exact"``: removes :math:`\\lceil f\\cdot R\\rceil`;
  ``"open_lth"``: removes :math:`\\lceil f\\,(R + I)\\rceil + 1`);
  already-pruned weights stay pruned. Ties: the lower flat index
  in the concatenation of the prunable leaves (``jax.tree.flatten`` order) is
  pruned first.

  Args:
    scores: a pytree with the structure of ``params`` (float leaves); only the
      prunable leaves are read.
    mask: the current mask.
    prunable: static tree of Python bools.
    fraction: fraction of the *remaining* weights to prune, in ``[0, 1]``
      (Python float: exact count; jax array: float count, see module doc).
    convention: one of :data:`COUNT_CONVENTIONS` (see
      :func:`iterative_kept_count`).
    ignored: for ``"open_lth"``: the number :math:`I` of weight-matrix entries
      that are never pruned (a static int).

  Returns:
    The new mask (a subset of ``mask``; non-prunable leaves all True) with
    exactly :func:`iterative_kept_count` prunable weights kept.

  Examples:
    >>> import numpy as np
    >>> s = {'a': np.array([3., 1., 2.]), 'b': np.array([1., 5.])}
    >>> m = {'a': np.ones(3, bool), 'b': np.ones(2, bool)}
    >>> new = prune_global(s, m, {'a': True, 'b': True}, 0.5)   # ceil(2.5) = 3
    >>> [np.asarray(new[k]).tolist() for k in 'ab']
    [[True, False, False], [False, True]]
  """
  return _global_select(
      scores, mask, prunable,
      lambda remaining, total: iterative_kept_count(
          fraction, remaining, convention=convention, ignored=ignored))


def prune_layerwise(scores: Any, mask: Any, prunable: Any, fraction: Any) -> Any:
  """Prunes a fraction of the remaining weights in every prunable leaf.

  Each prunable leaf with :math:`R_\\ell` unpruned weights loses exactly
  :math:`\\lceil f\\cdot R_\\ell\\rceil` of them, the lowest-scoring; ties: lower
  (row-major) index inside the leaf pruned first.

  Args:
    scores: scores pytree.
    mask: the current mask.
    prunable: static tree of Python bools.
    fraction: fraction of each layer's remaining weights to prune.

  Returns:
    The new mask.

  Examples:
    >>> import numpy as np
    >>> s = {'a': np.array([3., 1., 2.]), 'b': np.array([1., 5.])}
    >>> m = {'a': np.ones(3, bool), 'b': np.ones(2, bool)}
    >>> new = prune_layerwise(s, m, {'a': True, 'b': True}, 0.5)
    >>> [np.asarray(new[k]).tolist() for k in 'ab']
    [[True, False, False], [False, True]]
  """
  n_leaves = sum(_flags(prunable, jax.tree.structure(scores)))
  fn = lambda remaining, total: remaining - ceil_count(fraction, remaining)
  return _layer_select(scores, mask, prunable, [fn] * n_leaves)


def mask_for_count(scores: Any, prunable: Any, n_keep: Any, *,
                   mask: Any = None) -> Any:
  """Keeps exactly ``n_keep`` prunable weights, the highest-scoring, globally.

  Args:
    scores: scores pytree.
    prunable: static tree of Python bools.
    n_keep: number of prunable weights to keep (int or traced int).
    mask: optional current mask; only its unpruned weights are candidates, and if
      fewer than ``n_keep`` remain all of them are kept.

  Returns:
    The mask.

  Examples:
    >>> import numpy as np
    >>> new = mask_for_count({'a': np.array([1., 1., 0.])}, {'a': True}, 1)
    >>> np.asarray(new['a']).tolist()     # tie: index 0 is pruned first
    [False, True, False]
  """
  return _global_select(scores, mask, prunable, lambda remaining, total: n_keep)


def _layer_sizes(tree: Any, prunable: Any) -> tuple[list[str], list[tuple]]:
  leaves, treedef = jax.tree.flatten(tree)
  flags = _flags(prunable, treedef)
  names = selectors.leaf_names(tree)
  pairs = [(n, tuple(np.shape(l))) for n, l, f in zip(names, leaves, flags) if f]
  return [p[0] for p in pairs], [p[1] for p in pairs]


def _erk_raw(shapes: list[tuple], density: float, power: float) -> list[float]:
  """ERK densities (floats) following rigl ``get_sparsities_erdos_renyi``."""
  sizes = [math.prod(s) for s in shapes]
  raw = [(sum(s) / math.prod(s)) ** power if math.prod(s) else 0.0 for s in shapes]
  target = density * sum(sizes)
  dense: set[int] = set()
  eps = 0.0
  while True:
    nondense = [i for i in range(len(shapes)) if i not in dense]
    divisor = sum(raw[i] * sizes[i] for i in nondense)
    if not nondense or divisor == 0:
      break
    eps = (target - sum(sizes[i] for i in dense)) / divisor
    max_raw = max(raw[i] for i in nondense)
    if max_raw * eps > 1.0:
      dense.update(i for i in nondense if raw[i] == max_raw)
    else:
      break
  return [1.0 if i in dense else min(1.0, max(0.0, eps * raw[i]))
          for i in range(len(shapes))]


def erk_densities(params: Any, prunable: Any, density: float,
                  erk_power_scale: float = 1.0) -> dict[str, float]:
  """Erdős–Rényi-Kernel per-layer densities (RigL), host-side.

  Each prunable layer :math:`\\ell` with shape :math:`(n_1,\\dots,n_k)` gets

  .. math::  d_\\ell = \\min\\Big(1,\\ \\varepsilon \\Big(\\frac{\\sum_i n_i}
             {\\prod_i n_i}\\Big)^{s}\\Big),

  with :math:`s` = ``erk_power_scale`` (1: ERK, 0: uniform) and
  :math:`\\varepsilon` chosen so that :math:`\\sum_\\ell d_\\ell N_\\ell = d\\,N`.
  As in ``google-research/rigl`` ``sparse_utils.get_sparsities_erdos_renyi``,
  layers whose density would exceed 1 are made dense (all layers with the
  current largest raw ratio at once) and :math:`\\varepsilon` is recomputed for
  the rest until none exceeds 1. Dense kernels are covered by the same formula
  (:math:`(n_{in}+n_{out})/(n_{in} n_{out})`).

  Args:
    params: a pytree with params' structure (arrays, ShapeDtypeStructs or scores);
      only shapes of prunable leaves are read.
    prunable: static tree of Python bools.
    density: overall target density over the prunable weights, in ``[0, 1]``.
    erk_power_scale: exponent :math:`s` on the raw ratio.

  Returns:
    ``{path: density}`` for every prunable leaf ('/'-joined paths, flatten order).

  Examples:
    >>> import numpy as np
    >>> d = erk_densities({'a': np.zeros((4, 4)), 'b': np.zeros((100, 100))},
    ...                   {'a': True, 'b': True}, 0.1)
    >>> d['a'], round(d['b'], 4)
    (1.0, 0.0986)
  """
  names, shapes = _layer_sizes(params, prunable)
  return dict(zip(names, _erk_raw(shapes, float(density), float(erk_power_scale))))


def _round_to_total(reals: list[float], caps: list[int], total: int) -> list[int]:
  """Integer counts close to ``reals`` with sum exactly ``total`` (largest remainder)."""
  counts = [min(c, max(0, math.floor(r))) for r, c in zip(reals, caps)]
  fracs = [r - math.floor(r) for r in reals]
  diff = total - sum(counts)
  order = sorted(range(len(reals)), key=lambda i: (-fracs[i], i))
  while diff > 0:
    progressed = False
    for i in order:
      if diff > 0 and counts[i] < caps[i]:
        counts[i] += 1
        diff -= 1
        progressed = True
    if not progressed:
      break
  order = sorted(range(len(reals)), key=lambda i: (fracs[i], i))
  while diff < 0:
    progressed = False
    for i in order:
      if diff < 0 and 0 < counts[i] and reals[i] < caps[i]:
        counts[i] -= 1
        diff += 1
        progressed = True
    if not progressed:
      break
  return counts


def mask_for_density(
    scores: Any,
    prunable: Any,
    density: Any,
    *,
    allocation: str = "global",
    mask: Any = None,
    erk_power_scale: float = 1.0,
) -> Any:
  """One-shot mask keeping a given density of the prunable weights by score.

  With :math:`N` prunable weights (:math:`N_\\ell` per layer) and density
  :math:`d`, the number kept is

  * ``"global"``: :math:`\\lceil d N\\rceil` highest scores over all layers
    (equivalently :math:`\\lfloor (1-d) N\\rfloor` pruned, the
    RigL / Synaptic-Flow convention, computed exactly);
  * ``"layerwise"``: :math:`\\lceil d N_\\ell\\rceil` in every layer;
  * ``"uniform"`` (RigL): like ``"layerwise"`` but the ``stem`` layer (path
    component ``stem``) is kept dense; without a prunable stem it equals
    ``"layerwise"``;
  * ``"erk"`` (RigL): per-layer densities from :func:`erk_densities`; the real
    per-layer counts :math:`d_\\ell N_\\ell` are rounded by largest remainder
    (ties: flatten order) so the total is exactly :math:`\\lceil d N\\rceil`
    and no layer exceeds :math:`N_\\ell`.

  Counts refer to the *total* prunable weights, not the remaining ones. With
  ``mask`` given, only its unpruned weights are candidates; a layer (or the
  whole model) with fewer remaining weights than its count keeps all of them.
  Ties as in :func:`prune_global`.

  Args:
    scores: scores pytree with params' structure.
    prunable: static tree of Python bools.
    density: fraction of prunable weights to keep, in ``[0, 1]``. Must be a
      Python float for ``"erk"``; may be traced for the others (float count).
    allocation: one of :data:`ALLOCATIONS`.
    mask: optional current mask (already-pruned weights stay pruned).
    erk_power_scale: exponent for ``"erk"`` (1: ERK, 0: uniform).

  Returns:
    The mask.

  Raises:
    ValueError: for an unknown allocation (the message lists the allowed values).

  Examples:
    >>> import numpy as np
    >>> s = {'a': np.arange(10.), 'b': np.arange(10.) + 5}
    >>> m = mask_for_density(s, {'a': True, 'b': True}, 0.25)   # ceil(5) = 5
    >>> [int(np.sum(m[k])) for k in 'ab']
    [0, 5]
    >>> m = mask_for_density(s, {'a': True, 'b': True}, 0.25, allocation='layerwise')
    >>> [int(np.sum(m[k])) for k in 'ab']                       # ceil(2.5) = 3
    [3, 3]
  """
  if allocation not in ALLOCATIONS:
    raise ValueError(
        f"Unknown allocation {allocation!r}; allowed values: "
        f"{', '.join(ALLOCATIONS)}.")
  if allocation == "global":
    return _global_select(
        scores, mask, prunable,
        lambda remaining, total: ceil_count(density, total))
  names, shapes = _layer_sizes(scores, prunable)
  sizes = [math.prod(s) for s in shapes]
  if allocation == "erk":
    if not _is_static_number(density):
      raise TypeError("allocation='erk' needs a concrete Python float density.")
    dens = _erk_raw(shapes, float(density), float(erk_power_scale))
    counts = _round_to_total([d * n for d, n in zip(dens, sizes)], sizes,
                             ceil_count(float(density), sum(sizes)))
  elif allocation == "uniform":
    counts = [n if _STEM_RE.search(name) else None
              for name, n in zip(names, sizes)]
  else:
    counts = [None] * len(sizes)

  def make_fn(count):
    if count is None:
      return lambda remaining, total: ceil_count(density, total)
    return lambda remaining, total: count

  return _layer_select(scores, mask, prunable, [make_fn(c) for c in counts])


def random_mask_like(key: jax.Array, mask: Any, prunable: Any) -> Any:
  """A uniformly random mask with the same kept count in every prunable layer.

  The control of Frankle et al. ("random pruning with the same layer-wise
  proportions"). Each prunable leaf gets its own key (``jax.random.split`` in
  flatten order) and keeps the same number of weights as ``mask`` at positions
  drawn uniformly without replacement (top-k of random ``uint32`` bits; ties by
  index). For a *global* random mask of a given density use
  ``mask_for_density(random_scores(key, params), prunable, d)`` instead.

  Args:
    key: a PRNG key.
    mask: the reference mask.
    prunable: static tree of Python bools.

  Returns:
    A random mask; non-prunable leaves all True.

  Examples:
    >>> import numpy as np
    >>> m = {'a': np.array([True, True, False, False, False])}
    >>> r = random_mask_like(jax.random.key(0), m, {'a': True})
    >>> int(np.sum(r['a']))
    2
  """
  m_leaves, treedef = jax.tree.flatten(mask)
  flags = _flags(prunable, treedef, "mask")
  keys = jax.random.split(key, max(len(m_leaves), 1))
  shapes = [jnp.shape(m) for m in m_leaves]
  keeps = []
  for i, (m, flag) in enumerate(zip(m_leaves, flags)):
    if not flag:
      keeps.append(None)
      continue
    flat_m = jnp.ravel(jnp.asarray(m).astype(bool))
    bits = jax.random.bits(keys[i], flat_m.shape, jnp.uint32)
    keeps.append(_keep_top(bits, jnp.ones(flat_m.shape, bool),
                           jnp.sum(flat_m, dtype=jnp.int32)))
  return _assemble(treedef, shapes, flags, keeps)


# --------------------------------------------------------------------------- #
# Statistics.
# --------------------------------------------------------------------------- #


def _to_numpy(x: Any) -> np.ndarray:
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    x = x.addressable_data(0)  # masks are replicated: any shard is the whole
  return np.asarray(x)


def sparsity_summary(mask: Any, prunable: Any) -> dict[str, dict[str, Any]]:
  """Per-layer and total kept counts and densities (host-side).

  Args:
    mask: a mask (device or host arrays).
    prunable: static tree of Python bools.

  Returns:
    ``{path: {"kept": int, "total": int, "density": float}}`` for each
    prunable leaf (flatten order), plus the same under ``"total"``.

  Examples:
    >>> import numpy as np
    >>> sparsity_summary({'a': np.array([True, False]), 'b': np.ones(2, bool)},
    ...                  {'a': True, 'b': False})
    {'a': {'kept': 1, 'total': 2, 'density': 0.5}, 'total': {'kept': 1, 'total': 2, 'density': 0.5}}
  """
  leaves, treedef = jax.tree.flatten(mask)
  flags = _flags(prunable, treedef, "mask")
  names = selectors.leaf_names(mask)
  out: dict[str, dict[str, Any]] = {}
  kept_all = total_all = 0
  for name, leaf, flag in zip(names, leaves, flags):
    if not flag:
      continue
    arr = _to_numpy(leaf).astype(bool)
    kept, total = int(arr.sum()), int(arr.size)
    out[name] = {"kept": kept, "total": total,
                 "density": kept / total if total else 1.0}
    kept_all += kept
    total_all += total
  out["total"] = {"kept": kept_all, "total": total_all,
                  "density": kept_all / total_all if total_all else 1.0}
  return out


def mask_overlap(mask_a: Any, mask_b: Any, prunable: Any) -> dict[str, jax.Array]:
  """Jaccard similarity and normalised Hamming distance over prunable weights.

  .. math::  J = \\frac{|A\\cap B|}{|A\\cup B|}, \\qquad
             H = \\frac{|A \\,\\triangle\\, B|}{N}

  with :math:`A, B` the kept sets and :math:`N` the number of prunable weights
  (Early-Bird uses :math:`H`). :math:`J = 1` when both kept sets are empty.

  Args:
    mask_a: a mask.
    mask_b: a mask with the same structure.
    prunable: static tree of Python bools.

  Returns:
    ``{"jaccard": float32 scalar, "hamming": float32 scalar}`` (jit-able).

  Examples:
    >>> import numpy as np
    >>> o = mask_overlap({'a': np.array([1, 1, 0, 0], bool)},
    ...                  {'a': np.array([0, 1, 1, 0], bool)}, {'a': True})
    >>> float(o['jaccard']), float(o['hamming'])
    (0.3333333432674408, 0.5)
  """
  a_leaves, treedef = jax.tree.flatten(mask_a)
  b_leaves = _leaves(mask_b, treedef, "mask_b")
  flags = _flags(prunable, treedef, "mask")
  inter = union = diff = jnp.zeros((), jnp.int32)
  n = 0
  for a, b, flag in zip(a_leaves, b_leaves, flags):
    if not flag:
      continue
    a, b = jnp.asarray(a, bool), jnp.asarray(b, bool)
    inter += jnp.sum(a & b, dtype=jnp.int32)
    union += jnp.sum(a | b, dtype=jnp.int32)
    diff += jnp.sum(a ^ b, dtype=jnp.int32)
    n += a.size
  jaccard = jnp.where(union > 0, inter / jnp.maximum(union, 1), 1.0)
  hamming = diff / max(n, 1)
  return {"jaccard": jaccard.astype(jnp.float32),
          "hamming": jnp.asarray(hamming, jnp.float32)}


def _mix32(x: jax.Array) -> jax.Array:
  """MurmurHash3 32-bit finaliser (bijective on uint32)."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x85EBCA6B)
  x = x ^ (x >> 13)
  x = x * jnp.uint32(0xC2B2AE35)
  return x ^ (x >> 16)


def mask_checksum(mask: Any) -> jax.Array:
  """A cheap, order-independent ``uint32`` checksum of a whole mask.

  .. math::  c = \\mathrm{mix}\\Big(\\sum_{g:\\, m_g} \\mathrm{mix}(2g+1)
             \\bmod 2^{32} \\;\\oplus\\; \\mathrm{mix}(N)\\Big)

  where :math:`g` runs over global flat indices (all leaves in flatten order,
  row-major) and :math:`\\mathrm{mix}` is the MurmurHash3 finaliser. Integer
  arithmetic only, so the value is identical on every host and device; use it
  to check that hosts hold the same mask. Not cryptographic.

  Args:
    mask: a mask.

  Returns:
    A ``uint32`` scalar.

  Examples:
    >>> import numpy as np
    >>> a = mask_checksum({'w': np.array([True, False])})
    >>> b = mask_checksum({'w': np.array([False, True])})
    >>> bool(a != b)
    True
  """
  total = jnp.zeros((), jnp.uint32)
  offset = 0
  for leaf in jax.tree.leaves(mask):
    flat = jnp.ravel(jnp.asarray(leaf, bool))
    g = lax.iota(jnp.uint32, flat.size) + jnp.uint32(offset % 2**32)
    # mix is a bijection with mix(0) = 0, so hash the odd 2g + 1 (never 0).
    h = _mix32(g * jnp.uint32(2) + jnp.uint32(1))
    total = total + jnp.sum(jnp.where(flat, h, jnp.uint32(0)),
                            dtype=jnp.uint32)
    offset += flat.size
  return _mix32(total ^ _mix32(jnp.uint32(offset % 2**32)))
