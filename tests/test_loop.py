"""The training loop: resume after a crash or SIGTERM gives the same weights; finished runs are kept."""

import os
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest

from kdt import config_lib
from kdt.experiments import setup as setup_lib
from kdt.train import loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(num_steps=30):
  sys.path.insert(0, os.path.join(REPO, "configs"))
  import quickstart  # pylint: disable=import-outside-toplevel
  config = quickstart.get_config()
  config.train.num_steps = num_steps
  config.train.batch_size = 32
  config.train.checkpoint_every_steps = 10
  config.train.eval_every_steps = 15
  config.train.log_every_steps = 5
  config.schedule.milestones = (20,)
  return config


def _train(config, workdir, dataset=None):
  setup = setup_lib.Setup.build(config, workdir, dataset=dataset)
  return setup.trainer, setup.trainer.train(setup.dense)


class _CrashAt:
  """Wraps a dataset; raises (like a killed process) when asked for the batch of ``step``."""

  def __init__(self, dataset, step, action):
    self._dataset, self._step, self._action = dataset, step, action

  def __getattr__(self, name):
    return getattr(self._dataset, name)

  def train_batch(self, step, *args, **kwargs):
    if step == self._step:
      self._action()
    return self._dataset.train_batch(step, *args, **kwargs)


class SimulatedKill(Exception):
  """Stands in for the process dying (nothing after the raise point runs)."""


def _crash():
  raise SimulatedKill("simulated kill")


def _assert_same_params(a, b):
  chex.assert_trees_all_equal(jax.device_get(a), jax.device_get(b))  # structure and every bit


def test_resume_after_crash_gives_identical_weights(tmp_path):
  config = _config()
  _, reference = _train(config, str(tmp_path / "ref"))

  workdir = str(tmp_path / "crashed")
  dataset = setup_lib.load_data(config)
  with pytest.raises(SimulatedKill):
    _train(config, workdir, _CrashAt(dataset, 25, _crash))
  assert sorted(os.listdir(os.path.join(workdir, "dense"))) == ["0", "10", "20"]
  trainer, resumed = _train(config, workdir, dataset)
  _assert_same_params(reference.state.params, resumed.state.params)
  assert resumed.meta["history"] == reference.meta["history"]
  # 20 steps before the crash were checkpointed; the resumed run trained only the last 10.
  assert resumed.meta["steps_trained"] == 30
  assert all(count == 1 for count in trainer.trace_counts.values())


def test_sigterm_checkpoints_the_current_step(tmp_path):
  config = _config()
  _, reference = _train(config, str(tmp_path / "ref"))
  workdir = str(tmp_path / "preempted")
  dataset = setup_lib.load_data(config)
  try:
    with pytest.raises(loop.PreemptedError, match="step 13"):
      _train(config, workdir, _CrashAt(dataset, 12, loop._STOP_REQUESTED.set))
  finally:
    loop._STOP_REQUESTED.clear()
  assert "13" in os.listdir(os.path.join(workdir, "dense"))
  _, resumed = _train(config, workdir, dataset)
  _assert_same_params(reference.state.params, resumed.state.params)


def test_non_finite_loss_stops_naming_the_step(tmp_path):
  config = _config()
  config.optimizer.learning_rate = 1e6
  config.optimizer.momentum = 0.0
  with pytest.raises(loop.NonFiniteLossError, match=r"non-finite loss .* at step \d+"):
    _train(config, str(tmp_path / "nan"))


def test_main_twice_does_not_retrain(tmp_path):
  workdir = str(tmp_path / "w")
  cmd = [sys.executable, "-m", "kdt.main", "--config", os.path.join(REPO, "configs/quickstart.py"),
         "--workdir", workdir, "--config.train.num_steps=40", "--config.schedule.milestones=(20,)",
         "--config.imp.num_rounds=1", "--config.imp.recipes=('lth',)"]
  first = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=True)
  assert "round_01/lth] finished" in first.stdout
  assert os.path.exists(os.path.join(workdir, "results.json"))
  second = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=True)
  assert "[dense] already finished at step 40" in second.stdout
  assert "[round_01/lth] already finished at step 40" in second.stdout
  assert "step 20/40" not in second.stdout
  bad = subprocess.run(cmd[:-1] + ["--config.schedule.milestones=(30,)"], capture_output=True,
                       text=True, cwd=REPO)
  assert bad.returncode == 2
  assert "schedule.milestones" in bad.stderr


def test_a_second_run_of_the_same_variant_compiles_nothing(tmp_path, monkeypatch):
  """Runs whose init_state closes over different arrays (IMP rounds) reuse every compiled program;
  a start that is not a pinned step is rebuilt on resume, so it is not checkpointed."""
  from kdt.tickets import recipes  # pylint: disable=import-outside-toplevel
  # The compile-once guarantee, checked where it matters: the step itself is traced once for
  # the dense run and both re-training runs (one variant), or chex raises.
  step_function = loop.Trainer.step_function
  monkeypatch.setattr(loop.Trainer, "step_function",
                      lambda self, key: chex.assert_max_traces(step_function(self, key), n=1))
  chex.clear_trace_counter()
  config = _config(num_steps=12)
  setup = setup_lib.Setup.build(config, str(tmp_path))
  trainer, dense = setup.trainer, setup.dense
  trained = trainer.train(dense).state
  direction = dense.optimizer.make()
  compiles = []
  jax.monitoring.register_event_duration_secs_listener(
      lambda event, seconds, **kwargs: compiles.append(event)
      if event == "/jax/core/compile/backend_compile_duration" else None)

  def rerun(name, scale):
    params = jax.tree.map(lambda p: p * scale, trained.params)
    init = lambda: recipes.reset_state(params, trained.batch_stats, dense.mask,
                                       direction.init(params), 2)
    run = loop.Run(name=name, directory=str(tmp_path / name), init_state=init, mask=dense.mask,
                   end_step=12, optimizer=dense.optimizer, schedule=dense.schedule)
    return trainer.train(run)

  rerun("first", 0.5)
  before = len(compiles)
  result = rerun("second", 0.25)
  assert len(compiles) == before, "a second run of the same variant compiled again"
  assert result.meta["steps_trained"] == 10
  assert sorted(os.listdir(tmp_path / "second")) == ["10", "12"]  # no step-2 start checkpoint


def test_progress_is_labelled_and_excludes_evaluation_time(tmp_path, monkeypatch, caplog):
  """Training vs test accuracy are named; a slow evaluation does not lower the next img/s."""
  import time  # pylint: disable=import-outside-toplevel
  config = _config(num_steps=20)
  config.train.eval_every_steps = 10
  setup = setup_lib.Setup.build(config, str(tmp_path))
  reports = []
  trainer = setup.trainer
  trainer.progress = reports.append
  evaluate_all = trainer.evaluate_all

  def slow_evaluation(*args, **kwargs):
    time.sleep(3.0)  # 0.6 s a step if it leaked into the next 5-step window
    return evaluate_all(*args, **kwargs)

  monkeypatch.setattr(trainer, "evaluate_all", slow_evaluation)
  with caplog.at_level("INFO"):
    trainer.train(setup.dense)
  assert [(r.step, r.finished) for r in reports] == [(5, False), (10, False), (15, False),
                                                     (20, False), (20, True)]  # the end, reported
  after_eval = reports[2]  # steps 11..15, right after the evaluation at step 10
  assert after_eval.seconds_per_step < 0.3, reports
  assert [r.steps_trained for r in reports] == [5, 5, 5, 5, 0]
  assert all(r.run == "dense" and r.end_step == 20 and r.directory == setup.dense.directory
             for r in reports)
  assert all(0 <= r.train_accuracy <= 1 for r in reports[:-1])
  text = caplog.text
  assert "train loss" in text and "train acc" in text and "test acc" in text


def test_eval_every_epochs_and_at_start(tmp_path):
  """train.eval_every_epochs: one evaluation per epoch (44 steps of 32 on digits' 1,437 images),
  plus train.eval_at_start's evaluation of the starting weights; the whole history is kept."""
  config = _config(num_steps=90)
  config.train.eval_every_steps = 0
  config.train.eval_every_epochs = 1.0
  config.train.eval_at_start = True
  config_lib.validate(config, device_count=1)
  _, result = _train(config, str(tmp_path))
  assert [h["step"] for h in result.meta["history"]] == [0, 44, 88, 90]
  assert all(0.0 <= h["test_accuracy"] <= 1.0 for h in result.meta["history"])
  config.train.eval_every_steps = 15
  with pytest.raises(config_lib.ConfigError, match="train.eval_every_epochs"):
    config_lib.validate(config, device_count=1)


def test_kept_last_batch_reaches_the_train_step(tmp_path, monkeypatch):
  """data.last_batch="keep": 45 steps per epoch of 32 on digits' 1,437 images (44 full + 29), the
  per-epoch evaluation follows that epoch, and the train step gets the batch weights."""
  from kdt.train import steps  # pylint: disable=import-outside-toplevel
  seen = []
  real_step = steps.train_step
  monkeypatch.setattr(steps, "train_step",
                      lambda state, mask, batch, *a, **k: seen.append(sorted(batch)) or
                      real_step(state, mask, batch, *a, **k))
  config = _config(num_steps=46)
  config.data.last_batch = "keep"
  config.train.eval_every_steps = 0
  config.train.eval_every_epochs = 1.0
  config_lib.validate(config, device_count=1)
  trainer, result = _train(config, str(tmp_path))
  assert [h["step"] for h in result.meta["history"]] == [45, 46]
  assert seen and all(keys == ["image", "label", "weight"] for keys in seen)
  assert trainer.dataset.train_batch(44, 32, config.seeds.data_order)["weight"].sum() == 29
