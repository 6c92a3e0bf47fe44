"""Replicates (``config.replicates``) and the ticket axis inside the IMP experiment."""

import json
import logging
import os
import subprocess
import sys

import pytest

from kdt import config_lib
from kdt import experiments
from kdt.experiments import setup as setup_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(replicates=2, strategy="auto"):
  config = config_lib.load_file(os.path.join(REPO, "configs", "quickstart.py"))
  config.train.num_steps = 24
  config.train.batch_size = 32
  config.train.eval_every_steps = 12
  config.train.log_every_steps = 0
  config.train.checkpoint_every_steps = 8
  config.schedule.milestones = (16,)
  config.imp.recipes = ("lth", "rewind", "kd", "random_reinit")
  config.imp.num_rounds = 1
  config.imp.rewind_step = 8
  config.replicates = replicates
  config.tickets.strategy = strategy
  return config


class SimulatedKill(Exception):
  """Stands in for the process dying at a training batch."""


class _CrashAt:
  """Wraps a dataset: raises SimulatedKill at training-batch call ``crash_at``."""

  def __init__(self, dataset, crash_at=None):
    self._dataset, self.crash_at, self.calls = dataset, crash_at, 0

  def __getattr__(self, name):
    return getattr(self._dataset, name)

  def train_batch(self, *args, **kwargs):
    self.calls += 1
    if self.calls == self.crash_at:
      raise SimulatedKill(f"simulated kill at training batch {self.calls}")
    return self._dataset.train_batch(*args, **kwargs)


@pytest.fixture(scope="module")
def digits():
  return setup_lib.load_data(_config())


def _numbers(rows):
  return [{k: v for k, v in r.items() if k != "wall_time"} for r in rows]


@pytest.fixture(scope="module")
def sequential(tmp_path_factory, digits):
  workdir = str(tmp_path_factory.mktemp("sequential"))
  return workdir, experiments.run(_config(), workdir, dataset=digits)


def test_replicate_config_offsets_every_seed():
  config = _config()
  assert config_lib.replicate_config(config, 0).to_dict() == config.to_dict()
  second = config_lib.replicate_config(config, 2)
  for field in config_lib.SEED_FIELDS:
    assert second.seeds[field] == config.seeds[field] + 2 * config_lib.REPLICATE_SEED_STRIDE


@pytest.mark.parametrize("field, value", [("replicates", 0), ("tickets.strategy", "pmap"),
                                          ("tickets.max_per_program", -1)])
def test_bad_ticket_fields_name_the_field(field, value):
  config = _config()
  group, _, name = field.rpartition(".")
  (config[group] if group else config)[name] = value
  with pytest.raises(config_lib.ConfigError, match=f"config.{field}="):
    config_lib.validate(config, device_count=1)


def test_replicates_layout_rows_and_replicate_zero_is_the_single_run(sequential, digits,
                                                                     tmp_path):
  workdir, rows = sequential
  assert sorted(r for r in os.listdir(workdir) if r.startswith("replicate_")) == \
      ["replicate_00", "replicate_01"]
  with open(os.path.join(workdir, "results.json"), encoding="utf-8") as f:
    stored = json.load(f)
  assert _numbers(stored) == _numbers(rows)
  assert [(r["replicate"], r["round"], r["recipe"]) for r in rows] == [
      (rep, rnd, rec) for rep in (0, 1)
      for rnd, rec in [(0, "dense"), (1, "lth"), (1, "rewind"), (1, "kd"), (1, "random_reinit")]]
  assert os.path.exists(os.path.join(workdir, "plots", "accuracy_vs_weights.png"))
  # The replicates differ (other seeds) ...
  assert rows[0]["eval_history"] != rows[5]["eval_history"]
  # ... and replicate 0 is exactly the single run of the config.
  single = experiments.run(_config(replicates=1), str(tmp_path / "single"), dataset=digits)
  assert _numbers(single) == [{k: v for k, v in r.items() if k != "replicate"}
                              for r in _numbers(rows[:5])]


def test_vmap_tickets_equal_sequential_and_resume_mid_batch(sequential, digits, tmp_path):
  """The runs of both replicates (dense, then the round's recipes) trained as one vmapped batch
  of tickets give the one-by-one results to float rounding; a kill mid-batch resumes to the
  same results as the uninterrupted batch."""
  _, want = sequential
  workdir = str(tmp_path / "vmap")
  together = experiments.run(_config(strategy="vmap"), workdir, dataset=digits)
  for got, ref in zip(together, want):
    assert (got["replicate"], got["round"], got["recipe"]) == \
        (ref["replicate"], ref["round"], ref["recipe"])
    for g, w in zip(got["eval_history"], ref["eval_history"]):
      assert g["test_loss"] == pytest.approx(w["test_loss"], abs=1e-4)
      assert abs(g["test_accuracy"] - w["test_accuracy"]) <= 1 / 360 + 1e-9  # one image at most

  killed = str(tmp_path / "killed")
  with pytest.raises(SimulatedKill):  # dense: 2 x 24 batches; killed inside the round's batch
    experiments.run(_config(strategy="vmap"), killed, dataset=_CrashAt(digits, 48 + 4 * 13))
  resumed = experiments.run(_config(strategy="vmap"), killed, dataset=digits)
  assert _numbers(resumed) == _numbers(together)


def test_summary_reads_a_replicated_workdir(sequential):
  workdir, _ = sequential
  out = subprocess.run([sys.executable, "-m", "kdt.summary", workdir], capture_output=True,
                       text=True, cwd=REPO, check=True).stdout
  assert "(N=2)" in out and "±" in out


def _lmc_config(replicates, strategy):
  config = config_lib.base_config("lmc")
  config.data.name = "digits"
  config.train.batch_size = 32
  config.train.num_steps = 16
  config.train.eval_batch_size = 120
  config.train.log_every_steps = 0
  config.train.checkpoint_every_steps = 0
  config.schedule.name = "constant"
  config.imp.num_rounds = 1
  config.lmc.rewind_steps = (4,)
  config.lmc.num_alphas = 3
  config.lmc.splits = ("test",)
  config.replicates = replicates
  config.tickets.strategy = strategy
  return config


def test_lmc_copies_at_each_k_and_replicates_train_as_one_batch(tmp_path, digits, caplog):
  """Every copy that starts at k (the dense pair, the IMP and random pairs) of every replicate
  trains as one vmap program, and gives what one-by-one training gives (float32 rounding)."""
  single = experiments.run(_lmc_config(1, "sequential"), str(tmp_path / "one"), dataset=digits)
  workdir = str(tmp_path / "two")
  batch_log = logging.getLogger("kdt.tickets.batch")  # "kdt" does not propagate to the root
  batch_log.addHandler(caplog.handler)
  try:
    with caplog.at_level(logging.INFO, logger="kdt.tickets.batch"):
      rows = experiments.run(_lmc_config(2, "vmap"), workdir, dataset=digits)
  finally:
    batch_log.removeHandler(caplog.handler)
  assert [(r["replicate"], r["network"]) for r in rows] == [
      (0, "dense"), (0, "imp"), (0, "random"), (1, "dense"), (1, "imp"), (1, "random")]
  # Per replicate: the dense pair (2), the IMP pair's second copy (its first is IMP's round run,
  # already trained) and the random pair (2) -> 5; both replicates -> 10 runs in one program.
  together = [r.getMessage() for r in caplog.records if "runs together" in r.getMessage()]
  assert any(m.startswith("[tickets] 10 runs together with strategy vmap") for m in together), \
      together
  for got, want in zip(rows[:3], single):
    assert got["network"] == want["network"]
    for a, b in zip(got["copy_test_accuracy"], want["copy_test_accuracy"]):
      assert abs(a - b) <= 1 / 360 + 1e-9
    assert got["l2"] == pytest.approx(want["l2"], rel=1e-3)
  assert rows[0]["l2"] != rows[3]["l2"]  # the second replicate has its own seeds
  for name in ("replicate_00", "replicate_01"):
    assert os.path.exists(os.path.join(workdir, name, "results.json"))
    assert os.path.exists(os.path.join(workdir, name, "lmc_summary.json"))
