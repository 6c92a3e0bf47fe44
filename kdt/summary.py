"""Results of finished (or running) workdirs as tables, from ``results.json`` alone.

Usage::

  python -m kdt.summary WORKDIR                # density x recipe table of reported test accuracy
  python -m kdt.summary WORKDIR_A WORKDIR_B    # both tables, the config diff, B - A paired

Each cell is the mean ± standard deviation over replicates (rows that share round and recipe and
differ in their ``replicate`` field) with their number N; without replicates N is 1 and no spread
is shown. For two workdirs the paired differences B - A are taken per (round, recipe, replicate)
present in both, so a seed's own noise cancels where the runs share seeds.

Reads only ``results.json`` and ``config.json``: no checkpoint is restored and JAX is not imported,
so it answers in well under a second, also while a run is still writing rows.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from typing import Any, NoReturn, Sequence

from kdt import config_lib
from kdt import evaluation


def fail(message: str) -> NoReturn:
  print(f"kdt: error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
  sys.exit(2)


def _read_json(path: str) -> Any:
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def load(workdir: str) -> tuple[list[dict], dict | None]:
  """The result rows and the stored config (None if absent) of ``workdir``.

  A ``train`` experiment's single summary dict becomes one ``dense`` row at round 0.

  Raises:
    FileNotFoundError: no ``results.json``.
    ValueError: ``results.json`` is not JSON of the expected shape.
  """
  path = os.path.join(workdir, "results.json")
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f"{workdir}: no such directory")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{workdir} has no results.json yet (it is written when the dense run "
                            "and each round finish)")
  try:
    results = _read_json(path)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path} is not valid JSON ({e})") from e
  if isinstance(results, dict):
    results = [dict(results, round=0, recipe="dense", density=1.0)]
  if not isinstance(results, list) or not all(isinstance(r, dict) for r in results):
    raise ValueError(f"{path} holds neither a list of rows nor one summary")
  config_path = os.path.join(workdir, "config.json")
  config = _read_json(config_path) if os.path.exists(config_path) else None
  return results, config


def _key(row: dict) -> tuple[int, str]:
  return int(row.get("round", 0)), str(row.get("recipe", row.get("network", "?")))


def cells(rows: list[dict], metric: str = evaluation.REPORTED) -> dict[tuple[int, str], dict]:
  """Per (round, recipe): mean density, and the values of ``metric`` by replicate.

  Returns:
    ``{(round, recipe): {"density": float, "values": {replicate: value}}}``; rows without a
    ``replicate`` field count as replicate 0.
  """
  out: dict[tuple[int, str], dict] = {}
  for row in rows:
    value = evaluation.row_value(row, metric)
    if value is None or "density" not in row:
      continue
    cell = out.setdefault(_key(row), {"densities": [], "values": {}})
    cell["densities"].append(float(row["density"]))
    cell["values"][row.get("replicate", 0)] = float(value)
  for cell in out.values():
    cell["density"] = statistics.fmean(cell.pop("densities"))
  return out


def _mean_std(values: Sequence[float]) -> tuple[float, float, int]:
  values = list(values)
  std = statistics.stdev(values) if len(values) > 1 else 0.0
  return statistics.fmean(values), std, len(values)


def _format(values: Sequence[float], scale: float = 100.0, signed: bool = False) -> str:
  mean, std, n = _mean_std(values)
  sign = "+" if signed else ""
  if n == 1:
    return f"{scale * mean:{sign}.2f}"
  return f"{scale * mean:{sign}.2f} ± {scale * std:.2f} (N={n})"


def table(by_cell: dict[tuple[int, str], dict], *, paired: dict | None = None,
          title: str = "") -> str:
  """A density x recipe table: one line per round (density), one column per recipe."""
  source = paired if paired is not None else by_cell
  order = list(dict.fromkeys(r for _, r in by_cell))  # the order recipes first appear in the rows
  recipes = sorted({r for _, r in source}, key=lambda r: (r != "dense", order.index(r)
                                                           if r in order else len(order)))
  rounds = sorted({r for r, _ in source})
  body = []
  for round_index in rounds:
    present = [(round_index, r) for r in recipes if (round_index, r) in source]
    density = statistics.fmean(by_cell[k]["density"] for k in present if k in by_cell)
    row = [str(round_index), f"{100 * density:.2f}%"]
    for recipe in recipes:
      key = (round_index, recipe)
      if key not in source or not source[key]:
        row.append("-")
      elif paired is not None:
        row.append(_format(source[key], signed=True))
      else:
        row.append(_format(list(source[key]["values"].values())))
    body.append(row)
  header = ["round", "weights left", *recipes]
  widths = [max(len(str(line[i])) for line in [header, *body]) for i in range(len(header))]
  fmt = lambda line: "  ".join(f"{c:>{w}}" for c, w in zip(line, widths))  # noqa: E731
  lines = ([title] if title else []) + [fmt(header), "-" * len(fmt(header))]
  lines += [fmt(line) for line in body]
  return "\n".join(lines)


def paired_differences(a: dict, b: dict) -> dict[tuple[int, str], list[float]]:
  """Per (round, recipe): ``b - a`` for every replicate present in both."""
  out = {}
  for key in a.keys() & b.keys():
    shared = a[key]["values"].keys() & b[key]["values"].keys()
    out[key] = [b[key]["values"][r] - a[key]["values"][r] for r in sorted(shared)]
  return out


def config_diff(a: dict | None, b: dict | None) -> list[str]:
  """``field: a -> b`` for the fields that differ (``[]`` when a config is missing)."""
  if a is None or b is None:
    return []
  return config_lib.diff(a, b)


def summarize(workdirs: Sequence[str], metric: str = evaluation.REPORTED) -> str:
  """The whole report for ``workdirs`` as text (what the command prints)."""
  loaded = [load(w) for w in workdirs]
  per_dir = [cells(rows, metric) for rows, _ in loaded]
  parts = []
  for workdir, by_cell in zip(workdirs, per_dir):
    if not by_cell:
      parts.append(f"{workdir}: no rows with a density and {metric!r} (experiment "
                   f"{(loaded[0][1] or {}).get('experiment', '?')!r}); see its results.csv")
      continue
    most = max(len(c["values"]) for c in by_cell.values())
    spread = "mean ± std over replicates" if most > 1 else "one replicate per cell"
    parts.append(table(by_cell, title=f"{workdir}: {metric} (%), {spread}"))
  if len(workdirs) == 2:
    (_, config_a), (_, config_b) = loaded
    a, b = workdirs
    changes = config_diff(config_a, config_b)
    if config_a is None or config_b is None:
      parts.append("config diff: a workdir has no config.json")
    else:
      parts.append(f"config diff ({a} -> {b}):\n  " + ("\n  ".join(changes) if changes else
                                                       "(identical)"))
    paired = paired_differences(*per_dir)
    if any(paired.values()):
      parts.append(table(per_dir[0], paired=paired,
                         title=f"paired differences B - A ({b} minus {a}), {metric} in points"))
    else:
      parts.append("paired differences: no (round, recipe, replicate) in both workdirs")
  return "\n\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m kdt.summary", description=__doc__.split("\n\n")[0])
  parser.add_argument("workdirs", nargs="+", metavar="WORKDIR")
  parser.add_argument("--metric", default=evaluation.REPORTED,
                      help="row field to tabulate: reported_test_accuracy (the config's "
                      "train.report_metric; test_accuracy for older results), test_accuracy (last "
                      "evaluation), test_accuracy_last_mean, test_accuracy_at_best_val, ...")
  args = parser.parse_args(argv)
  try:
    text = summarize(args.workdirs, args.metric)
  except (OSError, ValueError) as e:
    fail(str(e))
  print(text, flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
