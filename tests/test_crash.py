"""Crash safety: SIGKILL at many points, rerun until done, results identical to an uninterrupted run.

The kill points are injected with ``KDT_FAULT`` (see :mod:`kdt.faults`): each run of the chain is
killed at the next point, then the same command is run again; the last run finishes. The
randomized version (more points, random places) runs when ``KDT_CRASH_RANDOM=<n>`` is set.
"""

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OVERRIDES = ["--config.train.num_steps=16", "--config.train.batch_size=32",
             "--config.train.checkpoint_every_steps=4", "--config.train.eval_every_steps=8",
             "--config.train.log_every_steps=0", "--config.schedule.milestones=(12,)",
             "--config.imp.num_rounds=2", "--config.imp.rewind_step=4",
             "--config.imp.recipes=('lth','rewind','kd')"]

KILL_CHAIN = [
    "step:dense@7",                       # during dense training
    "checkpoint_save:dense@1+0.01",       # while a checkpoint is being written
    "step:dense@3",                       # dense again, after a resume
    "after_prune:round_01/lth@1",         # right after pruning
    "step:round_01/lth@5",                # mid-retraining of each recipe
    "step:round_01/rewind@4",
    "step:round_01/kd@6",
    "results_write@1",                    # while writing results.json
    "checkpoint_save:round_02@2+0.005",   # a checkpoint write in round 2
    "step:round_02/rewind@3",
    "after_prune:round_02/kd@1",
    "plots_write@1",                      # before / while writing the plots
]


def _command(workdir):
  return [sys.executable, "-m", "kdt.main", "--config", os.path.join(REPO, "configs/quickstart.py"),
          "--workdir", workdir, *OVERRIDES]


def _run(workdir, fault=None):
  env = dict(os.environ)
  env.pop("KDT_FAULT", None)
  if fault:
    env["KDT_FAULT"] = fault
  return subprocess.run(_command(workdir), capture_output=True, text=True, cwd=REPO, env=env,
                        timeout=600)


def _results(workdir):
  with open(os.path.join(workdir, "results.json")) as f:
    return [{k: v for k, v in row.items() if k != "wall_time"} for row in json.load(f)]


def _masks(workdir):
  out = {}
  for round_dir in sorted(d for d in os.listdir(workdir) if d.startswith("round_")):
    for recipe in sorted(os.listdir(os.path.join(workdir, round_dir))):
      path = os.path.join(workdir, round_dir, recipe, "mask")
      out[f"{round_dir}/{recipe}"] = jax.tree.map(
          np.asarray, ocp.StandardCheckpointer().restore(path))
  return out


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("uninterrupted"))
  done = _run(workdir)
  assert done.returncode == 0, done.stderr[-3000:]
  return workdir


def _assert_same(workdir, reference):
  assert _results(workdir) == _results(reference)
  masks, ref_masks = _masks(workdir), _masks(reference)
  assert masks.keys() == ref_masks.keys()
  for name in masks:
    for a, b in zip(jax.tree.leaves(masks[name]), jax.tree.leaves(ref_masks[name])):
      np.testing.assert_array_equal(a, b)
  for row in _results(workdir):   # no step trained twice into the results
    assert row["steps_trained"] == row["end_step"] - row["start_step"], row


def test_kill_chain_survives_every_point(uninterrupted, tmp_path):
  workdir = str(tmp_path / "killed")
  survived = 0
  for fault in KILL_CHAIN:
    result = _run(workdir, fault)
    assert result.returncode == -signal.SIGKILL, (fault, result.returncode, result.stderr[-3000:])
    survived += 1
  final = _run(workdir)
  assert final.returncode == 0, final.stderr[-3000:]
  assert survived >= 10
  _assert_same(workdir, uninterrupted)


@pytest.mark.skipif(not os.environ.get("KDT_CRASH_RANDOM"),
                    reason="long randomized kill test; set KDT_CRASH_RANDOM=<number of kills>")
def test_randomized_kills(uninterrupted, tmp_path):
  rng = random.Random(int(os.environ.get("KDT_CRASH_SEED", "0")))
  workdir = str(tmp_path / "random")
  points = ["step:dense", "step:round_01/lth", "step:round_01/rewind", "step:round_01/kd",
            "step:round_02/lth", "step:round_02/rewind", "step:round_02/kd", "checkpoint_save",
            "after_prune", "results_write", "plots_write"]
  for _ in range(int(os.environ["KDT_CRASH_RANDOM"])):
    point = rng.choice(points)
    delay = f"+{rng.uniform(0, 0.05):.3f}" if point == "checkpoint_save" else ""
    _run(workdir, f"{point}@{rng.randint(1, 6)}{delay}")
  final = _run(workdir)
  assert final.returncode == 0, final.stderr[-3000:]
  _assert_same(workdir, uninterrupted)


def _latest_state_files(directory):
  step = max(int(d) for d in os.listdir(directory) if d.isdigit())
  state_dir = os.path.join(directory, str(step), "state")
  files = [os.path.join(root, f) for root, _, names in os.walk(state_dir) for f in names]
  return step, sorted(files, key=os.path.getsize)


@pytest.mark.parametrize("damage", ["truncate", "remove"])
def test_corrupted_latest_checkpoint_falls_back(damage, tmp_path):
  """A damaged newest checkpoint is detected, moved aside with a warning, and training redone."""
  workdir = str(tmp_path / damage)
  killed = _run(workdir, "step:dense@14")
  assert killed.returncode == -signal.SIGKILL
  dense = os.path.join(workdir, "dense")
  step, files = _latest_state_files(dense)
  assert step == 12
  biggest = files[-1]
  if damage == "truncate":
    with open(biggest, "r+b") as f:
      f.truncate(os.path.getsize(biggest) // 2)
  else:
    os.remove(biggest)
  rerun = _run(workdir, "step:round_01/lth@1")
  assert "WARNING" in rerun.stdout + rerun.stderr and "step 12" in rerun.stdout + rerun.stderr
  assert any(d.startswith("12.corrupt") for d in os.listdir(dense))
  assert "resuming dense from step 8" in rerun.stdout


def test_no_good_checkpoint_stops_without_deleting(tmp_path):
  workdir = str(tmp_path / "allbad")
  killed = _run(workdir, "step:dense@6")
  assert killed.returncode == -signal.SIGKILL
  dense = os.path.join(workdir, "dense")
  for d in os.listdir(dense):
    if d.isdigit():
      for root, _, names in os.walk(os.path.join(dense, d, "state")):
        for name in names:
          os.truncate(os.path.join(root, name), 0)
  before = sorted(os.path.relpath(os.path.join(r, f), workdir)
                  for r, _, fs in os.walk(workdir) for f in fs)
  rerun = _run(workdir)
  assert rerun.returncode == 2
  assert "no good checkpoint" in rerun.stderr and "Nothing was deleted" in rerun.stderr
  after = sorted(os.path.relpath(os.path.join(r, f), workdir) for r, _, fs in os.walk(workdir)
                 for f in fs)
  assert after == before


def test_sigterm_saves_and_resumes(uninterrupted, tmp_path):
  workdir = str(tmp_path / "term")
  env = dict(os.environ)
  proc = subprocess.Popen(_command(workdir), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, cwd=REPO, env=env)
  # wait for the first retraining run to start, then preempt
  for line in proc.stdout:
    if "round_01/lth" in line:
      proc.send_signal(signal.SIGTERM)
      break
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 143, err[-2000:]
  assert "stopped by SIGTERM" in err
  final = _run(workdir)
  assert final.returncode == 0, final.stderr[-3000:]
  _assert_same(workdir, uninterrupted)


def _orbax_tmp_folders(workdir):
  return [root for root, dirs, _ in os.walk(workdir) for d in dirs if "orbax-checkpoint-tmp" in d]


def test_ctrl_c_stops_at_a_step_and_resumes(uninterrupted, tmp_path):
  """Ctrl-C (SIGINT from outside) is a preemption: checkpoint, one line, exit 130, exact resume."""
  workdir = str(tmp_path / "ctrl_c")
  proc = subprocess.Popen(_command(workdir), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, cwd=REPO, env=dict(os.environ))
  for line in proc.stdout:
    if "round_01/rewind" in line and "eval at step" in line:
      proc.send_signal(signal.SIGINT)
      break
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 130, err[-3000:]
  stop = re.search(r"\[(\S+)\] interrupted at step (\d+) — rerun the same command to continue", err)
  assert stop, err[-3000:]
  assert "Traceback" not in out + err, err[-3000:]
  assert not _orbax_tmp_folders(workdir)
  run, step = stop.groups()
  saved = os.path.isdir(os.path.join(workdir, "dense" if run == "dense" else f"{run}/train", step))
  final = _run(workdir)
  assert final.returncode == 0, final.stderr[-3000:]
  if saved:
    assert f"resuming {run} from step {step}" in final.stdout
  _assert_same(workdir, uninterrupted)


def test_ctrl_c_inside_a_checkpoint_save(uninterrupted, tmp_path):
  """SIGINT landing inside an Orbax write: the write completes, no traceback, no tmp folder."""
  workdir = str(tmp_path / "ctrl_c_save")
  stopped = _run(workdir, "checkpoint_save:dense@2+0.005=INT")
  assert stopped.returncode == 130, stopped.stderr[-3000:]
  assert "interrupted at step" in stopped.stderr
  assert "Traceback" not in stopped.stdout + stopped.stderr, stopped.stderr[-3000:]
  assert not _orbax_tmp_folders(workdir)
  final = _run(workdir)
  assert final.returncode == 0, final.stderr[-3000:]
  assert "resuming dense from step" in final.stdout
  _assert_same(workdir, uninterrupted)


def _state_arrays(step_dir):
  return jax.tree.map(np.asarray, ocp.StandardCheckpointer().restore(os.path.join(step_dir, "state")))


def test_damaged_rewind_point_is_replayed_exactly(uninterrupted, tmp_path):
  """A corrupted theta_k is rebuilt from theta_0 with a warning; the run's results do not change."""
  workdir = str(tmp_path / "rewind")
  shutil.copytree(uninterrupted, workdir)
  rewind = os.path.join(workdir, "dense", "4")  # --config.imp.rewind_step=4
  state_files = sorted((os.path.join(r, f) for r, _, fs in os.walk(os.path.join(rewind, "state"))
                        for f in fs), key=os.path.getsize)
  with open(state_files[-1], "r+b") as f:
    f.truncate(os.path.getsize(state_files[-1]) // 2)
  rerun = _run(workdir)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  output = rerun.stdout + rerun.stderr
  assert "WARNING" in output and "replaying dense up to step 4" in output, output[-3000:]
  assert "matches the fingerprint saved with the damaged copy" in output
  assert any(d.startswith("4.corrupt") for d in os.listdir(os.path.join(workdir, "dense")))
  want = _state_arrays(os.path.join(uninterrupted, "dense", "4"))
  got = _state_arrays(rewind)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_array_equal(a, b)  # bit for bit
  _assert_same(workdir, uninterrupted)
