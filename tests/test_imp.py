"""The IMP driver: recipes start where the paper says, resets are bit-exact, resume is exact."""

import json
import os

import jax
import numpy as np
import pytest

from kdt import config_lib
from kdt import experiments
from kdt import pruning
from kdt import workdir as workdir_lib
from kdt.experiments import imp as imp_lib
from kdt.experiments import setup as setup_lib
from kdt.tickets import recipes as recipes_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALL_RECIPES = ("lth", "rewind", "lr_rewind", "finetune", "kd", "kd_rewind", "kd_lr_rewind",
               "random_reinit", "random_prune")


def _config(recipes=ALL_RECIPES, num_rounds=2):
  config = config_lib.load_file(os.path.join(REPO, "configs", "quickstart.py"))
  config.train.num_steps = 24
  config.train.batch_size = 32
  config.train.eval_every_steps = 0
  config.train.log_every_steps = 0
  config.train.checkpoint_every_steps = 8
  config.schedule.milestones = (16,)
  config.imp.recipes = recipes
  config.imp.num_rounds = num_rounds
  config.imp.rewind_step = 8
  config.imp.finetune_steps = 10
  return config


class SimulatedKill(Exception):
  """Stands in for the process dying at a training batch."""


class _Counting:
  """Wraps a dataset: counts training batches; raises SimulatedKill at call ``crash_at``."""

  def __init__(self, dataset, crash_at=None):
    self._dataset, self.crash_at, self.calls = dataset, crash_at, 0

  def __getattr__(self, name):
    return getattr(self._dataset, name)

  def train_batch(self, *args, **kwargs):
    self.calls += 1
    if self.crash_at is not None and self.calls == self.crash_at:
      raise SimulatedKill(f"simulated kill at training batch {self.calls}")
    return self._dataset.train_batch(*args, **kwargs)


@pytest.fixture(scope="module")
def digits():
  return setup_lib.load_data(_config())


def _run(config, workdir, dataset, monkeypatch, crash_at=None):
  del monkeypatch
  counting = _Counting(dataset, crash_at)
  workdir_lib.prepare_workdir(config, workdir)
  setup = experiments.build_setup(config, workdir, dataset=counting)
  driver = imp_lib.IMPRounds(setup, config.imp, workdir)
  rows = driver.run()
  return driver, rows, counting


def _comparable(rows):
  return [{k: v for k, v in r.items() if k != "wall_time"} for r in rows]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, digits):
  monkeypatch = pytest.MonkeyPatch()
  workdir = str(tmp_path_factory.mktemp("reference"))
  driver, rows, counting = _run(_config(), workdir, digits, monkeypatch)
  monkeypatch.undo()
  return workdir, driver, rows, counting.calls


def test_results_rows_and_files(reference):
  workdir, driver, rows, _ = reference
  assert [(r["round"], r["recipe"]) for r in rows][:3] == [(0, "dense"), (1, "lth"), (1, "rewind")]
  assert len(rows) == 1 + 2 * len(ALL_RECIPES)
  with open(os.path.join(workdir, "results.json")) as f:
    assert json.load(f) == rows
  assert os.path.exists(os.path.join(workdir, "results.csv"))
  for plot in ("accuracy_vs_weights.png", "layer_density.png"):
    assert os.path.getsize(os.path.join(workdir, "plots", plot)) > 10_000
  # exact counts: round r keeps the open_lth ceil-rule count of prunable weights
  counts = pruning.iterative_counts(driver.num_prunable, 0.2, 2)
  for r in rows[1:]:
    assert r["weights_kept"] == counts[r["round"] - 1], r


def test_recipes_start_and_end_where_the_paper_says(reference):
  _, _, rows, _ = reference
  by = {(r["round"], r["recipe"]): r for r in rows}
  for recipe in ("lth", "kd", "random_reinit"):
    assert (by[1, recipe]["start_step"], by[1, recipe]["end_step"]) == (0, 24)
  for recipe in ("rewind", "lr_rewind", "kd_rewind", "kd_lr_rewind"):
    assert (by[1, recipe]["start_step"], by[1, recipe]["end_step"]) == (8, 24)
    assert by[1, recipe]["steps_trained"] == 16
  assert (by[1, "finetune"]["start_step"], by[1, "finetune"]["end_step"]) == (0, 10)
  # random_prune controls lth: same start as lth
  assert by[1, "random_prune"]["start_step"] == 0


def test_run_specs_per_recipe(reference):
  """Weights, schedule and loss of each recipe's run (what a wrong table entry would break)."""
  workdir, driver, _, _ = reference
  theta_0, theta_k = driver._restore_dense(0), driver._restore_dense(8)
  dense = driver.trainer.train(driver.dense)
  dense_model = recipes_lib.Weights(dense.state.params, dense.state.batch_stats)
  previous = {r.name: (dense_model, driver.dense.mask) for r in driver.recipes}
  mask = driver._prune(dense.state.params, dense.state.batch_stats, driver.dense.mask,
                       driver._round_key(1), None, density=None)
  final_lr = float(driver.setup.schedule.make()(23))
  for recipe in driver.recipes:
    run = driver._retraining_run(1, recipe, mask, theta_0, theta_k, previous, dense_model, {})
    state = run.init_state()
    assert (run.teacher is not None) == recipe.kd, recipe.name
    assert (run.loss.kd_stop_step == -1) or recipe.kd
    if recipe.name == "finetune":
      assert run.schedule.name == "constant" and run.schedule.learning_rate == pytest.approx(final_lr)
    else:
      assert run.schedule == driver.setup.schedule
    source = {"lth": theta_0, "kd": theta_0, "random_prune": theta_0, "rewind": theta_k,
              "kd_rewind": theta_k, "lr_rewind": dense_model, "kd_lr_rewind": dense_model,
              "finetune": dense_model}.get(recipe.name)
    run_mask = mask if recipe.name != "random_prune" else run.mask
    for p, m, s in zip(jax.tree.leaves(state.params), jax.tree.leaves(run_mask),
                       jax.tree.leaves(source.params if source else state.params)):
      p, m, s = np.asarray(p), np.asarray(m), np.asarray(s)
      assert np.all(p[~m] == 0.0)
      if source is not None:
        # bit-exact: same bytes as the stored rewind point / trained weights
        assert p[m].tobytes() == s[m].tobytes(), recipe.name
    if recipe.name == "random_reinit":
      kernel = lambda tree: np.asarray(tree["stem"]["kernel"])
      assert not np.array_equal(kernel(state.params), kernel(theta_0.params) * kernel(mask))
    # optimizer state is fresh (zero momentum)
    assert all(float(np.abs(np.asarray(x)).sum()) == 0.0 for x in jax.tree.leaves(state.opt_state))


def test_random_prune_keeps_per_layer_counts_and_lineages_diverge(reference):
  workdir, driver, _, _ = reference
  like = driver.dense.mask
  load = lambda r, name: driver.masks.load_or_compute(imp_lib.round_dir(workdir, r, name), like, None)
  for r in (1, 2):
    control, rand = load(r, "lth"), load(r, "random_prune")
    a = pruning.sparsity_summary(control, driver.prunable)
    b = pruning.sparsity_summary(rand, driver.prunable)
    assert {k: v["kept"] for k, v in a.items()} == {k: v["kept"] for k, v in b.items()}
    assert pruning.mask_overlap(control, rand, driver.prunable)["hamming"] > 0
  # round 1: every own-lineage recipe prunes the same dense weights -> identical masks
  m1 = [load(1, name) for name in ("lth", "kd", "rewind", "finetune")]
  for m in m1[1:]:
    assert float(pruning.mask_overlap(m1[0], m, driver.prunable)["hamming"]) == 0.0
  # round 2: each recipe prunes its own trained weights -> lineages differ
  assert float(pruning.mask_overlap(load(2, "lth"), load(2, "finetune"),
                                    driver.prunable)["hamming"]) > 0.0


def test_finished_run_is_not_recomputed(reference, digits, monkeypatch):
  workdir, _, rows, _ = reference
  _, again, counting = _run(_config(), workdir, digits, monkeypatch)
  assert counting.calls == 0
  assert _comparable(again) == _comparable(rows)


SMALL = ("lth", "kd_rewind", "random_prune")


@pytest.fixture(scope="module")
def small_reference(tmp_path_factory, digits):
  monkeypatch = pytest.MonkeyPatch()
  workdir = str(tmp_path_factory.mktemp("small_reference"))
  _, rows, counting = _run(_config(SMALL), workdir, digits, monkeypatch)
  monkeypatch.undo()
  return rows, counting.calls


@pytest.mark.parametrize("where", ["dense", "round1_mid", "between_rounds", "round2_mid"])
def test_interrupted_run_ends_with_identical_results(where, small_reference, digits, monkeypatch,
                                                     tmp_path):
  rows, total_calls = small_reference
  dense_calls = 24
  per_round = (total_calls - dense_calls) // 2
  crash_at = {"dense": 13, "round1_mid": dense_calls + per_round // 2 + 3,
              "between_rounds": dense_calls + per_round + 1,
              "round2_mid": dense_calls + per_round + per_round // 2}[where]
  workdir = str(tmp_path / where)
  with pytest.raises(SimulatedKill):
    _run(_config(SMALL), workdir, digits, monkeypatch, crash_at=crash_at)
  _, resumed, counting = _run(_config(SMALL), workdir, digits, monkeypatch)
  assert _comparable(resumed) == _comparable(rows)
  # checkpoints every 8 steps: the rerun trains what was lost, not everything again
  assert counting.calls < total_calls - crash_at + 8 * 2


def test_cached_teacher_logits_match_on_the_fly(digits, monkeypatch, tmp_path):
  """Digits are not augmented, so cached logits must give the same KD run as the jitted teacher."""
  results = []
  for cache in (False, True):
    config = _config(("kd",), num_rounds=1)
    config.imp.cache_teacher_logits = cache
    _, rows, _ = _run(config, str(tmp_path / str(cache)), digits, monkeypatch)
    results.append(rows[-1])
  assert results[0]["test_accuracy"] == pytest.approx(results[1]["test_accuracy"], abs=1 / 360 + 1e-9)
  assert results[0]["weights_kept"] == results[1]["weights_kept"]
