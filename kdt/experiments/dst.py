"""Experiment ``dst``: dynamic sparse training (RigL, SET) against IMP at the same densities.

For each method of ``config.dst.methods`` and each density (IMP's round densities
:math:`(1-p)^r` unless ``dst.densities`` lists others), a sparse network is trained from scratch:

* theta_0 is the dense run's initialisation (``seeds.init``); the initial mask is random with
  ERK (or uniform / layer-wise) per-layer densities over ``imp.selector``'s prunable kernels (key
  from ``seeds.prune``); ``dst.init="sparsity_aware"`` re-draws every neuron for its actual fan-in;
* it trains for ``train.num_steps`` with the dense run's optimizer, schedule, data order and
  augmentation; after every :math:`\\Delta T` = ``dst.update_every`` steps up to
  ``dst.update_end_step`` the mask changes (:mod:`kdt.pruning.dynamic`): RigL grows by the dense
  gradient of the batch of the next step, SET at random, ``static`` never (a fixed random sparse
  network, the baseline without mask updates).

With ``dst.compare_imp`` the IMP experiment of ``config.imp`` runs first (its rounds in
``workdir/imp``, on the same Setup and dense run); the table and the plot then hold IMP's recipes,
the dense run and the DST methods together.

Mask updates happen *between* jitted training segments: the run of one method and density is a
sequence of :class:`~kdt.train.loop.Run` s, one per interval between updates, each starting from the
previous one's final state after the update. So the compiled train step never changes, the run is
exactly an uninterrupted one (the data order, augmentation and schedule are functions of the step;
the optimizer state is carried over, with the moments of moved weights reset), and it resumes after
a kill from the latest segment checkpoint. Only the current and the previous segment directories
are kept; the evaluation history is collected in ``history.json``.

Layout::

  workdir/dense/                        the dense run (theta_0; trained only for dst.compare_imp)
  workdir/imp/round_RR/                 the IMP comparison (dst.compare_imp)
  workdir/<method>/round_RR/seg_SSSSSSS/mask   the mask of the segment starting at step S
  workdir/<method>/round_RR/seg_SSSSSSS/train  its training run (Orbax)
  workdir/<method>/round_RR/history.json       evaluations of all segments
  workdir/results.json, .csv, plots/accuracy_vs_weights.png
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from kdt import checkpoint as checkpoint_lib
from kdt import data as data_lib
from kdt import evaluation
from kdt import fileio
from kdt import parallel
from kdt import pruning
from kdt import report
from kdt.experiments import imp as imp_lib
from kdt.experiments.setup import InvariantError
from kdt.experiments.setup import Setup
from kdt.pruning import dynamic
from kdt.train import losses
from kdt.train import loop
from kdt.train import steps
from kdt.train.state import TrainState

log = logging.getLogger(__name__)

NOISE_STD = 1e-5
"""RigL's drop-score noise for tie-breaking (``generic_mask_update(noise_std=1e-5)``)."""


def dense_gradients(params: Any, batch_stats: Any, mask: Any, batch: dict, *, model,
                    loss: losses.LossConfig) -> Any:
  """:math:`\\partial L / \\partial w` at the masked weights, for every entry (pure).

  Differentiates with respect to the masked parameters themselves, so inactive entries get the
  gradient they would have if they were active (RigL's ``masked_grads``); BN in training mode.
  """
  masked = pruning.apply_mask(params, mask)

  def loss_fn(p):
    variables = {"params": p, "batch_stats": batch_stats} if batch_stats else {"params": p}
    if batch_stats:
      logits, _ = steps.apply_model(model, variables, batch["image"], train=True,
                                    mutable=["batch_stats"])
    else:
      logits = steps.apply_model(model, variables, batch["image"], train=True)
    return losses.cross_entropy(logits.astype(jnp.float32), batch["label"],
                                label_smoothing=loss.label_smoothing,
                                convention=loss.label_smoothing_convention,
                                weight=batch.get("weight"))

  return jax.grad(loss_fn)(masked)


def _seg_name(start: int) -> str:
  return f"seg_{start:07d}"


def _remove_tree(path: str) -> None:
  """Deletes a finished segment's directory (local or ``gs://``); a missing one is fine."""
  if fileio.is_url(path):
    from etils import epath  # pylint: disable=import-outside-toplevel
    if epath.Path(path).exists():
      epath.Path(path).rmtree()
  else:
    shutil.rmtree(path, ignore_errors=True)


def _has_checkpoint(directory: str) -> bool:
  if not fileio.isdir(directory):
    return False
  ckpt = checkpoint_lib.Checkpointer(directory)
  try:
    return ckpt.latest_step() is not None
  finally:
    ckpt.close()


def pinned_steps(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  """The dense run's rewind points: IMP's ``imp.rewind_step`` (for ``dst.compare_imp``)."""
  return (int(config.imp.rewind_step),)


def run(setup: Setup, config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  """Experiment ``dst`` (see :class:`DSTDriver`)."""
  return DSTDriver(setup, config, workdir).run()


class DSTDriver:
  """Runs experiment ``dst`` on a Setup (see module docstring)."""

  def __init__(self, setup: Setup, config: ml_collections.ConfigDict, workdir: str):
    self.setup, self.config, self.workdir, self.dst = setup, config, fileio.absolute(workdir), config.dst
    self.mesh, self.dataset, self.model = setup.mesh, setup.dataset, setup.model
    self.trainer, self.masks = setup.trainer, setup.masks
    self.densities = (list(map(float, self.dst.densities)) or imp_lib.round_densities(config.imp))
    num_steps = int(config.train.num_steps)
    end = int(self.dst.update_end_step) or int(round(0.75 * num_steps))
    self.schedule = dynamic.DropSchedule(initial=float(self.dst.drop_fraction), end_step=max(end, 1),
                                         begin_step=0, every=int(self.dst.update_every),
                                         kind=self.dst.drop_schedule)
    updates = dynamic.update_steps(self.schedule, num_steps)
    self.boundaries = [0, *updates, num_steps]
    self._init = setup.dense.init_state
    shapes = jax.eval_shape(self._init).params
    self.prunable = setup.prunable
    self.like = jax.tree.map(lambda x: jnp.ones(x.shape, bool), shapes)
    self.loss = setup.loss
    self._direction = setup.optimizer.make()
    self._grads = jax.jit(functools.partial(dense_gradients, model=self.model, loss=self.loss))
    self._rigl = jax.jit(functools.partial(dynamic.rigl_update, prunable=self.prunable,
                                           schedule=self.schedule, noise_std=NOISE_STD))
    self._set = jax.jit(functools.partial(dynamic.set_update, prunable=self.prunable,
                                          schedule=self.schedule, noise_std=NOISE_STD))
    self._reset_opt = jax.jit(dynamic.reset_optimizer_state)

  # ----- the experiment -------------------------------------------------------------------------

  def run(self) -> list[dict]:
    """IMP (if asked), then every method at every density; returns the result rows."""
    start = time.time()
    rows: list[dict] = []
    if self.dst.compare_imp:
      rows = [dict(r) for r in imp_lib.run_rounds(self.setup, self.config.imp,
                                                  os.path.join(self.workdir, "imp"))]
    for method in self.dst.methods:
      for round_index, density in enumerate(self.densities, 1):
        rows.append(self._train_sparse(method, round_index, density))
        self._write(rows)
    self._write(rows, plots=True)
    title = f"{self.config.model.name} on {self.config.data.name}: DST vs IMP"
    print(report.format_table(rows, title=title), flush=True)
    log.info("DST finished in %.1f s (this invocation); results in %s", time.time() - start,
             os.path.join(self.workdir, "results.json"))
    return rows

  def _write(self, rows: list[dict], plots: bool = False) -> None:
    if jax.process_index() != 0:
      return
    report.write_results(self.workdir, rows)
    if plots:
      fileio.makedirs(os.path.join(self.workdir, "plots"))
      report.plot_accuracy_vs_weights(
          rows, os.path.join(self.workdir, "plots", "accuracy_vs_weights.png"),
          title=f"{self.config.model.name} on {self.config.data.name}: DST vs IMP")

  # ----- one method at one density --------------------------------------------------------------

  def _key(self, method: str, round_index: int) -> jax.Array:
    salt = {"rigl": 1, "set": 2, "static": 3}[method]
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(self.config.seeds.prune),
                                                 20_000 + round_index), salt)

  def initial_mask(self, density: float, key: jax.Array) -> Any:
    """Random mask with ``dst.allocation``'s per-layer densities (exact total count for ERK)."""
    scores = pruning.random_scores(jax.random.fold_in(key, 0), jax.eval_shape(self._init).params)
    return jax.jit(functools.partial(
        pruning.mask_for_density, prunable=self.prunable, density=float(density),
        allocation=self.dst.allocation, erk_power_scale=float(self.dst.erk_power_scale)))(scores)

  def _initial_state(self, mask: Any) -> TrainState:
    state = self._init()
    if self.dst.init == "sparsity_aware":
      params = dynamic.sparsity_aware_init(state.params, mask, self.prunable, jax.random.fold_in(
          jax.random.key(self.config.seeds.init), 0x5A1))  # a draw of its own, from seeds.init
    else:
      params = pruning.apply_mask(state.params, mask)
    return state.replace(params=params, opt_state=self._direction.init(params))

  def _batch(self, step: int) -> dict:
    """The training batch of ``step``, augmented exactly as the train step of ``step`` sees it."""
    info, config = self.dataset.info, self.config
    augment = info.augment if config.data.augment == "default" else config.data.augment
    if info.streaming:
      local = self.dataset.train_batch(step, config.train.batch_size, config.seeds.data_order,
                                       augment=augment, augment_seed=config.seeds.augment)
      augment = "none"
    else:
      local = self.dataset.train_batch(step, config.train.batch_size, config.seeds.data_order)
    raw = parallel.global_batch(local, self.mesh)
    key = jax.random.fold_in(jax.random.key(config.seeds.augment), step)
    images = data_lib.preprocess(raw["image"], key, info=info, train=True, augment=augment)
    return {"image": images, "label": raw["label"], **{k: raw[k] for k in ("weight",) if k in raw}}

  def _update(self, method: str, state: TrainState, mask: Any, step: int, key: jax.Array):
    """The state and mask after the update at ``step`` (pure pieces, jitted)."""
    if method == "static":
      return state, mask
    update_key = jax.random.fold_in(key, step)
    if method == "rigl":
      grads = self._grads(state.params, state.batch_stats, mask, self._batch(step))
      params, new_mask = self._rigl(state.params, mask, grads, step, key=update_key)
    else:
      params, new_mask = self._set(state.params, mask, step, update_key)
    keep = jax.tree.map(jnp.logical_and, mask, new_mask)
    opt_state = self._reset_opt(state.opt_state, params, keep)
    return state.replace(params=params, opt_state=opt_state), new_mask

  def _check(self, label: str, mask: Any, counts: list[int], params: Any = None) -> None:
    now = dynamic.layer_counts(mask, self.prunable)
    if now != counts:
      raise InvariantError(f"{label}: per-layer active counts changed from {counts} to {now}.")
    if params is not None and bool(pruning.any_pruned_nonzero(params, mask)):
      raise InvariantError(f"{label}: a pruned weight is non-zero.")

  def _train_sparse(self, method: str, round_index: int, density: float) -> dict:
    """Trains one method at one density, segment by segment; returns its results row."""
    base = os.path.join(self.workdir, method, f"round_{round_index:02d}")
    key = self._key(method, round_index)
    boundaries = self.boundaries if method != "static" else [0, self.boundaries[-1]]
    segments = list(zip(boundaries[:-1], boundaries[1:]))
    seg_dir = lambda start: os.path.join(base, _seg_name(start))
    history_path = os.path.join(base, "history.json")
    history = {"evals": [], "steps_trained": 0, "wall_time": 0.0}
    if fileio.exists(history_path):
      with fileio.open(history_path, encoding="utf-8") as f:
        history = json.load(f)

    mask0 = self.masks.load_or_compute(seg_dir(0), self.like,
                                       lambda: self.initial_mask(density, key))
    counts = dynamic.layer_counts(mask0, self.prunable)
    # Resume from the latest segment with a checkpoint; earlier ones are finished (and deleted).
    first = max([i for i, (s, _) in enumerate(segments)
                 if _has_checkpoint(os.path.join(seg_dir(s), "train"))], default=0)
    mask = (mask0 if first == 0 else
            self.masks.load_or_compute(seg_dir(segments[first][0]), self.like, None))
    # The state a segment starts from; a segment with a checkpoint only needs its shapes.
    init_state = lambda m=mask0: self._initial_state(m)
    result = None
    for i in range(first, len(segments)):
      start, end = segments[i]
      label = f"{method}/round_{round_index:02d}/{_seg_name(start)}"
      run = loop.Run(
          name=label, directory=os.path.join(seg_dir(start), "train"), init_state=init_state,
          mask=mask, end_step=end, optimizer=self.setup.optimizer,
          schedule=self.setup.schedule, loss=self.loss,
          data_seed=self.config.seeds.data_order, augment_seed=self.config.seeds.augment)
      result = self.trainer.train(run)
      self._check(label, mask, counts, result.state.params)
      history = self._merge_history(history_path, history, result, start)
      if i > 0 and jax.process_index() == 0:
        _remove_tree(seg_dir(segments[i - 1][0]))
      if i + 1 == len(segments):
        break
      state, new_mask = self._update(method, result.state, mask, end, key)
      saved = self.masks.load_or_compute(seg_dir(end), self.like, lambda m=new_mask: m)
      if not all(bool(jnp.array_equal(a, b)) for a, b in
                 zip(jax.tree.leaves(saved), jax.tree.leaves(new_mask))):
        raise InvariantError(f"{label}: the recomputed mask update at step {end} differs from "
                             "the saved one.")
      self._check(f"{label} update", new_mask, counts, pruning.apply_mask(state.params, new_mask))
      mask = new_mask
      init_state = lambda s=state: s
    return self._row(method, round_index, density, mask, history)

  def _merge_history(self, path: str, history: dict, result: loop.RunResult, start: int) -> dict:
    """Adds a finished segment's evaluations and cost to ``history.json`` (once per segment)."""
    done = {h.get("segment") for h in history["evals"]}
    if start not in done:
      history["evals"] += [{**h, "segment": start} for h in result.meta["history"]]
      history["steps_trained"] += int(result.meta["steps_trained"])
      history["wall_time"] += float(result.meta["wall_time"])
      if jax.process_index() == 0:
        fileio.makedirs(os.path.dirname(path))
        fileio.write_json(path, history)
    return history

  def _row(self, method: str, round_index: int, density: float, mask: Any, history: dict) -> dict:
    summary = pruning.sparsity_summary(mask, self.prunable)["total"]
    evals = sorted(history["evals"], key=lambda h: h["step"])
    return {
        "round": round_index, "recipe": method,
        "density": summary["kept"] / summary["total"], "nominal_density": density,
        "weights_kept": summary["kept"], "weights_prunable": summary["total"],
        **evaluation.accuracies(evals, start_step=0, **evaluation.settings(self.config)),
        "start_step": 0, "end_step": evals[-1]["step"],
        "steps_trained": history["steps_trained"], "wall_time": history["wall_time"],
        "mask_updates": len(self.boundaries) - 2 if method != "static" else 0,
    }

