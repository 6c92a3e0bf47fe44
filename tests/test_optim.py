"""Learning-rate schedules and optimizer directions."""

import numpy as np
import optax
import pytest
import jax.numpy as jnp

from kdt.train import optim


def test_step_schedule_milestones():
  s = optim.make_schedule("step", learning_rate=0.1, num_steps=100, milestones=(10, 20), gamma=0.1)
  np.testing.assert_allclose([float(s(t)) for t in (0, 9, 10, 19, 20, 99)],
                             [0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-6)


def test_warmup_open_lth_convention():
  s = optim.make_schedule("constant", learning_rate=0.4, num_steps=100, warmup_steps=10)
  np.testing.assert_allclose([float(s(t)) for t in (0, 5, 10, 50)], [0.0, 0.2, 0.4, 0.4], rtol=1e-6)


def test_cosine_linear_exponential_endpoints():
  for name, mid in (("cosine", 0.055), ("linear", 0.055), ("exponential", np.sqrt(0.1 * 0.01))):
    s = optim.make_schedule(name, learning_rate=0.1, num_steps=100, end_learning_rate=0.01)
    np.testing.assert_allclose([float(s(0)), float(s(50)), float(s(100))], [0.1, mid, 0.01], rtol=1e-5)


def test_replaying_from_step_k_is_the_same_schedule():
  """Rewinding starts at state.step = k, so the LR seen is the original schedule's from k."""
  s = optim.make_schedule("step", learning_rate=0.1, num_steps=50, milestones=(20, 40))
  k = 25
  np.testing.assert_allclose([float(s(k + i)) for i in range(20)], [0.01] * 15 + [0.001] * 5, rtol=1e-6)


def test_unknown_names_are_rejected():
  with pytest.raises(ValueError, match="allowed"):
    optim.make_schedule("poly", learning_rate=0.1, num_steps=10)
  with pytest.raises(ValueError, match="allowed"):
    optim.make_direction("lamb")


def test_sgd_direction_matches_pytorch_sgd():
  """buf = m*buf + (g + wd*p); update = -lr*buf — PyTorch's SGD with momentum and L2."""
  d = optim.make_direction("sgd", momentum=0.9, weight_decay=0.1)
  p, g = jnp.array([1.0, -2.0]), jnp.array([0.5, 0.5])
  state = d.init(p)
  buf = np.zeros(2)
  for _ in range(3):
    u, state = d.update(g, state, p)
    buf = 0.9 * buf + (np.asarray(g) + 0.1 * np.asarray(p))
    np.testing.assert_allclose(np.asarray(u), buf, rtol=1e-6)


def test_adamw_matches_optax():
  d = optim.make_direction("adamw", weight_decay=0.01)
  ref = optax.adamw(1.0, weight_decay=0.01)
  p, g = jnp.array([1.0, -2.0]), jnp.array([0.5, 0.25])
  u, _ = d.update(g, d.init(p), p)
  r, _ = ref.update(g, ref.init(p), p)
  np.testing.assert_allclose(-np.asarray(u), np.asarray(r), rtol=1e-6)
