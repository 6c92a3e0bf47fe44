"""The pure masked / KD train step."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdt.train import losses, optim, steps
from kdt.train.state import create_train_state


class TinyNet(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    x = x.reshape((x.shape[0], -1))
    x = nn.Dense(16, name="stem")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    x = nn.relu(x)
    return nn.Dense(3, name="head")(x)


def _setup(optimizer="sgd"):
  model = TinyNet()
  variables = model.init(jax.random.key(0), jnp.zeros((1, 4, 4, 1)), train=False)
  direction = optim.make_direction(optimizer, momentum=0.9, weight_decay=1e-2)
  state = create_train_state(dict(variables), direction)
  rng = np.random.default_rng(0)
  mask = jax.tree.map(lambda p: jnp.asarray(rng.random(p.shape) > 0.5) if p.ndim == 2
                      else jnp.ones(p.shape, bool), state.params)
  state = state.replace(params=steps.apply_mask(state.params, mask))
  batch = {"image": jnp.asarray(rng.normal(size=(8, 4, 4, 1)), jnp.float32),
           "label": jnp.asarray(rng.integers(0, 3, 8), jnp.int32)}
  schedule = optim.make_schedule("constant", learning_rate=0.1, num_steps=100)
  return model, direction, schedule, state, mask, batch


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_pruned_weights_stay_exactly_zero(optimizer):
  model, direction, schedule, state, mask, batch = _setup(optimizer)
  step = jax.jit(functools.partial(steps.train_step, model=model, direction=direction,
                                   schedule=schedule, loss=losses.LossConfig()))
  teacher = jnp.asarray(np.random.default_rng(1).normal(size=(8, 3)), jnp.float32)
  for i in range(100):
    state, metrics = step(state, mask, batch, teacher if i % 2 else None)
  for p, m in zip(jax.tree.leaves(state.params), jax.tree.leaves(mask)):
    p, m = np.asarray(p), np.asarray(m)
    assert np.all(p[~m] == 0.0)
    if m.size and (~m).any():
      assert np.any(p[m] != 0.0)
  # momentum / moments of pruned weights are zero as well
  for leaf in jax.tree.leaves(state.opt_state):
    assert np.all(np.isfinite(np.asarray(leaf)))
  assert int(state.step) == 100
  assert float(metrics["loss"]) < 1.5


def test_step_traces_once_per_variant():
  model, direction, schedule, state, mask, batch = _setup()
  traces = []

  def counted(*args):
    traces.append(1)
    return steps.train_step(*args, model=model, direction=direction, schedule=schedule,
                            loss=losses.LossConfig())

  step = jax.jit(counted, donate_argnums=0)
  for _ in range(5):
    state, _ = step(state, mask, batch, None)
  assert len(traces) == 1


def test_kd_stop_step_switches_to_cross_entropy():
  logits = jnp.asarray(np.random.default_rng(0).normal(size=(4, 3)), jnp.float32)
  teacher = -logits
  labels = jnp.array([0, 1, 2, 0])
  cfg = losses.LossConfig(kd_alpha=0.9, kd_temperature=4.0, kd_stop_step=10)
  before = steps.compute_loss(logits, labels, teacher, jnp.array(9), cfg)
  after = steps.compute_loss(logits, labels, teacher, jnp.array(10), cfg)
  np.testing.assert_allclose(float(after), float(losses.cross_entropy(logits, labels)), rtol=1e-6)
  np.testing.assert_allclose(
      float(before), float(losses.kd_loss(logits, teacher, labels, alpha=0.9, temperature=4.0)),
      rtol=1e-6)


def test_learning_rate_follows_state_step():
  model, direction, _, state, mask, batch = _setup()
  schedule = optim.make_schedule("step", learning_rate=0.1, num_steps=100, milestones=(5,))
  step = jax.jit(functools.partial(steps.train_step, model=model, direction=direction,
                                   schedule=schedule, loss=losses.LossConfig()))
  _, metrics = step(state.replace(step=jnp.asarray(7, jnp.int32)), mask, batch, None)
  np.testing.assert_allclose(float(metrics["learning_rate"]), 0.01, rtol=1e-6)


def test_eval_step_counts_weights():
  model, _, _, state, mask, batch = _setup()
  batch = dict(batch, weight=jnp.array([1, 1, 1, 1, 1, 0, 0, 0], jnp.float32))
  sums = steps.eval_step(state.params, state.batch_stats, mask, batch, model=model)
  assert float(sums["count"]) == 5.0
  assert 0 <= float(sums["correct"]) <= 5


class TinyMLP(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    x = nn.relu(nn.Dense(16, name="stem")(x.reshape((x.shape[0], -1))))
    return nn.Dense(3, name="head")(x)


@pytest.mark.parametrize("with_teacher", [False, True])
def test_kept_partial_batch_step_equals_pytorchs_partial_batch(with_teacher):
  """A kept last batch (5 images padded to 8, weight 0 on the padding) takes the same SGD step as
  the 5-image batch PyTorch's ``drop_last=False`` loader gives (open_lth, KD-ticket)."""
  model = TinyMLP()
  direction = optim.make_direction("sgd", momentum=0.9, weight_decay=1e-2)
  state = create_train_state(dict(model.init(jax.random.key(0), jnp.zeros((1, 4, 4, 1)))), direction)
  mask = jax.tree.map(lambda p: jnp.ones(p.shape, bool), state.params)
  rng = np.random.default_rng(0)
  image = rng.normal(size=(8, 4, 4, 1)).astype(np.float32)
  label = rng.integers(0, 3, 8).astype(np.int32)
  teacher = rng.normal(size=(8, 3)).astype(np.float32) if with_teacher else None
  weight = np.array([1.0] * 5 + [0.0] * 3, np.float32)
  step = functools.partial(steps.train_step, model=model, direction=direction,
                           schedule=optim.make_schedule("constant", learning_rate=0.1, num_steps=9),
                           loss=losses.LossConfig())
  padded, padded_metrics = jax.jit(step)(state, mask, {"image": image, "label": label,
                                                       "weight": weight}, teacher)
  partial, partial_metrics = jax.jit(step)(state, mask, {"image": image[:5], "label": label[:5]},
                                           None if teacher is None else teacher[:5])
  for a, b in zip(jax.tree.leaves(padded.params), jax.tree.leaves(partial.params)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  for key in ("loss", "accuracy"):
    np.testing.assert_allclose(padded_metrics[key], partial_metrics[key], rtol=1e-6)
