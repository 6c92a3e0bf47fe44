"""Running an experiment from a config and a workdir: the library behind ``python -m kdt.main``.

A notebook calls :func:`run` exactly as the command line does. The workdir holds the run's whole
state (``config.json``, checkpoints, results), so re-running the same call continues where a killed
run stopped and a finished run is not redone.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import jax
import ml_collections

from kdt import config_lib
from kdt import data as data_lib
from kdt import fileio
from kdt import models as models_lib
from kdt import parallel
from kdt import report
from kdt.train import loop
from kdt.train import losses


log = logging.getLogger(__name__)


class WorkdirConfigMismatchError(ValueError):
  """The workdir belongs to a run with a different config."""


class InvariantError(RuntimeError):
  """A runtime invariant failed (a pruned weight non-zero, a wrong density, hosts disagree)."""


def write_json_atomic(path: str, payload: Any) -> None:
  """Writes JSON via a temporary file and a rename, so a kill never leaves half a file
  (in Cloud Storage: one object upload, see :func:`kdt.fileio.write_atomic`)."""
  fileio.write_atomic(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def prepare_workdir(config: ml_collections.ConfigDict, workdir: str, *,
                    allow_config_change: bool = False) -> None:
  """Creates ``workdir`` and stores the config, or checks it against the stored one.

  Args:
    config: the resolved config.
    workdir: the run's directory.
    allow_config_change: accept a config that differs from the stored one (e.g. more IMP rounds
      for a finished run). The differences are logged and appended to ``config_changes.json``;
      finished runs are kept as they are, and checkpoints that no longer fit are refused by name.

  Raises:
    WorkdirConfigMismatchError: ``workdir/config.json`` holds a different config and
      ``allow_config_change`` is False; nothing is touched.
  """
  path = os.path.join(workdir, "config.json")
  resolved = config_lib.to_dict(config)
  if fileio.exists(path):
    with fileio.open(path, encoding="utf-8") as f:
      stored = json.load(f)
    differences = config_lib.diff(stored, resolved)
    if not differences:
      return
    if not allow_config_change:
      raise WorkdirConfigMismatchError(
          f"{workdir} holds a run with a different config; refusing to mix them. Differing fields "
          f"(stored -> requested):\n  " + "\n  ".join(differences) +
          "\nUse a new --workdir, or pass --allow_config_change to continue this run with the new "
          "config (the change is recorded in config_changes.json).")
    log.warning("WARNING: continuing %s with a changed config (--allow_config_change):\n  %s",
                workdir, "\n  ".join(differences))
    if jax.process_index() == 0:
      changes_path = os.path.join(workdir, "config_changes.json")
      history = []
      if fileio.exists(changes_path):
        with fileio.open(changes_path, encoding="utf-8") as f:
          history = json.load(f)
      history.append({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "changes": differences,
                      "previous": stored})
      write_json_atomic(changes_path, history)
      write_json_atomic(path, resolved)
    return
  fileio.makedirs(workdir)
  if jax.process_index() == 0:
    write_json_atomic(path, resolved)


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The resolved config a workdir was run with (``workdir/config.json``)."""
  with fileio.open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
    stored = json.load(f)
  return ml_collections.ConfigDict(_tuples(stored))


def _tuples(tree):
  """JSON lists back to the tuples configs use."""
  if isinstance(tree, dict):
    return {k: _tuples(v) for k, v in tree.items()}
  if isinstance(tree, list):
    return tuple(_tuples(v) for v in tree)
  return tree


def load_results(workdir: str) -> Any:
  """A workdir's ``results.json`` (IMP: one row per (round, recipe))."""
  with fileio.open(os.path.join(workdir, "results.json"), encoding="utf-8") as f:
    return json.load(f)


def build_model(config: ml_collections.ConfigDict, info: data_lib.DatasetInfo):
  """The Flax module named by ``config.model`` for the dataset's input shape and classes."""
  import jax.numpy as jnp
  dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[config.model.compute_dtype]
  return models_lib.create_model(config.model.name, num_classes=info.num_classes,
                                 input_shape=info.input_shape, activation=config.model.activation,
                                 dtype=dtype, init_scheme=config.model.init_scheme)


def load_data(config: ml_collections.ConfigDict):
  """This process's view of the dataset named by ``config.data``."""
  return data_lib.load_dataset(
      config.data.name, data_dir=config.data.dir, tfds_data_dir=config.data.tfds_dir,
      val_size=config.data.val_size, process_index=jax.process_index(),
      process_count=jax.process_count(), mean=tuple(config.data.mean), std=tuple(config.data.std))


def optimizer_spec(config) -> loop.OptimizerSpec:
  o = config.optimizer
  return loop.OptimizerSpec(name=o.name, momentum=float(o.momentum), nesterov=bool(o.nesterov),
                            weight_decay=float(o.weight_decay))


def schedule_spec(config) -> loop.ScheduleSpec:
  s = config.schedule
  return loop.ScheduleSpec(name=s.name, learning_rate=float(config.optimizer.learning_rate),
                           num_steps=int(config.train.num_steps),
                           milestones=tuple(int(m) for m in s.milestones), gamma=float(s.gamma),
                           warmup_steps=int(s.warmup_steps),
                           end_learning_rate=float(s.end_learning_rate))


def loss_config(config) -> losses.LossConfig:
  l = config.loss
  return losses.LossConfig(
      label_smoothing=float(l.label_smoothing),
      label_smoothing_convention=l.label_smoothing_convention, kd_alpha=float(l.kd_alpha),
      kd_temperature=float(l.kd_temperature), kd_reduction=l.kd_reduction,
      kd_stop_step=int(l.kd_stop_step))


def make_trainer(config, workdir: str, dataset, model, mesh, teacher_model=None) -> loop.Trainer:
  """The :class:`loop.Trainer` for ``model`` (``teacher_model``: the KD teacher's module, if other)."""
  t = config.train
  settings = loop.LoopSettings(
      batch_size=t.batch_size, eval_batch_size=t.eval_batch_size, log_every_steps=t.log_every_steps,
      eval_every_steps=t.eval_every_steps or data_lib.order.every_steps(
          t.eval_every_epochs, len(dataset.train), t.batch_size),
      eval_at_start=t.eval_at_start, checkpoint_every_steps=t.checkpoint_every_steps,
      keep_checkpoints=t.keep_checkpoints)
  tb_root = os.path.join(workdir, "tensorboard")
  just_logging = jax.process_index() > 0
  return loop.Trainer(
      model, dataset, mesh, settings, augment=config.data.augment,
      writer_factory=lambda name: report.create_writer(os.path.join(tb_root, name),
                                                       just_logging=just_logging),
      ghost_batch_norm=bool(config.parallel.ghost_batch_norm), teacher_model=teacher_model)


def dense_run(config, workdir: str, model, pinned_steps=()) -> loop.Run:
  """The dense training run from theta_0 (seed ``config.seeds.init``)."""
  direction = optimizer_spec(config).make()
  info = data_lib.dataset_info(config.data.name)
  init = loop.init_state_fn(model, info.input_shape, direction, config.seeds.init)
  return loop.Run(
      name="dense", directory=os.path.join(fileio.absolute(workdir), "dense"), init_state=init,
      mask=ones_mask(init), end_step=config.train.num_steps, optimizer=optimizer_spec(config),
      schedule=schedule_spec(config), loss=loss_config(config),
      pinned_steps=tuple(sorted({0, *config.train.pinned_steps, *pinned_steps})),
      data_seed=config.seeds.data_order, augment_seed=config.seeds.augment)


def ones_mask(init_state_fn) -> Any:
  """All-True mask with the params' structure (dense training)."""
  import jax.numpy as jnp
  shapes = jax.eval_shape(init_state_fn).params
  return jax.tree.map(lambda x: jnp.ones(x.shape, bool), shapes)


def run_train(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Experiment ``train``: dense training; writes ``results.json`` with the final evaluation."""
  mesh = parallel.make_mesh()
  dataset = load_data(config)
  model = build_model(config, dataset.info)
  trainer = make_trainer(config, workdir, dataset, model, mesh)
  run = dense_run(config, workdir, model)
  result = trainer.train(run)
  summary = {"experiment": "train", "model": config.model.name, "dataset": config.data.name,
             "steps": int(result.state.step), **{k: v for k, v in result.final.items() if k != "step"},
             "best_test_accuracy": max(h["test_accuracy"] for h in result.meta["history"]),
             "wall_time": result.meta["wall_time"], "history": result.meta["history"]}
  if jax.process_index() == 0:
    write_json_atomic(os.path.join(workdir, "results.json"), summary)
  print(f"{config.model.name} on {config.data.name}: test accuracy {summary['test_accuracy']:.4f} "
        f"after {summary['steps']} steps  (workdir: {workdir})", flush=True)
  return summary


def run_imp(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  """Experiment ``imp``: see :mod:`kdt.tickets.imp`."""
  from kdt.tickets import imp  # the IMP driver builds on this module
  return imp.run_imp(config, workdir)


def run_lmc(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  """Experiment ``lmc``: see :mod:`kdt.analysis.experiments`."""
  from kdt.analysis import experiments  # builds on this module and the IMP driver
  return experiments.run_lmc(config, workdir)


def run_correlation(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  """Experiment ``correlation``: see :mod:`kdt.analysis.experiments`."""
  from kdt.analysis import experiments
  return experiments.run_correlation(config, workdir)


def run_dst(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  """Experiment ``dst``: see :mod:`kdt.tickets.dst`."""
  from kdt.tickets import dst  # builds on this module and the IMP driver
  return dst.run_dst(config, workdir)


EXPERIMENTS = {"train": run_train, "imp": run_imp, "lmc": run_lmc, "correlation": run_correlation,
               "dst": run_dst}


def run(config: ml_collections.ConfigDict, workdir: str, *, allow_config_change: bool = False):
  """Validates ``config``, prepares ``workdir`` and runs ``config.experiment``.

  Args:
    config: a config from ``configs/`` (possibly overridden).
    workdir: where the run's state lives; re-running with the same config resumes it.
    allow_config_change: continue a workdir whose stored config differs (see
      :func:`prepare_workdir`).

  Returns:
    The experiment's summary (also written to ``workdir/results.json``).
  """
  report.setup_logging()
  parallel.maybe_initialize_distributed(bool(config.parallel.distributed))
  config_lib.validate(config)
  prepare_workdir(config, workdir, allow_config_change=allow_config_change)
  return EXPERIMENTS[config.experiment](config, workdir)
