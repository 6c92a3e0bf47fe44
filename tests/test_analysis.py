"""kdt.analysis: path interpolation, instability, distances, correlation, and the lmc /
correlation experiments end to end on digits."""

import dataclasses
import functools
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdt import config_lib
from kdt import experiments
from kdt import parallel
from kdt.analysis import correlation
from kdt.analysis import interpolation
from kdt.analysis import stability
from kdt.experiments import lmc
from kdt.tickets import recipes
from kdt.train import loop


def _tree(seed, shapes=((3, 4), (4,), (2, 2, 3))):
  keys = jax.random.split(jax.random.key(seed), len(shapes))
  return {f"l{i}": jax.random.normal(k, s) for i, (k, s) in enumerate(zip(keys, shapes))}


def _assert_trees_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ----- interpolation ---------------------------------------------------------------------------


def test_lerp_reproduces_endpoints_bit_for_bit_and_a_line_to_itself():
  a, b = _tree(0), _tree(1)
  _assert_trees_equal(interpolation.lerp(a, b, 0.0), a)
  _assert_trees_equal(interpolation.lerp(a, b, 1.0), b)
  for alpha in interpolation.alpha_grid(7):
    _assert_trees_equal(interpolation.lerp(a, a, alpha), a)
  mid = interpolation.lerp(a, b, 0.5)
  np.testing.assert_allclose(mid["l0"], 0.5 * (a["l0"] + b["l0"]), rtol=1e-6, atol=1e-6)


def test_alpha_grid_and_error_barrier():
  alphas = np.asarray(interpolation.alpha_grid(30))
  assert alphas.shape == (30,) and alphas[0] == 0.0 and alphas[-1] == 1.0
  np.testing.assert_allclose(np.diff(alphas), 1 / 29, rtol=1e-5)
  assert float(interpolation.error_barrier([0.02, 0.10, 0.04])) == pytest.approx(0.07)
  assert float(interpolation.error_barrier([0.05] * 30)) == 0.0
  # A monotone path has no barrier beyond the endpoints' mean: max - mean = half the gap.
  assert float(interpolation.error_barrier([0.1, 0.2, 0.3])) == pytest.approx(0.1)
  summary = interpolation.path_summary([0.0, 0.5, 1.0], [0.02, 0.10, 0.04])
  assert summary["argmax_alpha"] == 0.5 and summary["endpoint_error"] == pytest.approx(0.03)


class _BNNet(nn.Module):
  """Dense -> BatchNorm -> ReLU -> head: the smallest model with running statistics."""

  @nn.compact
  def __call__(self, x, train=False):
    x = x.reshape((x.shape[0], -1))
    x = nn.Dense(16, name="stem")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn")(x)
    return nn.Dense(10, name="head")(nn.relu(x))


def test_reestimated_batch_norm_statistics_are_the_mean_of_batch_statistics():
  model = _BNNet()
  variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
  batches = jax.random.normal(jax.random.key(1), (3, 32, 8, 8, 1))
  stats = jax.jit(interpolation.reestimate_batch_stats, static_argnums=0)(
      model, variables["params"], variables["batch_stats"], batches)
  hidden = (batches.reshape(3, 32, 64) @ variables["params"]["stem"]["kernel"]
            + variables["params"]["stem"]["bias"])
  np.testing.assert_allclose(stats["bn"]["mean"], hidden.mean(axis=1).mean(axis=0), rtol=1e-4,
                             atol=1e-5)
  np.testing.assert_allclose(stats["bn"]["var"], hidden.var(axis=1).mean(axis=0), rtol=1e-4,
                             atol=1e-5)
  momentum = interpolation.batch_norm_momentum(model, variables["params"],
                                               variables["batch_stats"], batches[0])
  assert float(momentum["bn"]["mean"]) == pytest.approx(0.9, abs=1e-5)
  # "interpolate" keeps the endpoints' own statistics exactly.
  other = jax.tree.map(lambda x: x + 1.0, variables["batch_stats"])
  _, at_zero = interpolation.interpolated_variables(
      variables["params"], variables["batch_stats"], variables["params"], other, 0.0,
      batch_norm="interpolate")
  _assert_trees_equal(at_zero, variables["batch_stats"])
  with pytest.raises(ValueError, match="batch_norm"):
    interpolation.interpolated_variables({}, {}, {}, {}, 0.5, batch_norm="average")


def _digits_trainer(model, batch_size=32):
  from kdt import data as data_lib
  dataset = data_lib.load_dataset("digits")
  mesh = parallel.make_mesh()
  settings = loop.LoopSettings(batch_size=batch_size, eval_batch_size=120, log_every_steps=0,
                               checkpoint_every_steps=0)
  return loop.Trainer(model, dataset, mesh, settings), dataset


def _init(model, seed):
  variables = model.init(jax.random.key(seed), jnp.zeros((1, 8, 8, 1)), train=False)
  return recipes.Weights(variables["params"], variables.get("batch_stats", {}))


@pytest.mark.parametrize("batch_norm", ["reestimate", "interpolate"])
def test_path_endpoints_reproduce_the_endpoint_errors_and_identical_nets_are_stable(batch_norm):
  model = _BNNet()
  trainer, dataset = _digits_trainer(model)
  a, b = _init(model, 1), _init(model, 2)
  # Give the endpoints distinct, non-trivial running statistics.
  a = dataclasses.replace(a, batch_stats=jax.tree.map(lambda x: x + 0.3, a.batch_stats))
  b = dataclasses.replace(b, batch_stats=jax.tree.map(lambda x: x * 2.0, b.batch_stats))
  mask = jax.tree.map(lambda x: jnp.ones(x.shape, bool), a.params)
  images = jnp.stack([
      dataset.train_batch(s, 32, 0)["image"].astype(jnp.float32) / 16.0 for s in range(2)])
  evaluator = lmc.PathEvaluator(trainer, batch_norm, images)
  alphas = [0.0, 0.5, 1.0]
  errors = evaluator.errors(a, b, mask, alphas, ["test", "train"])

  def own_error(net, split):
    stats = net.batch_stats
    if batch_norm == "reestimate":
      stats = interpolation.reestimate_batch_stats(model, net.params, stats, images)
    return 1.0 - trainer.evaluate(net.params, stats, mask, split)["accuracy"]

  for split in ("test", "train"):
    assert errors[split][0] == pytest.approx(own_error(a, split), abs=1e-9)
    assert errors[split][-1] == pytest.approx(own_error(b, split), abs=1e-9)
  same = evaluator.errors(a, a, mask, interpolation.alpha_grid(5).tolist(), ["test"])["test"]
  assert float(interpolation.error_barrier(same)) == 0.0
  assert len(set(same)) == 1


# ----- stability -------------------------------------------------------------------------------


def test_l2_distance_and_angle_of_known_vectors():
  zero, v = {"w": np.zeros(2)}, {"w": np.array([3.0, 4.0])}
  assert float(stability.l2_distance(zero, v)) == pytest.approx(5.0)
  assert float(stability.global_norm(v)) == pytest.approx(5.0)
  e1, e2 = {"w": np.array([1.0, 0.0])}, {"w": np.array([0.0, 1.0])}
  assert float(stability.angle(e1, e2, degrees=True)) == pytest.approx(90.0, abs=1e-4)
  assert float(stability.angle(e1, e2)) == pytest.approx(np.pi / 2, abs=1e-6)
  assert float(stability.angle(e1, {"w": np.array([1.0, 1.0])}, degrees=True)) == pytest.approx(45.0)
  assert float(stability.angle(e1, {"w": np.array([-2.0, 0.0])}, degrees=True)) == pytest.approx(180.0)
  # Parallel vectors: exactly 0 (the atan2 form does not lose the small angle to rounding).
  a = _tree(3)
  assert float(stability.angle(a, jax.tree.map(lambda x: 2.5 * x, a))) == pytest.approx(0.0, abs=1e-6)
  tiny = {"w": np.array([1.0, 1e-4])}
  assert float(stability.angle(e1, tiny)) == pytest.approx(1e-4, rel=1e-3)
  # Across leaves, with a mask: only unmasked entries count.
  a = {"x": np.array([1.0, 100.0]), "y": np.array([2.0])}
  b = {"x": np.array([4.0, -50.0]), "y": np.array([6.0])}
  mask = {"x": np.array([True, False]), "y": np.array([True])}
  assert float(stability.l2_distance(a, b, mask)) == pytest.approx(5.0)
  assert float(stability.l2_distance(a, b, leaves={"x": False, "y": True})) == pytest.approx(4.0)
  metrics = jax.jit(stability.pair_metrics)(a, b, mask, jax.tree.map(np.zeros_like, a))
  assert float(metrics["l2"]) == pytest.approx(5.0)
  assert float(metrics["travelled"]) == pytest.approx(0.5 * (np.sqrt(5) + np.sqrt(52)), rel=1e-5)


def test_verdicts_and_onsets():
  assert stability.is_stable(0.019) and not stability.is_stable(0.02)
  assert stability.is_matching(0.9181, 0.92) and not stability.is_matching(0.9179, 0.92)
  assert stability.is_matching(0.95, 0.92, tolerance=0.0)
  assert stability.onset([0, 100, 500, 2000], [False, False, True, True]) == 500
  assert stability.onset([2000, 0, 500], [True, False, False]) == 2000
  assert stability.onset([0, 1], [False, False]) is None


# ----- correlation -----------------------------------------------------------------------------


def test_correlation_of_a_tensor_with_itself_is_one():
  x = np.asarray(jax.random.normal(jax.random.key(0), (50, 20)))
  assert float(correlation.pearson(x, x)) == pytest.approx(1.0, abs=1e-6)
  assert float(correlation.pearson(x, -3 * x + 1)) == pytest.approx(-1.0, abs=1e-6)
  assert float(correlation.top_overlap(x, x, 0.2)) == 1.0
  params = _tree(5)
  mask = jax.tree.map(lambda p: jax.random.bernoulli(jax.random.key(1), 0.5, p.shape), params)
  prunable = {"l0": True, "l1": False, "l2": True}
  result = jax.jit(functools.partial(correlation.weight_correlation, prunable=prunable,
                                     top_p=0.3))(params, params, mask)
  assert set(result) == {"l0", "l2", "mean"}
  for values in result.values():
    for metric in ("pearson", "magnitude_pearson", "top_overlap"):
      assert float(values[metric]) == pytest.approx(1.0, abs=1e-6)


def test_pearson_and_top_overlap_use_only_the_surviving_entries():
  x = np.array([1.0, 2.0, 3.0, 100.0])
  y = np.array([2.0, 4.0, 6.0, -100.0])
  where = np.array([True, True, True, False])
  assert float(correlation.pearson(x, y)) < 0.0
  assert float(correlation.pearson(x, y, where)) == pytest.approx(1.0, abs=1e-6)
  assert np.isnan(float(correlation.pearson(np.ones(3), x[:3])))
  # Top-50% of 4: {0, 1} by |x| vs {1, 2} by |y| -> overlap 1/2.
  assert float(correlation.top_overlap([4.0, -3.0, 2.0, 1.0], [1.0, 5.0, -6.0, 0.0], 0.5)) == 0.5
  # Only survivors compete: ceil(0.5 * 3) = 2 of the first three.
  top = correlation.top_fraction(np.array([5.0, 1.0, 3.0, 9.0]), 0.5, where)
  assert top.tolist() == [True, False, True, False]
  # Independent tensors: overlap near the chance level p.
  a, b = jax.random.normal(jax.random.key(0), (2, 20000))
  assert float(correlation.top_overlap(a, b, 0.2)) == pytest.approx(0.2, abs=0.02)


def test_pairwise_mask_overlap():
  full = {"w": np.ones(10, bool), "b": np.ones(2, bool)}
  half = {"w": np.arange(10) < 5, "b": np.ones(2, bool)}
  other = {"w": np.arange(10) >= 5, "b": np.ones(2, bool)}
  out = correlation.pairwise_mask_overlap([full, half, other], {"w": True, "b": False})
  np.testing.assert_allclose(out["jaccard"], [[1, 0.5, 0.5], [0.5, 1, 0], [0.5, 0, 1]])
  np.testing.assert_allclose(out["hamming"], [[0, 0.5, 0.5], [0.5, 0, 1], [0.5, 1, 0]])


# ----- config ----------------------------------------------------------------------------------


def _lmc_config():
  config = config_lib.base_config("lmc")
  config.data.name = "digits"
  config.train.batch_size = 32
  config.train.num_steps = 16
  config.train.eval_batch_size = 120
  config.train.log_every_steps = 0
  config.train.checkpoint_every_steps = 0
  config.optimizer.learning_rate = 0.1
  config.schedule.name = "constant"
  config.imp.num_rounds = 1
  config.imp.selector = "conv_dense_no_head"
  config.lmc.rewind_steps = (0, 4)
  config.lmc.num_alphas = 4
  config.lmc.splits = ("test",)
  return config


@pytest.mark.parametrize("field, value", [
    ("rewind_steps", (0, 16)),
    ("rewind_steps", ()),
    ("networks", ("dense", "sparse")),
    ("rounds", (2,)),
    ("pair_seeds", (0,)),
    ("num_alphas", 1),
    ("splits", ("val",)),
    ("batch_norm", "average"),
    ("mask_rewind_step", -2),
    ("stable_threshold", 0.0),
    ("top_p", 1.5),
])
def test_bad_lmc_fields_are_rejected_by_name(field, value):
  config = _lmc_config()
  config.lmc[field] = value
  with pytest.raises(config_lib.ConfigError, match=f"config.lmc.{field}="):
    config_lib.validate(config, device_count=1)


def test_bad_correlation_fields_are_rejected_by_name():
  config = config_lib.base_config("correlation")
  config.data.name = "digits"
  config.correlation.learning_rates = (0.1, -0.1)
  with pytest.raises(config_lib.ConfigError, match="config.correlation.learning_rates="):
    config_lib.validate(config, device_count=1)
  config.correlation.learning_rates = (0.1,)
  config.correlation.top_p = 0.0
  with pytest.raises(config_lib.ConfigError, match="config.correlation.top_p="):
    config_lib.validate(config, device_count=1)


# ----- experiments end to end ------------------------------------------------------------------


def test_lmc_experiment_end_to_end_and_resume(tmp_path):
  config = _lmc_config()
  config.lmc.mask_rewind_step = 0  # one IMP run (rewound to 0) gives the masks for every k
  workdir = str(tmp_path / "lmc")
  rows = experiments.run(config, workdir)
  assert [(r["k"], r["network"]) for r in rows] == [
      (0, "dense"), (0, "imp"), (0, "random"), (4, "dense"), (4, "imp"), (4, "random")]
  with open(os.path.join(workdir, "results.json"), encoding="utf-8") as f:
    assert json.load(f) == rows
  for row in rows:
    assert len(row["curves"]["test_error"]) == 1 and len(row["curves"]["test_error"][0]) == 4
    errors = row["curves"]["test_error"][0]
    assert row["instability"] == pytest.approx(max(errors) - 0.5 * (errors[0] + errors[-1]))
    assert row["stable"] == (row["instability"] < 0.02)
    assert row["matching"] == (row["test_accuracy"] >= row["dense_test_accuracy"] - 0.002)
    # alpha = 0 / 1 are the two copies: their errors are the copies' own test errors.
    assert errors[0] == pytest.approx(1 - row["copy_test_accuracy"][0], abs=1e-9)
    assert errors[-1] == pytest.approx(1 - row["copy_test_accuracy"][1], abs=1e-9)
    assert row["l2"] > 0 and 0 < row["angle"] < 90
    assert (row["pruning_l2"] is not None) == (row["network"] != "dense")
    assert row["report_metric"] == "final"  # the copies' protocol accuracies, averaged
    assert row["reported_test_accuracy"] == pytest.approx(row["test_accuracy"])
  imp_row, random_row = rows[1], rows[2]
  assert imp_row["density"] == pytest.approx(random_row["density"])
  assert imp_row["density"] == pytest.approx(0.8, abs=1e-3)
  for name in ("instability_vs_rewind", "interpolation", "correlation", "mask_overlap",
               "stability_distance"):
    assert os.path.getsize(os.path.join(workdir, "plots", f"{name}.png")) > 10_000
  with open(os.path.join(workdir, "lmc_summary.json"), encoding="utf-8") as f:
    summary = json.load(f)
  assert set(summary["onsets"]) == {"dense", "imp_r01", "random_r01"}
  assert summary["mask_overlap"]["names"] == ["k=0 r1", "random r1"]
  assert os.listdir(os.path.join(workdir, "imp")) == ["k_000000"]
  # At k = 0 the IMP subnetwork's first copy is IMP's own round run (not trained twice); at
  # k = 4 (mask from the step-0 IMP run) it is trained from theta_4.
  assert not os.path.exists(os.path.join(workdir, "lmc", "k_000000", "imp_r01", "order_0"))
  assert os.path.isdir(os.path.join(workdir, "imp", "k_000000", "round_01", "rewind", "train"))
  assert os.path.isdir(os.path.join(workdir, "lmc", "k_000004", "imp_r01", "order_0"))
  # Re-running the finished experiment loads everything and gives the same rows.
  assert experiments.run(config, workdir) == rows


def test_correlation_experiment_end_to_end(tmp_path):
  config = config_lib.base_config("correlation")
  config.data.name = "digits"
  config.train.batch_size = 32
  config.train.num_steps = 16
  config.train.eval_batch_size = 120
  config.train.log_every_steps = 0
  config.train.checkpoint_every_steps = 0
  config.schedule.name = "constant"
  config.imp.num_rounds = 1
  config.imp.selector = "conv_dense_no_head"
  config.correlation.learning_rates = (0.001, 0.5)
  workdir = str(tmp_path / "corr")
  rows = experiments.run(config, workdir)
  assert [r["learning_rate"] for r in rows] == [0.001, 0.5]
  small, large = rows
  # 16 steps at lr 0.001 barely move the weights: theta_T is almost theta_0.
  assert small["dense_magnitude_pearson"] > 0.99 and small["dense_top_overlap"] > 0.9
  assert large["dense_magnitude_pearson"] < small["dense_magnitude_pearson"]
  assert small["init_mask_jaccard"] > 0.9
  assert small["winning_gap"] == pytest.approx(
      small["lth_test_accuracy"] - small["random_reinit_test_accuracy"])
  # Liu et al.'s comparison: pruning & fine-tuning (trained weights, the dense schedule restarted
  # for the ticket's budget) against the ticket, on the evaluation protocol's accuracy.
  with open(os.path.join(workdir, "lr_0.5", "results.json"), encoding="utf-8") as f:
    by = {(r["round"], r["recipe"]): r for r in json.load(f)}
  for row in rows:
    assert row["report_metric"] == "final"
    assert row["pf_gap"] == pytest.approx(row["pf_liu_test_accuracy"] - row["lth_test_accuracy"])
  assert large["pf_liu_test_accuracy"] == by[1, "pf_liu"]["reported_test_accuracy"]
  assert (by[1, "pf_liu"]["start_step"], by[1, "pf_liu"]["steps_trained"]) == (
      by[1, "lth"]["start_step"], by[1, "lth"]["steps_trained"]) == (0, 16)
  for name in ("correlation", "mask_overlap"):
    assert os.path.getsize(os.path.join(workdir, "plots", f"{name}.png")) > 10_000


def test_stability_distances_are_over_the_prunable_weights_by_default():
  """Stabilizing the LTH measures L2 / angle over the masked prunable weights: a difference in a
  BatchNorm scale or the head alone does not count (lmc.distance_weights='prunable')."""
  a = {"kernel": jnp.array([1.0, 2.0]), "bn_scale": jnp.array([1.0])}
  b = {"kernel": jnp.array([1.0, 2.0]), "bn_scale": jnp.array([3.0])}
  mask = jax.tree.map(lambda x: jnp.ones(x.shape, bool), a)
  prunable = {"kernel": True, "bn_scale": False}
  assert float(stability.pair_metrics(a, b, mask, leaves=prunable)["l2"]) == 0.0
  assert float(stability.pair_metrics(a, b, mask)["l2"]) == 2.0
  assert config_lib.base_config("lmc").lmc.distance_weights == "prunable"
