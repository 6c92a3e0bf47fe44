"""Reporting at the edges: results tables, plots, metric writers (TensorBoard without TensorFlow).

TensorBoard reads TFRecord files of serialized ``Event`` protocol buffers. Scalars need only three
tiny messages, so :class:`EventFileWriter` encodes them by hand (no TensorFlow, no protobuf
dependency); the files open in a stock ``tensorboard --logdir``. (clu's ``metric_writers`` package
imports TensorFlow when imported, so kdt's writers follow clu's ``MetricWriter`` method names —
``write_scalars``, ``flush``, ``close`` — without importing it.)
"""

from __future__ import annotations

import csv
import json
import os
import socket
import struct
import time
from typing import Any, Mapping

import logging
import sys

from absl import logging as absl_logging

from kdt import fileio

# ---------------------------------------------------------------------------------------------
# TFRecord framing and the Event proto, by hand.


def _crc32c_table() -> list[int]:
  table = []
  for byte in range(256):
    crc = byte
    for _ in range(8):
      crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    table.append(crc)
  return table


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
  """CRC-32C (Castagnoli), the checksum TFRecord uses."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord(data: bytes) -> bytes:
  """Frames one record: length, masked CRC of the length, data, masked CRC of the data."""
  length = struct.pack("<Q", len(data))
  return length + struct.pack("<I", _masked_crc(length)) + data + struct.pack("<I", _masked_crc(data))


def _varint(value: int) -> bytes:
  out = bytearray()
  while True:
    bits = value & 0x7F
    value >>= 7
    if value:
      out.append(bits | 0x80)
    else:
      out.append(bits)
      return bytes(out)


def _field(number: int, wire_type: int, payload: bytes) -> bytes:
  return _varint((number << 3) | wire_type) + payload


def _length_delimited(number: int, payload: bytes) -> bytes:
  return _field(number, 2, _varint(len(payload)) + payload)


def scalar_event(step: int, scalars: Mapping[str, float], wall_time: float) -> bytes:
  """Serializes ``Event(wall_time, step, summary=Summary(value=[Value(tag, simple_value)...]))``."""
  values = b"".join(
      _length_delimited(1, _length_delimited(1, tag.encode()) + _field(2, 5, struct.pack("<f", float(v))))
      for tag, v in scalars.items())
  return (_field(1, 1, struct.pack("<d", wall_time)) + _field(2, 0, _varint(int(step))) +
          _length_delimited(5, values))


def version_event(wall_time: float) -> bytes:
  return _field(1, 1, struct.pack("<d", wall_time)) + _length_delimited(3, b"brain.Event:2")


class EventFileWriter:
  """Writes scalar TensorBoard event files without TensorFlow (clu ``MetricWriter`` method names).

  Args:
    logdir: directory for the ``events.out.tfevents.*`` file (created if missing).
    filename: a fixed file name, rewritten from scratch (for summaries rebuilt on every run);
      default: a new timestamped file, appended to.
  """

  def __init__(self, logdir: str, filename: str | None = None):
    fileio.makedirs(logdir)
    name = filename or f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
    self.path = os.path.join(logdir, name)
    self._file = fileio.open(self.path, "wb" if filename else "ab")
    self._file.write(tfrecord(version_event(time.time())))

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    self._file.write(tfrecord(scalar_event(step, scalars, time.time())))

  def flush(self) -> None:
    self._file.flush()

  def close(self) -> None:
    if not self._file.closed:
      self._file.close()


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


def create_writer(logdir: str | None, *, just_logging: bool = False) -> MultiWriter:
  """A TensorBoard event writer (on process 0, when ``logdir`` is set).

  The progress line of the training loop already logs every metric, so the writer adds a
  :class:`LoggingWriter` only where no event file is written (other processes).
  """
  if logdir and not just_logging:
    return MultiWriter([EventFileWriter(logdir)])
  return MultiWriter([LoggingWriter()])


def setup_logging() -> None:
  """kdt's own messages (progress, evaluations) go to stdout; library chatter (Orbax) is silenced.

  Idempotent, so a notebook can call :func:`kdt.experiment.run` repeatedly.
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
                  "density_all_weights", "test_accuracy", "best_test_accuracy", "val_accuracy",
                  "best_val_accuracy", "test_accuracy_at_best_val", "start_step", "end_step",
                  "steps_trained", "wall_time")


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
  """The results as a fixed-width terminal table."""
  header = f"{'round':>5}  {'recipe':<14} {'weights left':>12} {'kept':>9}  {'test acc':>8}  " \
           f"{'best acc':>8}  {'steps':>6}"
  lines = [title, header, "-" * len(header)] if title else [header, "-" * len(header)]
  for r in rows:
    lines.append(f"{r['round']:>5}  {r['recipe']:<14} {100 * r['density']:>11.2f}% "
                 f"{r['weights_kept']:>9}  {r['test_accuracy']:>8.4f}  {r['best_test_accuracy']:>8.4f}"
                 f"  {r['steps_trained']:>6}")
  return "\n".join(lines)


def write_imp_tensorboard(workdir: str, rows: list[dict]) -> None:
  """Summary scalars ``<recipe>/test_accuracy`` and ``<recipe>/density`` against the round."""
  writer = EventFileWriter(os.path.join(workdir, "tensorboard", "imp_summary"),
                           filename="events.out.tfevents.imp_summary")
  for row in rows:
    writer.write_scalars(row["round"], {f"{row['recipe']}/test_accuracy": row["test_accuracy"],
                                        f"{row['recipe']}/percent_weights_left": 100 * row["density"]})
  writer.close()


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


def plot_accuracy_vs_weights(rows: list[dict], path: str, title: str = "") -> None:
  """Test accuracy against percent of weights remaining (log x, decreasing), one line per recipe."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(7, 4.5))
  dense = [r for r in rows if r["recipe"] == "dense"]
  recipes = list(dict.fromkeys(r["recipe"] for r in rows if r["recipe"] != "dense"))
  for recipe in recipes:
    points = sorted(((100 * r["density"], 100 * r["test_accuracy"]) for r in rows
                     if r["recipe"] == recipe), reverse=True)
    if dense:
      points = [(100.0, 100 * dense[0]["test_accuracy"])] + points
    xs, ys = zip(*points)
    ax.plot(xs, ys, marker="o", markersize=4, label=recipe,
            linestyle="--" if recipe.startswith("random") else "-")
  if dense:
    ax.axhline(100 * dense[0]["test_accuracy"], color="black", linewidth=1, linestyle=":",
               label="dense")
  ax.set_xscale("log")
  ax.invert_xaxis()
  ticks = distinct_ticks(100 * r["density"] for r in rows)
  ax.set_xticks(ticks)
  ax.set_xticklabels([f"{t:g}" for t in ticks], rotation=45)
  ax.minorticks_off()
  ax.set_xlabel("percent of prunable weights remaining (log scale)")
  ax.set_ylabel("test accuracy (%)")
  ax.set_title(title or "accuracy vs. weights remaining")
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=8)
  _save(fig, path)
  plt.close(fig)


def _layer_sort_key(path: str):
  """Forward order for Flax layer paths: ``stem`` first, ``head`` last, numbers compared as numbers."""
  import re
  rank = 0 if path.startswith("stem") else 2 if path.startswith("head") else 1
  return (rank, [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path)])


def plot_layer_density(layer_densities: dict[str, dict[int, dict[str, float]]], path: str,
                       title: str = "") -> None:
  """Density of every prunable layer after each round, one panel per mask lineage."""
  plt = _pyplot()
  names = list(layer_densities)
  fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 4), squeeze=False, sharey=True)
  for ax, name in zip(axes[0], names):
    by_round = layer_densities[name]
    layers = sorted(next(iter(by_round.values())), key=_layer_sort_key)
    short = [l.replace("/kernel", "") for l in layers]
    for round_index in sorted(by_round):
      ax.plot(range(len(layers)), [100 * by_round[round_index][l] for l in layers], marker="o",
              markersize=3, label=f"round {round_index}")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib_ticker().FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(matplotlib_ticker().FormatStrFormatter("%g"))
    ax.tick_params(axis="y", which="minor", labelsize=6)
    ax.set_xticks(range(len(layers)))
    ax.set_xticklabels(short, rotation=60, ha="right", fontsize=7)
    ax.set_title(name)
    ax.grid(True, alpha=0.3)
  axes[0][0].set_ylabel("percent of layer's weights remaining")
  axes[0][-1].legend(fontsize=7)
  fig.suptitle(title or "per-layer density")
  _save(fig, path)
  plt.close(fig)


def write_imp_plots(workdir: str, rows: list[dict], layer_densities: dict, title: str = "") -> None:
  """``plots/accuracy_vs_weights.png`` and ``plots/layer_density.png``."""
  fileio.makedirs(os.path.join(workdir, "plots"))
  plot_accuracy_vs_weights(rows, os.path.join(workdir, "plots", "accuracy_vs_weights.png"), title)
  plot_layer_density(layer_densities, os.path.join(workdir, "plots", "layer_density.png"), title)
