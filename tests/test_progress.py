"""The run's header and its experiment-wide progress: the plan's count, run i of N, the ETA."""

import logging
import math
import os
import re

import pytest

from kdt import config_lib
from kdt import experiments
from kdt import progress
from kdt.train import loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(name):
  return config_lib.load_file(os.path.join(REPO, "configs", name))


@pytest.mark.parametrize("name, runs, text", [
    ("quickstart.py", 33, "1 dense + 8 rounds × 4 recipes (lth, rewind, kd, random_reinit) = 33 runs"),
    ("quickstart_prune_at_init.py", None, "scores"),
    ("quickstart_dst.py", None, "methods"),
    ("quickstart_correlation.py", None, "learning rates"),
    ("quickstart_lmc.py", None, "copies"),
])
def test_plan_counts_every_experiment(name, runs, text):
  config = _config(name)
  plan = progress.plan(config)
  assert text in plan.text
  assert plan.text.endswith(f"= {plan.runs} runs") and plan.runs > 1
  if runs is not None:
    assert plan.runs == runs
  config.replicates = 3
  tripled = progress.plan(config)
  assert tripled.runs == 3 * plan.runs and "× 3 replicates" in tripled.text


def test_plan_of_each_experiment_adds_up():
  config = _config("quickstart.py")
  config.imp.num_rounds, config.imp.recipes = 2, ("lth", "kd")
  assert progress.plan(config).runs == 1 + 2 * 2
  dst = config_lib.base_config("dst")
  dst.imp.num_rounds, dst.dst.methods, dst.dst.compare_imp = 3, ("rigl", "set"), False
  assert progress.plan(dst).runs == 2 * 3                      # no dense run without compare_imp
  dst.dst.compare_imp, dst.imp.recipes = True, ("lth",)
  assert progress.plan(dst).runs == 1 + 3 + 2 * 3
  pai = config_lib.base_config("prune_at_init")
  pai.imp.num_rounds, pai.imp.recipes, pai.prune_at_init.scores = 2, ("lth",), ("snip", "grasp")
  pai.prune_at_init.compare_imp = True
  assert progress.plan(pai).runs == 1 + 2 + 2 * 2
  corr = config_lib.base_config("correlation")
  corr.imp.num_rounds, corr.correlation.learning_rates = 2, (0.1, 0.01, 0.001)
  assert progress.plan(corr).runs == 3 * (1 + 2 * 2)


def _progress(directory, step, end, steps_trained=0, finished=False, start=0):
  return loop.Progress("run", directory, step, start, end, steps_trained, 0.1, math.nan, math.nan,
                       finished=finished)


def test_tracker_counts_loaded_runs_as_done_and_extrapolates_the_measured_pace():
  now = [0.0]
  tracker = progress.ExperimentProgress(4, num_steps=100, clock=lambda: now[0])
  assert tracker(_progress("/w/dense", 100, 100, finished=True)) == "run 1 of 4 done"  # loaded
  assert tracker(_progress("/w/dense", 100, 100, finished=True)) is None  # seen again (LMC's k=0)
  now[0] = 10.0
  # 50 steps in 10 s; 50 left in this run, 2 runs of mean length 100 after it: 250 steps, 50 s.
  assert tracker(_progress("/w/round_01/lth", 50, 100, steps_trained=50)) == (
      "run 2 of 4; experiment ETA 0:00:50")
  now[0] = 20.0
  assert tracker(_progress("/w/round_01/lth", 100, 100, steps_trained=50)) == (
      "run 2 of 4; experiment ETA 0:00:40")
  assert tracker(_progress("/w/round_01/lth", 100, 100, finished=True)).startswith(
      "run 2 of 4 done")
  # DST: segments of one run count once, when the last one (ending at num_steps) finishes.
  assert tracker(_progress("/w/rigl/round_01/seg_0000000/train", 40, 40, finished=True)) is None
  line = tracker(_progress("/w/rigl/round_01/seg_0000040/train", 60, 100, steps_trained=20,
                           start=40))
  assert line.startswith("run 3 of 4;")
  assert tracker(_progress("/w/rigl/round_01/seg_0000040/train", 100, 100, finished=True,
                           start=40)).startswith("run 3 of 4 done")


class _Lines(logging.Handler):

  def __init__(self):
    super().__init__()
    self.lines = []

  def emit(self, record):
    self.lines += record.getMessage().splitlines()


@pytest.fixture
def kdt_log():
  handler = _Lines()
  logger = logging.getLogger("kdt")
  logger.addHandler(handler)
  yield handler.lines
  logger.removeHandler(handler)


def _tiny(config):
  config.train.num_steps = 12
  config.train.batch_size = 32
  config.train.eval_batch_size = 120
  config.train.log_every_steps = 4
  config.train.checkpoint_every_steps = 0
  config.schedule.milestones = (8,)
  return config


def _run_numbers(lines):
  return [tuple(map(int, m.groups())) for l in lines for m in [re.search(r"run (\d+) of (\d+)", l)]
          if m]


def test_header_and_run_i_of_n_in_the_log_of_a_tiny_imp_run_and_its_resume(tmp_path, kdt_log):
  config = _tiny(_config("quickstart.py"))
  config.imp.num_rounds, config.imp.rewind_step, config.imp.recipes = 2, 4, ("lth", "rewind")
  workdir = str(tmp_path / "imp")
  experiments.run(config, workdir, config_file="configs/quickstart.py")
  text = "\n".join(kdt_log)
  assert "  config:  configs/quickstart.py" in text and f"  workdir: {workdir}" in text
  assert re.search(r"  devices: \d+ × .* \(backend cpu", text)
  assert "  plan:    1 dense + 2 rounds × 2 recipes (lth, rewind) = 5 runs" in text
  numbers = _run_numbers(kdt_log)
  assert {n for _, n in numbers} == {5}
  assert sorted({i for i, _ in numbers}) == [1, 2, 3, 4, 5]
  assert any("[round_02/rewind] finished" in l and l.endswith("run 5 of 5 done") or
             "[round_02/rewind] finished" in l and "run 5 of 5 done;" in l for l in kdt_log)
  assert re.search(r"\[round_01/lth\] step 8/12 .*\|  run 2 of 5; experiment ETA \d+:\d\d:\d\d",
                   text)
  kdt_log.clear()
  experiments.run(config, workdir)  # the finished runs are loaded, and count as done
  done = [l for l in kdt_log if "already finished" in l]
  assert len(done) == 5 and done[-1].endswith("run 5 of 5 done")
  assert "  config:  (given in code)" in kdt_log


def test_lmc_plan_matches_the_runs_it_trains(tmp_path, kdt_log):
  config = config_lib.base_config("lmc")
  config.data.name = "digits"
  config = _tiny(config)
  config.schedule.name = "constant"
  config.imp.num_rounds = 1
  config.imp.selector = "conv_dense_no_head"
  config.lmc.rewind_steps = (0, 4)
  config.lmc.num_alphas = 2
  config.lmc.splits = ("test",)
  plan = progress.plan(config)
  assert plan.runs == 12   # dense, IMP rewound to 0 and to 4, 9 copies
  experiments.run(config, str(tmp_path / "lmc"))
  done = [l for l in kdt_log if re.search(r"run \d+ of \d+ done", l)]
  assert [_run_numbers([l])[0] for l in done] == [(i, 12) for i in range(1, 13)]
  # Each run trains once: the dense run is also k = 0's first copy, IMP's round run at k is k's
  # first IMP copy (both loaded finished the second time, and not counted again).
  assert sum("] finished:" in l for l in kdt_log) == 12
