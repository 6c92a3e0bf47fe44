"""Tickets leave kdt: the mask, θ₀, θ_k, trained weights and config of any IMP round and recipe.

From Python (NumPy arrays in nested dicts shaped like the Flax ``params``)::

  from kdt import export
  ticket = export.load_ticket("/tmp/kdt_quickstart", round_index=3, recipe="lth")
  ticket.mask["stem"]["kernel"]       # bool: which weights survive round 3
  ticket.init, ticket.rewind          # θ₀ and θ_k (dense run at imp.rewind_step; None if k = 0)
  ticket.trained                      # the weights after re-training (pruned ones exactly 0)
  ticket.config, ticket.result        # the workdir's config and this (round, recipe)'s results row
  export.save_npz(ticket, "ticket.npz")

From the shell::

  python -m kdt.export WORKDIR --round 3 --recipe lth --out ticket.npz

The ``.npz`` holds one array per leaf under ``mask/``, ``init/``, ``rewind/``, ``trained/`` and
``trained_batch_stats/`` (e.g. ``trained/stem/kernel``) and two JSON strings, ``config.json`` and
``result.json``; :func:`load_npz` reads it back without kdt's other modules. Round 0 with recipe
``dense`` is the dense network (an all-True mask). The checkpoints are read as stored (no model
is built), so a workdir can be exported without its config's dataset.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Any, Sequence

import numpy as np

from kdt import fileio


@dataclasses.dataclass
class Ticket:
  """One subnetwork of an IMP workdir, as NumPy arrays.

  Attributes:
    round_index: the IMP round (0 = the dense network).
    recipe: the re-training recipe (``"dense"`` for round 0).
    mask: bool arrays shaped like ``params`` (True = kept).
    init: θ₀, the dense run's initial parameters.
    rewind: θ_k, the dense run's parameters at ``imp.rewind_step`` (None when it is 0 or absent).
    trained: the parameters after this recipe's re-training (its last checkpoint).
    trained_batch_stats: BatchNorm statistics after re-training (empty without BatchNorm).
    step: the training step of ``trained``.
    config: the workdir's resolved config (``config.json``).
    result: this (round, recipe)'s row of ``results.json`` (None if the run has not finished).
  """

  round_index: int
  recipe: str
  mask: dict
  init: dict
  rewind: dict | None
  trained: dict
  trained_batch_stats: dict
  step: int
  config: dict
  result: dict | None


def _steps(directory: str) -> list[int]:
  if not fileio.isdir(directory):
    return []
  return sorted(int(n) for n in os.listdir(directory) if n.isdigit())


def _restore(path: str) -> Any:
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  tree = ocp.StandardCheckpointer().restore(path)
  return jax.tree.map(np.asarray, tree)


def _read_json(path: str) -> Any:
  with fileio.open(path, encoding="utf-8") as f:
    return json.load(f)


def available(workdir: str) -> dict[int, list[str]]:
  """``{round: [recipes]}`` that have a saved mask and trained weights (round 0: ``["dense"]``)."""
  out = {0: ["dense"]} if _steps(os.path.join(workdir, "dense")) else {}
  for name in sorted(os.listdir(workdir)) if fileio.isdir(workdir) else []:
    if name.startswith("round_") and name[len("round_"):].isdigit():
      recipes = [r for r in sorted(os.listdir(os.path.join(workdir, name)))
                 if _steps(os.path.join(workdir, name, r, "train"))
                 and fileio.isdir(os.path.join(workdir, name, r, "mask"))]
      if recipes:
        out[int(name[len("round_"):])] = recipes
  return out


def load_ticket(workdir: str, round_index: int, recipe: str) -> Ticket:
  """Loads one round's ticket from an ``imp`` (or ``dst``'s ``imp/``) workdir.

  Args:
    workdir: the IMP workdir.
    round_index: 1..num_rounds, or 0 for the dense network.
    recipe: a recipe of ``imp.recipes`` (``"dense"`` with round 0).

  Returns:
    The :class:`Ticket`.

  Raises:
    FileNotFoundError: no such workdir, round or recipe on disk (the message lists what there is).
  """
  if not fileio.exists(os.path.join(workdir, "config.json")):
    raise FileNotFoundError(f"{workdir} is not a kdt workdir (no config.json)")
  config = _read_json(os.path.join(workdir, "config.json"))
  have = available(workdir)
  if recipe not in have.get(round_index, []):
    listing = "; ".join(f"round {r}: {', '.join(v)}" for r, v in sorted(have.items())) or "nothing"
    raise FileNotFoundError(f"{workdir} has no saved mask and trained weights for round {round_index}, recipe "
                            f"{recipe!r}; it has {listing}")
  dense_dir = os.path.join(workdir, "dense")
  dense_steps = _steps(dense_dir)
  init = _restore(os.path.join(dense_dir, str(dense_steps[0]), "state"))["params"]
  k = int(config.get("imp", {}).get("rewind_step", 0))
  rewind = (_restore(os.path.join(dense_dir, str(k), "state"))["params"]
            if k and k in dense_steps else None)
  if round_index == 0:
    train_dir = dense_dir
    mask = {"__all__": None}
  else:
    train_dir = os.path.join(workdir, f"round_{round_index:02d}", recipe, "train")
    mask = _restore(os.path.join(workdir, f"round_{round_index:02d}", recipe, "mask"))
  step = _steps(train_dir)[-1]
  state = _restore(os.path.join(train_dir, str(step), "state"))
  if round_index == 0:
    mask = _tree_map(lambda x: np.ones(x.shape, bool), state["params"])
  rows = []
  if fileio.exists(os.path.join(workdir, "results.json")):
    rows = _read_json(os.path.join(workdir, "results.json"))
    rows = rows if isinstance(rows, list) else []
  result = next((r for r in rows if r.get("round") == round_index and r.get("recipe") == recipe),
                None)
  return Ticket(round_index=round_index, recipe=recipe, mask=mask, init=init, rewind=rewind,
                trained=state["params"], trained_batch_stats=state.get("batch_stats") or {},
                step=int(step), config=config, result=result)


def _tree_map(fn, tree):
  if isinstance(tree, dict):
    return {k: _tree_map(fn, v) for k, v in tree.items()}
  return fn(tree)


def _flatten(tree: dict, prefix: str) -> dict[str, np.ndarray]:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flatten(value, f"{prefix}/{key}"))
    else:
      out[f"{prefix}/{key}"] = np.asarray(value)
  return out


def save_npz(ticket: Ticket, path: str) -> None:
  """Writes ``ticket`` as one ``.npz`` (see the module docstring for its keys)."""
  arrays = {}
  for name in ("mask", "init", "rewind", "trained", "trained_batch_stats"):
    tree = getattr(ticket, name)
    if tree:
      arrays.update(_flatten(tree, name))
  arrays["config.json"] = np.array(json.dumps(ticket.config, sort_keys=True))
  arrays["result.json"] = np.array(json.dumps(dict(ticket.result or {}, round=ticket.round_index,
                                                   recipe=ticket.recipe, step=ticket.step)))
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  tmp = f"{path}.tmp.{os.getpid()}.npz"
  np.savez_compressed(tmp, **arrays)
  os.replace(tmp, path)


def load_npz(path: str) -> dict[str, Any]:
  """An exported ticket as nested dicts: ``{"mask": {...}, "init": ..., "config": ..., ...}``."""
  out: dict[str, Any] = {}
  with np.load(path) as data:
    for key in data.files:
      if key.endswith(".json"):
        out[key[:-len(".json")]] = json.loads(str(data[key]))
        continue
      node = out
      *parents, leaf = key.split("/")
      for part in parents:
        node = node.setdefault(part, {})
      node[leaf] = data[key]
  return out


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m kdt.export",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("workdir", metavar="WORKDIR")
  parser.add_argument("--round", type=int, required=True, dest="round_index",
                      help="IMP round (0 = the dense network)")
  parser.add_argument("--recipe", required=True, help="re-training recipe ('dense' for round 0)")
  parser.add_argument("--out", required=True, help="the .npz file to write")
  args = parser.parse_args(argv)
  try:
    ticket = load_ticket(args.workdir, args.round_index, args.recipe)
  except (OSError, ValueError) as e:
    print(f"kdt: error: {' '.join(str(e).split())}", file=sys.stderr, flush=True)
    return 2
  save_npz(ticket, args.out)
  result = ticket.result or {}
  kept = (f"{result['weights_kept']} of {result['weights_prunable']} prunable weights kept, "
          if "weights_kept" in result else "")
  print(f"round {ticket.round_index} / {ticket.recipe}: {kept}step {ticket.step} -> {args.out}",
        flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
