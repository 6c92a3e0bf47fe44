"""Experiment ``prune_at_init``: masks found at initialisation against IMP's, re-trained alike.

The pruning-at-initialisation baselines of the lottery-ticket papers (SNIP, Lee et al. 2019;
GraSP, Wang et al. 2020; SynFlow, Tanaka et al. 2020; random pruning) score theta_0 once and keep
the round's density; IMP prunes trained weights round after round. For every score of
``config.prune_at_init.scores`` this experiment takes a one-shot mask at theta_0
(``imp.prune_at = "init"``, ``pruning_schedule = "oneshot"``, ``prune_at_init.allocation``) at each
of IMP's round densities and re-trains it with the recipe ``prune_at_init.recipe`` (default
``lth``: theta_0, the full schedule) — exactly as IMP's own ``lth`` tickets are re-trained. Each
variant is IMP's plan (:meth:`kdt.experiments.imp.IMPRounds.plan`) on this experiment's Setup with
an ``imp`` group of its own; they share the dense run (theta_0) and the data order, so the masks
are the only difference. The variants advance together, round by round: round r's re-trainings of
IMP's mask and of every score's (and of every replicate's, ``config.replicates``) train as one
batch of tickets (``config.tickets``).

Workdir::

  dense/                       the dense run (theta_0, theta_k, the trained network)
  imp/round_RR/<recipe>/       IMP with config.imp (prune_at_init.compare_imp)
  <score>/round_RR/<recipe>/   the score's one-shot mask at theta_0 and its re-training
  results.json, .csv           one row per (mask source, round); ``recipe`` names the source
  plots/accuracy_vs_weights.png

Rows of a score carry ``recipe = <score>`` (``snip``, ``grasp``, ...) and ``retrained_as`` (the
recipe); IMP's rows keep their recipe names.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Generator, Sequence

import jax
import ml_collections

from kdt import fileio
from kdt import report
from kdt.experiments import imp as imp_lib
from kdt.experiments.setup import Setup
from kdt.tickets import batch as batch_lib
from kdt.train import loop

log = logging.getLogger(__name__)


def pinned_steps(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  """The dense run's rewind points: IMP's ``imp.rewind_step``."""
  return (int(config.imp.rewind_step),)


def score_group(config: ml_collections.ConfigDict, score: str) -> ml_collections.ConfigDict:
  """The ``imp`` group of one score's masks: one shot at theta_0, IMP's densities and recipe."""
  pai = config.prune_at_init
  return imp_lib.imp_group(
      config.imp, score=score, allocation=pai.allocation, prune_at="init",
      pruning_schedule="oneshot", densities=tuple(imp_lib.round_densities(config.imp)),
      recipes=(pai.recipe,), control_recipe=pai.recipe)


def run(setup: Setup, config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  """IMP (if asked) and every score's masks; returns the rows (also in ``results.json``)."""
  start = time.time()
  (rows,) = batch_lib.drive([plan(setup, config, workdir)], setup.train_jobs)
  log.info("prune_at_init finished in %.1f s (this invocation); results in %s",
           time.time() - start, os.path.join(workdir, "results.json"))
  return rows


def run_replicates(setups: Sequence[Setup], config: ml_collections.ConfigDict) -> list[dict]:
  """Every replicate's plan advanced together (:func:`kdt.tickets.batch.drive`): a round's
  re-trainings of every mask source and replicate train as one batch of tickets. Returns every
  replicate's rows, each with its ``replicate``; the workdir's plot shows mean ± std."""
  del config  # each replicate's Setup holds its own config (its seeds)
  per_replicate = batch_lib.drive([plan(s, s.config, s.workdir) for s in setups],
                                  setups[0].train_jobs)
  rows = [dict(row, replicate=index) for index, replicate_rows in enumerate(per_replicate)
          for row in replicate_rows]
  root = os.path.dirname(setups[0].workdir)
  _write(root, rows, setups[0].title, plots=True)
  print(report.format_table(rows, title=f"{setups[0].title}: pruning at initialisation vs IMP, "
                                        f"{len(setups)} replicates"), flush=True)
  return rows


def plan(setup: Setup, config: ml_collections.ConfigDict, workdir: str
         ) -> Generator[list[batch_lib.Job], list[loop.RunResult], list[dict]]:
  """The experiment as a coroutine: IMP's rounds (``prune_at_init.compare_imp``) and every
  score's rounds advanced together (:func:`kdt.tickets.batch.together`), so round r's
  re-trainings of every mask source — all ``lth`` from theta_0 over the same steps — train as
  one batch of tickets. Returns the rows: the dense run, IMP's, then each score's."""
  pai = config.prune_at_init
  sources = ([("imp", config.imp)] if pai.compare_imp else []) + [
      (score, score_group(config, score)) for score in pai.scores]
  log.info("[prune_at_init] %s masks at theta_0, re-trained as %s, together with %s",
           ", ".join(pai.scores), pai.recipe, "IMP" if pai.compare_imp else "nothing else")
  per_source = yield from batch_lib.together([
      imp_lib.IMPRounds(setup, group, os.path.join(workdir, name)).plan()
      for name, group in sources])
  rows: list[dict] = []
  for (name, _), source_rows in zip(sources, per_source):
    if not rows:
      rows.append(source_rows[0])  # the dense row
    rows += ([dict(r, recipe=name, retrained_as=r["recipe"]) for r in source_rows[1:]]
             if name != "imp" else source_rows[1:])
  _write(workdir, rows, setup.title, plots=True)
  print(report.format_table(rows, title=f"{setup.title}: pruning at initialisation vs IMP"),
        flush=True)
  return rows


def _write(workdir: str, rows: list[dict], title: str, plots: bool) -> None:
  if jax.process_index() != 0:
    return
  report.write_results(workdir, rows)
  if plots:
    fileio.makedirs(os.path.join(workdir, "plots"))
    report.plot_accuracy_vs_weights(
        rows, os.path.join(workdir, "plots", "accuracy_vs_weights.png"),
        title=f"{title}: masks at initialisation vs IMP")
