"""The evaluation protocol: which test accuracy a finished run reports (pure; no JAX).

A run evaluates the test split (and the validation split, with ``data.val_size > 0``) several
times; the largest test accuracy among them is *selected on the test set* and is not reported.
Each run's result row instead carries:

* ``test_accuracy``: the test accuracy of the last evaluation (open_lth reports this one);
* ``test_accuracy_last_mean``: the mean test accuracy over the last ``train.report_last_evals``
  evaluations (fewer if the run has fewer): less evaluation noise than one number, with nothing
  selected on the test set;
* with a validation split, ``val_accuracy`` (last), ``best_val_accuracy`` and
  ``test_accuracy_at_best_val``: the test accuracy of the evaluation with the best validation
  accuracy (the first one on ties), as KD-ticket's and ToST's scripts report it
  (``CIFAR10/cifar_lt_kd.py``, ``LRsI/train_ticket_type2.py``: ``model_best.pth.tar`` is chosen on
  the 5,000-image validation split, then tested);
* ``report_metric`` and ``reported_test_accuracy``: the protocol ``train.report_metric`` names
  and its value, the number tables and plots show. ``"auto"`` is ``"best_val"`` with a validation
  split and ``"final"`` without.

An evaluation at the run's own start step (``train.eval_at_start``: nothing trained yet) is left
out of the mean and of the validation selection.
"""

from __future__ import annotations

import statistics
from typing import Any, Sequence

REPORT_METRICS = ("auto", "final", "best_val", "last_mean")
REPORTED = "reported_test_accuracy"
"""The row field holding the protocol's test accuracy (what summaries and plots show)."""

METRIC_LABELS = {
    "final": "test accuracy at the last evaluation",
    "best_val": "test accuracy at the best validation evaluation",
    "last_mean": "mean test accuracy over the last evaluations",
}


def resolve(metric: str, has_val: bool) -> str:
  """The protocol ``metric`` stands for: ``"auto"`` is ``best_val`` with a validation split."""
  if metric == "auto":
    return "best_val" if has_val else "final"
  return metric


def accuracies(history: Sequence[dict], *, start_step: int | None = None, metric: str = "auto",
               last_evals: int = 5) -> dict[str, Any]:
  """The protocol's fields of one run (see the module docstring).

  Args:
    history: the run's evaluations, ``{"step", "test_accuracy"[, "val_accuracy"]}``, in order.
    start_step: the run's start step; an evaluation there is left out (None: none is).
    metric: ``train.report_metric``.
    last_evals: ``train.report_last_evals``.

  Returns:
    ``test_accuracy``, ``test_accuracy_last_mean``, ``report_metric``,
    ``reported_test_accuracy`` and, with a validation split, ``val_accuracy``,
    ``best_val_accuracy`` and ``test_accuracy_at_best_val``.

  Raises:
    ValueError: ``metric="best_val"`` without validation accuracies.
  """
  trained = [h for h in history if start_step is None or h["step"] != start_step] or list(history)
  out: dict[str, Any] = {
      "test_accuracy": history[-1]["test_accuracy"],
      "test_accuracy_last_mean": statistics.fmean(
          h["test_accuracy"] for h in trained[-last_evals:]),
  }
  has_val = "val_accuracy" in history[-1]
  if has_val:
    best = max(trained, key=lambda h: h["val_accuracy"])
    out.update(val_accuracy=history[-1]["val_accuracy"], best_val_accuracy=best["val_accuracy"],
               test_accuracy_at_best_val=best["test_accuracy"])
  name = resolve(metric, has_val)
  if name == "best_val" and not has_val:
    raise ValueError("report metric 'best_val' needs validation accuracies (data.val_size > 0)")
  out["report_metric"] = name
  out[REPORTED] = {"final": out["test_accuracy"], "last_mean": out["test_accuracy_last_mean"],
                   "best_val": out.get("test_accuracy_at_best_val")}[name]
  return out


def settings(config) -> dict[str, Any]:
  """``{"metric", "last_evals"}`` of ``config.train`` (keyword arguments of :func:`accuracies`)."""
  return {"metric": config.train.report_metric,
          "last_evals": int(config.train.report_last_evals)}


def mean_over_runs(fields: Sequence[dict]) -> dict[str, Any]:
  """:func:`accuracies` of several runs (LMC's copies) averaged field by field."""
  out = {k: statistics.fmean(f[k] for f in fields) for k in fields[0] if k != "report_metric"}
  out["report_metric"] = fields[0]["report_metric"]
  return out


def row_value(row: dict, metric: str = REPORTED) -> Any:
  """``row[metric]``; rows written before the protocol fields fall back to ``test_accuracy``."""
  if metric == REPORTED and REPORTED not in row:
    return row.get("test_accuracy")
  return row.get(metric)
