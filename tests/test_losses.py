"""Losses against independent NumPy computations."""

import numpy as np
import pytest

from kdt.train import losses


def _np_log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _np_kd(student, teacher, labels, alpha, temperature, reduction):
  log_q = _np_log_softmax(student / temperature)
  p = np.exp(_np_log_softmax(teacher / temperature))
  pointwise = p * (np.log(p) - log_q)
  kl = pointwise.sum() / student.shape[0] if reduction == "batchmean" else pointwise.mean()
  ce = -_np_log_softmax(student)[np.arange(len(labels)), labels].mean()
  return alpha * temperature**2 * kl + (1 - alpha) * ce


@pytest.mark.parametrize("reduction", ["batchmean", "mean"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_weighted_losses_are_the_partial_batch_mean(reduction, label_smoothing):
  """Weight 0 on the padding rows of a kept partial batch: the loss is PyTorch's mean over the
  partial batch alone (:mod:`kdt.data.order`)."""
  rng = np.random.default_rng(1)
  student = rng.normal(size=(8, 10)).astype(np.float32) * 3
  teacher = rng.normal(size=(8, 10)).astype(np.float32) * 3
  labels = rng.integers(0, 10, size=8)
  weight = np.array([1.0] * 5 + [0.0] * 3, np.float32)
  kw = dict(alpha=0.7, temperature=4.0, reduction=reduction, label_smoothing=label_smoothing)
  np.testing.assert_allclose(
      losses.kd_loss(student, teacher, labels, weight=weight, **kw),
      losses.kd_loss(student[:5], teacher[:5], labels[:5], **kw), rtol=1e-6)
  np.testing.assert_allclose(
      losses.cross_entropy(student, labels, label_smoothing=label_smoothing, weight=weight),
      losses.cross_entropy(student[:5], labels[:5], label_smoothing=label_smoothing), rtol=1e-6)
  np.testing.assert_array_equal(  # weights of one change nothing
      losses.cross_entropy(student, labels, weight=np.ones(8, np.float32)),
      losses.cross_entropy(student, labels))


@pytest.mark.parametrize("reduction", ["batchmean", "mean"])
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_kd_loss_matches_numpy(reduction, alpha, temperature):
  rng = np.random.default_rng(0)
  student = rng.normal(size=(6, 10)).astype(np.float32) * 3
  teacher = rng.normal(size=(6, 10)).astype(np.float32) * 3
  labels = rng.integers(0, 10, size=6)
  got = losses.kd_loss(student, teacher, labels, alpha=alpha, temperature=temperature,
                       reduction=reduction)
  want = _np_kd(student.astype(np.float64), teacher.astype(np.float64), labels, alpha, temperature,
                reduction)
  np.testing.assert_allclose(float(got), want, rtol=2e-5, atol=1e-6)


def test_mean_reduction_is_batchmean_over_classes():
  rng = np.random.default_rng(1)
  student, teacher = rng.normal(size=(4, 10)), rng.normal(size=(4, 10))
  batchmean = losses.kl_divergence(student, teacher, temperature=5.0, reduction="batchmean")
  mean = losses.kl_divergence(student, teacher, temperature=5.0, reduction="mean")
  np.testing.assert_allclose(float(mean) * 10, float(batchmean), rtol=1e-5)


def test_kl_of_identical_logits_is_zero():
  z = np.random.default_rng(2).normal(size=(3, 5))
  assert abs(float(losses.kl_divergence(z, z, temperature=3.0))) < 1e-6


@pytest.mark.parametrize("convention,target,off", [("uniform", 1 - 0.1 + 0.01, 0.01),
                                                   ("off_target", 0.9, 0.1 / 9)])
def test_label_smoothing_conventions(convention, target, off):
  q = np.asarray(losses.smoothed_targets(np.array([3]), 10, 0.1, convention))[0]
  np.testing.assert_allclose(q[3], target, rtol=1e-6)
  np.testing.assert_allclose(np.delete(q, 3), off, rtol=1e-6)
  np.testing.assert_allclose(q.sum(), 1.0, rtol=1e-6)


def test_smoothed_cross_entropy_matches_numpy():
  rng = np.random.default_rng(3)
  logits, labels = rng.normal(size=(5, 7)), rng.integers(0, 7, size=5)
  q = np.full((5, 7), 0.2 / 6)
  q[np.arange(5), labels] = 0.8
  want = -(q * _np_log_softmax(logits)).sum(-1).mean()
  got = losses.cross_entropy(logits, labels, label_smoothing=0.2, convention="off_target")
  np.testing.assert_allclose(float(got), want, rtol=1e-5)
