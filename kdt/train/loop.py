"""The training loop: batches, jit once per variant, log, evaluate, checkpoint, resume.

This is the I/O edge around the pure :func:`kdt.train.steps.train_step`. A :class:`Run` describes
one training run (the dense run, or one recipe's re-training in one IMP round) as data; a
:class:`Trainer` holds what is shared between runs (model, dataset, mesh, compiled steps) and
trains runs one after another. Each run checkpoints into its own directory and resumes from it:
killing the process and re-running continues from the latest checkpoint with the same data order
and augmentation keys (both are functions of the step), so it ends with the same weights.
"""

from __future__ import annotations

import copy
import dataclasses
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
from kdt import schema
from kdt import timing
from kdt.train import losses
from kdt.train import optim
from kdt.train import steps
from kdt.train.state import TrainState

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
  """Training produced a non-finite loss; the message names the run and the step."""


class PreemptedError(RuntimeError):
  """A stop was requested (SIGTERM or Ctrl-C); a checkpoint at the current step has been saved.

  Attributes:
    exit_code: what the command line exits with: 143 after SIGTERM, 130 after SIGINT (the shell
      conventions, ``128 + signal number``).
  """

  def __init__(self, message: str, exit_code: int = 143):
    super().__init__(message)
    self.exit_code = exit_code


_STOP_REQUESTED = threading.Event()
_STOP_SIGNAL: list[int] = []


def _request_stop(signum, frame):  # pylint: disable=unused-argument
  """First SIGTERM/SIGINT: stop at the next step boundary, after a checkpoint. A second Ctrl-C
  while waiting for that boundary (a long evaluation, say) stops at once (KeyboardInterrupt)."""
  if signum == signal.SIGINT and _STOP_REQUESTED.is_set():
    signal.signal(signal.SIGINT, signal.default_int_handler)
    raise KeyboardInterrupt
  _STOP_SIGNAL.append(signum)
  _STOP_REQUESTED.set()
  if signum == signal.SIGINT:
    log.warning("Ctrl-C: stopping after the current step (a checkpoint is written first); press "
                "Ctrl-C again to stop at once.")


def install_stop_handlers() -> None:
  """SIGTERM (TPU preemption) and SIGINT (Ctrl-C): finish the current step, checkpoint, exit.

  The handler only sets a flag, so an Orbax save in progress is never interrupted half-way (no
  ``*.orbax-checkpoint-tmp`` folder, no traceback from Orbax's threads): :meth:`Trainer.train`
  checks the flag after each step, saves that step and raises :class:`PreemptedError`. Only the
  main thread can install signal handlers; elsewhere this does nothing.
  """
  if threading.current_thread() is not threading.main_thread():
    return
  _STOP_REQUESTED.clear()
  _STOP_SIGNAL.clear()
  signal.signal(signal.SIGTERM, _request_stop)
  signal.signal(signal.SIGINT, _request_stop)


def stop_requested() -> bool:
  """Whether SIGTERM or Ctrl-C asked the training loops to stop at the next step boundary."""
  return _STOP_REQUESTED.is_set()


def stop_error(run_name: str, step: int, directory: str) -> PreemptedError:
  """The :class:`PreemptedError` a loop raises after saving ``step`` on a requested stop."""
  return _stop_error(run_name, step, directory)


def _stop_error(run_name: str, step: int, directory: str) -> PreemptedError:
  signum = _STOP_SIGNAL[-1] if _STOP_SIGNAL else signal.SIGTERM
  if signum == signal.SIGINT:
    return PreemptedError(f"[{run_name}] interrupted at step {step} — rerun the same command to "
                          f"continue (checkpoint saved in {directory}).", exit_code=130)
  return PreemptedError(f"[{run_name}] stopped by SIGTERM at step {step}; checkpoint saved in "
                        f"{directory}. Re-run the same command to continue.", exit_code=143)


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
  optimizer: optim.OptimizerSpec
  schedule: optim.ScheduleSpec
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
class Progress:
  """What :class:`Trainer` reports to its ``progress`` callback.

  It is called at every log step, when a run finishes, and when a finished run is loaded
  instead of trained. Whoever knows the whole plan (run i of N, :mod:`kdt.progress`) turns these
  into an experiment-wide progress line and ETA; the loop itself only knows the current run.

  Attributes:
    run: the run's name.
    directory: the run's checkpoint directory.
    step: the step just reached.
    start_step: the step this run started from (its schedule position, not 0 for rewinding).
    end_step: the step it trains to.
    steps_trained: steps trained since the last report (0 for a finished or loaded run).
    seconds_per_step: training wall time per step in the last window (evaluation and checkpoint
      writes left out); 0.0 when no step was trained in it.
    train_loss: mean training loss over the window (nan when no step was trained in it).
    train_accuracy: mean training-batch accuracy over the window (nan likewise).
    finished: the run has reached ``end_step`` (trained now, or loaded finished).
  """
  run: str
  directory: str
  step: int
  start_step: int
  end_step: int
  steps_trained: int
  seconds_per_step: float
  train_loss: float
  train_accuracy: float
  finished: bool = False


@dataclasses.dataclass(frozen=True)
class LoopSettings:
  """How often to log / evaluate / checkpoint (from ``config.train``; ``eval_every_steps`` also
  counts ``train.eval_every_epochs``, see :func:`kdt.experiments.setup.loop_settings`)."""
  batch_size: int = schema.default("train.batch_size")
  eval_batch_size: int = schema.default("train.eval_batch_size")
  log_every_steps: int = schema.default("train.log_every_steps")
  eval_every_steps: int = schema.default("train.eval_every_steps")
  eval_at_start: bool = schema.default("train.eval_at_start")
  checkpoint_every_steps: int = schema.default("train.checkpoint_every_steps")
  keep_checkpoints: int = schema.default("train.keep_checkpoints")


class Trainer:
  """Trains :class:`Run` s of one model on one dataset, compiling each step variant once.

  Args:
    model: the Flax module.
    dataset: a :class:`kdt.data.Dataset`.
    mesh: the device mesh (:func:`kdt.parallel.make_mesh`).
    settings: logging / eval / checkpoint cadence and batch sizes.
    augment: augmentation name (``"default"`` = the dataset's own default).
    writer_factory: ``(name, purge_step=first step written) -> writer`` (:mod:`kdt.report`; None =
      log only).
    ghost_batch_norm: BatchNorm statistics per device instead of over the global batch
      (:class:`kdt.parallel.GhostBatchNorm`).
    teacher_model: the KD teacher's module when it differs from ``model`` (sparse re-training
      with an architecture tweak distils the unmodified dense network); None = ``model``.
    progress: called with a :class:`Progress` at every log step, at the end of a run and when a
      finished run is loaded (None = nothing); a string it returns is added to the loop's log
      line (:class:`kdt.progress.ExperimentProgress`: run i of N, the experiment's ETA).
  """

  def __init__(self, model: nn.Module, dataset, mesh, settings: LoopSettings, *,
               augment: str = "default", writer_factory: Callable[[str], Any] | None = None,
               ghost_batch_norm: bool = False, teacher_model: nn.Module | None = None,
               progress: Callable[[Progress], None] | None = None):
    self.model = model
    self.progress = progress
    self.name_prefix = ""
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
    self._compiled: set[Callable] = set()  # step functions called (compiled) at least once
    self._replicated = parallel.replicated(mesh)
    self._eval = jax.jit(self._eval_fn, out_shardings=self._replicated)

  def with_name_prefix(self, prefix: str) -> "Trainer":
    """This trainer for runs named ``prefix + run.name`` (one replicate's runs: their logs and
    TensorBoard folders), sharing this trainer's compiled steps (a shallow copy)."""
    other = copy.copy(self)
    other.name_prefix = prefix
    return other

  @property
  def compile_cache_id(self) -> int:
    """Equal for this trainer and its :meth:`with_name_prefix` copies (they share compiles)."""
    return id(self._train_steps)

  def named(self, run: Run) -> Run:
    """``run`` under this trainer's name prefix (a no-op without one)."""
    if not self.name_prefix or run.name.startswith(self.name_prefix):
      return run
    return dataclasses.replace(run, name=self.name_prefix + run.name)

  def compiled(self, key: Any, build: Callable[[], Callable]) -> Callable:
    """The jitted function cached under ``key`` (built by ``build()`` on first use): one compile
    per variant, shared with every copy of this trainer."""
    if key not in self._train_steps:
      self._train_steps[key] = build()
    return self._train_steps[key]

  def call_step(self, step_fn: Callable, *args) -> Any:
    """``step_fn(*args)``; its first call blocks and is timed as ``compile``."""
    if step_fn in self._compiled:
      return step_fn(*args)
    with timing.timed("compile"):
      out = jax.block_until_ready(step_fn(*args))
    self._compiled.add(step_fn)
    return out

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
      batch = {"image": images, "label": raw_batch["label"],
               **{k: raw_batch[k] for k in ("weight",) if k in raw_batch}}
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
    return self.compiled(key, lambda: self._train_step_fn(key))

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
      PreemptedError: SIGTERM or SIGINT was received; the current step has been checkpointed.
    """
    run = self.named(run)
    ckpt = self.checkpointer(run)
    try:
      return self._train(run, ckpt)
    finally:
      ckpt.close()

  def checkpointer(self, run: Run) -> checkpoint_lib.Checkpointer:
    """``run``'s checkpoints, with its pinned steps (and its final step) kept forever."""
    pinned = tuple(sorted(set(run.pinned_steps) | {run.end_step}))
    return checkpoint_lib.Checkpointer(run.directory, pinned_steps=pinned,
                                       keep_last=self.settings.keep_checkpoints, name=run.name)

  def restore_step(self, run: Run, step: int) -> tuple[TrainState, dict]:
    """``run``'s state at ``step`` (a rewind point), rebuilt by replaying the run if it is damaged.

    Training is a pure function of the starting state and the step (data order and augmentation
    keys are functions of it), so a pinned step is exactly the state that replaying the run from
    an earlier good checkpoint (step 0, theta_0) to ``step`` gives — bit for bit, with the same
    compiled step on the same devices. A missing or corrupted checkpoint at ``step`` is moved
    aside (``<step>.corrupt.<time>``), replayed with a warning, saved again and returned; when the
    damaged copy's metadata still holds its fingerprint, the replay is checked against it.

    Args:
      run: the run that wrote the checkpoint (the dense run).
      step: the step to restore.

    Returns:
      ``(state, meta)``.

    Raises:
      CheckpointMismatchError: the checkpoint holds another model (nothing is replayed).
      CheckpointCorruptError: it is damaged and no earlier state to replay from is usable.
    """
    run = self.named(run)
    ckpt = self.checkpointer(run)
    try:
      like = self._abstract_state(run)
      try:
        if step not in ckpt.steps():
          raise checkpoint_lib.CheckpointCorruptError(
              f"{run.directory} step {step}: the checkpoint is missing")
        return ckpt.restore(step, like)
      except checkpoint_lib.CheckpointMismatchError:
        raise
      except checkpoint_lib.CheckpointCorruptError as e:
        log.warning("WARNING: %s. Rebuilding it by replaying %s up to step %d (training is "
                    "deterministic, so the replay is exact).", e, run.name, step)
        return self._replay(run, ckpt, step, like)
    finally:
      ckpt.close()

  def _replay(self, run: Run, ckpt: checkpoint_lib.Checkpointer, step: int, like):
    """Retrains ``run`` from its newest good state before ``step`` up to ``step`` and saves it."""
    expected = None
    if step in ckpt.steps():
      try:
        expected = ckpt.restore_meta(step).get("fingerprint")
      except Exception:  # pylint: disable=broad-except
        expected = None
      ckpt.quarantine(step)
    state = meta = None
    for earlier in reversed([s for s in ckpt.steps() if s < step]):
      try:
        state, meta = ckpt.restore(earlier, like)
        break
      except checkpoint_lib.CheckpointMismatchError:
        raise
      except checkpoint_lib.CheckpointCorruptError as e:
        log.warning("WARNING: %s — trying an earlier one.", e)
    if state is None:
      state = _place(run.init_state(), self._replicated)
      if int(state.step) > step:
        raise checkpoint_lib.CheckpointCorruptError(
            f"{run.directory} step {step}: damaged, and no earlier state of {run.name} to rebuild "
            "it from.")
      meta = {"run": run.name, "history": [], "steps_trained": 0, "wall_time": 0.0,
              "start_step": int(state.step), "finished": False}
    start = int(state.step)
    mask = parallel.replicate(run.mask, self.mesh)
    step_fn = self.train_step_for(run)
    augment_key = jax.random.key(run.augment_seed)
    teacher = run.teacher
    started = time.time()
    for at in range(start, step):
      raw_batch = parallel.global_batch(self.train_batch(at, run), self.mesh)
      if run.teacher_logits_table is not None:
        teacher = self.cached_teacher_logits(at, run)
      state, _ = step_fn(state, mask, raw_batch, teacher, augment_key)
    meta = dict(meta, steps_trained=meta.get("steps_trained", 0) + step - start, finished=False,
                history=[h for h in meta.get("history", []) if h["step"] <= step])
    meta.pop("fingerprint", None)
    ckpt.save(step, state, meta)
    got = checkpoint_lib.fingerprint(state)
    if expected is not None and expected != got:
      log.warning("WARNING: the replayed %s step %d differs from the damaged checkpoint's "
                  "fingerprint (%s vs %s): was it written by another kdt or device count?",
                  run.name, step, got, expected)
    log.warning("WARNING: rebuilt %s step %d by replaying steps %d..%d (%.1f s)%s.", run.name, step,
                start, step, time.time() - started,
                "; it matches the fingerprint saved with the damaged copy" if expected == got else "")
    return state, dict(meta, fingerprint=got)

  def _train(self, run: Run, ckpt: checkpoint_lib.Checkpointer) -> RunResult:
    state, meta, finished = self.open_run(run, ckpt)
    if finished:
      return RunResult(state, meta)
    return self.continue_run(run, ckpt, state, meta)

  def open_run(self, run: Run, ckpt: checkpoint_lib.Checkpointer) -> tuple[TrainState, dict, bool]:
    """``run``'s latest checkpoint, or its starting state (saved at once on a pinned step).

    Returns:
      ``(state, meta, finished)``; a finished run is loaded, never retrained.
    """
    with timing.timed("checkpoints"):
      restored = ckpt.restore_latest(self._abstract_state(run))
    if restored is not None:
      latest, state, meta = restored
      if meta.get("finished"):
        nan = float("nan")
        note = self.report_progress(Progress(run.name, run.directory, latest, meta["start_step"],
                                     run.end_step, 0, 0.0, nan, nan, finished=True))
        log.info("[%s] already finished at step %d (%s); not retraining.%s", run.name, latest,
                 format_eval(meta["history"][-1]), note)
        return state, meta, True
      log.info("resuming %s from step %d of %d.", run.name, latest, run.end_step)
      return state, meta, False
    with timing.timed("setup"):
      state = _place(run.init_state(), self._replicated)
    meta = {"run": run.name, "history": [], "steps_trained": 0, "wall_time": 0.0,
            "start_step": int(state.step), "finished": False}
    if int(state.step) in run.pinned_steps:  # e.g. theta_0; other starts are rebuilt on resume
      with timing.timed("checkpoints"):
        ckpt.save(int(state.step), state, meta)
    return state, meta, False

  def continue_run(self, run: Run, ckpt: checkpoint_lib.Checkpointer, state: TrainState,
                   meta: dict) -> RunResult:
    """Trains ``run`` from ``state`` (:meth:`open_run`'s) to its end step."""
    with timing.timed("train_steps"):  # exclusive: data, eval, checkpoints, compile are nested
      return self._train_timed(run, ckpt, state, meta)

  def _train_timed(self, run: Run, ckpt: checkpoint_lib.Checkpointer, state: TrainState,
                   meta: dict) -> RunResult:
    s = self.settings
    mask = parallel.replicate(run.mask, self.mesh)
    teacher = run.teacher
    step_fn = self.train_step_for(run)
    augment_key = jax.random.key(run.augment_seed)
    writer = (self.writer_factory(run.name, purge_step=int(state.step) + 1)  # resume: no duplicates
              if self.writer_factory else None)
    step = int(state.step)
    pending: list[tuple[int, dict]] = []
    wall_start, meta_wall = time.time(), meta["wall_time"]
    window_start, window_steps, window_excluded = time.time(), 0, 0.0

    def flush_metrics():
      nonlocal window_start, window_steps, window_excluded
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
      # Training time only: evaluations and checkpoint writes in this window are left out.
      elapsed = max(time.time() - window_start - window_excluded, 1e-9)
      images_per_s = window_steps * s.batch_size / elapsed
      remaining = run.end_step - (last_step + 1)
      eta = remaining * elapsed / max(window_steps, 1)
      note = self.report_progress(Progress(run.name, run.directory, last_step + 1, meta["start_step"],
                                   run.end_step, window_steps, elapsed / max(window_steps, 1),
                                   mean["loss"], mean["accuracy"]))
      log.info("[%s] step %d/%d  train loss %.4f  train acc %.3f  lr %.4g  %.0f img/s  ETA %s%s",
               run.name, last_step + 1, run.end_step, mean["loss"], mean["accuracy"],
               mean["learning_rate"], images_per_s, _format_seconds(eta), note)
      if writer:
        writer.write_scalars(last_step + 1, {f"train/{k}": v for k, v in mean.items()} |
                             {"train/images_per_second": images_per_s})
      pending.clear()
      window_start, window_steps, window_excluded = time.time(), 0, 0.0

    def excluded(category, fn, *args, **kwargs):
      """Runs ``fn`` with its wall time kept out of the current img/s window (and charged to the
      :mod:`kdt.timing` ``category``)."""
      nonlocal window_excluded
      started = time.time()
      try:
        with timing.timed(category):
          return fn(*args, **kwargs)
      finally:
        window_excluded += time.time() - started

    def save(at_step: int, finished: bool = False):
      flush_metrics()
      meta["wall_time"] = meta_wall + time.time() - wall_start
      meta["finished"] = finished
      excluded("checkpoints", ckpt.save, at_step, state, meta)

    if s.eval_at_start and not meta["history"]:
      with timing.timed("eval"):
        self.record_eval(run, state, mask, step, meta, writer)
    first_step = step
    while step < run.end_step:
      if _STOP_REQUESTED.is_set():
        if step > first_step:  # a state this process trained: keep it
          save(step)
        raise _stop_error(run.name, step, run.directory)
      with timing.timed("data"):
        local = self.train_batch(step, run)
        raw_batch = parallel.global_batch(local, self.mesh)
        if run.teacher_logits_table is not None:
          teacher = self.cached_teacher_logits(step, run)
      state, metrics = self.call_step(step_fn, state, mask, raw_batch, teacher, augment_key)
      pending.append((step, metrics))
      faults.maybe_kill("step", run.name)
      step += 1
      window_steps += 1
      meta["steps_trained"] += 1
      if s.log_every_steps and step % s.log_every_steps == 0:
        flush_metrics()
      if s.eval_every_steps and step % s.eval_every_steps == 0 and step < run.end_step:
        flush_metrics()
        excluded("eval", self.record_eval, run, state, mask, step, meta, writer)
      if step < run.end_step and ((s.checkpoint_every_steps and step % s.checkpoint_every_steps == 0)
                                  or step in run.pinned_steps):
        save(step)
    flush_metrics()
    if not meta["history"] or meta["history"][-1]["step"] != step:
      with timing.timed("eval"):
        self.record_eval(run, state, mask, step, meta, writer)
    save(step, finished=True)
    if writer:
      writer.flush()
    nan = float("nan")
    note = self.report_progress(Progress(run.name, run.directory, step, meta["start_step"], run.end_step,
                                 0, 0.0, nan, nan, finished=True))
    log.info("[%s] finished: %s%s", run.name, format_eval(meta["history"][-1]), note)
    return RunResult(state, meta)

  def report_progress(self, progress: Progress) -> str:
    """``progress`` handed to the ``progress`` callback; what it returns, as a log-line suffix."""
    note = self.progress(progress) if self.progress is not None else None
    return f"  |  {note}" if note else ""

  def cached_teacher_logits(self, step: int, run: Run) -> jax.Array:
    """The cached teacher logits of exactly the rows :meth:`train_batch` returns."""
    indices = data_lib.train_batch_indices(len(self.dataset.train), self.settings.batch_size, step,
                                           run.data_seed, self.dataset.last_batch)
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

  def train_batch(self, step: int, run: Run) -> dict:
    """This process's rows of the global batch of ``step`` (host arrays)."""
    if self.dataset.info.streaming:
      return self.dataset.train_batch(step, self.settings.batch_size, run.data_seed,
                                      augment=self.augment, augment_seed=run.augment_seed)
    return self.dataset.train_batch(step, self.settings.batch_size, run.data_seed)

  def record_eval(self, run, state, mask, step, meta, writer):
    at = state.step if getattr(self.model, "conditioned_on_step", False) else None
    result = {"step": step, **self.evaluate_all(state.params, state.batch_stats, mask, at)}
    meta["history"].append(result)
    log.info("[%s] eval at step %d: %s", run.name, step, format_eval(result))
    if writer:
      writer.write_scalars(step, {f"eval/{k}": v for k, v in result.items() if k != "step"})


def _place(tree: Any, sharding) -> Any:
  """``tree`` replicated over ``sharding``: host copies of local leaves, global leaves resharded."""
  def host(x):
    return x if isinstance(x, jax.Array) and not x.is_fully_addressable else np.asarray(x)
  return jax.device_put(jax.tree.map(host, tree), sharding)


def format_eval(result: dict) -> str:
  """``test acc 0.9806  val acc 0.9750``: held-out accuracies, named by split."""
  return "  ".join(f"{k.removesuffix('_accuracy')} acc {v:.4f}" for k, v in result.items()
                   if k.endswith("accuracy"))


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
