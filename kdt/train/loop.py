"""The training loop: batches, jit once per variant, log, evaluate, checkpoint, resume.

This is the I/O edge around the pure :func:`kdt.train.steps.train_step`. A :class:`Run` describes
one training run (the dense run, or one recipe's re-training in one IMP round) as data; a
:class:`Trainer` holds what is shared between runs (model, dataset, mesh, compiled steps) and
trains runs one after another. Each run checkpoints into its own directory and resumes from it:
killing the process and re-running continues from the latest checkpoint with the same data order
and augmentation keys (both are functions of the step), so it ends with the same weights.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import signal
import threading
import time
from typing import Any, Callable

import logging

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from kdt import checkpoint as checkpoint_lib
from kdt import data as data_lib
from kdt import faults
from kdt import parallel
from kdt.train import losses
from kdt.train import optim
from kdt.train import steps
from kdt.train.state import TrainState

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
  """Training produced a non-finite loss; the message names the run and the step."""


class PreemptedError(RuntimeError):
  """A stop was requested (SIGTERM); a checkpoint at the current step has been saved."""


_STOP_REQUESTED = threading.Event()


def install_sigterm_handler() -> None:
  """On SIGTERM (TPU preemption), finish the current step, checkpoint it and exit."""
  signal.signal(signal.SIGTERM, lambda signum, frame: _STOP_REQUESTED.set())


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
  """Hashable optimizer settings (see :func:`kdt.train.optim.make_direction`)."""
  name: str = "sgd"
  momentum: float = 0.9
  nesterov: bool = False
  weight_decay: float = 1e-4

  def make(self):
    return optim.make_direction(self.name, momentum=self.momentum, nesterov=self.nesterov,
                                weight_decay=self.weight_decay)


@dataclasses.dataclass(frozen=True)
class ScheduleSpec:
  """Hashable learning-rate schedule settings (see :func:`kdt.train.optim.make_schedule`)."""
  name: str
  learning_rate: float
  num_steps: int
  milestones: tuple[int, ...] = ()
  gamma: float = 0.1
  warmup_steps: int = 0
  end_learning_rate: float = 0.0

  def make(self):
    return optim.make_schedule(self.name, learning_rate=self.learning_rate, num_steps=self.num_steps,
                               milestones=self.milestones, gamma=self.gamma,
                               warmup_steps=self.warmup_steps,
                               end_learning_rate=self.end_learning_rate)


@dataclasses.dataclass
class Run:
  """One training run, as data.

  Attributes:
    name: for logs and TensorBoard (``"dense"``, ``"round_02/kd"``).
    directory: its checkpoint directory.
    init_state: builds the starting state (only called when there is no checkpoint yet). Called
      as is, not jitted by the loop: it may close over arrays (rewind points, masks), and a jit of
      it would compile once per run with them baked in. Jit heavy ones yourself
      (:func:`init_state_fn` is).
    mask: bool pytree (all True for dense training).
    end_step: train until ``state.step == end_step``.
    optimizer: optimizer settings.
    schedule: LR schedule, evaluated at ``state.step``.
    loss: loss settings.
    teacher: ``{"params", "batch_stats"}`` of a frozen teacher for KD, or None.
    teacher_logits_table: instead of ``teacher``, the teacher's logits for every (un-augmented)
      training example, ``[num_train, classes]`` on the host; gathered per batch.
    pinned_steps: steps whose checkpoints are kept forever (rewind points).
    data_seed: data-order seed.
    augment_seed: augmentation seed.
  """

  name: str
  directory: str
  init_state: Callable[[], TrainState]
  mask: Any
  end_step: int
  optimizer: OptimizerSpec
  schedule: ScheduleSpec
  loss: losses.LossConfig = losses.LossConfig()
  teacher: dict | None = None
  teacher_logits_table: np.ndarray | None = None
  pinned_steps: tuple[int, ...] = ()
  data_seed: int = 0
  augment_seed: int = 0


@dataclasses.dataclass
class RunResult:
  """What a finished run produced."""
  state: TrainState
  meta: dict

  @property
  def final(self) -> dict:
    return self.meta["history"][-1]


@dataclasses.dataclass(frozen=True)
class LoopSettings:
  """How often to log / evaluate / checkpoint (from ``config.train``)."""
  batch_size: int
  eval_batch_size: int = 500
  log_every_steps: int = 100
  eval_every_steps: int = 0
  eval_at_start: bool = False  # evaluate before the first step too (open_lth's "epoch 0")
  checkpoint_every_steps: int = 500
  keep_checkpoints: int = 2


class Trainer:
  """Trains :class:`Run` s of one model on one dataset, compiling each step variant once.

  Args:
    model: the Flax module.
    dataset: a :class:`kdt.data.Dataset`.
    mesh: the device mesh (:func:`kdt.parallel.make_mesh`).
    settings: logging / eval / checkpoint cadence and batch sizes.
    augment: augmentation name (``"default"`` = the dataset's own default).
    writer_factory: ``name -> clu MetricWriter`` (None = log only).
    ghost_batch_norm: BatchNorm statistics per device instead of over the global batch
      (:class:`kdt.parallel.GhostBatchNorm`).
    teacher_model: the KD teacher's module when it differs from ``model`` (sparse re-training
      with an architecture tweak distils the unmodified dense network); None = ``model``.
  """

  def __init__(self, model: nn.Module, dataset, mesh, settings: LoopSettings, *,
               augment: str = "default", writer_factory: Callable[[str], Any] | None = None,
               ghost_batch_norm: bool = False, teacher_model: nn.Module | None = None):
    self.model = model
    self.teacher_model = model if teacher_model is None else teacher_model
    self.dataset = dataset
    self.mesh = mesh
    self.settings = settings
    self.augment = dataset.info.augment if augment == "default" else augment
    # Streaming datasets (ImageNet) crop and flip on the host; the device then only normalises.
    self._device_augment = "none" if self.augment == "inception_crop_flip" else self.augment
    self.writer_factory = writer_factory
    self.ghost_batch_norm = ghost_batch_norm
    self._train_model = parallel.GhostBatchNorm(model, mesh) if ghost_batch_norm else model
    self.trace_counts: dict[Any, int] = {}
    self._train_steps: dict[Any, Callable] = {}
    self._replicated = parallel.replicated(mesh)
    self._eval = jax.jit(self._eval_fn, out_shardings=self._replicated)

  # ----- compiled pieces ------------------------------------------------------------------------

  def _train_step_fn(self, key):
    """Builds the jitted (preprocess -> teacher -> train_step) function for one variant."""
    return jax.jit(self.step_function(key), donate_argnums=(0,),
                   out_shardings=(self._replicated, self._replicated))

  def step_function(self, key) -> Callable:
    """The pure, un-jitted step of one variant (``key``: :meth:`variant`).

    ``step_fn(state, mask, raw_batch, teacher, augment_key) -> (state, metrics)``: preprocess and
    augment the raw batch (key folded with ``state.step``), the teacher's logits, then
    :func:`kdt.train.steps.train_step`. :class:`Trainer` jits it once per variant;
    :mod:`kdt.tickets.batch` maps it over a leading ticket axis.
    """
    optimizer, schedule, loss, teacher_kind = key
    direction, schedule_fn = optimizer.make(), schedule.make()
    info, augment = self.dataset.info, self._device_augment

    def step_fn(state, mask, raw_batch, teacher, augment_key):
      self.trace_counts[key] = self.trace_counts.get(key, 0) + 1  # runs at trace time only
      images = data_lib.preprocess(raw_batch["image"], jax.random.fold_in(augment_key, state.step),
                                   info=info, train=True, augment=augment)
      batch = {"image": images, "label": raw_batch["label"]}
      if teacher_kind == "model":
        teacher_logits = steps.teacher_logits(teacher["params"], teacher["batch_stats"], images,
                                              model=self.teacher_model)
      else:  # "cached": the logits rows of this batch, or None without KD
        teacher_logits = teacher
      return steps.train_step(state, mask, batch, teacher_logits, model=self._train_model,
                              direction=direction, schedule=schedule_fn, loss=loss)

    return step_fn

  @staticmethod
  def variant(run: Run) -> tuple:
    """What selects a compiled step: ``(optimizer, schedule, loss, teacher kind)``."""
    teacher_kind = ("model" if run.teacher is not None else
                    "cached" if run.teacher_logits_table is not None else "none")
    return (run.optimizer, run.schedule, run.loss, teacher_kind)

  def train_step_for(self, run: Run) -> Callable:
    """The compiled step for ``run``'s variant (cached: one compile per variant)."""
    key = self.variant(run)
    if key not in self._train_steps:
      self._train_steps[key] = self._train_step_fn(key)
    return self._train_steps[key]

  def _eval_fn(self, params, batch_stats, mask, raw_batch, step=None):
    images = data_lib.preprocess(raw_batch["image"], jax.random.key(0), info=self.dataset.info,
                                 train=False, augment="none")
    batch = {"image": images, "label": raw_batch["label"], "weight": raw_batch["weight"]}
    return steps.eval_step(params, batch_stats, mask, batch, model=self.model, step=step)

  # ----- evaluation -----------------------------------------------------------------------------

  def evaluate(self, params, batch_stats, mask, split: str = "test", step=None) -> dict:
    """Accuracy and mean CE loss of (masked) ``params`` on a whole split.

    ``step`` (the schedule position) matters only for a step-conditioned model
    (:func:`kdt.train.steps.apply_model`); None evaluates its end-of-schedule form.
    """
    totals = None
    for local in self.dataset.eval_batches(split, self.settings.eval_batch_size):
      sums = self._eval(params, batch_stats, mask, parallel.global_batch(local, self.mesh), step)
      totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = jax.device_get(totals)
    count = float(totals["count"])
    return {"accuracy": float(totals["correct"]) / count, "loss": float(totals["loss"]) / count}

  def evaluate_all(self, params, batch_stats, mask, step=None) -> dict:
    """``{"test_accuracy", "test_loss"[, "val_accuracy", "val_loss"]}`` (``step`` as in evaluate)."""
    out = {}
    splits = ("test", "val") if self.dataset.val is not None else ("test",)
    for split in splits:
      result = self.evaluate(params, batch_stats, mask, split, step)
      out[f"{split}_accuracy"], out[f"{split}_loss"] = result["accuracy"], result["loss"]
    return out

  # ----- training -------------------------------------------------------------------------------

  def _abstract_state(self, run: Run):
    shapes = jax.eval_shape(run.init_state)
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=self._replicated),
                        shapes)

  def train(self, run: Run) -> RunResult:
    """Trains ``run`` to ``run.end_step``, resuming from its latest checkpoint if there is one.

    A run whose final checkpoint is marked finished is loaded and returned without training.

    Raises:
      NonFiniteLossError: the loss became NaN/inf; the last good checkpoint is kept.
      PreemptedError: SIGTERM was received; the current step has been checkpointed.
    """
    s = self.settings
    pinned = tuple(sorted(set(run.pinned_steps) | {run.end_step}))
    ckpt = checkpoint_lib.Checkpointer(run.directory, pinned_steps=pinned,
                                       keep_last=s.keep_checkpoints, name=run.name)
    try:
      return self._train(run, ckpt)
    finally:
      ckpt.close()

  def _train(self, run: Run, ckpt: checkpoint_lib.Checkpointer) -> RunResult:
    s = self.settings
    restored = ckpt.restore_latest(self._abstract_state(run))
    if restored is not None:
      latest, state, meta = restored
      if meta.get("finished"):
        log.info("[%s] already finished at step %d (%s); not retraining.", run.name, latest,
                     _format_eval(meta["history"][-1]))
        return RunResult(state, meta)
      log.info("[%s] resuming from step %d of %d.", run.name, latest, run.end_step)
    else:
      state = _place(run.init_state(), self._replicated)
      meta = {"run": run.name, "history": [], "steps_trained": 0, "wall_time": 0.0,
              "start_step": int(state.step), "finished": False}
      if int(state.step) in run.pinned_steps:  # e.g. theta_0; other starts are rebuilt on resume
        ckpt.save(int(state.step), state, meta)

    mask = parallel.replicate(run.mask, self.mesh)
    teacher = run.teacher
    step_fn = self.train_step_for(run)
    augment_key = jax.random.key(run.augment_seed)
    writer = self.writer_factory(run.name) if self.writer_factory else None
    step = int(state.step)
    pending: list[tuple[int, dict]] = []
    wall_start, meta_wall = time.time(), meta["wall_time"]
    window_start, window_steps = time.time(), 0

    def flush_metrics():
      nonlocal window_start, window_steps
      if not pending:
        return
      fetched = jax.device_get([m for _, m in pending])
      for (at_step, _), values in zip(pending, fetched):
        if not math.isfinite(float(values["loss"])):
          raise NonFiniteLossError(
              f"[{run.name}] non-finite loss ({values['loss']}) at step {at_step}; stopping. The last "
              f"good checkpoint (step {ckpt.latest_step()}) in {run.directory} is kept.")
      last_step, last = pending[-1][0], fetched[-1]
      mean = {k: float(np.mean([f[k] for f in fetched])) for k in ("loss", "accuracy")}
      mean["learning_rate"] = float(last["learning_rate"])
      elapsed = time.time() - window_start
      images_per_s = window_steps * s.batch_size / max(elapsed, 1e-9)
      remaining = run.end_step - (last_step + 1)
      eta = remaining * elapsed / max(window_steps, 1)
      log.info("[%s] step %d/%d  loss %.4f  acc %.3f  lr %.4g  %.0f img/s  ETA %s",
                   run.name, last_step + 1, run.end_step, mean["loss"], mean["accuracy"],
                   mean["learning_rate"], images_per_s, _format_seconds(eta))
      if writer:
        writer.write_scalars(last_step + 1, {f"train/{k}": v for k, v in mean.items()} |
                             {"train/images_per_second": images_per_s})
      pending.clear()
      window_start, window_steps = time.time(), 0

    def save(at_step: int, finished: bool = False):
      flush_metrics()
      meta["wall_time"] = meta_wall + time.time() - wall_start
      meta["finished"] = finished
      ckpt.save(at_step, state, meta)

    if s.eval_at_start and not meta["history"]:
      self._record_eval(run, state, mask, step, meta, writer)
    while step < run.end_step:
      local = self._train_batch(step, run)
      raw_batch = parallel.global_batch(local, self.mesh)
      if run.teacher_logits_table is not None:
        teacher = self._cached_teacher_logits(step, run)
      state, metrics = step_fn(state, mask, raw_batch, teacher, augment_key)
      pending.append((step, metrics))
      faults.maybe_kill("step", run.name)
      step += 1
      window_steps += 1
      meta["steps_trained"] += 1
      if s.log_every_steps and step % s.log_every_steps == 0:
        flush_metrics()
      if s.eval_every_steps and step % s.eval_every_steps == 0 and step < run.end_step:
        flush_metrics()
        self._record_eval(run, state, mask, step, meta, writer)
      if step < run.end_step and ((s.checkpoint_every_steps and step % s.checkpoint_every_steps == 0)
                                  or step in run.pinned_steps):
        save(step)
      if _STOP_REQUESTED.is_set() and step < run.end_step:
        save(step)
        raise PreemptedError(f"[{run.name}] stopped by SIGTERM at step {step}; checkpoint saved in "
                             f"{run.directory}. Re-run the same command to continue.")
    flush_metrics()
    if not meta["history"] or meta["history"][-1]["step"] != step:
      self._record_eval(run, state, mask, step, meta, writer)
    save(step, finished=True)
    if writer:
      writer.flush()
    log.info("[%s] finished: %s", run.name, _format_eval(meta["history"][-1]))
    return RunResult(state, meta)

  def _cached_teacher_logits(self, step: int, run: Run) -> jax.Array:
    """The cached teacher logits of exactly the rows :meth:`_train_batch` returns."""
    indices = data_lib.train_batch_indices(len(self.dataset.train), self.settings.batch_size, step,
                                           run.data_seed)
    local = self.settings.batch_size // jax.process_count()
    rows = indices[jax.process_index() * local:(jax.process_index() + 1) * local]
    return parallel.global_batch({"logits": run.teacher_logits_table[rows]}, self.mesh)["logits"]

  def teacher_logits_table(self, teacher: dict) -> np.ndarray:
    """The teacher's logits for every training example, un-augmented, in dataset order."""
    if not hasattr(self, "_teacher_forward"):
      def forward(params, batch_stats, raw_batch):
        images = data_lib.preprocess(raw_batch["image"], None, info=self.dataset.info, train=False,
                                     augment="none")
        return steps.teacher_logits(params, batch_stats, images, model=self.teacher_model)
      self._teacher_forward = jax.jit(forward, out_shardings=self._replicated)
    chunks = [np.asarray(self._teacher_forward(teacher["params"], teacher["batch_stats"],
                                               parallel.global_batch(local, self.mesh)))
              for local in self.dataset.eval_batches("train", self.settings.eval_batch_size)]
    return np.concatenate(chunks)[:len(self.dataset.train)]

  def _train_batch(self, step: int, run: Run) -> dict:
    """This process's rows of the global batch of ``step`` (host arrays)."""
    if self.dataset.info.streaming:
      return self.dataset.train_batch(step, self.settings.batch_size, run.data_seed,
                                      augment=self.augment, augment_seed=run.augment_seed)
    return self.dataset.train_batch(step, self.settings.batch_size, run.data_seed)

  def _record_eval(self, run, state, mask, step, meta, writer):
    at = state.step if getattr(self.model, "conditioned_on_step", False) else None
    result = {"step": step, **self.evaluate_all(state.params, state.batch_stats, mask, at)}
    meta["history"].append(result)
    log.info("[%s] eval at step %d: %s", run.name, step, _format_eval(result))
    if writer:
      writer.write_scalars(step, {f"eval/{k}": v for k, v in result.items() if k != "step"})


def _place(tree: Any, sharding) -> Any:
  """``tree`` replicated over ``sharding``: host copies of local leaves, global leaves resharded."""
  def host(x):
    return x if isinstance(x, jax.Array) and not x.is_fully_addressable else np.asarray(x)
  return jax.device_put(jax.tree.map(host, tree), sharding)


def _format_eval(result: dict) -> str:
  return "  ".join(f"{k} {v:.4f}" for k, v in result.items() if k.endswith("accuracy"))


def _format_seconds(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def init_state_fn(model: nn.Module, input_shape, tx, seed: int) -> Callable[[], TrainState]:
  """A jitted function building the step-0 state from ``seed`` (pure, so it can be eval_shaped)."""
  from kdt.train.state import create_train_state

  def init():
    dummy = jnp.zeros((1, *input_shape), jnp.float32)
    variables = model.init(jax.random.key(seed), dummy, train=False)
    return create_train_state(dict(variables), tx)

  return jax.jit(init)
