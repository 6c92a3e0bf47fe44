"""Tickets leave kdt: load_ticket and the .npz export of an IMP workdir."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from kdt import config_lib
from kdt import experiments
from kdt import export

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("imp"))
  config = config_lib.base_config("imp")
  config.train.num_steps, config.train.batch_size = 12, 32
  config.train.eval_batch_size, config.train.checkpoint_every_steps = 120, 4
  config.train.log_every_steps, config.schedule.milestones = 0, (8,)
  config.imp.num_rounds, config.imp.rewind_step = 2, 4
  config.imp.recipes = ("lth", "rewind")
  config.imp.selector = "conv_dense_no_head"
  experiments.run(config, path)
  return path


def _leaves(tree, prefix=""):
  for key, value in tree.items():
    if isinstance(value, dict):
      yield from _leaves(value, f"{prefix}{key}/")
    else:
      yield f"{prefix}{key}", value


def test_load_ticket_gives_mask_start_points_trained_weights_and_config(workdir):
  ticket = export.load_ticket(workdir, 2, "rewind")
  masks, trained = dict(_leaves(ticket.mask)), dict(_leaves(ticket.trained))
  assert masks.keys() == trained.keys() == dict(_leaves(ticket.init)).keys()
  for name, mask in masks.items():
    assert mask.dtype == bool and mask.shape == trained[name].shape
    assert not np.any(trained[name][~mask]), name            # pruned weights are exactly 0
  kept = sum(int(m.sum()) for n, m in masks.items() if n.endswith("kernel") and "head" not in n)
  assert kept == ticket.result["weights_kept"]
  assert ticket.rewind is not None and ticket.config["imp"]["rewind_step"] == 4
  assert ticket.step == 12 and ticket.result["round"] == 2
  dense = export.load_ticket(workdir, 0, "dense")
  np.testing.assert_array_equal(dense.init["stem"]["kernel"], ticket.init["stem"]["kernel"])
  assert all(m.all() for _, m in _leaves(dense.mask))


def test_npz_export_round_trips_from_the_command_line(workdir, tmp_path):
  out = str(tmp_path / "t.npz")
  result = subprocess.run([sys.executable, "-m", "kdt.export", workdir, "--round", "1",
                           "--recipe", "lth", "--out", out], capture_output=True, text=True,
                          cwd=REPO, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  loaded = export.load_npz(out)
  ticket = export.load_ticket(workdir, 1, "lth")
  for part in ("mask", "init", "rewind", "trained"):
    for name, value in _leaves(getattr(ticket, part)):
      node = loaded[part]
      for key in name.split("/"):
        node = node[key]
      np.testing.assert_array_equal(node, value)
  assert loaded["config"] == json.load(open(os.path.join(workdir, "config.json")))
  assert loaded["result"]["recipe"] == "lth" and loaded["result"]["round"] == 1


def test_missing_round_is_one_line_listing_what_exists(workdir, tmp_path):
  result = subprocess.run([sys.executable, "-m", "kdt.export", workdir, "--round", "7",
                           "--recipe", "kd", "--out", str(tmp_path / "x.npz")],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
  assert result.returncode == 2
  lines = [l for l in result.stderr.splitlines() if l.startswith("kdt: error:")]
  assert len(lines) == 1 and "round 1: lth, rewind" in lines[0]
  assert not os.path.exists(tmp_path / "x.npz")
