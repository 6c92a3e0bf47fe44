"""Reporting at the edges: results tables, plots, metric writers (TensorBoard via tensorboardX).

TensorBoard event files are written by tensorboardX (no TensorFlow). A resumed run passes
``purge_step`` so TensorBoard drops the points the killed attempt wrote after its last checkpoint,
and each run's writer records the config as hyperparameters (TensorBoard's HPARAMS tab). kdt's
writers follow clu's ``MetricWriter`` method names (``write_scalars``, ``flush``, ``close``)
without importing clu, which imports TensorFlow.
"""

from __future__ import annotations

import itertools
import json
import os
import tempfile
import time
from typing import Any, Mapping

import logging
import sys

from absl import logging as absl_logging

from kdt import evaluation
from kdt import fileio

# ---------------------------------------------------------------------------------------------
# TensorBoard (tensorboardX).

_WRITER_NUMBER = itertools.count()


class _FileioRecordFile:
  """What tensorboardX's record writer needs of a file (write, flush, close), through
  :mod:`kdt.fileio`, so ``gs://`` workdirs need no extra Cloud Storage client."""

  def __init__(self, path: str):
    self._file = fileio.open(path, "wb")

  def write(self, data: bytes) -> None:
    self._file.write(data)

  def flush(self) -> None:
    self._file.flush()

  def close(self) -> None:
    if not self._file.closed:
      self._file.close()


class _FileioFactory:
  def open(self, path: str) -> _FileioRecordFile:
    return _FileioRecordFile(path)

  def directory_check(self, path: str) -> None:
    fileio.makedirs(path)


def _hparam_value(value: Any) -> Any:
  """TensorBoard hyperparameters are bool, int, float or str: tuples become their repr."""
  if isinstance(value, (bool, int, float, str)):
    return value
  return repr(tuple(value) if isinstance(value, list) else value)


def flatten_config(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """``{"imp.recipes": "('lth', 'rewind')", ...}``: a config dict as TensorBoard hyperparameters."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      out.update(flatten_config(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = _hparam_value(value)
  return out


HPARAM_METRICS = ("eval/test_accuracy", "eval/val_accuracy", "train/loss")
"""Scalars the HPARAMS tab shows next to each run's config."""


class TensorBoardWriter:
  """Scalars into a TensorBoard event file (tensorboardX; clu ``MetricWriter`` method names).

  Args:
    logdir: the run's TensorBoard directory (local or ``gs://``; created if missing).
    purge_step: the first step this writer may write. TensorBoard discards the points that
      earlier files in ``logdir`` hold at this step or later (a killed attempt's points after
      its last checkpoint), so a resumed run shows each step once.
    hparams: a config dict, recorded as the run's hyperparameters.
  """

  def __init__(self, logdir: str, *, purge_step: int | None = None,
               hparams: Mapping[str, Any] | None = None):
    from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
    from tensorboardX import record_writer  # pylint: disable=import-outside-toplevel
    record_writer.register_writer_factory("gs", _FileioFactory())
    fileio.makedirs(logdir)
    self.logdir = logdir
    self._writer = SummaryWriter(
        logdir, purge_step=purge_step, flush_secs=30,
        filename_suffix=f".{os.getpid()}.{next(_WRITER_NUMBER)}")  # never one second's name twice
    if hparams:
      self.write_hparams(hparams)

  def write_hparams(self, config: Mapping[str, Any]) -> None:
    """Records ``config`` (nested dict) as this run's hyperparameters."""
    from tensorboardX.summary import hparams  # pylint: disable=import-outside-toplevel
    experiment, start, end = hparams(flatten_config(config), {m: 0.0 for m in HPARAM_METRICS})
    file_writer = self._writer._get_file_writer()  # pylint: disable=protected-access
    for summary in (experiment, start, end):
      file_writer.add_summary(summary)

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    for tag, value in scalars.items():
      self._writer.add_scalar(tag, float(value), global_step=int(step), walltime=time.time())

  def flush(self) -> None:
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()


class LoggingWriter:
  """Logs scalars through absl (what clu's ``LoggingWriter`` does)."""

  def __init__(self, prefix: str = ""):
    self.prefix = prefix

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    values = ", ".join(f"{k}={float(v):.6g}" for k, v in sorted(scalars.items()))
    logging.getLogger("kdt").info("%s[%d] %s", self.prefix, step, values)

  def flush(self) -> None:
    pass

  def close(self) -> None:
    pass


class MultiWriter:
  """Fans scalars out to several writers."""

  def __init__(self, writers):
    self.writers = list(writers)

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    for w in self.writers:
      w.write_scalars(step, scalars)

  def flush(self) -> None:
    for w in self.writers:
      w.flush()

  def close(self) -> None:
    for w in self.writers:
      w.close()


def create_writer(logdir: str | None, *, just_logging: bool = False, purge_step: int | None = None,
                  hparams: Mapping[str, Any] | None = None) -> MultiWriter:
  """A TensorBoard event writer (on process 0, when ``logdir`` is set).

  The progress line of the training loop already logs every metric, so the writer adds a
  :class:`LoggingWriter` only where no event file is written (other processes).

  Args:
    logdir: the run's TensorBoard directory.
    just_logging: log only (processes other than 0).
    purge_step: see :class:`TensorBoardWriter` (the training loop passes resume step + 1).
    hparams: the config (as a dict), recorded as hyperparameters.
  """
  if logdir and not just_logging:
    return MultiWriter([TensorBoardWriter(logdir, purge_step=purge_step, hparams=hparams)])
  return MultiWriter([LoggingWriter()])


def setup_logging() -> None:
  """kdt's own messages (progress, evaluations) go to stdout; library chatter (Orbax) is silenced.

  Idempotent, so a notebook can call :func:`kdt.experiments.run` repeatedly.
  """
  logger = logging.getLogger("kdt")
  logger.setLevel(logging.INFO)
  if not logger.handlers:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    logger.addHandler(handler)
    logger.propagate = False
  absl_logging.set_verbosity(absl_logging.WARNING)


# ---------------------------------------------------------------------------------------------
# IMP results: table, files, plots.

RESULT_COLUMNS = ("round", "recipe", "density", "nominal_density", "weights_kept", "weights_prunable",
                  "density_all_weights", "test_accuracy", "test_accuracy_last_mean", "val_accuracy",
                  "best_val_accuracy", "test_accuracy_at_best_val", "report_metric",
                  "reported_test_accuracy", "start_step", "end_step", "steps_trained", "wall_time")


def _atomic_write(path: str, text: str) -> None:
  fileio.write_atomic(path, text)


def write_results(workdir: str, rows: list[dict]) -> None:
  """``results.json`` and ``results.csv``: one row per (round, recipe), written atomically."""
  from kdt import faults
  path = os.path.join(workdir, "results.json")
  tmp = f"{path}.tmp.{os.getpid()}"
  with fileio.open(tmp, "w", encoding="utf-8") as f:
    f.write(json.dumps(rows, indent=2) + "\n")
  faults.maybe_kill("results_write")
  fileio.replace(tmp, path)
  columns = [c for c in RESULT_COLUMNS if any(c in r for r in rows)]
  lines = [",".join(columns)]
  for row in rows:
    lines.append(",".join("" if row.get(c) is None else str(row[c]) for c in columns))
  _atomic_write(os.path.join(workdir, "results.csv"), "\n".join(lines) + "\n")


def format_table(rows: list[dict], title: str = "") -> str:
  """The results as a fixed-width terminal table: the last evaluation's test accuracy and the one
  the evaluation protocol reports (:mod:`kdt.evaluation`, ``train.report_metric``); mean ± std
  per cell when the rows have replicates."""
  if len({r.get("replicate", 0) for r in rows}) > 1:
    return format_replicate_table(rows, title)
  header = f"{'round':>5}  {'recipe':<14} {'weights left':>12} {'kept':>9}  {'test acc':>8}  " \
           f"{'reported':>8}  {'steps':>6}"
  lines = [title, header, "-" * len(header)] if title else [header, "-" * len(header)]
  for r in rows:
    lines.append(f"{r['round']:>5}  {r['recipe']:<14} {100 * r['density']:>11.2f}% "
                 f"{r['weights_kept']:>9}  {r['test_accuracy']:>8.4f}  "
                 f"{evaluation.row_value(r):>8.4f}"
                 f"  {r['steps_trained']:>6}")
  return "\n".join(lines)


REPLICATE_KEYS = ("round", "recipe", "network", "k", "learning_rate")
"""Fields that name a cell of a replicated table (whichever of them the rows have)."""
REPLICATE_METRICS = ("density", "test_accuracy", "reported_test_accuracy", "instability",
                     "lth_test_accuracy", "random_reinit_test_accuracy", "pf_liu_test_accuracy",
                     "winning_gap")
"""Numbers averaged over the replicates in the terminal table (whichever the rows have)."""


def format_replicate_table(rows: list[dict], title: str = "") -> str:
  """Mean ± standard deviation over the replicates, one line per cell (round, recipe, ...)."""
  keys = [k for k in REPLICATE_KEYS if any(k in r for r in rows)]
  metrics = [m for m in REPLICATE_METRICS
             if any(isinstance(r.get(m), (int, float)) and not isinstance(r.get(m), bool)
                    for r in rows)]
  cells: dict[tuple, list[dict]] = {}
  for row in rows:
    cells.setdefault(tuple(row.get(k) for k in keys), []).append(row)
  header = "  ".join([f"{k:>14}" for k in keys] + [f"{m:>24}" for m in metrics] + ["     N"])
  lines = ([title] if title else []) + [header, "-" * len(header)]
  for cell, members in cells.items():
    parts = [f"{str(v):>14}" for v in cell]
    for m in metrics:
      values = [float(r[m]) for r in members if isinstance(r.get(m), (int, float))]
      if not values:
        parts.append(f"{'':>24}")
        continue
      mean, std = _mean_std(values)
      parts.append(f"{100 * mean:>13.2f} ± {100 * std:<8.2f}")
    parts.append(f"{len(members):>6}")
    lines.append("  ".join(parts))
  lines.append("(in %; ± is one standard deviation over the N replicates)")
  return "\n".join(lines)


def write_imp_tensorboard(workdir: str, rows: list[dict]) -> None:
  """Summary scalars ``<recipe>/test_accuracy`` and ``<recipe>/density`` against the round."""
  # Rebuilt from all rows after every round: written locally, then one file replaces the last.
  with tempfile.TemporaryDirectory() as tmp:
    writer = TensorBoardWriter(tmp)
    for row in rows:
      writer.write_scalars(row["round"], {
          f"{row['recipe']}/test_accuracy": row["test_accuracy"],
          f"{row['recipe']}/percent_weights_left": 100 * row["density"]})
    writer.close()
    (name,) = [n for n in os.listdir(tmp) if "tfevents" in n]
    with open(os.path.join(tmp, name), "rb") as f:
      data = f.read()
  summary_dir = os.path.join(workdir, "tensorboard", "imp_summary")
  fileio.makedirs(summary_dir)
  fileio.write_atomic(os.path.join(summary_dir, "events.out.tfevents.imp_summary"), data)


def _pyplot():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def matplotlib_ticker():
  import matplotlib.ticker
  return matplotlib.ticker


def _save(fig, path: str) -> None:
  tmp = f"{path}.tmp.{os.getpid()}.png"
  with fileio.open(tmp, "wb") as f:
    fig.savefig(f, format="png", dpi=130, bbox_inches="tight")
  fileio.replace(tmp, path)


def distinct_ticks(percents, rel: float = 0.02) -> list[float]:
  """Tick positions (one decimal, decreasing) for densities; values within ``rel`` of each other
  share one tick (e.g. IMP's 17.85 % and a one-shot mask's 17.853 %), so labels never overlap."""
  ticks: list[float] = []
  for t in sorted({round(p, 1) for p in percents}, reverse=True):
    if not ticks or t < ticks[-1] * (1 - rel):
      ticks.append(t)
  return ticks


CONTROLS = ("random_reinit", "random_prune", "static", "random")
"""Control recipes / networks: drawn dashed with triangle markers in every plot."""

_COLORS = {"dense": "black", "lth": "tab:blue", "rewind": "tab:orange", "lr_rewind": "tab:brown",
           "finetune": "tab:olive", "pf_liu": "darkkhaki", "kd": "tab:green",
           "kd_rewind": "tab:purple", "kd_lr_rewind": "tab:pink", "tost": "tab:cyan", "random_reinit": "tab:red",
           "random_prune": "tab:gray", "rigl": "darkgreen", "set": "darkorange", "static": "dimgray",
           "imp": "tab:blue", "random": "tab:gray"}
_SPARE_COLORS = ("navy", "maroon", "teal", "goldenrod", "indigo", "sienna")


def recipe_style(name: str) -> dict[str, Any]:
  """Matplotlib style for a recipe (or DST method, or LMC network), the same in every kdt plot.

  Each recipe keeps one colour everywhere; controls (:data:`CONTROLS`) are dashed with triangle
  markers, the dense network is a dotted black line.
  """
  color = _COLORS.get(name) or _SPARE_COLORS[sum(map(ord, name)) % len(_SPARE_COLORS)]
  if name == "dense":
    return {"color": color, "linestyle": ":", "marker": "s"}
  control = name in CONTROLS
  return {"color": color, "linestyle": "--" if control else "-", "marker": "^" if control else "o"}


def _mean_std(values: list[float]) -> tuple[float, float]:
  import statistics
  return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def all_weights_slope(rows: list[dict]) -> float | None:
  """``s`` with ``density_all_weights = 1 - s * (1 - density)``, from the rows (None: no row says).

  The prunable weights are the fraction ``s`` of all conv / dense weight matrices; the others (a
  dense output layer, a dense stem) stay whole, so both densities are affine in each other.
  """
  slopes = [(1 - r["density_all_weights"]) / (1 - r["density"]) for r in rows
            if r.get("density_all_weights") is not None and r["density"] < 1]
  return sum(slopes) / len(slopes) if slopes else None


def density_axes(ax, rows: list[dict]) -> None:
  """The x axes of an accuracy-vs-weights plot: percent of prunable weights remaining (log scale,
  decreasing, a tick per density), and where some weight matrices are never pruned (the rows'
  ``density_all_weights``: open_lth's head) a top axis with the same points as percent of all
  weight matrices. ``rows``: dicts with ``density`` (and ``density_all_weights``), results rows
  or :func:`kdt.compare.summarize`'s."""
  ax.set_xscale("log")
  ax.invert_xaxis()
  ticks = distinct_ticks(100 * r["density"] for r in rows)
  ax.set_xticks(ticks)
  ax.set_xticklabels([f"{t:g}" for t in ticks], rotation=45)
  ax.minorticks_off()
  slope = all_weights_slope(rows)
  if slope is None or slope > 1 - 1e-9:
    ax.set_xlabel("percent of prunable weights remaining (log scale)"
                  + ("; = percent of all weight matrices" if slope is not None else ""))
    return
  ax.set_xlabel("percent of prunable weights remaining (log scale)")
  to_all = lambda d: 100 - slope * (100 - d)  # noqa: E731
  top = ax.secondary_xaxis("top", functions=(to_all, lambda a: 100 - (100 - a) / slope))
  top.set_xticks([to_all(t) for t in ticks])
  top.set_xticklabels([f"{to_all(t):.3g}" for t in ticks], rotation=45, fontsize=8)
  top.minorticks_off()
  top.set_xlabel("percent of all weight matrices remaining (unpruned layers included)", fontsize=8)


def plot_accuracy_vs_weights(rows: list[dict], path: str, title: str = "") -> None:
  """Test accuracy against percent of weights remaining (log x, decreasing), one line per recipe.

  The accuracy is the one the evaluation protocol reports (``reported_test_accuracy``,
  :mod:`kdt.evaluation`; rows without it: ``test_accuracy``), and the y label names the protocol.
  The bottom axis counts the prunable weights; where some weight matrices are never pruned (the
  rows' ``density_all_weights``), a top axis gives the same points as percent of all weight
  matrices. Rows with a ``replicate`` field are averaged per (recipe, round): the line is the mean,
  the error bars ±1 standard deviation over the replicates, and the caption under the plot says so.
  """
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(7, 4.8), layout="constrained")
  groups: dict[tuple[str, int], list[dict]] = {}
  for r in rows:
    groups.setdefault((r["recipe"], int(r.get("round", 0))), []).append(r)
  stats = {key: (100 * _mean_std([g["density"] for g in group])[0],
                 *[100 * v for v in _mean_std([evaluation.row_value(g) for g in group])],
                 len(group))
           for key, group in groups.items()}
  replicates = max((n for *_, n in stats.values()), default=1)
  dense = [v for (recipe, _), v in stats.items() if recipe == "dense"]
  recipes = list(dict.fromkeys(recipe for recipe, _ in stats if recipe != "dense"))
  for recipe in recipes:
    points = sorted((v for (name, _), v in stats.items() if name == recipe), reverse=True)
    if dense:
      points = [(100.0, *dense[0][1:])] + points
    xs, ys, es, _ = zip(*points)
    ax.errorbar(xs, ys, yerr=es if replicates > 1 else None, markersize=4, capsize=3,
                label=recipe, **recipe_style(recipe))
  if dense:
    style = recipe_style("dense")
    ax.axhline(dense[0][1], color=style["color"], linewidth=1, linestyle=style["linestyle"],
               label="dense")
  density_axes(ax, rows)
  metrics = {r.get("report_metric", "final") for r in rows}
  label = evaluation.METRIC_LABELS[metrics.pop()] if len(metrics) == 1 else "test accuracy"
  ax.set_ylabel(f"{label} (%)", fontsize=9)
  ax.set_title(title or "accuracy vs. weights remaining")
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=8)
  caption = (f"Lines: mean over {replicates} replicates; error bars: ±1 standard deviation."
             if replicates > 1 else "One run per point (no replicates, so no error bars).")
  fig.text(0.01, -0.01, caption + " Dashed lines with triangles: control recipes.",
           fontsize=7, ha="left", va="top")
  _save(fig, path)
  plt.close(fig)


def _layer_sort_key(path: str):
  """Forward order for Flax layer paths: ``stem`` first, ``head`` last, numbers compared as numbers."""
  import re
  rank = 0 if path.startswith("stem") else 2 if path.startswith("head") else 1
  return (rank, [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path)])


def plot_layer_density(layer_densities: dict[str, dict[int, dict[str, float]]], path: str,
                       title: str = "") -> None:
  """Density of every prunable layer after each round, one panel per mask lineage.

  Rounds are coloured along one colour map (early light, late dark), so any number of rounds stays
  distinguishable; the legend sits outside the panels and never hides a line.
  """
  plt = _pyplot()
  names = list(layer_densities)
  fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names) + 1.2, 4.4), squeeze=False,
                           sharey=True, layout="constrained")
  rounds = sorted({r for by_round in layer_densities.values() for r in by_round})
  cmap = plt.get_cmap("viridis")
  colour = {r: cmap(0.9 * i / max(len(rounds) - 1, 1)) for i, r in enumerate(reversed(rounds))}
  handles = {}
  for ax, name in zip(axes[0], names):
    by_round = layer_densities[name]
    layers = sorted(next(iter(by_round.values())), key=_layer_sort_key)
    short = [l.replace("/kernel", "") for l in layers]
    for round_index in sorted(by_round):
      (line,) = ax.plot(range(len(layers)), [100 * by_round[round_index][l] for l in layers],
                        marker="o", markersize=3, color=colour[round_index],
                        label=f"round {round_index}")
      handles.setdefault(round_index, line)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib_ticker().FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(matplotlib_ticker().FormatStrFormatter("%g"))
    ax.tick_params(axis="y", which="minor", labelsize=6)
    ax.set_xticks(range(len(layers)))
    ax.set_xticklabels(short, rotation=60, ha="right", fontsize=7)
    ax.set_title(f"masks of {name}", fontsize=9)
    ax.grid(True, alpha=0.3)
  axes[0][0].set_ylabel("percent of layer's weights remaining")
  ordered = [handles[r] for r in sorted(handles)]
  fig.legend(ordered, [h.get_label() for h in ordered], loc="outside right upper", fontsize=7,
             title="after round", title_fontsize=7)
  fig.suptitle(title or "per-layer density", fontsize=11)
  _save(fig, path)
  plt.close(fig)


def write_imp_plots(workdir: str, rows: list[dict], layer_densities: dict, title: str = "") -> None:
  """``plots/accuracy_vs_weights.png`` and ``plots/layer_density.png``."""
  fileio.makedirs(os.path.join(workdir, "plots"))
  plot_accuracy_vs_weights(rows, os.path.join(workdir, "plots", "accuracy_vs_weights.png"), title)
  plot_layer_density(layer_densities, os.path.join(workdir, "plots", "layer_density.png"), title)
