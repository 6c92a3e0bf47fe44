"""The run's header and its experiment-wide progress: "run i of N" and an ETA for the whole plan.

:func:`plan` counts the training runs a config asks for (``imp``: one dense run and one run per
round and recipe; the other experiments likewise), :func:`header` is the block logged when a run
starts (config file, workdir, devices, plan), and :class:`ExperimentProgress` is the
:class:`~kdt.train.loop.Trainer`'s ``progress`` callback: it counts the runs it has seen finish
(trained, or loaded finished on resume) and turns the loop's measured step time into an ETA for
everything that is left. The drivers know nothing of it; :func:`kdt.experiments.run` builds it
and hands it to the Setup's trainers.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from typing import Callable

import jax
import ml_collections

from kdt.train import loop


@dataclasses.dataclass(frozen=True)
class Plan:
  """The training runs of one experiment.

  Attributes:
    runs: how many training runs (replicates included).
    text: how they add up, e.g. ``1 dense + 5 rounds × 4 recipes (lth, ...) = 21 runs``.
  """
  runs: int
  text: str


def _n(count: int, noun: str, plural: str | None = None) -> str:
  """``1 round``, ``5 rounds`` (``plural``: when it is not ``noun + "s"``)."""
  return f"{count} {noun if count == 1 else plural or noun + 's'}"


def _imp_parts(imp: ml_collections.ConfigDict) -> tuple[int, str]:
  recipes = tuple(imp.recipes)
  return (int(imp.num_rounds) * len(recipes),
          f"{_n(int(imp.num_rounds), 'round')} × {_n(len(recipes), 'recipe')} "
          f"({', '.join(recipes)})")


def _lmc_parts(config: ml_collections.ConfigDict) -> list[tuple[int, str]]:
  """The runs of experiment ``lmc`` (see :mod:`kdt.experiments.lmc`), beyond the dense run."""
  lmc = config.lmc
  ks = sorted(int(k) for k in lmc.rewind_steps)
  rounds = list(lmc.rounds) or list(range(1, int(config.imp.num_rounds) + 1))
  pairs, networks = len(lmc.pair_seeds), tuple(lmc.networks)
  sparse = "imp" in networks or "random" in networks
  mask_step = int(lmc.mask_rewind_step)
  parts = []
  if sparse:  # IMP rewound to each mask step (recipe rewind), on the shared dense run
    steps = {mask_step} if mask_step >= 0 else set(ks)
    parts.append((len(steps) * max(rounds), f"{len(steps)} IMP × {_n(max(rounds), 'round')}"))
  copies = 0
  for k in ks:
    if "dense" in networks or sparse:
      copies += (k != 0) + (pairs if "dense" in networks else 0)  # k = 0: the dense run itself
    if "imp" in networks:
      copies += len(rounds) * ((mask_step >= 0 and mask_step != k) + pairs)
    if "random" in networks:
      copies += len(rounds) * (1 + pairs)
  parts.append((copies, f"{_n(copies, 'copy', 'copies')} ({len(ks)} k × {', '.join(networks)})"))
  return parts


def plan(config: ml_collections.ConfigDict) -> Plan:
  """The training runs ``config`` asks for (finished ones included)."""
  experiment = config.experiment
  dense, parts = 1, []
  if experiment in ("imp", "prune_at_init", "dst"):
    if experiment != "imp" and not config[experiment].compare_imp:
      dense = int(experiment != "dst")  # dst trains its dense run only to compare with IMP
    else:
      parts.append(_imp_parts(config.imp))
  if experiment == "prune_at_init":
    scores, rounds = tuple(config.prune_at_init.scores), int(config.imp.num_rounds)
    parts.append((len(scores) * rounds,
                  f"{_n(len(scores), 'score')} ({', '.join(scores)}) × "
                  f"{_n(rounds, 'density', 'densities')}"))
  elif experiment == "dst":
    methods = tuple(config.dst.methods)
    densities = len(config.dst.densities) or int(config.imp.num_rounds)
    parts.append((len(methods) * densities,
                  f"{_n(len(methods), 'method')} ({', '.join(methods)}) × "
                  f"{_n(densities, 'density', 'densities')}"))
  elif experiment == "lmc":
    parts += _lmc_parts(config)
  elif experiment == "correlation":
    rates = len(config.correlation.learning_rates)
    dense = rates
    parts.append((rates * int(config.imp.num_rounds) * 2,
                  f"{_n(rates, 'learning rate')} × {_n(int(config.imp.num_rounds), 'round')} × "
                  "2 recipes (lth, random_reinit)"))
  runs = dense + sum(n for n, _ in parts)
  text = " + ".join([f"{dense} dense"] * bool(dense) + [t for _, t in parts])
  replicates = int(config.get("replicates", 1))
  if replicates > 1:
    text, runs = f"({text}) × {replicates} replicates", runs * replicates
  return Plan(runs=runs, text=f"{text} = {_n(runs, 'run')}")


def header(config: ml_collections.ConfigDict, workdir: str, config_file: str | None = None) -> str:
  """The lines logged when a run starts: config file, workdir, devices and backend, the plan."""
  devices = jax.devices()
  kinds = sorted({d.device_kind for d in devices})
  return "\n".join([
      f"kdt {config.experiment}: {config.model.name} on {config.data.name}",
      f"  config:  {config_file or '(given in code)'}",
      f"  workdir: {workdir}",
      f"  devices: {len(devices)} × {', '.join(kinds)} (backend {jax.default_backend()}, "
      f"{jax.process_count()} process{'es' * (jax.process_count() > 1)})",
      f"  plan:    {plan(config).text}",
  ])


def _run_key(directory: str) -> str:
  """What counts as one run: its directory; a DST segment counts as part of its method's run."""
  parent = os.path.dirname(os.path.normpath(directory))
  return os.path.dirname(parent) if os.path.basename(parent).startswith("seg_") else directory


class ExperimentProgress:
  """The trainers' ``progress`` callback: "run i of N" and the whole experiment's ETA.

  A run counts as done when it finishes or is loaded finished. The ETA is the steps left (the
  current run's, plus the mean length of the runs seen so far for each run not yet started) times
  the wall time per step trained in this process over the last two runs' worth of steps —
  evaluations, pruning and checkpoints included, so it is the experiment's pace, not the bare
  step time, and the first compiles fall out of it once two runs are trained.

  Args:
    total: the plan's number of runs (:func:`plan`).
    num_steps: ``train.num_steps`` (where a DST run's last segment ends).
    clock: seconds, monotonic (tests pass a fake one).
  """

  def __init__(self, total: int, num_steps: int, clock: Callable[[], float] = time.monotonic):
    self.total, self.num_steps, self.clock = total, num_steps, clock
    self.done: set[str] = set()
    self._lengths: dict[str, int] = {}
    self._samples = [(clock(), 0)]  # (time, steps trained in this process by then)

  def eta(self, current: str | None = None, steps_left: int = 0) -> float | None:
    """Seconds until the plan is done (None before a step was trained in this process)."""
    now, trained = self._samples[-1]
    if not trained:
      return None
    mean_length = statistics.fmean(self._lengths.values())
    since, before = next((t, n) for t, n in reversed(self._samples)
                         if trained - n >= 2 * mean_length or n == 0)
    runs_left = max(self.total - len(self.done) - (current is not None), 0)
    return (steps_left + runs_left * mean_length) * (now - since) / (trained - before)

  def __call__(self, p: loop.Progress) -> str | None:
    """What to add to the loop's line for ``p`` (None when its run was already counted)."""
    key = _run_key(p.directory)
    if key in self.done:
      return None
    segment = key != p.directory  # a DST segment: its run ends with the last segment
    end = self.num_steps if segment else p.end_step
    self._lengths[key] = end if segment else end - p.start_step
    self._samples.append((self.clock(), self._samples[-1][1] + p.steps_trained))
    if p.finished and p.end_step == end:
      self.done.add(key)
      line, eta = f"run {len(self.done)} of {self.total} done", self.eta()
    elif p.finished:
      return None
    else:
      line, eta = f"run {len(self.done) + 1} of {self.total}", self.eta(key, end - p.step)
    return line if eta is None else f"{line}; experiment ETA {_format_seconds(eta)}"


def _format_seconds(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
