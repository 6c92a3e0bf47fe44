"""Experiments: one module per experiment, chosen by name; the library behind ``python -m kdt.main``.

``EXPERIMENTS`` maps ``config.experiment`` to its module; each module has
``run(setup, config, workdir) -> rows`` and ``pinned_steps(config)`` (the dense run's rewind
points). :func:`run` validates the config, prepares the workdir, builds the
:class:`~kdt.experiments.setup.Setup` once and hands it to the experiment. A notebook calls
:func:`run` exactly as the command line does; the workdir holds the run's whole state, so re-running
the same call continues where a killed run stopped and a finished run is not redone.
"""

from __future__ import annotations

import importlib
import logging
from types import ModuleType

import jax
import ml_collections

from kdt import config_lib
from kdt import parallel
from kdt import progress as progress_lib
from kdt import report
from kdt import timing
from kdt import workdir as workdir_lib
from kdt.experiments import setup as setup_lib
from kdt.experiments.setup import InvariantError
from kdt.experiments.setup import Setup

__all__ = ["EXPERIMENTS", "InvariantError", "Setup", "build_setup", "experiment_module", "run"]

log = logging.getLogger(__name__)

EXPERIMENTS: dict[str, str] = {name: f"kdt.experiments.{name}" for name in config_lib.EXPERIMENTS}
"""``config.experiment`` -> the module that runs it (imported when chosen); the names and their
config groups are :data:`kdt.config_lib.EXPERIMENT_GROUPS`."""


def experiment_module(name: str) -> ModuleType:
  """The module of experiment ``name`` (a key of :data:`EXPERIMENTS`)."""
  return importlib.import_module(EXPERIMENTS[name])


def run(config: ml_collections.ConfigDict, workdir: str, *, allow_config_change: bool = False,
        dataset=None, model=None, config_file: str | None = None):
  """Validates ``config``, prepares ``workdir``, builds the Setup and runs ``config.experiment``.

  Logs a header first (config file, workdir, devices, the plan's runs) and then, on every
  progress line, which run of the plan is training and the whole experiment's ETA
  (:mod:`kdt.progress`).

  Args:
    config: a config from ``configs/`` (possibly overridden).
    workdir: where the run's state lives; re-running with the same config resumes it.
    allow_config_change: continue a workdir whose stored config differs (see
      :func:`kdt.workdir.prepare_workdir`).
    dataset: use this dataset instead of loading ``config.data`` (tests, notebooks).
    model: use this network instead of ``config.model``'s (tests, notebooks).
    config_file: the config's file, for the header (None: a config built in code).

  Returns:
    The experiment's rows (also written to ``workdir/results.json``).
  """
  report.setup_logging()
  parallel.maybe_initialize_distributed(bool(config.parallel.distributed))
  config_lib.validate(config)
  log.info("%s", progress_lib.header(config, workdir, config_file))
  with timing.timed("setup"):
    if dataset is None:  # a missing dataset fails here, before anything is written
      dataset = setup_lib.load_data(config)
    workdir_lib.prepare_workdir(config, workdir, allow_config_change=allow_config_change)
    tracker = progress_lib.ExperimentProgress(progress_lib.plan(config).runs,
                                              int(config.train.num_steps))
    setup = build_setup(config, workdir, dataset=dataset, model=model, progress=tracker)
  module = experiment_module(config.experiment)
  if int(config.replicates) == 1:
    return module.run(setup, config, setup.workdir)
  return run_replicates(module, setup)


def run_replicates(module: ModuleType, setup: Setup) -> list[dict]:
  """``config.replicates`` seeds of the experiment in one workdir (``replicate_RR/`` each).

  An experiment with ``run_replicates(setups, config)`` (``imp``) advances the replicates
  together, so their runs train as one batch of tickets; the others run replicate after
  replicate on the same Setup (the compiled steps, data and mesh are shared). The workdir's
  ``results.json`` holds every replicate's rows, each with its ``replicate`` index; the terminal
  table shows mean ± std over the replicates.
  """
  config = setup.config
  setups = [setup.for_replicate(r) for r in range(int(config.replicates))]
  if hasattr(module, "run_replicates"):
    rows = module.run_replicates(setups, config)
  else:
    rows = []
    for index, replicate in enumerate(setups):
      out = module.run(replicate, replicate.config, replicate.workdir)
      rows += [dict(row, replicate=index) for row in (out if isinstance(out, list) else [out])]
    print(report.format_table(rows, title=f"{setup.title}, {len(setups)} replicates"), flush=True)
  with timing.timed("results_and_plots"):
    if jax.process_index() == 0:
      report.write_results(setup.workdir, rows)
  return rows


def build_setup(config: ml_collections.ConfigDict, workdir: str, *, dataset=None,
                model=None, progress=None) -> Setup:
  """The :class:`Setup` of a validated ``config`` with its experiment's rewind points pinned
  (``progress``: its trainers' progress callback)."""
  module = experiment_module(config.experiment)
  return Setup.build(config, workdir, pinned_steps=module.pinned_steps(config), dataset=dataset,
                     model=model, progress=progress)
