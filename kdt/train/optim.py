"""Optimizers and learning-rate schedules.

The optimizer is split the way PyTorch's ``SGD`` effectively is: an optax transformation that
produces the update *direction* (weight decay, momentum or Adam moments) and a learning-rate
schedule that the train step evaluates at ``state.step`` and multiplies in:

.. math::  \\theta_{t+1} = \\theta_t - \\eta(t) \\cdot d_t, \\qquad d_t = \\mathrm{tx}(g_t + \\lambda\\theta_t)

Because the schedule is a function of the state's step (the position on the schedule), a run that
starts from a rewind point at step k replays the schedule from k: weight rewinding and LR rewinding
need no separate offset parameter — the state's step *is* the offset. Fine-tuning uses its own
constant schedule.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax.numpy as jnp
import optax

from kdt import schema

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "step", "cosine", "linear", "exponential")

Schedule = Callable[[jnp.ndarray], jnp.ndarray]


def make_direction(name: str, *, momentum: float = 0.0, nesterov: bool = False,
                   weight_decay: float = 0.0, b1: float = 0.9, b2: float = 0.999,
                   eps: float = 1e-8) -> optax.GradientTransformation:
  """The optimizer's update direction, without the learning rate.

  * ``"sgd"``: PyTorch SGD — L2 weight decay added to the gradient, then heavy-ball (or Nesterov)
    momentum ``buf = momentum * buf + g``.
  * ``"adam"``: PyTorch Adam — L2 weight decay added to the gradient, then Adam moments.
  * ``"adamw"``: decoupled weight decay (Loshchilov & Hutter), scaled by the learning rate like
    ``optax.adamw`` and PyTorch ``AdamW``.

  Args:
    name: one of :data:`OPTIMIZERS`.
    momentum: SGD momentum (0 = plain SGD).
    nesterov: Nesterov momentum for SGD.
    weight_decay: L2 / decoupled weight decay coefficient.
    b1: Adam beta1.
    b2: Adam beta2.
    eps: Adam epsilon.

  Returns:
    An optax transformation whose output is multiplied by ``-learning_rate(step)``.
  """
  parts = []
  if name in ("sgd", "adam") and weight_decay:
    parts.append(optax.add_decayed_weights(weight_decay))
  if name == "sgd":
    if momentum:
      parts.append(optax.trace(decay=momentum, nesterov=nesterov))
  elif name in ("adam", "adamw"):
    parts.append(optax.scale_by_adam(b1=b1, b2=b2, eps=eps))
    if name == "adamw" and weight_decay:
      parts.append(optax.add_decayed_weights(weight_decay))
  else:
    raise ValueError(f"optimizer.name={name!r}; allowed: {OPTIMIZERS}")
  return optax.chain(*parts) if parts else optax.identity()


def make_schedule(name: str, *, learning_rate: float, num_steps: int,
                  milestones: Sequence[int] = (), gamma: float = 0.1, warmup_steps: int = 0,
                  end_learning_rate: float = 0.0) -> Schedule:
  """A learning-rate schedule as a pure function of the schedule step.

  * ``constant``: :math:`\\eta_0`.
  * ``step``: :math:`\\eta_0 \\gamma^{|\\{m \\in milestones: m \\le t\\}|}` (PyTorch ``MultiStepLR``).
  * ``cosine``: :math:`\\eta_e + (\\eta_0-\\eta_e)\\frac12(1+\\cos(\\pi t/T))`.
  * ``linear``: :math:`\\eta_0 + (\\eta_e-\\eta_0) t/T` (Inception-v3 in Stabilizing the LTH).
  * ``exponential``: :math:`\\eta_0 (\\eta_e/\\eta_0)^{t/T}` (SqueezeNet in Stabilizing the LTH).

  Linear warm-up multiplies any of them by :math:`\\min(1, t/W)` (the open_lth convention).

  Args:
    name: one of :data:`SCHEDULES`.
    learning_rate: initial learning rate :math:`\\eta_0`.
    num_steps: schedule length T (for cosine / linear / exponential).
    milestones: steps at which the step schedule multiplies by ``gamma``.
    gamma: step-schedule factor.
    warmup_steps: W; 0 disables warm-up.
    end_learning_rate: :math:`\\eta_e` for cosine / linear / exponential.

  Returns:
    ``schedule(step) -> learning rate`` (jit-able; ``step`` may be traced).
  """
  if name not in SCHEDULES:
    raise ValueError(f"schedule.name={name!r}; allowed: {SCHEDULES}")
  milestones_array = jnp.asarray(tuple(milestones) or (-1,), jnp.int32)
  has_milestones = bool(tuple(milestones))

  def schedule(step):
    step = jnp.asarray(step)
    progress = jnp.clip(step.astype(jnp.float32) / max(num_steps, 1), 0.0, 1.0)
    if name == "constant":
      lr = jnp.asarray(learning_rate, jnp.float32)
    elif name == "step":
      drops = jnp.sum(step >= milestones_array) if has_milestones else 0
      lr = learning_rate * jnp.asarray(gamma, jnp.float32) ** drops
    elif name == "cosine":
      lr = end_learning_rate + (learning_rate - end_learning_rate) * 0.5 * (1 + jnp.cos(jnp.pi * progress))
    elif name == "linear":
      lr = learning_rate + (end_learning_rate - learning_rate) * progress
    else:  # exponential
      lr = learning_rate * (end_learning_rate / learning_rate) ** progress
    if warmup_steps:
      lr = lr * jnp.minimum(1.0, step.astype(jnp.float32) / warmup_steps)
    return jnp.asarray(lr, jnp.float32)

  return schedule


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
  """Hashable optimizer settings (see :func:`make_direction`): the ``config.optimizer`` group's
  direction settings (the learning rate is the schedule's); ``config_lib.spec`` fills them."""
  name: str = schema.default("optimizer.name")
  momentum: float = schema.default("optimizer.momentum")
  nesterov: bool = schema.default("optimizer.nesterov")
  weight_decay: float = schema.default("optimizer.weight_decay")

  def make(self):
    return make_direction(self.name, momentum=self.momentum, nesterov=self.nesterov,
                          weight_decay=self.weight_decay)


@dataclasses.dataclass(frozen=True)
class ScheduleSpec:
  """Hashable learning-rate schedule settings (see :func:`make_schedule`): the ``config.schedule``
  group with ``optimizer.learning_rate`` over ``train.num_steps``."""
  name: str
  learning_rate: float
  num_steps: int
  milestones: tuple[int, ...] = schema.default("schedule.milestones")
  gamma: float = schema.default("schedule.gamma")
  warmup_steps: int = schema.default("schedule.warmup_steps")
  end_learning_rate: float = schema.default("schedule.end_learning_rate")

  def make(self):
    return make_schedule(self.name, learning_rate=self.learning_rate, num_steps=self.num_steps,
                         milestones=self.milestones, gamma=self.gamma,
                         warmup_steps=self.warmup_steps, end_learning_rate=self.end_learning_rate)
