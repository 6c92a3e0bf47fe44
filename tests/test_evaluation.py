"""kdt.evaluation: the reported test accuracy is never a maximum over test evaluations."""

import json
import os

import pytest

from kdt import config_lib
from kdt import experiments
from kdt import evaluation
from kdt import report
from kdt import summary

HISTORY = [  # the best test accuracy (0.95 at step 20) is neither final nor at the best val
    {"step": 0, "test_accuracy": 0.10, "val_accuracy": 0.99},
    {"step": 10, "test_accuracy": 0.80, "val_accuracy": 0.70},
    {"step": 20, "test_accuracy": 0.95, "val_accuracy": 0.80},
    {"step": 30, "test_accuracy": 0.85, "val_accuracy": 0.90},
    {"step": 40, "test_accuracy": 0.90, "val_accuracy": 0.85},
]


def test_best_validation_step_and_last_mean_not_the_test_maximum():
  out = evaluation.accuracies(HISTORY, start_step=0, metric="auto", last_evals=2)
  assert out["test_accuracy"] == 0.90
  assert out["test_accuracy_at_best_val"] == 0.85  # step 30; the step-0 eval is not selectable
  assert out["best_val_accuracy"] == 0.90 and out["val_accuracy"] == 0.85
  assert out["test_accuracy_last_mean"] == pytest.approx((0.85 + 0.90) / 2)
  assert out["report_metric"] == "best_val" and out["reported_test_accuracy"] == 0.85
  assert 0.95 not in out.values() and "best_test_accuracy" not in out


def test_without_validation_auto_reports_the_final_accuracy():
  history = [{k: v for k, v in h.items() if k != "val_accuracy"} for h in HISTORY]
  out = evaluation.accuracies(history, start_step=0, last_evals=10)
  assert out["report_metric"] == "final" and out["reported_test_accuracy"] == 0.90
  assert out["test_accuracy_last_mean"] == pytest.approx((0.80 + 0.95 + 0.85 + 0.90) / 4)
  assert "test_accuracy_at_best_val" not in out
  out = evaluation.accuracies(history, metric="last_mean", last_evals=3)
  assert out["reported_test_accuracy"] == pytest.approx((0.95 + 0.85 + 0.90) / 3)
  with pytest.raises(ValueError, match="best_val"):
    evaluation.accuracies(history, metric="best_val")


def test_report_fields_are_validated_by_name():
  config = config_lib.load_file("configs/quickstart.py")
  assert (config.train.report_metric, config.train.report_last_evals) == ("auto", 5)
  config.train.report_metric = "best_test"
  with pytest.raises(config_lib.ConfigError, match="config.train.report_metric="):
    config_lib.validate(config, device_count=1)
  config.train.report_metric = "best_val"  # quickstart has no validation split
  with pytest.raises(config_lib.ConfigError, match="data.val_size"):
    config_lib.validate(config, device_count=1)
  config.train.report_metric = "last_mean"
  config.train.report_last_evals = 0
  with pytest.raises(config_lib.ConfigError, match="config.train.report_last_evals="):
    config_lib.validate(config, device_count=1)


def test_tables_show_the_reported_accuracy_and_read_older_rows():
  rows = [{"round": 0, "recipe": "dense", "density": 1.0, "weights_kept": 10, "test_accuracy": 0.5,
           "reported_test_accuracy": 0.7, "steps_trained": 5},
          {"round": 1, "recipe": "lth", "density": 0.8, "weights_kept": 8, "test_accuracy": 0.6,
           "steps_trained": 5}]  # written before the protocol fields: test_accuracy is shown
  assert "best_test_accuracy" not in report.RESULT_COLUMNS
  assert "0.7000" in report.format_table(rows)
  cells = summary.cells(rows)
  assert cells[(0, "dense")]["values"] == {0: 0.7} and cells[(1, "lth")]["values"] == {0: 0.6}


def test_train_experiment_reports_the_test_accuracy_at_the_best_validation_step(tmp_path):
  config = config_lib.base_config("train")
  config.data.name = "digits"
  config.data.val_size = 200
  config.train.batch_size = 32
  config.train.num_steps = 20
  config.train.eval_every_steps = 5
  config.train.eval_batch_size = 100
  config.train.log_every_steps = 0
  config.train.checkpoint_every_steps = 0
  config_lib.validate(config, device_count=1)
  workdir = str(tmp_path / "train")
  experiments.run(config, workdir)
  with open(os.path.join(workdir, "results.json"), encoding="utf-8") as f:
    result = json.load(f)
  history = result["history"]
  best = max(history, key=lambda h: h["val_accuracy"])
  assert [h["step"] for h in history] == [5, 10, 15, 20]
  assert result["report_metric"] == "best_val" and "best_test_accuracy" not in result
  assert result["reported_test_accuracy"] == result["test_accuracy_at_best_val"] == (
      best["test_accuracy"])
  assert result["test_accuracy_last_mean"] == pytest.approx(
      sum(h["test_accuracy"] for h in history) / 4)
