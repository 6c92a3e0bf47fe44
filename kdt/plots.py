"""Pictures of the ``lmc`` and ``correlation`` experiments (matplotlib, Agg; files only).

``lmc`` writes to ``workdir/plots/``:

* ``instability_vs_rewind.png``: instability against the rewind step k, one line per network
  (dense, IMP subnetworks, random-mask controls), with the 2 % stability threshold; filled markers
  are matching networks;
* ``interpolation.png``: error along the linear path (alpha) for every k, one panel per network
  and split;
* ``correlation.png``: theta_k <-> trained weight correlation against k;
* ``mask_overlap.png``: Jaccard similarity between the IMP masks (rounds x rewind steps) and the
  random control;
* ``stability_distance.png``: L2 distance between copies (data order) and between a subnetwork
  trained alone vs inside the dense network (pruning), against k.

``correlation`` writes ``correlation.png`` (correlation, top-p overlap and the accuracy of the
ticket, its random re-initialisation and Liu et al.'s pruning & fine-tuning against the learning
rate) and ``mask_overlap.png`` (masks across learning rates; overlap with theta_0's own
magnitude mask).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from kdt import fileio


def _pyplot():
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  return plt


def _save(fig, path: str) -> None:
  """Writes a PNG atomically (temporary file, then rename; local or ``gs://``)."""
  tmp = f"{path}.tmp.{os.getpid()}.png"
  with fileio.open(tmp, "wb") as f:
    fig.savefig(f, format="png", dpi=130, bbox_inches="tight")
  fileio.replace(tmp, path)


def _series(rows: list[dict]) -> dict[str, list[dict]]:
  """Rows grouped by (network, round), each group sorted by k; dense first."""
  groups: dict[str, list[dict]] = {}
  for row in sorted(rows, key=lambda r: (r["network"] != "dense", r["round"], r["network"])):
    key = "dense" if row["network"] == "dense" else f"{row['network']}_r{row['round']:02d}"
    groups.setdefault(key, []).append(row)
  return {key: sorted(group, key=lambda r: r["k"]) for key, group in groups.items()}


def _style(rows: list[dict]) -> dict[str, dict[str, Any]]:
  """Colour / line style per series: dense black, each round a colour, random dashed."""
  plt = _pyplot()
  rounds = sorted({r["round"] for r in rows if r["network"] != "dense"})
  colours = plt.get_cmap("tab10")
  styles = {}
  for key, group in _series(rows).items():
    row = group[0]
    if row["network"] == "dense":
      styles[key] = {"color": "black", "linestyle": "-", "marker": "s"}
    else:
      colour = colours(1 + rounds.index(row["round"]) % 9)
      styles[key] = {"color": colour, "linestyle": "-" if row["network"] == "imp" else "--",
                     "marker": "o" if row["network"] == "imp" else "^"}
  return styles


def _k_axis(ax, ks: list[int]) -> None:
  ax.set_xticks(range(len(ks)))
  ax.set_xticklabels([str(k) for k in ks])
  ax.set_xlabel("rewind step k (training steps; evenly spaced categories)")
  ax.grid(True, alpha=0.3)


def plot_instability_vs_rewind(rows: list[dict], path: str, title: str = "",
                               threshold: float = 0.02) -> None:
  """Instability (%) against k per network and split; filled markers = matching."""
  plt = _pyplot()
  ks = sorted({r["k"] for r in rows})
  splits = [s[:-len("_error")] for s in rows[0]["curves"]]
  styles = _style(rows)
  fig, axes = plt.subplots(1, len(splits), figsize=(6.2 * len(splits), 4.6), squeeze=False)
  for ax, split in zip(axes[0], splits):
    for key, group in _series(rows).items():
      xs = [ks.index(r["k"]) for r in group]
      ys = [100 * r[f"instability_{split}"] for r in group]
      style = styles[key]
      ax.plot(xs, ys, color=style["color"], linestyle=style["linestyle"], linewidth=1.8,
              label=group[0]["label"])
      low = [100 * r.get(f"instability_{split}_min", r[f"instability_{split}"]) for r in group]
      high = [100 * r.get(f"instability_{split}_max", r[f"instability_{split}"]) for r in group]
      if any(h != l for h, l in zip(high, low)):
        ax.vlines(xs, low, high, color=style["color"], alpha=0.5)
      for x, y, r in zip(xs, ys, group):
        ax.plot([x], [y], marker=style["marker"], markersize=7, color=style["color"],
                markerfacecolor=style["color"] if r["matching"] else "white")
    ax.axhline(100 * threshold, color="grey", linestyle=":", linewidth=1.2,
               label=f"stable below {100 * threshold:g}%")
    ax.set_ylim(bottom=min(0.0, ax.get_ylim()[0]))
    _k_axis(ax, ks)
    ax.set_ylabel(f"instability on {split} (% error)")
    ax.set_title(f"{split} error barrier (max − mean of endpoints)")
  axes[0][0].legend(fontsize=8, title="network (filled marker = matching)", title_fontsize=8)
  fig.suptitle(title or "instability vs rewind step")
  fig.tight_layout()
  _save(fig, path)
  plt.close(fig)


def plot_interpolation(rows: list[dict], path: str, title: str = "") -> None:
  """Error (%) against alpha: one panel per (split, network), one line per k."""
  plt = _pyplot()
  series = _series(rows)
  ks = sorted({r["k"] for r in rows})
  splits = list(rows[0]["curves"])
  cmap = plt.get_cmap("viridis")
  colour = {k: cmap(i / max(len(ks) - 1, 1)) for i, k in enumerate(ks)}
  fig, axes = plt.subplots(len(splits), len(series), figsize=(4.2 * len(series), 3.4 * len(splits)),
                           squeeze=False, sharex=True, sharey="row")
  for col, (key, group) in enumerate(series.items()):
    for row_index, split in enumerate(splits):
      ax = axes[row_index][col]
      for r in group:
        alphas = r["alphas"]
        curves = np.asarray(r["curves"][split]) * 100
        mean = curves.mean(axis=0)
        ax.plot(alphas, mean, color=colour[r["k"]], linewidth=1.6, label=f"k={r['k']}")
        if len(curves) > 1:
          ax.fill_between(alphas, curves.min(axis=0), curves.max(axis=0), color=colour[r["k"]],
                          alpha=0.15)
      ax.grid(True, alpha=0.3)
      ax.set_ylim(bottom=0.0)
      if row_index == 0:
        ax.set_title(group[0]["label"])
      if row_index == len(splits) - 1:
        ax.set_xlabel("α  (0 = copy A, 1 = copy B)")
      if col == 0:
        ax.set_ylabel(f"{split.replace('_error', '')} error (%)")
  axes[0][0].legend(fontsize=7, title="rewind step", title_fontsize=7)
  pairs = max(len(r["curves"][splits[0]]) for r in rows)
  note = f" (line: mean of {pairs} pairs, band: min-max)" if pairs > 1 else ""
  fig.suptitle((title or "error along the linear path between two copies") + note)
  fig.tight_layout()
  _save(fig, path)
  plt.close(fig)


def _panels_vs_rewind(rows: list[dict], path: str, panels, title: str) -> None:
  """One panel per ``(metric, panel title, y label)``: the metric against k, a line per network."""
  plt = _pyplot()
  ks = sorted({r["k"] for r in rows})
  styles = _style(rows)
  fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.4))
  for ax, (metric, label, ylabel) in zip(axes, panels):
    for key, group in _series(rows).items():
      points = [(ks.index(r["k"]), r[metric]) for r in group if r.get(metric) is not None]
      if points:
        xs, ys = zip(*points)
        ax.plot(xs, ys, label=group[0]["label"], markersize=6, **styles[key])
    _k_axis(ax, ks)
    ax.set_ylabel(ylabel)
    ax.set_title(label)
  axes[0].legend(fontsize=8)
  fig.suptitle(title)
  fig.tight_layout()
  _save(fig, path)
  plt.close(fig)


def plot_correlation_vs_rewind(rows: list[dict], path: str, title: str = "") -> None:
  """theta_k <-> trained correlation (|w| Pearson, top-p overlap) against k per network."""
  pearson, overlap = "Pearson of |θ_k| and |θ_T|", "overlap of the top-p |w| sets"
  _panels_vs_rewind(rows, path, (
      ("magnitude_pearson", pearson, pearson + " (surviving weights)"),
      ("top_overlap", overlap, overlap + " (surviving weights)"),
  ), title or "rewind point vs trained weights")


def plot_stability_distance(rows: list[dict], path: str, title: str = "") -> None:
  """L2 distance between the copies (data order) and alone vs in the dense net (pruning)."""
  over = rows[0].get("distance_weights", "all") if rows else "all"
  ylabel = ("L2 distance of the masked prunable weights" if over == "prunable"
            else "L2 distance of all masked parameters")
  _panels_vs_rewind(rows, path, (
      ("l2", "data order: ‖copy A − copy B‖₂", ylabel),
      ("pruning_l2", "pruning: ‖m⊙(trained in dense) − trained alone‖₂", ylabel),
  ), title or "stability (Frankle et al., Stabilizing the LTH)")


def _heatmap(ax, names: list[str], matrix, label: str) -> Any:
  matrix = np.asarray(matrix, float)
  image = ax.imshow(matrix, vmin=0.0, vmax=1.0, cmap="viridis")
  ax.set_xticks(range(len(names)))
  ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
  ax.set_yticks(range(len(names)))
  ax.set_yticklabels(names, fontsize=7)
  if len(names) <= 16:
    for i in range(len(names)):
      for j in range(len(names)):
        ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=6,
                color="black" if matrix[i, j] > 0.6 else "white")
  ax.set_title(label)
  return image


def plot_mask_overlap(overlap: dict, path: str, title: str = "") -> None:
  """Heatmap of the Jaccard similarity between named masks."""
  plt = _pyplot()
  n = len(overlap["names"])
  size = max(4.5, 0.45 * n + 2.5)
  fig, ax = plt.subplots(figsize=(size + 1.0, size))
  image = _heatmap(ax, overlap["names"], overlap["jaccard"],
                   "Jaccard |A∩B| / |A∪B| of the kept weights")
  fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
  fig.suptitle(title or "mask overlap")
  fig.tight_layout()
  _save(fig, path)
  plt.close(fig)


def write_lmc_plots(workdir: str, rows: list[dict], summary: dict, title: str = "",
                    threshold: float = 0.02) -> None:
  """All ``lmc`` pictures into ``workdir/plots/`` (see the module docstring)."""
  directory = os.path.join(workdir, "plots")
  fileio.makedirs(directory)
  if not rows:
    return
  plot_instability_vs_rewind(rows, os.path.join(directory, "instability_vs_rewind.png"), title,
                             threshold)
  plot_interpolation(rows, os.path.join(directory, "interpolation.png"), title)
  plot_correlation_vs_rewind(rows, os.path.join(directory, "correlation.png"), title)
  plot_stability_distance(rows, os.path.join(directory, "stability_distance.png"), title)
  if "mask_overlap" in summary:
    plot_mask_overlap(summary["mask_overlap"], os.path.join(directory, "mask_overlap.png"),
                      f"{title}: IMP masks (k = rewind step, r = round) and a random control")


def plot_correlation_vs_lr(rows: list[dict], path: str, title: str = "") -> None:
  """Init <-> trained correlation, top-p overlap and accuracy against the learning rate."""
  plt = _pyplot()
  rows = sorted(rows, key=lambda r: r["learning_rate"])
  lrs = [r["learning_rate"] for r in rows]
  fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
  ax = axes[0]
  layers = list(rows[0]["dense_layers"])
  cmap = plt.get_cmap("tab10")
  for i, layer in enumerate(layers):
    ys = [r["dense_layers"][layer]["magnitude_pearson"] for r in rows]
    ax.plot(lrs, [np.nan if y is None else y for y in ys], color=cmap(i % 10), linewidth=1,
            alpha=0.8, marker=".", label=layer.replace("/kernel", ""))
  ax.plot(lrs, [_nan(r["dense_magnitude_pearson"]) for r in rows], color="black", linewidth=2.5,
          marker="o", label="dense, mean")
  ax.plot(lrs, [_nan(r["ticket_magnitude_pearson"]) for r in rows], color="black", linewidth=2.5,
          linestyle="--", marker="^", label=f"ticket ({100 * rows[0]['density']:.1f}%), mean")
  ax.set_ylabel("Pearson of |θ_0| and |θ_T|")
  ax.set_title("init ↔ trained correlation per layer")
  ax.legend(fontsize=7)
  ax = axes[1]
  p = rows[0]["top_p"]
  ax.plot(lrs, [_nan(r["dense_top_overlap"]) for r in rows], color="black", marker="o",
          linewidth=2, label="dense")
  ax.plot(lrs, [_nan(r["ticket_top_overlap"]) for r in rows], color="black", marker="^",
          linestyle="--", linewidth=2, label="ticket (surviving weights)")
  ax.axhline(p, color="grey", linestyle=":", label=f"chance ({p:g})")
  ax.set_ylim(0, 1)
  ax.set_ylabel(f"overlap of the top-{100 * p:g}% |w| sets of θ_0 and θ_T")
  ax.set_title("magnitude-set overlap")
  ax.legend(fontsize=8)
  ax = axes[2]
  ax.plot(lrs, [100 * r["dense_test_accuracy"] for r in rows], color="black", marker="s",
          label="dense")
  ax.plot(lrs, [100 * r["lth_test_accuracy"] for r in rows], color="tab:blue", marker="o",
          label=f"ticket (θ_0, {100 * rows[0]['density']:.1f}%)")
  ax.plot(lrs, [100 * r["random_reinit_test_accuracy"] for r in rows], color="tab:red",
          marker="^", linestyle="--", label="random re-init, same mask")
  if "pf_liu_test_accuracy" in rows[0]:
    ax.plot(lrs, [100 * r["pf_liu_test_accuracy"] for r in rows], color="darkkhaki", marker="D",
            label="pruning & fine-tuning (Liu et al.), same budget")
  metric = rows[0].get("report_metric", "final")
  ax.set_ylabel(f"test accuracy (%), {metric.replace('_', ' ')}")
  ax.set_title("ticket vs random re-init vs pruning & fine-tuning")
  ax.legend(fontsize=8)
  for ax in axes:
    ax.set_xscale("log")
    ax.set_xticks(lrs)
    ax.set_xticklabels([f"{lr:g}" for lr in lrs])
    ax.minorticks_off()
    ax.set_xlabel("learning rate")
    ax.grid(True, alpha=0.3)
  fig.suptitle(title or "weight correlation vs learning rate")
  fig.tight_layout()
  _save(fig, path)
  plt.close(fig)


def _nan(value) -> float:
  return np.nan if value is None else value


def plot_mask_overlap_vs_lr(rows: list[dict], overlap: dict, path: str, title: str = "") -> None:
  """Jaccard heatmap of the tickets' masks across learning rates, and their overlap with θ_0's."""
  plt = _pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
  image = _heatmap(axes[0], overlap["names"], overlap["jaccard"],
                   f"Jaccard between ticket masks (round {overlap['round']})")
  fig.colorbar(image, ax=axes[0], fraction=0.046, pad=0.04)
  ax = axes[1]
  xs = np.arange(len(rows))
  ax.bar(xs - 0.2, [r["init_mask_jaccard"] for r in rows], width=0.4, color="tab:blue",
         label="ticket mask vs θ_0's magnitude mask")
  ax.bar(xs + 0.2, [r["random_mask_jaccard"] for r in rows], width=0.4, color="tab:grey",
         label="ticket mask vs random mask (chance)")
  ax.set_xticks(xs)
  ax.set_xticklabels([f"lr {r['learning_rate']:g}" for r in rows])
  ax.set_ylim(0, 1)
  ax.set_ylabel("Jaccard")
  ax.set_title("is the mask predictable from the initialisation?")
  ax.legend(fontsize=8)
  ax.grid(True, axis="y", alpha=0.3)
  fig.suptitle(title or "mask overlap across learning rates")
  fig.tight_layout()
  _save(fig, path)
  plt.close(fig)


def write_correlation_plots(workdir: str, rows: list[dict], overlap: dict, title: str = "") -> None:
  """``plots/correlation.png`` and ``plots/mask_overlap.png`` of experiment ``correlation``."""
  directory = os.path.join(workdir, "plots")
  fileio.makedirs(directory)
  plot_correlation_vs_lr(rows, os.path.join(directory, "correlation.png"), title)
  plot_mask_overlap_vs_lr(rows, overlap, os.path.join(directory, "mask_overlap.png"), title)
