"""Several seeds of one experiment: mean and spread per (recipe, round), paired gaps, a plot.

Small tasks such as the digits quickstarts are noisy: one seed's difference between two recipes
is often below the seed-to-seed spread. Run the same config with several seeds, one workdir
each, then::

  python -m kdt.compare --workdirs /tmp/q_s0 /tmp/q_s1 /tmp/q_s2 --out /tmp/q_summary \\
      --baseline lth

writes ``summary.json`` (per recipe and round: mean density over the prunable weights and over
all weight matrices, mean / std / min / max of the reported test accuracy (:mod:`kdt.evaluation`)
over seeds and, with ``--baseline``, the mean, std and 95 % confidence interval of the per-seed
gap to the baseline recipe at the same round) and ``accuracy_vs_weights.png`` (mean ± std against
weights remaining; a top axis counts all weight matrices where some are never pruned), and prints
the table. A workdir of ``config.replicates = N`` counts as N seeds (its rows' ``replicate``), so
``python -m kdt.compare --workdirs /tmp/q3 --out /tmp/q3_summary --baseline lth`` summarises the
replicates of one run.

The workdirs must be seeds of one experiment: their configs may differ only in ``seeds.*`` (and
in where the data lives), and no two may share all their seeds — the same run twice would report
a spread of ±0.00. Anything else is refused with the field named.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from typing import Sequence

from kdt import config_lib
from kdt import evaluation
from kdt import fileio
from kdt import report


class NotSeedsError(ValueError):
  """The workdirs are not distinct seeds of one config."""


def _seeds(config: dict) -> dict:
  return {f"seeds.{k}": v for k, v in sorted(config.get("seeds", {}).items())}


def check_seeds(workdirs: Sequence[str]) -> None:
  """Refuses workdirs that are not distinct seeds of one config.

  Raises:
    NotSeedsError: a workdir without ``config.json``; a config that differs from the first one in
      a field other than ``seeds.*`` (named, with both values); two workdirs with the same seeds.
  """
  configs = []
  for workdir in workdirs:
    path = os.path.join(workdir, "config.json")
    if not fileio.exists(path):
      raise NotSeedsError(f"{workdir} has no config.json, so its seeds cannot be checked")
    with fileio.open(path, encoding="utf-8") as f:
      configs.append(json.load(f))
  first = configs[0]
  ignore = tuple(_seeds(first)) + config_lib.LOCATION_FIELDS
  for workdir, config in zip(workdirs[1:], configs[1:]):
    differences = config_lib.diff(first, config, ignore=ignore + tuple(_seeds(config)))
    if differences:
      raise NotSeedsError(
          f"{workdir} differs from {workdirs[0]} in more than its seeds: {'; '.join(differences)} "
          "(compare summarises seeds of one config; use python -m kdt.summary A B to compare "
          "two configs)")
  seen: dict[tuple, str] = {}
  for workdir, config in zip(workdirs, configs):
    seeds = _seeds(config)
    key = tuple(seeds.items())
    if key in seen:
      shown = ", ".join(f"{k}={v}" for k, v in seeds.items())
      raise NotSeedsError(
          f"{seen[key]} and {workdir} have the same seeds ({shown}): the same run twice has no "
          "spread; give each workdir its own seed, e.g. --config.seeds.init=N "
          "--config.seeds.data_order=N")
    seen[key] = workdir


def load_runs(workdirs: Sequence[str]) -> list[list[dict]]:
  """The ``results.json`` rows of every seed: one list per workdir, or per replicate of a workdir
  with ``config.replicates > 1`` (its rows carry ``replicate``)."""
  runs = []
  for workdir in workdirs:
    with fileio.open(os.path.join(workdir, "results.json"), encoding="utf-8") as f:
      rows = json.load(f)
    replicates: dict = {}
    for row in rows:
      replicates.setdefault(row.get("replicate"), []).append(row)
    runs.extend(replicates.values())
  return runs


def confidence_half_width(values: list[float], level: float = 0.95) -> float:
  """Half-width of the Student-t confidence interval of the mean of ``values``:
  :math:`t_{(1+\\text{level})/2,\\,n-1}\\, s / \\sqrt{n}` (``nan`` for fewer than two values).

  Examples:
    >>> round(confidence_half_width([0.0, 1.0, 2.0]), 4)  # t(0.975, 2) = 4.3027, s = 1
    2.4841
  """
  if len(values) < 2:
    return float("nan")
  from scipy import stats  # pylint: disable=import-outside-toplevel
  t = stats.t.ppf((1 + level) / 2, len(values) - 1)
  return float(t * statistics.stdev(values) / len(values) ** 0.5)


def _std(values: list[float]) -> float:
  return statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(runs: list[list[dict]], *, metric: str = evaluation.REPORTED,
              baseline: str | None = None) -> list[dict]:
  """Per (recipe, round) statistics of ``metric`` over the runs (seeds).

  Args:
    runs: one list of result rows per seed (:func:`load_runs`).
    metric: the row field to summarise (default: the protocol's ``reported_test_accuracy``,
      :mod:`kdt.evaluation`; ``test_accuracy`` in rows written before it existed).
    baseline: a recipe name; adds ``gap_mean`` / ``gap_std`` / ``gap_ci95`` (the half-width of
      the 95 % Student-t interval of the mean gap), the per-seed difference
      ``metric(recipe) - metric(baseline)`` at the same round (the dense row counts as round 0 of
      every recipe).

  Returns:
    Rows ``{"recipe", "round", "density"[, "density_all_weights"], "metric", "n", "mean", "std",
    "min", "max"[, "gap_mean", "gap_std", "gap_ci95", "gap_n"]}`` in the order the recipes first
    appear; ``metric`` names what was summarised, for labels.
  """
  reported = {row.get("report_metric", "final") for rows in runs for row in rows}
  label = (evaluation.METRIC_LABELS[reported.pop()] if metric == evaluation.REPORTED
           and len(reported) == 1 else metric)
  keys: list[tuple[str, int]] = []
  values: dict[tuple[str, int], list[float]] = {}
  densities: dict[tuple[str, int], list[float]] = {}
  all_weights: dict[tuple[str, int], list] = {}
  per_seed: list[dict[tuple[str, int], float]] = []
  for rows in runs:
    seed = {}
    for row in rows:
      key = (row["recipe"], int(row["round"]))
      if key not in values:
        keys.append(key)
        values[key], densities[key], all_weights[key] = [], [], []
      value = float(evaluation.row_value(row, metric))
      values[key].append(value)
      densities[key].append(float(row["density"]))
      all_weights[key].append(row.get("density_all_weights"))
      seed[key] = value
    per_seed.append(seed)
  out = []
  for key in keys:
    v = values[key]
    entry = {"recipe": key[0], "round": key[1], "density": statistics.fmean(densities[key])}
    if None not in all_weights[key]:
      entry["density_all_weights"] = statistics.fmean(all_weights[key])
    entry.update(metric=label, n=len(v), mean=statistics.fmean(v), std=_std(v), min=min(v),
                 max=max(v))
    if baseline is not None and key[0] not in (baseline, "dense"):
      base_key = (baseline, key[1]) if key[1] else ("dense", 0)
      gaps = [s[key] - s[base_key] for s in per_seed if key in s and base_key in s]
      if gaps:
        entry.update(gap_mean=statistics.fmean(gaps), gap_std=_std(gaps),
                     gap_ci95=confidence_half_width(gaps), gap_n=len(gaps))
    out.append(entry)
  return out


def format_summary(summary: list[dict], title: str = "", metric: str = evaluation.REPORTED) -> str:
  """A fixed-width table of :func:`summarize`'s rows (accuracies in percent)."""
  has_gap = any("gap_mean" in s for s in summary)
  header = (f"{'round':>5}  {'recipe':<14} {'weights left':>12}  {'n':>2}  {metric + ' mean':>27}"
            f"  {'std':>6}  {'min':>6}  {'max':>6}"
            + (f"  {'gap to baseline':>17}  {'95% CI of gap':>17}" if has_gap else ""))
  lines = ([title] if title else []) + [header, "-" * len(header)]
  for s in sorted(summary, key=lambda s: (s["recipe"] != "dense", s["recipe"], s["round"])):
    line = (f"{s['round']:>5}  {s['recipe']:<14} {100 * s['density']:>11.2f}%  {s['n']:>2}  "
            f"{100 * s['mean']:>27.2f}  {100 * s['std']:>6.2f}  {100 * s['min']:>6.2f}  "
            f"{100 * s['max']:>6.2f}")
    if "gap_mean" in s:
      low, high = (100 * (s["gap_mean"] + sign * s["gap_ci95"]) for sign in (-1, 1))
      line += (f"  {100 * s['gap_mean']:>+8.2f} ± {100 * s['gap_std']:<5.2f}  "
               f"[{low:+6.2f}, {high:+6.2f}]")
    lines.append(line)
  return "\n".join(lines)


def plot_summary(summary: list[dict], path: str, title: str = "") -> None:
  """Mean ± std test accuracy against percent of weights remaining (log x), one line per recipe."""
  import matplotlib.pyplot as plt

  fig = summary_figure(summary, title)
  tmp = f"{path}.tmp.{os.getpid()}.png"
  fig.savefig(tmp, dpi=130, bbox_inches="tight")
  os.replace(tmp, path)
  plt.close(fig)


def summary_figure(summary: list[dict], title: str = ""):
  """The figure of :func:`plot_summary`; its caption (the last text) hangs below the x label."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(7, 4.5))
  dense = [s for s in summary if s["recipe"] == "dense"]
  for recipe in dict.fromkeys(s["recipe"] for s in summary if s["recipe"] != "dense"):
    points = sorted(((100 * s["density"], 100 * s["mean"], 100 * s["std"]) for s in summary
                     if s["recipe"] == recipe), reverse=True)
    if dense:
      points = [(100.0, 100 * dense[0]["mean"], 100 * dense[0]["std"])] + points
    xs, ys, es = zip(*points)
    ax.errorbar(xs, ys, yerr=es, markersize=4, capsize=3, label=recipe,
                **report.recipe_style(recipe))
  if dense:
    ax.axhline(100 * dense[0]["mean"], color="black", linewidth=1, linestyle=":", label="dense")
  report.density_axes(ax, summary)
  metric = summary[0].get("metric", "test accuracy") if summary else "test accuracy"
  ax.set_ylabel(f"{metric} (%), mean ± std over seeds", fontsize=9)
  n = max((s["n"] for s in summary), default=0)
  ax.set_title(title or f"accuracy vs. weights remaining ({n} seeds)")
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=8)
  # The caption hangs below the x-axis label (anchored to it), so the two never overlap.
  ax.annotate(f"Lines: mean over {n} seeds; error bars: ±1 standard deviation over the seeds. "
              "Dashed lines with triangles: control recipes.", xy=(0.5, 0),
              xycoords=ax.xaxis.label, xytext=(0, -6), textcoords="offset points", fontsize=7,
              ha="center", va="top")
  return fig


def main(argv: Sequence[str] | None = None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdirs", nargs="+", required=True, help="one workdir per seed")
  parser.add_argument("--out", required=True, help="directory for summary.json and the plot")
  parser.add_argument("--baseline", default=None, help="recipe the gaps are measured against")
  parser.add_argument("--metric", default=evaluation.REPORTED,
                      help="row field to summarise (default: the reported test accuracy)")
  parser.add_argument("--title", default="")
  args = parser.parse_args(argv)
  try:
    check_seeds(args.workdirs)
  except NotSeedsError as e:
    print(f"kdt: error: {' '.join(str(e).split())}", file=sys.stderr, flush=True)
    sys.exit(2)
  summary = summarize(load_runs(args.workdirs), metric=args.metric, baseline=args.baseline)
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "summary.json"), "w", encoding="utf-8") as f:
    json.dump({"workdirs": list(args.workdirs), "metric": args.metric,
               "baseline": args.baseline, "rows": summary}, f, indent=2)
  title = args.title or f"{max((s['n'] for s in summary), default=0)} seeds"
  plot_summary(summary, os.path.join(args.out, "accuracy_vs_weights.png"), title)
  print(format_summary(summary, title, args.metric), flush=True)
  return summary


if __name__ == "__main__":
  main()
