"""PURE train, eval and teacher steps (jit them once; bind the static settings with partial).

The mask contract (DESIGN.md): the mask has ``params``' structure with a ``bool`` leaf per array.
The train step applies it three times —

1. to the parameters in the forward pass,
2. to the gradient (so momentum and Adam moments of pruned weights stay 0),
3. to the final update (so weight decay and anything else never revive a pruned weight) —

so pruned weights stay exactly ``0.0`` for any optimizer.

Step-conditioned models. A model whose forward pass depends on the position on the schedule (the
re-training tweaks of :mod:`kdt.tickets.tweaks`: a smooth activation annealed back to ReLU, ghost
skip branches faded out) says so with a true ``conditioned_on_step`` attribute; these steps then
call ``model.apply(..., step=step)``. Every other model is called exactly as before.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from kdt.pruning.masks import apply_mask
from kdt.train import losses
from kdt.train.state import TrainState


def _variables(params, batch_stats):
  return {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}


def apply_model(model: Any, variables: dict, images: jax.Array, *, train: bool,
                step: jax.Array | None = None, **kwargs) -> Any:
  """``model.apply(variables, images, train=train, **kwargs)``, passing ``step`` to models with a
  true ``conditioned_on_step`` attribute (``None`` = their end-of-schedule form)."""
  if getattr(model, "conditioned_on_step", False):
    return model.apply(variables, images, train=train, step=step, **kwargs)
  return model.apply(variables, images, train=train, **kwargs)


def compute_loss(logits: jax.Array, labels: jax.Array, teacher_logits: jax.Array | None,
                 step: jax.Array, loss: losses.LossConfig,
                 weight: jax.Array | None = None) -> jax.Array:
  """CE, or the KD loss until ``loss.kd_stop_step`` (then CE) when teacher logits are given
  (``weight``: per-example weights of a kept partial batch, see :mod:`kdt.data.order`)."""
  ce = losses.cross_entropy(logits, labels, label_smoothing=loss.label_smoothing,
                            convention=loss.label_smoothing_convention, weight=weight)
  if teacher_logits is None:
    return ce
  kd = losses.kd_loss(logits, teacher_logits, labels, alpha=loss.kd_alpha,
                      temperature=loss.kd_temperature, reduction=loss.kd_reduction,
                      label_smoothing=loss.label_smoothing,
                      convention=loss.label_smoothing_convention, weight=weight)
  if loss.kd_stop_step < 0:
    return kd
  return jnp.where(step < loss.kd_stop_step, kd, ce)


def train_step(state: TrainState, mask: Any, batch: dict, teacher_logits: jax.Array | None, *,
               model: nn.Module, direction: optax.GradientTransformation,
               schedule: Callable[[jax.Array], jax.Array], loss: losses.LossConfig
               ) -> tuple[TrainState, dict]:
  """One masked SGD step. Pure; jit with ``donate_argnums=0`` and static settings bound by partial.

  Args:
    state: the :class:`TrainState`; ``state.step`` is the position on the schedule.
    mask: bool pytree with ``state.params``' structure.
    batch: ``{"image": float [B, H, W, C] (preprocessed), "label": int [B]}``, and optionally
      ``"weight": float [B]`` (0 on a kept partial batch's padding rows, :mod:`kdt.data.order`):
      loss and accuracy are then weighted means over the batch.
    teacher_logits: ``[B, C]`` teacher logits on the same batch, or None (plain CE variant).
    model: the Flax module.
    direction: optimizer direction transformation (:func:`kdt.train.optim.make_direction`).
    schedule: learning rate as a function of ``state.step``.
    loss: static loss settings.

  Returns:
    ``(new_state, metrics)`` with scalar metrics ``loss``, ``accuracy`` and ``learning_rate``
    (left on device; fetch them only at log steps).
  """
  has_bn = bool(state.batch_stats)
  weight = batch.get("weight")

  def loss_fn(params):
    variables = _variables(apply_mask(params, mask), state.batch_stats)
    if has_bn:
      logits, updates = apply_model(model, variables, batch["image"], train=True, step=state.step,
                                    mutable=["batch_stats"])
      new_batch_stats = updates["batch_stats"]
    else:
      logits = apply_model(model, variables, batch["image"], train=True, step=state.step)
      new_batch_stats = state.batch_stats
    value = compute_loss(logits, batch["label"], teacher_logits, state.step, loss, weight)
    return value, (logits, new_batch_stats)

  (loss_value, (logits, new_batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  grads = apply_mask(grads, mask)
  updates, new_opt_state = direction.update(grads, state.opt_state, state.params)
  learning_rate = schedule(state.step)
  updates = apply_mask(jax.tree.map(lambda u: -learning_rate * u, updates), mask)
  new_params = optax.apply_updates(state.params, updates)
  new_state = state.replace(step=state.step + 1, params=new_params, batch_stats=new_batch_stats,
                            opt_state=new_opt_state)
  metrics = {
      "loss": loss_value,
      "accuracy": losses.weighted_mean(jnp.argmax(logits, -1) == batch["label"], weight),
      "learning_rate": learning_rate,
  }
  return new_state, metrics


def eval_step(params: Any, batch_stats: Any, mask: Any, batch: dict, *, model: nn.Module,
              step: jax.Array | None = None) -> dict:
  """Sums of correct predictions, CE loss and weight over one (padded) eval batch.

  Args:
    params: model parameters.
    batch_stats: BN statistics (may be empty).
    mask: bool pytree; applied to ``params``.
    batch: ``{"image", "label", "weight"}``; ``weight`` is 0 on padding rows.
    model: the Flax module.
    step: schedule position, for step-conditioned models only (see the module docstring).

  Returns:
    ``{"correct": sum, "loss": sum, "count": sum}`` — divide to get accuracy and mean loss.
  """
  logits = apply_model(model, _variables(apply_mask(params, mask), batch_stats), batch["image"],
                       train=False, step=step)
  logits = logits.astype(jnp.float32)
  weight = batch["weight"]
  per_example = -jnp.take_along_axis(jax.nn.log_softmax(logits), batch["label"][:, None], -1)[:, 0]
  return {
      "correct": jnp.sum((jnp.argmax(logits, -1) == batch["label"]) * weight),
      "loss": jnp.sum(per_example * weight),
      "count": jnp.sum(weight),
  }


def teacher_logits(params: Any, batch_stats: Any, images: jax.Array, *, model: nn.Module) -> jax.Array:
  """Frozen teacher forward pass in eval mode (BN running statistics), as in KD-ticket."""
  logits = model.apply(_variables(params, batch_stats), images, train=False)
  return jax.lax.stop_gradient(logits.astype(jnp.float32))
