"""Dynamic sparse training: RigL / SET updates, the drop-fraction schedule, sparse init, experiment."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kdt import config_lib
from kdt import experiments
from kdt import workdir as workdir_lib
from kdt.experiments import setup as setup_lib
from kdt.models import layers as models_layers
from kdt.pruning import dynamic
from kdt.experiments import dst as dst_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tree(seed=0, density=0.4):
  rng = np.random.default_rng(seed)
  shapes = {"conv": {"kernel": (3, 3, 4, 8), "bias": (8,)}, "dense": {"kernel": (20, 10)},
            "head": {"kernel": (10, 3)}}
  params = jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s), jnp.float32), shapes,
                        is_leaf=lambda x: isinstance(x, tuple))
  mask = jax.tree.map(lambda p: jnp.asarray(rng.random(p.shape) < density), params)
  mask["conv"]["bias"] = jnp.ones((8,), bool)
  params = jax.tree.map(lambda p, m: jnp.where(m, p, 0.0), params, mask)
  grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
  prunable = {"conv": {"kernel": True, "bias": False}, "dense": {"kernel": True},
              "head": {"kernel": False}}
  return params, mask, grads, prunable


def _counts(mask, prunable):
  return dynamic.layer_counts(mask, prunable)


# ----- the drop-fraction schedule ---------------------------------------------------------------

def test_cosine_drop_fraction_is_the_formula():
  schedule = dynamic.DropSchedule(initial=0.3, end_step=750, begin_step=50, every=10)
  for t in range(0, 1200, 7):
    tt = min(max(t - 50, 0), 700)
    expected = 0.3 / 2 * (1 + math.cos(math.pi * tt / 700))
    assert abs(float(dynamic.drop_fraction(t, schedule)) - expected) < 1e-6, t
  # Traced steps give the same values.
  steps = jnp.arange(0, 1000, 13)
  np.testing.assert_allclose(jax.jit(lambda s: dynamic.drop_fraction(s, schedule))(steps),
                             [float(dynamic.drop_fraction(int(s), schedule)) for s in steps],
                             rtol=1e-6, atol=1e-7)
  constant = dynamic.DropSchedule(initial=0.25, end_step=100, kind="constant")
  assert float(dynamic.drop_fraction(77, constant)) == 0.25
  with pytest.raises(ValueError, match="linear"):
    dynamic.DropSchedule(kind="linear")


def test_update_steps():
  schedule = dynamic.DropSchedule(end_step=60, every=25)
  assert dynamic.update_steps(schedule, 100) == [25, 50]
  assert not dynamic.is_update_step(0, schedule) and not dynamic.is_update_step(75, schedule)
  schedule = dynamic.DropSchedule(end_step=100, every=25)
  assert dynamic.update_steps(schedule, 100) == [25, 50, 75]


# ----- RigL and SET -----------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["rigl", "set"])
@pytest.mark.parametrize("step", [0, 300, 900])
def test_updates_keep_per_layer_counts_and_grow_at_zero(method, step):
  params, mask, grads, prunable = _tree()
  schedule = dynamic.DropSchedule(initial=0.3, end_step=1000, every=100)
  if method == "rigl":
    new_p, new_m = jax.jit(lambda p, m, g, s: dynamic.rigl_update(
        p, m, g, s, prunable=prunable, schedule=schedule))(params, mask, grads, step)
  else:
    new_p, new_m = dynamic.set_update(params, mask, step, jax.random.key(3), prunable=prunable,
                                      schedule=schedule)
  assert _counts(new_m, prunable) == _counts(mask, prunable)
  fraction = float(dynamic.drop_fraction(step, schedule))
  for name in ("conv", "dense"):
    old, new = np.asarray(mask[name]["kernel"]), np.asarray(new_m[name]["kernel"])
    w_old, w_new = np.asarray(params[name]["kernel"]), np.asarray(new_p[name]["kernel"])
    n_active = int(old.sum())
    n_move = int(np.float32(n_active) * np.float32(fraction))
    grown = new & ~old
    dropped = old & ~new
    assert grown.sum() == dropped.sum() <= n_move
    assert np.all(w_new[grown] == 0.0)                       # new weights start at 0
    assert np.all(w_new[~new] == 0.0)                        # inactive weights are 0
    assert np.array_equal(w_new[old & new], w_old[old & new])  # survivors keep their values
    # The n_move smallest |w| of the old active set were dropped (some may be regrown).
    order = np.argsort(np.abs(w_old[old]), kind="stable")
    kept_before_grow = np.ones(n_active, bool)
    kept_before_grow[order[:n_move]] = False
    assert np.all(new[old][kept_before_grow])
    if method == "rigl":
      # Grown = the largest |g| among the entries not kept by the drop.
      candidates = ~old.copy()
      candidates[old] = ~kept_before_grow
      g = np.abs(np.asarray(grads[name]["kernel"]))
      threshold = np.sort(g[candidates])[::-1][n_move - 1] if n_move else np.inf
      regrown_or_grown = new & candidates
      assert regrown_or_grown.sum() == n_move
      assert np.all(g[regrown_or_grown] >= threshold)
  # Non-prunable leaves are untouched.
  np.testing.assert_array_equal(new_p["head"]["kernel"], params["head"]["kernel"])
  np.testing.assert_array_equal(new_m["conv"]["bias"], mask["conv"]["bias"])


def test_rigl_moves_weights_and_nothing_after_the_end():
  params, mask, grads, prunable = _tree(1)
  schedule = dynamic.DropSchedule(initial=0.3, end_step=1000, every=100)
  _, moved = dynamic.rigl_update(params, mask, grads, 100, prunable=prunable, schedule=schedule)
  changed = sum(int(np.sum(np.asarray(a) != np.asarray(b)))
                for a, b in zip(jax.tree.leaves(moved), jax.tree.leaves(mask)))
  assert changed > 0
  _, same = dynamic.rigl_update(params, mask, grads, 1000, prunable=prunable, schedule=schedule)
  for a, b in zip(jax.tree.leaves(same), jax.tree.leaves(mask)):
    np.testing.assert_array_equal(a, b)


def test_noise_only_breaks_ties():
  params, mask, grads, prunable = _tree(2)
  schedule = dynamic.DropSchedule(initial=0.3, end_step=1000, every=100)
  a = dynamic.rigl_update(params, mask, grads, 100, prunable=prunable, schedule=schedule)
  b = dynamic.rigl_update(params, mask, grads, 100, prunable=prunable, schedule=schedule,
                          key=jax.random.key(0), noise_std=1e-9)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


def test_reset_optimizer_state_zeroes_moved_entries():
  params, mask, grads, prunable = _tree(3)
  for tx in (optax.trace(0.9), optax.chain(optax.add_decayed_weights(1e-4), optax.scale_by_adam())):
    state = tx.init(params)
    _, state = tx.update(grads, state, params)
    keep = jax.tree.map(lambda m: m & (jnp.arange(m.size).reshape(m.shape) % 2 == 0), mask)
    reset = dynamic.reset_optimizer_state(state, params, keep)
    moments = [s for s in jax.tree.leaves(reset) if s.ndim]
    originals = [s for s in jax.tree.leaves(state) if s.ndim]
    assert len(moments) == len(originals) >= len(jax.tree.leaves(params))
    for k, s, o in zip(jax.tree.leaves(keep) * (len(moments) // len(jax.tree.leaves(keep))),
                       moments, originals):
      np.testing.assert_array_equal(s, np.where(k, o, 0.0))


def test_sparsity_aware_init_draws_variance_2_over_fan_in_whatever_the_base():
  """Per-neuron variance 2 / n_j on a conv layer, from a fan-out base init (rigl sparse_init)."""
  shape = (3, 3, 64, 256)                                  # fan-in N = 576, fan-out 2304
  base = models_layers.CONV_INIT(jax.random.key(0), shape)  # kdt's He normal fan-out
  density = jnp.linspace(0.1, 1.0, shape[-1])               # neuron j keeps ~density_j of 576
  mask = jax.random.uniform(jax.random.key(1), shape) < density
  key = jax.random.key(2)
  out = np.asarray(dynamic.sparsity_aware_init({"k": base}, {"k": mask}, {"k": True}, key)["k"])
  mask = np.array(mask)
  n = mask.reshape(-1, shape[-1]).sum(axis=0)
  var = (out ** 2).reshape(-1, shape[-1]).sum(axis=0) / n    # mean-zero draws
  ratio = var * n / 2.0                                      # 1 when Var w_ij = 2 / n_j
  assert abs(ratio.mean() - 1) < 0.03
  assert np.all(np.abs(ratio - 1) < 0.45)
  assert np.all(out[~mask] == 0) and np.all(out[mask] != 0)
  # Whatever the base: its scale (or fan convention) does not enter.
  again = dynamic.sparsity_aware_init({"k": 10 * base}, {"k": mask}, {"k": True}, key)["k"]
  np.testing.assert_array_equal(out, again)
  # An ablated neuron (no active input) stays 0; non-prunable leaves are untouched.
  mask[..., 5] = False
  params = {"k": base, "b": jnp.ones(3)}
  res = dynamic.sparsity_aware_init(params, {"k": mask, "b": np.ones(3, bool)},
                                    {"k": True, "b": False}, key)
  assert np.all(np.asarray(res["k"])[..., 5] == 0)
  np.testing.assert_array_equal(res["b"], params["b"])


# ----- the experiment ---------------------------------------------------------------------------

def _config():
  config = config_lib.load_file(os.path.join(REPO, "configs", "quickstart_dst.py"))
  config.train.num_steps = 20
  config.train.batch_size = 32
  config.train.eval_every_steps = 0
  config.train.log_every_steps = 0
  config.train.checkpoint_every_steps = 3
  config.schedule.milestones = (15,)
  config.imp.rewind_step = 5
  config.dst.methods = ("rigl", "set")
  config.dst.densities = (0.3,)
  config.dst.compare_imp = False
  config.dst.update_every = 5
  config.dst.update_end_step = 15
  return config


class _CrashAt:
  """Wraps a dataset: raises KeyboardInterrupt at training batch call ``crash_at``."""

  def __init__(self, dataset, crash_at=None):
    self._dataset, self.crash_at, self.calls = dataset, crash_at, 0

  def __getattr__(self, name):
    return getattr(self._dataset, name)

  def train_batch(self, *args, **kwargs):
    self.calls += 1
    if self.crash_at is not None and self.calls == self.crash_at:
      raise KeyboardInterrupt("simulated kill")
    return self._dataset.train_batch(*args, **kwargs)


def _run(config, workdir, dataset, monkeypatch, crash_at=None):
  del monkeypatch
  wrapped = _CrashAt(dataset, crash_at)
  workdir_lib.prepare_workdir(config, workdir)
  return dst_lib.run(experiments.build_setup(config, workdir, dataset=wrapped), config, workdir)


def test_dst_experiment_updates_masks_and_resumes_exactly(tmp_path, monkeypatch):
  config = _config()
  config_lib.validate(config, device_count=1)
  dataset = setup_lib.load_data(config)
  rows = _run(config, str(tmp_path / "a"), dataset, monkeypatch)
  assert [(r["recipe"], r["round"]) for r in rows] == [("rigl", 1), ("set", 1)]
  driver = dst_lib.DSTDriver(experiments.build_setup(config, str(tmp_path / "a"), dataset=dataset),
                             config, str(tmp_path / "a"))
  assert driver.boundaries == [0, 5, 10, 15, 20]
  n = rows[0]["weights_prunable"]
  for row in rows:
    assert row["weights_kept"] == math.ceil(0.3 * n)
    assert row["end_step"] == 20 and row["steps_trained"] == 20 and row["mask_updates"] == 3
    assert row["report_metric"] == "final" and "best_test_accuracy" not in row
    assert row["reported_test_accuracy"] == row["test_accuracy"]
  history = json.load(open(tmp_path / "a" / "rigl" / "round_01" / "history.json"))
  assert [h["step"] for h in history["evals"]] == [5, 10, 15, 20]
  # Only the last segment is kept on disk; the masks moved but kept their per-layer counts.
  assert sorted(os.listdir(tmp_path / "a" / "rigl" / "round_01")) == ["history.json", "seg_0000015"]
  initial = driver.initial_mask(0.3, driver._key("rigl", 1))
  final = driver.masks.load_or_compute(str(tmp_path / "a" / "rigl" / "round_01" / "seg_0000015"),
                                       driver.like, None)
  assert dynamic.layer_counts(final, driver.prunable) == dynamic.layer_counts(initial,
                                                                               driver.prunable)
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(final),
                                                      jax.tree.leaves(initial)))
  # Killed in the middle of the second segment, then re-run: the same results.
  config.dst.methods = ("rigl",)
  with pytest.raises(KeyboardInterrupt):
    _run(config, str(tmp_path / "b"), dataset, monkeypatch, crash_at=9)
  assert os.path.isdir(tmp_path / "b" / "rigl" / "round_01" / "seg_0000005")
  resumed = _run(config, str(tmp_path / "b"), dataset, monkeypatch)
  strip = lambda rs: [{k: v for k, v in r.items() if k != "wall_time"} for r in rs]
  assert strip(resumed) == strip(rows[:1])


def test_bad_dst_values_name_the_field():
  for field, value in (("methods", ("rigl", "snip")), ("densities", (0.5, 0.7)),
                       ("drop_fraction", 1.0), ("allocation", "global"), ("init", "zeros"),
                       ("update_every", 0)):
    config = _config()
    config.dst[field] = value
    with pytest.raises(config_lib.ConfigError, match=f"dst.{field}"):
      config_lib.validate(config, device_count=1)
