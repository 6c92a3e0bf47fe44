"""Pruning scores: magnitude, random, SNIP, GraSP, Taylor-1 and SynFlow.

Every score function returns a pytree with the structure of ``params`` and
``float32`` leaves, to be thresholded by :mod:`kdt.pruning.masks`, where the
**lowest score is removed first** for every method (GraSP's sign is chosen so,
see :func:`grasp`). Scores of non-prunable leaves are never read by the mask
functions (the data-driven scores set them to 0 when ``prunable`` is given).
:func:`synflow` is the exception: it is an iterative pruning *procedure* and
returns a mask.

Uniform signatures (all pure and jit-able; close over ``prunable`` and the
callables):

* ``loss_fn(params, batch) -> scalar`` for :func:`snip` and :func:`taylor`;
  :func:`grasp` calls ``loss_fn(params, batch, temperature)`` (the loss of the
  logits divided by ``temperature``). :func:`classification_loss` builds one that
  serves all three (``temperature`` defaults to 1).
* ``apply_fn(params, x) -> logits`` for :func:`synflow_scores` / :func:`synflow`.
* Data-driven scores take ``(loss_fn, params, mask, batch_or_batches, *,
  prunable=None)``. They are evaluated **at the masked parameters**
  :math:`w = \\theta\\odot m` and differentiated with respect to the raw
  parameters through :math:`\\theta\\odot m` (as the masked layers of
  Synaptic-Flow / ToST do), so every gradient carries the mask factor and pruned
  weights score exactly 0. With ``prunable`` given, sums (SNIP/GraSP
  normalisation, GraSP's gradient vector) run over prunable leaves only, as in
  the reference code, which only sees Conv/Linear weights.

References:
  Lee et al., "SNIP: Single-shot network pruning based on connection
  sensitivity", ICLR 2019. Wang et al., "Picking winning tickets before training
  by preserving gradient flow" (GraSP), ICLR 2020. Tanaka et al., "Pruning neural
  networks without any data by iteratively conserving synaptic flow", NeurIPS
  2020 (code: ganguli-lab/Synaptic-Flow, ``Pruners/pruners.py``). Taylor-1 as in
  VITA-Group/ToST ``pruning_techniques/pruning_utils.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from kdt.pruning import masks as masks_lib
from kdt.pruning import schedules

__all__ = [
    "classification_loss",
    "grasp",
    "magnitude",
    "random_scores",
    "snip",
    "synflow",
    "synflow_scores",
    "taylor",
]

_GRASP_EPS = 1e-10


def _f32(x: jax.Array) -> jax.Array:
  return jnp.asarray(x).astype(jnp.float32)


def _prunable_flags(prunable: Any, tree: Any) -> list[bool] | None:
  if prunable is None:
    return None
  return masks_lib._flags(prunable, jax.tree.structure(tree))  # pylint: disable=protected-access


def _restrict(tree: Any, flags: list[bool] | None) -> Any:
  """Zeroes the non-prunable leaves (identity when ``flags`` is None)."""
  if flags is None:
    return tree
  leaves, treedef = jax.tree.flatten(tree)
  return treedef.unflatten(
      [x if f else jnp.zeros_like(x) for x, f in zip(leaves, flags)])


def _tree_sum(tree: Any) -> jax.Array:
  return sum((jnp.sum(x) for x in jax.tree.leaves(tree)), jnp.zeros((), jnp.float32))


def _masked(fn: Callable[..., Any], mask: Any) -> Callable[..., Any]:
  """``p -> fn(p ⊙ m, ...)``: gradients w.r.t. p carry the mask factor."""
  return lambda p, *args: fn(masks_lib.apply_mask(p, mask), *args)


def classification_loss(
    apply_fn: Callable[[Any, Any], jax.Array],
    *,
    input_key: str = "image",
    label_key: str = "label",
) -> Callable[..., jax.Array]:
  """Mean softmax cross-entropy usable by SNIP, Taylor and GraSP.

  .. math::  L(\\theta; x, y, T) = \\frac{1}{B}\\sum_b
             \\mathrm{CE}\\big(f_\\theta(x_b)/T,\\ y_b\\big)

  Args:
    apply_fn: ``apply_fn(params, x) -> logits`` (bind ``batch_stats`` / train
      mode in the closure).
    input_key: key of the inputs when a batch is a mapping.
    label_key: key of the integer labels when a batch is a mapping.

  Returns:
    ``loss_fn(params, batch, temperature=1.0) -> scalar`` where ``batch`` is a
    mapping with ``input_key``/``label_key`` or a pair ``(inputs, labels)``.

  Examples:
    >>> import numpy as np
    >>> loss = classification_loss(lambda p, x: x @ p['w'])
    >>> float(loss({'w': np.zeros((2, 3))}, (np.ones((4, 2)), np.zeros(4, int))))
    1.0986123085021973
  """

  def loss_fn(params, batch, temperature=1.0):
    if isinstance(batch, Mapping):
      x, y = batch[input_key], batch[label_key]
    else:
      x, y = batch
    logits = apply_fn(params, x) / temperature
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))

  return loss_fn


def magnitude(params: Any) -> Any:
  """Magnitude scores :math:`|\\theta|`.

  Args:
    params: a parameter pytree.

  Returns:
    :math:`|\\theta|` as float32, same structure.

  Examples:
    >>> import numpy as np
    >>> magnitude({'w': np.array([-2., 1.])})['w']
    Array([2., 1.], dtype=float32)
  """
  return jax.tree.map(lambda p: _f32(jnp.abs(p)), params)


def random_scores(key: jax.Array, params: Any) -> Any:
  """I.i.d. standard normal scores (random pruning baseline).

  One key per leaf, ``jax.random.split(key, num_leaves)`` in flatten order.

  Args:
    key: a PRNG key.
    params: a parameter pytree (arrays or ShapeDtypeStructs).

  Returns:
    :math:`\\mathcal{N}(0, 1)` float32 scores.

  Examples:
    >>> import numpy as np
    >>> random_scores(jax.random.key(0), {'w': np.zeros((2, 3))})['w'].shape
    (2, 3)
  """
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(key, max(len(leaves), 1))
  return treedef.unflatten([
      jax.random.normal(k, np.shape(p), jnp.float32) for k, p in zip(keys, leaves)
  ])


def snip(loss_fn: Callable[..., jax.Array], params: Any, mask: Any, batch: Any,
         *, prunable: Any = None) -> Any:
  """SNIP connection sensitivity, normalised.

  .. math::  s = \\frac{|g \\odot w|}{\\sum_{j \\in P} |g_j w_j|},\\qquad
             w = \\theta\\odot m,\\quad g = \\nabla_w L(w;\\,\\text{batch})

  i.e. :math:`|\\partial L/\\partial c|` at :math:`c = 1` for the effective
  weights :math:`w\\odot c`. :math:`P` is the prunable set (all leaves when
  ``prunable`` is None). If the sum is 0 the scores are returned unnormalised.

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar``.
    params: parameters :math:`\\theta`.
    mask: current mask :math:`m` (pruned weights score 0).
    batch: one batch (use a large one, e.g. 10 examples per class as in
      Synaptic-Flow).
    prunable: optional static tree of Python bools.

  Returns:
    float32 scores; non-prunable leaves 0 when ``prunable`` is given.

  Examples:
    >>> import numpy as np
    >>> loss = lambda p, b: jnp.sum(b * p['w']) ** 2 / 2
    >>> p, m = {'w': np.array([1., 2.])}, {'w': np.array([True, True])}
    >>> snip(loss, p, m, np.array([1., 1.]))['w']     # g = 3 * [1, 1]
    Array([0.33333334, 0.6666667 ], dtype=float32)
  """
  flags = _prunable_flags(prunable, params)
  w = masks_lib.apply_mask(params, mask)
  g = jax.grad(_masked(loss_fn, mask))(params, batch)
  s = _restrict(jax.tree.map(lambda gi, wi: _f32(jnp.abs(gi * wi)), g, w), flags)
  total = _tree_sum(s)
  norm = jnp.where(total > 0, total, 1.0)
  return jax.tree.map(lambda x: x / norm, s)


def grasp(loss_fn: Callable[..., jax.Array], params: Any, mask: Any, batch: Any,
          *, temperature: float = 200.0, prunable: Any = None) -> Any:
  """GraSP scores :math:`\\theta \\odot Hg`, normalised; remove the *lowest*.

  .. math::
     g = \\nabla L_T(w),\\quad Hg = \\nabla^2 L_T(w)\\, g_P,\\quad
     s = \\frac{w \\odot Hg}{|\\sum_{j\\in P} (w\\odot Hg)_j| + 10^{-10}}

  with :math:`L_T` the loss of the logits divided by :math:`T` =
  ``temperature``, :math:`w = \\theta\\odot m`, and :math:`g_P` the gradient
  restricted to the prunable leaves (all leaves when ``prunable`` is None). The
  Hessian-gradient product is a forward-over-reverse ``jax.jvp`` of
  ``jax.grad`` (equal to the double backprop of the reference code since
  :math:`H` is symmetric).

  **Sign convention.** The paper's score is :math:`S = -\\theta\\odot Hg` and
  removes the *highest* :math:`S`; equivalently we return
  :math:`+\\theta\\odot Hg` and the mask functions remove the **lowest**, like
  every other score here (Synaptic-Flow / ToST ``GraSP``). Scores may be
  negative; do not take absolute values.

  Args:
    loss_fn: ``loss_fn(params, batch, temperature) -> scalar``.
    params: parameters :math:`\\theta`.
    mask: current mask.
    batch: one batch (the reference uses 10 examples per class).
    temperature: logit temperature (200 in GraSP / Synaptic-Flow).
    prunable: optional static tree of Python bools.

  Returns:
    float32 scores; non-prunable leaves 0 when ``prunable`` is given.

  Examples:
    >>> import numpy as np
    >>> loss = lambda p, b, t: jnp.sum((b * p['w']) / t) ** 2 / 2
    >>> p, m = {'w': np.array([1., 2.])}, {'w': np.array([True, True])}
    >>> grasp(loss, p, m, np.array([1., 1.]), temperature=1.)['w']
    Array([0.33333334, 0.6666667 ], dtype=float32)
  """
  flags = _prunable_flags(prunable, params)
  w = masks_lib.apply_mask(params, mask)
  lossm = _masked(lambda p: loss_fn(p, batch, temperature), mask)
  grad_fn = jax.grad(lossm)
  g = _restrict(grad_fn(w), flags)
  _, hg = jax.jvp(grad_fn, (w,), (g,))
  s = _restrict(jax.tree.map(lambda wi, hi: _f32(wi * hi), w, hg), flags)
  norm = jnp.abs(_tree_sum(s)) + _GRASP_EPS
  return jax.tree.map(lambda x: x / norm, s)


def taylor(loss_fn: Callable[..., jax.Array], params: Any, mask: Any,
           batches: Any, *, prunable: Any = None) -> Any:
  """Taylor-1 (absolute) scores accumulated over batches.

  .. math::  s = \\Big| w \\odot \\sum_{b} \\nabla_w L(w;\\,\\text{batch}_b)
             \\Big|,\\qquad w = \\theta\\odot m

  Gradients are summed before the absolute value, as ToST's
  ``Taylor1ScorerAbs`` accumulates ``.grad`` over the loader; not normalised.

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar``.
    params: parameters.
    mask: current mask.
    batches: batches stacked on a leading axis: every leaf has shape
      ``(num_batches, ...)`` (e.g. ``jax.tree.map(lambda *x: jnp.stack(x),
      *batch_list)``); scanned with ``lax.scan``.
    prunable: optional static tree of Python bools.

  Returns:
    float32 scores; non-prunable leaves 0 when ``prunable`` is given.

  Examples:
    >>> import numpy as np
    >>> loss = lambda p, b: jnp.sum(b * p['w'])
    >>> p, m = {'w': np.array([1., -2.])}, {'w': np.array([True, True])}
    >>> taylor(loss, p, m, np.array([[1., 1.], [2., -1.]]))['w']
    Array([3., 0.], dtype=float32)
  """
  flags = _prunable_flags(prunable, params)
  w = masks_lib.apply_mask(params, mask)
  grad_fn = jax.grad(_masked(loss_fn, mask))

  def body(acc, batch):
    g = grad_fn(w, batch)
    return jax.tree.map(lambda a, gi: a + _f32(gi), acc, g), None

  zeros = jax.tree.map(lambda x: jnp.zeros(np.shape(x), jnp.float32), w)
  g, _ = lax.scan(body, zeros, batches)
  return _restrict(jax.tree.map(lambda gi, wi: jnp.abs(gi * _f32(wi)), g, w), flags)


def synflow_scores(apply_fn: Callable[[Any, Any], jax.Array], params: Any,
                   mask: Any, input_shape: tuple[int, ...], *,
                   input_dtype: Any = jnp.float32) -> Any:
  """One SynFlow scoring pass (data-free).

  .. math::  w = |\\theta|\\odot m,\\quad
             R(w) = \\mathbb{1}^\\top f_w(\\mathbb{1}),\\quad
             s = \\Big|\\frac{\\partial R}{\\partial w}\\odot w\\Big|

  All leaves (biases, BN scale/bias too) are replaced by their absolute values,
  as Synaptic-Flow's ``linearize`` does; for a bias-free linear network
  :math:`R = \\mathbb{1}^\\top |W_L|\\cdots|W_1|\\,\\mathbb{1}`.

  Args:
    apply_fn: ``apply_fn(params, x) -> logits``. Run BatchNorm in **eval mode**
      (running statistics) in this closure, e.g. ``lambda p, x: model.apply(
      {"params": p, "batch_stats": init_stats}, x, train=False)``; at init the
      running mean is 0 and variance 1, which matches Synaptic-Flow's eval mode.
    params: parameters.
    mask: current mask.
    input_shape: shape of the all-ones input *including* the batch axis, e.g.
      ``(1, 32, 32, 3)`` (Synaptic-Flow uses a batch of one).
    input_dtype: dtype of the all-ones input.

  Returns:
    float32 scores (pruned weights score 0).

  Note:
    :math:`R` is a product over layers and can overflow float32 for very deep
    networks without normalisation (Synaptic-Flow hints at float64); the scores
    then become ``inf``/``NaN``. Enable ``jax_enable_x64`` and pass float64
    params and ``input_dtype`` in that case.

  Examples:
    >>> import numpy as np
    >>> p = {'w1': np.array([[1., -2.]]), 'w2': np.array([[3.], [1.]])}
    >>> m = jax.tree.map(lambda x: np.ones(x.shape, bool), p)
    >>> s = synflow_scores(lambda q, x: x @ q['w1'] @ q['w2'], p, m, (1, 1))
    >>> s['w1'], s['w2']          # R = 1*3 + 2*1 = 5
    (Array([[3., 2.]], dtype=float32), Array([[3.],
           [2.]], dtype=float32))
  """
  w = masks_lib.apply_mask(jax.tree.map(jnp.abs, params), mask)
  x = jnp.ones(input_shape, input_dtype)
  g = jax.grad(lambda q: jnp.sum(apply_fn(q, x)))(w)
  return jax.tree.map(lambda gi, wi: _f32(jnp.abs(gi * wi)), g, w)


def synflow(apply_fn: Callable[[Any, Any], jax.Array], params: Any, mask: Any,
            prunable: Any, input_shape: tuple[int, ...], target_density: float,
            iterations: int = 100, *, input_dtype: Any = jnp.float32) -> Any:
  """Iterative SynFlow pruning at initialisation; returns a **mask**.

  For :math:`k = 1, \\dots, n` (:math:`n` = ``iterations``): score the current
  masked network with :func:`synflow_scores` and keep the
  :math:`\\lceil d^{k/n} N\\rceil` highest-scoring prunable weights globally
  (:math:`N` = number of prunable weights, :math:`d` = ``target_density``;
  exponential schedule of Synaptic-Flow's ``prune_loop``, see
  :func:`kdt.pruning.schedules.synflow_schedule`). Already-pruned weights stay
  pruned, ties as in :func:`kdt.pruning.masks.prune_global`, and the final mask
  keeps exactly :math:`\\lceil d N\\rceil` weights (fewer only if ``mask``
  already had fewer). The loop is a ``lax.scan``, so it compiles once.

  Args:
    apply_fn: ``apply_fn(params, x) -> logits`` with eval-mode BatchNorm (see
      :func:`synflow_scores`).
    params: parameters at initialisation.
    mask: starting mask (usually :func:`kdt.pruning.masks.ones_like_params`).
    prunable: static tree of Python bools.
    input_shape: shape of the all-ones input including the batch axis.
    target_density: final density in ``(0, 1]``; a Python float.
    iterations: number of prune-score rounds (100 in Synaptic-Flow).
    input_dtype: dtype of the all-ones input.

  Returns:
    The final mask.

  Examples:
    >>> import numpy as np
    >>> p = {'w1': np.arange(1., 7.).reshape(2, 3), 'w2': np.ones((3, 2))}
    >>> pr = {'w1': True, 'w2': True}
    >>> m = synflow(lambda q, x: x @ q['w1'] @ q['w2'], p,
    ...             masks_lib.ones_like_params(p), pr, (1, 2), 0.5, 10)
    >>> int(sum(np.sum(v) for v in m.values()))
    6
  """
  densities = schedules.synflow_schedule(target_density, iterations)
  leaves, treedef = jax.tree.flatten(params)
  flags = masks_lib._flags(prunable, treedef)  # pylint: disable=protected-access
  total = sum(int(np.prod(np.shape(x))) for x, f in zip(leaves, flags) if f)
  counts = jnp.asarray([masks_lib.ceil_count(d, total) for d in densities],
                       jnp.int32)
  mask = jax.tree.map(lambda m: jnp.asarray(m, bool), mask)

  def body(m, n_keep):
    s = synflow_scores(apply_fn, params, m, input_shape, input_dtype=input_dtype)
    return masks_lib.mask_for_count(s, prunable, n_keep, mask=m), None

  mask, _ = lax.scan(body, mask, counts)
  return mask
