"""Bad input never gets past the front door, and nothing on disk is lost."""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from kdt import config_lib
from kdt import experiments
from kdt import workdir as workdir_lib
from kdt.experiments import imp as imp_lib
from kdt.train import loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--config.train.num_steps=12", "--config.train.batch_size=32",
         "--config.train.checkpoint_every_steps=4", "--config.train.log_every_steps=0",
         "--config.schedule.milestones=(8,)", "--config.imp.num_rounds=1",
         "--config.imp.rewind_step=4", "--config.imp.recipes=('lth',)"]


def _main(workdir, *extra):
  cmd = [sys.executable, "-m", "kdt.main", "--config", os.path.join(REPO, "configs/quickstart.py"),
         "--workdir", workdir, *SMALL, *extra]
  return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)


def _snapshot(workdir):
  out = {}
  for root, _, files in os.walk(workdir):
    for name in files:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, workdir)] = f.read()
  return out


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("finished"))
  result = _main(workdir)
  assert result.returncode == 0, result.stderr[-2000:]
  return workdir


@pytest.mark.parametrize("override,field", [
    ("--config.imp.recipes=('lth','kd_rewnd')", "imp.recipes"),
    ("--config.imp.pruning_rate=1.2", "imp.pruning_rate"),
    ("--config.loss.kd_alpha=2.0", "loss.kd_alpha"),
    ("--config.train.batch_size=5000", "train.batch_size"),
])
def test_bad_config_fails_before_compute_and_leaves_workdir_untouched(finished, override, field):
  before = _snapshot(finished)
  result = _main(finished, override)
  assert result.returncode == 2
  assert f"config.{field}=" in result.stderr and "allowed" in result.stderr
  assert "Traceback" not in result.stderr
  assert _snapshot(finished) == before


def test_different_config_is_refused_listing_fields(finished):
  before = _snapshot(finished)
  result = _main(finished, "--config.optimizer.learning_rate=0.1", "--config.seeds.data_order=3")
  assert result.returncode == 2
  assert "optimizer.learning_rate: 0.05 -> 0.1" in result.stderr
  assert "seeds.data_order: 0 -> 3" in result.stderr
  assert _snapshot(finished) == before


def test_allow_config_change_is_explicit_and_recorded(tmp_path, finished):
  workdir = str(tmp_path / "grow")
  shutil.copytree(finished, workdir)
  result = _main(workdir, "--config.imp.num_rounds=2", "--allow_config_change")
  assert result.returncode == 0, result.stderr[-2000:]
  assert "imp.num_rounds: 1 -> 2" in result.stdout + result.stderr
  assert "[round_01/lth] already finished" in result.stdout   # round 1 kept, round 2 trained
  with open(os.path.join(workdir, "config_changes.json")) as f:
    assert json.load(f)[0]["changes"] == ["imp.num_rounds: 1 -> 2"]
  with open(os.path.join(workdir, "results.json")) as f:
    assert [r["round"] for r in json.load(f)] == [0, 1, 2]


def test_checkpoint_of_another_model_is_refused_by_name(tmp_path, finished):
  workdir = str(tmp_path / "othermodel")
  shutil.copytree(finished, workdir)
  before = _snapshot(workdir)
  result = _main(workdir, "--config.model.name=conv2", "--allow_config_change")
  assert result.returncode == 2
  assert "holds a different model or state" in result.stderr
  assert "Traceback" not in result.stderr
  after = _snapshot(workdir)
  after.pop("config.json"), after.pop("config_changes.json"), before.pop("config.json")
  assert after == before


def test_missing_dataset_is_a_clear_error(tmp_path):
  result = _main(str(tmp_path / "w"), "--config.data.name=mnist", f"--config.data.dir={tmp_path}")
  assert result.returncode == 2
  assert "train-images-idx3-ubyte.gz" in result.stderr
  assert "Traceback" not in result.stderr


def test_non_finite_loss_names_step_and_recipe_and_rerun_does_not_continue(tmp_path):
  workdir = str(tmp_path / "nan")
  args = ("--config.optimizer.learning_rate=1e5", "--config.optimizer.momentum=0.0")
  first = _main(workdir, *args)
  assert first.returncode == 2
  assert "[dense] non-finite loss" in first.stderr and "at step" in first.stderr
  step = first.stderr.split("at step ")[1].split(";")[0]
  second = _main(workdir, *args)       # resumes from the last good checkpoint, fails again
  assert second.returncode == 2
  assert f"at step {step};" in second.stderr
  assert not os.path.exists(os.path.join(workdir, "results.json"))


def test_invariant_violation_stops_the_run(tmp_path, monkeypatch):
  config = config_lib.base_config("imp")
  for arg in SMALL:
    key, value = arg[len("--config."):].split("=")
    node = config
    for part in key.split(".")[:-1]:
      node = node[part]
    node[key.split(".")[-1]] = eval(value)  # pylint: disable=eval-used
  config.train.eval_batch_size = 120
  config.imp.selector = "conv_dense_no_head"
  workdir_lib.prepare_workdir(config, str(tmp_path))
  setup = experiments.build_setup(config, str(tmp_path))
  driver = imp_lib.IMPRounds(setup, config.imp, str(tmp_path))
  # a pruning function that prunes one weight too few breaks the schedule's exact count
  real_prune = driver._prune

  def prune_one_too_few(*args, **kwargs):
    new = real_prune(*args, **kwargs)
    kernel = np.asarray(new["stem"]["kernel"]).copy()
    kernel.flat[np.flatnonzero(~kernel)[0]] = True
    return dict(new, stem=dict(new["stem"], kernel=jax.numpy.asarray(kernel)))

  driver._prune = prune_one_too_few
  with pytest.raises(experiments.InvariantError, match="schedule says"):
    driver.run()
  mask = jax.tree.map(np.zeros_like, driver.dense.mask)
  params = jax.tree.map(lambda m: np.ones(m.shape, np.float32), mask)
  with pytest.raises(experiments.InvariantError, match="pruned weight is non-zero"):
    driver._check_pruned_zero(1, "lth", params, mask)
