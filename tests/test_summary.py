"""``python -m kdt.summary``: tables from results.json alone, fast, without JAX."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from kdt import config_lib
from kdt import summary

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _workdir(path, accuracies, *, seed=0, lr=0.05):
  """A fake IMP workdir: ``accuracies[replicate][(round, recipe)]``."""
  os.makedirs(path, exist_ok=True)
  rows = []
  for replicate, by_key in enumerate(accuracies):
    for (round_index, recipe), acc in by_key.items():
      rows.append({"round": round_index, "recipe": recipe, "density": 0.8 ** round_index,
                   "test_accuracy": acc, "replicate": replicate})
  with open(os.path.join(path, "results.json"), "w") as f:
    json.dump(rows, f)
  config = config_lib.base_config("imp")
  config.seeds.init = seed
  config.optimizer.learning_rate = lr
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(config_lib.to_dict(config), f)
  return str(path)


A = [{(0, "dense"): 0.98, (1, "lth"): 0.97, (1, "rewind"): 0.96},
     {(0, "dense"): 0.96, (1, "lth"): 0.95, (1, "rewind"): 0.94}]
B = [{(0, "dense"): 0.98, (1, "lth"): 0.98, (1, "rewind"): 0.97},
     {(0, "dense"): 0.96, (1, "lth"): 0.97, (1, "rewind"): 0.95}]


def test_table_has_mean_std_and_n_over_replicates(tmp_path):
  text = summary.summarize([_workdir(tmp_path / "a", A)])
  line = next(l for l in text.splitlines() if l.strip().startswith("1 "))
  assert "80.00%" in line
  assert "96.00 ± 1.41 (N=2)" in line           # lth: 0.97, 0.95
  assert "95.00 ± 1.41 (N=2)" in line           # rewind
  header = next(l for l in text.splitlines() if l.strip().startswith("round"))
  assert header.split()[-3:] == ["dense", "lth", "rewind"]


def test_two_workdirs_give_config_diff_and_paired_differences(tmp_path):
  a = _workdir(tmp_path / "a", A)
  b = _workdir(tmp_path / "b", B, lr=0.1)
  text = summary.summarize([a, b])
  assert "optimizer.learning_rate: 0.05 -> 0.1" in text
  paired = text.split("paired differences")[1]
  line = next(l for l in paired.splitlines() if l.strip().startswith("1 "))
  assert "+1.50 ± 0.71 (N=2)" in line           # lth: +1, +2 points
  assert "+1.00 ± 0.00 (N=2)" in line           # rewind: +1, +1


def test_train_experiment_summary_is_one_dense_row(tmp_path):
  os.makedirs(tmp_path / "t")
  with open(tmp_path / "t" / "results.json", "w") as f:
    json.dump({"experiment": "train", "test_accuracy": 0.9, "steps": 10}, f)
  assert "90.00" in summary.summarize([str(tmp_path / "t")])


def test_cli_is_fast_imports_no_jax_and_fails_in_one_line(tmp_path):
  a = _workdir(tmp_path / "a", A)
  b = _workdir(tmp_path / "b", B)
  code = ("import sys; from kdt import summary; summary.main(sys.argv[1:]);"
          "assert 'jax' not in sys.modules, 'jax imported'")
  start = time.time()
  result = subprocess.run([sys.executable, "-c", code, a, b], capture_output=True, text=True,
                          cwd=REPO, timeout=60)
  elapsed = time.time() - start
  assert result.returncode == 0, result.stderr
  assert "paired differences" in result.stdout and "(identical)" in result.stdout
  assert elapsed < 2.0, elapsed
  missing = subprocess.run([sys.executable, "-m", "kdt.summary", str(tmp_path / "nope")],
                           capture_output=True, text=True, cwd=REPO, timeout=60)
  assert missing.returncode == 2
  assert missing.stderr.startswith("kdt: error: ") and len(missing.stderr.splitlines()) == 1


def _seed_dirs(tmp_path, seeds, lrs=None):
  dirs = []
  for i, seed in enumerate(seeds):
    dirs.append(_workdir(tmp_path / f"s{i}", A[:1], seed=seed,
                         lr=(lrs[i] if lrs else 0.05)))
  return dirs


def test_compare_refuses_identical_seeds(tmp_path, capsys):
  from kdt import compare
  dirs = _seed_dirs(tmp_path, [0, 0])
  with pytest.raises(SystemExit) as e:
    compare.main(["--workdirs", *dirs, "--out", str(tmp_path / "out")])
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert err.startswith("kdt: error: ") and len(err.splitlines()) == 1
  assert "same seeds" in err and "seeds.init=0" in err
  assert not os.path.exists(tmp_path / "out")


def test_compare_refuses_configs_that_differ_beyond_seeds(tmp_path, capsys):
  from kdt import compare
  dirs = _seed_dirs(tmp_path, [0, 1], lrs=[0.05, 0.1])
  with pytest.raises(SystemExit) as e:
    compare.main(["--workdirs", *dirs, "--out", str(tmp_path / "out")])
  assert e.value.code == 2
  assert "optimizer.learning_rate: 0.05 -> 0.1" in capsys.readouterr().err


def test_compare_accepts_distinct_seeds_of_one_config(tmp_path):
  from kdt import compare
  rows = compare.main(["--workdirs", *_seed_dirs(tmp_path, [0, 1]), "--out", str(tmp_path / "o")])
  assert {r["n"] for r in rows} == {2}


def test_compare_plot_caption_sits_below_the_x_axis_label_and_tick_labels():
  from kdt import compare
  summary = [{"recipe": "dense", "density": 1.0, "mean": 0.98, "std": 0.002, "n": 3}]
  summary += [{"recipe": r, "density": 0.8 ** i, "mean": 0.97, "std": 0.003, "n": 3}
              for r in ("lth", "random_reinit") for i in range(1, 9)]
  fig = compare.summary_figure(summary, "3 seeds")
  renderer = fig.canvas.get_renderer()
  fig.draw(renderer)
  ax = fig.axes[0]
  caption = ax.texts[-1].get_window_extent(renderer)
  assert caption.y1 < ax.xaxis.label.get_window_extent(renderer).y0
  assert all(caption.y1 < t.get_window_extent(renderer).y0 for t in ax.get_xticklabels())


def test_compare_reads_a_replicates_workdir_with_both_densities_and_gap_intervals(tmp_path, capsys):
  """A ``config.replicates = 3`` workdir is three seeds; the summary keeps the density over all
  weight matrices (open_lth's head stays whole), the plot gets its top axis, and the gap to the
  baseline has a 95 % Student-t interval."""
  from kdt import compare
  workdir = tmp_path / "r3"
  os.makedirs(workdir)
  with open(workdir / "config.json", "w") as f:
    json.dump({"experiment": "imp", "replicates": 3, "seeds": {"init": 0}}, f)
  rows = []
  for r, (lth, reinit) in enumerate([(0.90, 0.88), (0.91, 0.88), (0.92, 0.87)]):
    rows += [{"replicate": r, "recipe": "dense", "round": 0, "density": 1.0,
              "density_all_weights": 1.0, "test_accuracy": 0.9, "report_metric": "last_mean",
              "reported_test_accuracy": 0.9}]
    rows += [{"replicate": r, "recipe": recipe, "round": 1, "density": 0.8,
              "density_all_weights": 0.8038, "test_accuracy": acc, "report_metric": "last_mean",
              "reported_test_accuracy": acc} for recipe, acc in (("lth", lth), ("random_reinit", reinit))]
  with open(workdir / "results.json", "w") as f:
    json.dump(rows, f)
  summary = compare.main(["--workdirs", str(workdir), "--out", str(tmp_path / "o"),
                          "--baseline", "lth"])
  reinit = next(s for s in summary if s["recipe"] == "random_reinit")
  assert reinit["n"] == 3 and reinit["density_all_weights"] == pytest.approx(0.8038)
  assert reinit["metric"] == "mean test accuracy over the last evaluations"
  gaps = [-0.02, -0.03, -0.05]                               # per replicate, reinit - lth
  assert reinit["gap_mean"] == pytest.approx(sum(gaps) / 3)
  assert reinit["gap_ci95"] == pytest.approx(4.302653 * np.std(gaps, ddof=1) / 3 ** 0.5, rel=1e-5)
  assert "95% CI of gap" in capsys.readouterr().out
  fig = compare.summary_figure(summary)
  assert [a.get_xlabel() for a in fig.axes[0].child_axes] == [
      "percent of all weight matrices remaining (unpruned layers included)"]
  assert fig.axes[0].get_ylabel().startswith("mean test accuracy over the last evaluations")
