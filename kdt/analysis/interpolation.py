"""Linear mode connectivity: the error along the straight line between two trained networks.

For two parameter sets :math:`\\theta_A, \\theta_B` (Frankle, Dziugaite, Roy & Carbin, "Linear Mode
Connectivity and the Lottery Ticket Hypothesis", ICML 2020; docs/methods.md §3.3)

.. math::

   \\theta(\\alpha) = (1 - \\alpha)\\,\\theta_A + \\alpha\\,\\theta_B, \\qquad
   \\mathcal{E}(\\alpha) = \\mathrm{err}(\\theta(\\alpha)), \\qquad \\alpha \\in [0, 1],

evaluated at ``num`` evenly spaced :math:`\\alpha` (30 in the paper), and the **instability**
(error barrier height) is

.. math::

   \\mathcal{E}_{\\sup} - \\tfrac12\\big(\\mathcal{E}(0) + \\mathcal{E}(1)\\big),
   \\qquad \\mathcal{E}_{\\sup} = \\max_\\alpha \\mathcal{E}(\\alpha).

(The paper writes :math:`\\alpha W_1 + (1-\\alpha) W_2`; the barrier is symmetric in the two
networks, so only the direction of the axis differs.) Two networks are *linearly mode connected*
(the training is *stable*) when the instability is about zero; the paper's threshold is 2 %.

**BatchNorm.** Averaging two networks' weights does not average their activations, so the running
statistics of neither endpoint fit the interpolated network. Two treatments are offered:

* ``"reestimate"`` (default): the statistics of :math:`\\theta(\\alpha)` are re-computed from
  training batches (:func:`reestimate_batch_stats`): the mean of the per-batch means and of the
  per-batch (biased) variances, i.e. PyTorch ``update_bn`` / SWA with a cumulative average. The
  endpoints are re-estimated too, so :math:`\\mathcal{E}(0)` and :math:`\\mathcal{E}(1)` are the
  errors of the endpoint *weights* with re-estimated statistics, and a constant curve still has
  zero instability.
* ``"interpolate"``: the running statistics are interpolated like the weights; the endpoints then
  reproduce each network exactly as it was trained.

Models without BatchNorm (empty ``batch_stats``) are unaffected by the choice.

Everything here is pure and jit-able; the loop over evaluation batches lives in
:mod:`kdt.analysis.experiments`.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

BATCH_NORM_MODES = ("reestimate", "interpolate")


def alpha_grid(num: int = 30) -> jax.Array:
  """``num`` evenly spaced interpolation coefficients in [0, 1], both ends included.

  Args:
    num: number of points (>= 2; the paper uses 30).

  Returns:
    float32 array ``[num]`` with ``alphas[0] == 0`` and ``alphas[-1] == 1``.

  Examples:
    >>> [round(float(a), 2) for a in alpha_grid(5)]
    [0.0, 0.25, 0.5, 0.75, 1.0]
  """
  if num < 2:
    raise ValueError(f"alpha_grid needs num >= 2 (both endpoints), got {num}.")
  return jnp.linspace(0.0, 1.0, num, dtype=jnp.float32)


def lerp(tree_a: Any, tree_b: Any, alpha: Any) -> Any:
  """The point ``(1 - alpha) * a + alpha * b`` on the line between two pytrees.

  Computed as ``a + alpha * (b - a)``, and exactly ``b`` at ``alpha == 1``, so both endpoints are
  reproduced bit for bit and the line between a network and itself is that network at every
  ``alpha`` (identical networks have zero instability, not rounding noise).

  Args:
    tree_a: the ``alpha = 0`` end (float leaves).
    tree_b: the ``alpha = 1`` end, same structure.
    alpha: scalar (may be traced).

  Returns:
    The interpolated pytree (leaf dtypes of ``tree_a``).

  Examples:
    >>> import numpy as np
    >>> float(lerp({"w": np.float32(2.0)}, {"w": np.float32(4.0)}, 0.25)["w"])
    2.5
  """
  alpha = jnp.asarray(alpha, jnp.float32)

  def mix(a, b):
    a, b = jnp.asarray(a), jnp.asarray(b)
    between = a + (alpha * (b.astype(jnp.float32) - a.astype(jnp.float32))).astype(a.dtype)
    return jnp.where(alpha >= 1.0, b.astype(a.dtype), between)

  return jax.tree.map(mix, tree_a, tree_b)


def error_barrier(errors: Any) -> jax.Array:
  """Instability: the highest error on the path minus the mean of the two endpoint errors.

  .. math::  \\max_i e_i - \\tfrac12 (e_0 + e_{n-1})

  Args:
    errors: ``[num_alphas]`` errors along the path, ``errors[0]`` at ``alpha = 0`` and
      ``errors[-1]`` at ``alpha = 1`` (or ``[..., num_alphas]``: the last axis is the path).

  Returns:
    The barrier height (same unit as ``errors``; >= 0 since the endpoints are on the path).

  Examples:
    >>> float(error_barrier([0.02, 0.10, 0.04]))
    0.07000000029802322
  """
  errors = jnp.asarray(errors, jnp.float32)
  return jnp.max(errors, axis=-1) - 0.5 * (errors[..., 0] + errors[..., -1])


# ---------------------------------------------------------------------------------------------
# BatchNorm statistics.


def _train_mode_stats(model: nn.Module, params: Any, batch_stats: Any, images: jax.Array) -> Any:
  """The ``batch_stats`` a train-mode forward pass writes, starting from ``batch_stats``."""
  _, updates = model.apply({"params": params, "batch_stats": batch_stats}, images, train=True,
                           mutable=["batch_stats"])
  return updates["batch_stats"]


def batch_norm_momentum(model: nn.Module, params: Any, batch_stats: Any,
                        images: jax.Array) -> Any:
  """Each running statistic's momentum ``m`` in ``new = m * old + (1 - m) * batch_stat``.

  Read off the model itself with two probes on one batch (old statistics all 0, then all 1): the
  difference of the two outputs is ``m``. So nothing has to know how a model configures its
  BatchNorm layers.

  Args:
    model: the Flax module (``apply(variables, x, train=True, mutable=["batch_stats"])``).
    params: any parameters of the model.
    batch_stats: its ``batch_stats`` collection (for the structure).
    images: one preprocessed batch ``[B, H, W, C]``.

  Returns:
    A pytree like ``batch_stats`` with a float32 scalar per leaf.
  """
  zeros = jax.tree.map(jnp.zeros_like, batch_stats)
  ones = jax.tree.map(jnp.ones_like, batch_stats)
  out0 = _train_mode_stats(model, params, zeros, images)
  out1 = _train_mode_stats(model, params, ones, images)
  return jax.tree.map(lambda a, b: jnp.mean((b - a).astype(jnp.float32)), out0, out1)


def batch_norm_statistics(model: nn.Module, params: Any, batch_stats: Any, images: jax.Array,
                          momentum: Any) -> Any:
  """The per-batch BatchNorm statistics (mean, biased variance) of ``params`` on one batch.

  A train-mode pass from all-zero running statistics returns ``(1 - m) * batch_stat``; dividing
  by ``1 - m`` (from :func:`batch_norm_momentum`) gives the statistic itself.

  Args:
    model: the Flax module.
    params: the parameters whose activations are measured.
    batch_stats: a ``batch_stats`` collection (structure only).
    images: one preprocessed batch.
    momentum: :func:`batch_norm_momentum` of the model.

  Returns:
    A pytree like ``batch_stats``.
  """
  zeros = jax.tree.map(jnp.zeros_like, batch_stats)
  out = _train_mode_stats(model, params, zeros, images)
  return jax.tree.map(lambda s, m: (s / (1.0 - m)).astype(s.dtype), out, momentum)


def reestimate_batch_stats(model: nn.Module, params: Any, batch_stats: Any,
                           image_batches: jax.Array) -> Any:
  """BatchNorm running statistics of ``params`` re-computed on training batches.

  .. math::  \\hat\\mu = \\tfrac1n \\sum_b \\mu_b, \\qquad \\hat\\sigma^2 = \\tfrac1n \\sum_b \\sigma_b^2

  over the ``n`` batches (train-mode statistics, as each layer sees them during training).

  Args:
    model: the Flax module.
    params: the (masked, possibly interpolated) parameters.
    batch_stats: the current ``batch_stats`` (structure; returned as is when empty).
    image_batches: ``[n, B, H, W, C]`` preprocessed training batches.

  Returns:
    The re-estimated ``batch_stats`` (pure; jit-able).
  """
  if not jax.tree.leaves(batch_stats):
    return batch_stats
  momentum = batch_norm_momentum(model, params, batch_stats, image_batches[0])

  def accumulate(total, images):
    stats = batch_norm_statistics(model, params, batch_stats, images, momentum)
    return jax.tree.map(jnp.add, total, stats), None

  zeros = jax.tree.map(jnp.zeros_like, batch_stats)
  total, _ = jax.lax.scan(accumulate, zeros, image_batches)
  n = image_batches.shape[0]
  return jax.tree.map(lambda t: t / n, total)


def interpolated_variables(params_a: Any, stats_a: Any, params_b: Any, stats_b: Any, alpha: Any,
                           *, model: nn.Module | None = None, batch_norm: str = "reestimate",
                           bn_images: jax.Array | None = None) -> tuple[Any, Any]:
  """Parameters and BatchNorm statistics of the network at ``alpha`` on the path A -> B.

  Args:
    params_a: parameters at ``alpha = 0``.
    stats_a: their ``batch_stats`` (``{}`` without BatchNorm).
    params_b: parameters at ``alpha = 1``.
    stats_b: their ``batch_stats``.
    alpha: scalar in [0, 1].
    model: the Flax module (needed for ``"reestimate"`` with BatchNorm).
    batch_norm: ``"reestimate"`` or ``"interpolate"`` (see the module docstring).
    bn_images: ``[n, B, H, W, C]`` training batches for ``"reestimate"``.

  Returns:
    ``(params, batch_stats)``.
  """
  if batch_norm not in BATCH_NORM_MODES:
    raise ValueError(f"batch_norm must be one of {BATCH_NORM_MODES}, got {batch_norm!r}.")
  params = lerp(params_a, params_b, alpha)
  stats = lerp(stats_a, stats_b, alpha)
  if batch_norm == "reestimate" and jax.tree.leaves(stats):
    if model is None or bn_images is None:
      raise ValueError("batch_norm='reestimate' needs the model and bn_images for a model with "
                       "BatchNorm.")
    stats = reestimate_batch_stats(model, params, stats, bn_images)
  return params, stats


def path_summary(alphas: Sequence[float], errors: Sequence[float]) -> dict[str, float]:
  """Host-side summary of one error curve: instability, endpoint errors, worst point.

  Args:
    alphas: the ``alpha`` of each point.
    errors: the error at each point.

  Returns:
    ``{"instability", "endpoint_error", "error_a", "error_b", "max_error", "argmax_alpha"}``.
  """
  errors = [float(e) for e in errors]
  worst = max(range(len(errors)), key=errors.__getitem__)
  return {"instability": errors[worst] - 0.5 * (errors[0] + errors[-1]),  # float64 on the host
          "endpoint_error": 0.5 * (errors[0] + errors[-1]), "error_a": errors[0],
          "error_b": errors[-1], "max_error": errors[worst], "argmax_alpha": float(alphas[worst])}
