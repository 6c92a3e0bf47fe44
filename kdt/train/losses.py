"""Losses: cross-entropy (with label smoothing) and the knowledge-distillation loss.

All functions are pure and jit-able. Logits are ``[batch, classes]``; labels are integer class ids.

The KD loss follows the KD-ticket code (Ma et al. 2021, ``VITA-Group/KD-ticket``):

.. math::

   L = \\alpha T^2 \\, \\mathrm{KL}(\\mathrm{softmax}(z_t/T) \\,\\|\\, \\mathrm{softmax}(z_s/T))
       + (1-\\alpha)\\, \\mathrm{CE}(z_s, y)

with two KL reductions: ``"batchmean"`` (the true per-sample KL, KD-ticket ImageNet) and ``"mean"``
(PyTorch's default ``nn.KLDivLoss()``, which averages over batch x classes and so carries an extra
1/C, KD-ticket CIFAR).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from kdt import schema

LABEL_SMOOTHING_CONVENTIONS = ("uniform", "off_target")
KD_REDUCTIONS = ("batchmean", "mean")


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """Static loss settings bound into the train step with ``functools.partial`` (``config.loss``).

  Attributes:
    label_smoothing: smoothing mass alpha in [0, 1).
    label_smoothing_convention: ``"uniform"`` puts alpha/C on every class (Szegedy et al., RigL) and
      1 - alpha + alpha/C on the target; ``"off_target"`` puts alpha/(C-1) on each wrong class and
      1 - alpha on the target (ToST).
    kd_alpha: weight of the distillation term (0.9 = 90 % KD, 10 % hard-label CE).
    kd_temperature: softmax temperature T > 0 for teacher and student.
    kd_reduction: ``"batchmean"`` or ``"mean"`` (see module docstring).
    kd_stop_step: schedule step from which the loss is plain CE (KD-ticket ``--eskd``); -1 = never.
  """

  label_smoothing: float = schema.default("loss.label_smoothing")
  label_smoothing_convention: str = schema.default("loss.label_smoothing_convention")
  kd_alpha: float = schema.default("loss.kd_alpha")
  kd_temperature: float = schema.default("loss.kd_temperature")
  kd_reduction: str = schema.default("loss.kd_reduction")
  kd_stop_step: int = schema.default("loss.kd_stop_step")


def smoothed_targets(labels: jax.Array, num_classes: int, label_smoothing: float,
                     convention: str = "uniform") -> jax.Array:
  """Target distribution for (label-smoothed) cross-entropy.

  Args:
    labels: ``[batch]`` integer class ids.
    num_classes: number of classes C.
    label_smoothing: smoothing mass alpha.
    convention: ``"uniform"`` (alpha/C everywhere) or ``"off_target"`` (alpha/(C-1) off target).

  Returns:
    ``[batch, C]`` float32 targets, each row summing to 1.
  """
  one_hot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  if convention == "uniform":
    return one_hot * (1.0 - label_smoothing) + label_smoothing / num_classes
  if convention == "off_target":
    return one_hot * (1.0 - label_smoothing) + (1.0 - one_hot) * label_smoothing / (num_classes - 1)
  raise ValueError(f"label_smoothing_convention={convention!r}; allowed: {LABEL_SMOOTHING_CONVENTIONS}")


def weighted_mean(values: jax.Array, weight: jax.Array | None) -> jax.Array:
  """``mean(values)``, or the weighted mean :math:`\\sum_i w_i v_i / \\sum_i w_i` over the batch."""
  if weight is None:
    return jnp.mean(values)
  return jnp.sum(values * weight) / jnp.sum(weight)


def cross_entropy(logits: jax.Array, labels: jax.Array, *, label_smoothing: float = 0.0,
                  convention: str = "uniform", weight: jax.Array | None = None) -> jax.Array:
  """Mean cross-entropy :math:`-\\frac1B\\sum_i \\sum_c q_{ic} \\log \\mathrm{softmax}(z_i)_c`.

  Args:
    logits: ``[batch, C]``.
    labels: ``[batch]`` integer class ids.
    label_smoothing: smoothing mass alpha (0 = plain CE).
    convention: label-smoothing convention, see :func:`smoothed_targets`.
    weight: optional ``[batch]`` example weights (0 on the padding of a kept partial batch,
      :mod:`kdt.data.order`): the mean becomes :math:`\\sum_i w_i \\ell_i / \\sum_i w_i`.

  Returns:
    Scalar float32 loss.
  """
  logits = logits.astype(jnp.float32)
  log_probs = jax.nn.log_softmax(logits)
  if label_smoothing == 0.0:
    picked = jnp.take_along_axis(log_probs, labels[:, None], axis=-1)
    return -(jnp.mean(picked) if weight is None else weighted_mean(picked[:, 0], weight))
  targets = smoothed_targets(labels, logits.shape[-1], label_smoothing, convention)
  return -weighted_mean(jnp.sum(targets * log_probs, axis=-1), weight)


def kl_divergence(student_logits: jax.Array, teacher_logits: jax.Array, *, temperature: float,
                  reduction: str = "batchmean", weight: jax.Array | None = None) -> jax.Array:
  """KL(softmax(z_t/T) || softmax(z_s/T)) with PyTorch's ``KLDivLoss`` reductions.

  Args:
    student_logits: ``[batch, C]``.
    teacher_logits: ``[batch, C]`` (treated as constants: no gradient flows into the teacher).
    temperature: T > 0.
    reduction: ``"batchmean"`` divides the summed KL by the batch size; ``"mean"`` by batch x C.
    weight: optional ``[batch]`` example weights; the batch size becomes :math:`\\sum_i w_i`.

  Returns:
    Scalar float32 KL (without the T^2 factor).
  """
  teacher_logits = jax.lax.stop_gradient(teacher_logits.astype(jnp.float32))
  student_log_probs = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature)
  teacher_log_probs = jax.nn.log_softmax(teacher_logits / temperature)
  teacher_probs = jnp.exp(teacher_log_probs)
  pointwise = teacher_probs * (teacher_log_probs - student_log_probs)
  if reduction not in KD_REDUCTIONS:
    raise ValueError(f"kd_reduction={reduction!r}; allowed: {KD_REDUCTIONS}")
  if weight is not None:  # the weighted batch size replaces B
    per_class = 1 if reduction == "batchmean" else pointwise.shape[-1]
    return weighted_mean(jnp.sum(pointwise, axis=-1), weight) / per_class
  if reduction == "batchmean":
    return jnp.sum(pointwise) / student_logits.shape[0]
  return jnp.mean(pointwise)


def kd_loss(student_logits: jax.Array, teacher_logits: jax.Array, labels: jax.Array, *,
            alpha: float, temperature: float, reduction: str = "batchmean",
            label_smoothing: float = 0.0, convention: str = "uniform",
            weight: jax.Array | None = None) -> jax.Array:
  """Distillation loss alpha * T^2 * KL + (1 - alpha) * CE (KD ticket, Ma et al. 2021).

  Args:
    student_logits: ``[batch, C]``.
    teacher_logits: ``[batch, C]`` from the frozen teacher on the same (augmented) batch.
    labels: ``[batch]`` integer class ids.
    alpha: weight of the KD term in [0, 1].
    temperature: T > 0.
    reduction: KL reduction, ``"batchmean"`` or ``"mean"``.
    label_smoothing: smoothing of the hard-label CE term.
    convention: label-smoothing convention.
    weight: optional ``[batch]`` example weights (see :func:`cross_entropy`).

  Returns:
    Scalar float32 loss.
  """
  kl = kl_divergence(student_logits, teacher_logits, temperature=temperature, reduction=reduction,
                     weight=weight)
  ce = cross_entropy(student_logits, labels, label_smoothing=label_smoothing, convention=convention,
                     weight=weight)
  return alpha * temperature**2 * kl + (1.0 - alpha) * ce
