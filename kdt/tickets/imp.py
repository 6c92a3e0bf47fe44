"""The IMP driver: dense run, rounds of pruning, re-training under every requested recipe.

Layout on disk (the driver's whole position; re-running the same command resumes from it)::

  workdir/dense/                   Orbax: step 0 (theta_0), the rewind step k, the final step (teacher)
  workdir/round_01/<recipe>/mask/  Orbax: that recipe's mask in round 1
  workdir/round_01/<recipe>/train/ Orbax: the re-training run (resumable; final step marked finished)
  workdir/results.json, .csv       one row per (round, recipe), rebuilt after every run
  workdir/plots/*.png              accuracy vs weights remaining, per-layer density

Masks. Round 1 prunes the dense run's final weights, so every recipe with its own lineage starts
from the *same* mask (``lth`` and ``kd`` prune the same weights). From round 2 on, each recipe
prunes its own trained weights (``pruning_schedule="iterative"``), or every round prunes the dense
weights to the round's density (``"oneshot"``, the KD-ticket protocol). The controls
``random_reinit`` and ``random_prune`` use the control recipe's mask (or a random mask with its
per-layer counts) in every round.

Re-training tweaks (``config.tost``, :mod:`kdt.tickets.tweaks`): the recipe ``tost`` re-trains
the control recipe's subnetwork, and the recipes in ``tost.recipes`` their own, with ToST's
tweaks (smooth activation, ghost skips, label smoothing, GradInit) on a network of their own;
``round_RR/<recipe>/gradinit_scales.json`` holds the GradInit scales. Masks stay those of the
dense network's parameters (ghost branches are never pruned).

Tickets in another basis (``imp.mask_basis``, :mod:`kdt.pruning.basis`): the network is
parametrised by the coefficients c of w = B c, so training, pruning, masks and the reported
densities are all about coefficients.

A finished run (final checkpoint marked finished) is loaded, never retrained; a saved mask is
loaded, never recomputed.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from kdt import checkpoint as checkpoint_lib
from kdt import data as data_lib
from kdt import experiment
from kdt import faults
from kdt import fileio
from kdt import parallel
from kdt import pruning
from kdt import report
from kdt.pruning import basis as basis_lib
from kdt.tickets import recipes as recipes_lib
from kdt.tickets import tweaks as tweaks_lib
from kdt.train import loop

log = logging.getLogger(__name__)


InvariantError = experiment.InvariantError


@dataclasses.dataclass
class Trained:
  """A trained model of one lineage: what later rounds prune, rewind from or distil from."""
  params: Any
  batch_stats: Any
  mask: Any


def round_dir(workdir: str, round_index: int, recipe: str) -> str:
  return os.path.join(fileio.absolute(workdir), f"round_{round_index:02d}", recipe)


def round_densities(imp: ml_collections.ConfigDict) -> list[float]:
  """Nominal density of each round 1..R: ``(1 - rate)^r``, or the one-shot list."""
  if imp.pruning_schedule == "oneshot" and imp.densities:
    return [float(d) for d in imp.densities]
  return list(pruning.iterative_densities(imp.pruning_rate, imp.num_rounds))


class MaskStore:
  """Masks on disk (Orbax, atomic): saved once, then always loaded."""

  def __init__(self):
    self._checkpointer = ocp.StandardCheckpointer()

  def load_or_compute(self, directory: str, like: Any, compute) -> Any:
    """The saved mask of ``directory``, or ``compute()`` saved there first.

    A saved mask that cannot be read is moved aside (``mask.corrupt.<time>``) and recomputed —
    masks are pure functions of earlier, verified results, so recomputing is exact.
    """
    path = os.path.join(directory, "mask")
    if fileio.isdir(path):
      abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.bool_), like)
      try:
        return self._checkpointer.restore(path, abstract)
      except Exception as e:  # pylint: disable=broad-except
        if compute is None:
          raise checkpoint_lib.CheckpointCorruptError(f"mask {path} cannot be read: {e}") from e
        target = f"{path}.corrupt.{int(time.time())}"
        log.warning("WARNING: mask %s cannot be read (%s: %s); moved to %s and recomputing.",
                    path, type(e).__name__, str(e)[:200], target)
        if jax.process_index() == 0:
          os.rename(path, target)
    mask = compute()
    fileio.makedirs(directory)
    self._checkpointer.save(path, mask)
    self._checkpointer.wait_until_finished()
    return mask


class IMPDriver:
  """Runs experiment ``imp`` for one config and workdir (see module docstring)."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, *,
               dense: loop.Run | None = None):
    """Sets up the driver.

    Args:
      config: a validated config with an ``imp`` group.
      workdir: the IMP workdir (rounds, results, plots).
      dense: the dense :class:`loop.Run` to prune and rewind from, instead of ``workdir/dense``
        (lets several IMP runs share one dense run; it must pin ``imp.rewind_step``).
    """
    self.config, self.workdir, self.imp = config, workdir, config.imp
    self.mesh = parallel.make_mesh()
    self.dataset = experiment.load_data(config)
    self.model = experiment.build_model(config, self.dataset.info)
    # imp.mask_basis: the network parametrised by the coefficients that the masks prune.
    self.model = basis_lib.wrap_model(self.model, self.imp.mask_basis, selector=self.imp.selector,
                                      prune_stem=self.imp.prune_stem,
                                      image_shape=self.dataset.info.input_shape)
    self.trainer = experiment.make_trainer(config, workdir, self.dataset, self.model, self.mesh)
    # ToST re-training tweaks (config.tost): the re-training network and its own trainer.
    self.tweaks = tweaks_lib.RetrainTweaks(config, self.model, self.dataset.info.input_shape)
    self._tweaked_trainer = None
    self.masks = MaskStore()
    self.dense = dense or experiment.dense_run(config, workdir, self.model,
                                               pinned_steps=(self.imp.rewind_step,))
    shapes = jax.eval_shape(self.dense.init_state).params
    self.prunable = pruning.prunable_leaves(shapes, self.imp.selector, prune_stem=self.imp.prune_stem)
    self.num_prunable = sum(int(np.prod(x.shape)) for x, p in
                            zip(jax.tree.leaves(shapes), jax.tree.leaves(self.prunable)) if p)
    all_weights = pruning.prunable_leaves(shapes, "conv_dense", prune_head=True)  # conv + dense
    self.num_ignored = sum(int(np.prod(x.shape)) for x, p in zip(
        jax.tree.leaves(shapes), jax.tree.leaves(all_weights)) if p) - self.num_prunable
    self.densities = round_densities(self.imp)
    self.recipes = [recipes_lib.RECIPES[n] for n in self.imp.recipes]
    # Own-lineage recipes first: the controls need the control recipe's mask of the same round.
    self.recipes.sort(key=lambda r: r.is_control)
    self.control = recipes_lib.RECIPES[self.imp.control_recipe]
    self._prune = jax.jit(self._prune_fn)
    self._direction = experiment.optimizer_spec(config).make()
    self.layer_densities: dict[str, dict[int, dict[str, float]]] = {}

  # ----- pure pieces, jitted ----------------------------------------------------------------------

  def _prune_fn(self, params, mask, key):
    """One round of pruning of ``params`` under ``mask`` (iterative) — pure."""
    imp = self.imp
    scores = (pruning.magnitude(params) if imp.score == "magnitude"
              else pruning.random_scores(key, params))
    if imp.scope == "global":
      return pruning.prune_global(scores, mask, self.prunable, float(imp.pruning_rate),
                                  convention=imp.count_convention, ignored=self.num_ignored)
    return pruning.prune_layerwise(scores, mask, self.prunable, float(imp.pruning_rate))

  def _oneshot_mask(self, params, density: float, key):
    imp = self.imp
    scores = (pruning.magnitude(params) if imp.score == "magnitude"
              else pruning.random_scores(key, params))
    allocation = "global" if imp.scope == "global" else "layerwise"
    return jax.jit(functools.partial(pruning.mask_for_density, prunable=self.prunable,
                                     density=density, allocation=allocation))(scores)

  # ----- the experiment ---------------------------------------------------------------------------

  def run(self) -> list[dict]:
    """Dense run, then every round and recipe; returns the results rows."""
    start = time.time()
    dense = self.trainer.train(self.dense)
    rows = [self._row(0, "dense", dense, self.dense.mask, 0.0)]
    theta_0 = self._restore_dense(0)
    theta_k = self._restore_dense(self.imp.rewind_step)
    dense_model = Trained(dense.state.params, dense.state.batch_stats, self.dense.mask)
    previous = {r.name: dense_model for r in self.recipes}
    teacher_tables: dict[int, np.ndarray] = {}

    for round_index in range(1, self.imp.num_rounds + 1):
      masks: dict[str, Any] = {}
      current: dict[str, Trained] = {}
      for recipe in self.recipes:
        directory = round_dir(self.workdir, round_index, recipe.name)
        mask = self.masks.load_or_compute(
            directory, self.dense.mask,
            lambda: self._compute_mask(round_index, recipe, previous, masks, dense_model))
        masks[recipe.name] = mask
        faults.maybe_kill("after_prune", f"round_{round_index:02d}/{recipe.name}")
        self._check_mask(round_index, recipe.name, mask)
        run = self._retraining_run(round_index, recipe, mask, theta_0, theta_k, previous,
                                   dense_model, teacher_tables)
        result = self._trainer_for(recipe).train(run)
        self._check_pruned_zero(round_index, recipe.name, result.state.params, run.mask)
        params, batch_stats = result.state.params, result.state.batch_stats
        if self.tweaks.applies_to(recipe.name):  # drop ghost leaves: later rounds prune the rest
          params, batch_stats = self.tweaks.lower_variables(params, batch_stats)
        current[recipe.name] = Trained(params, batch_stats, mask)
        rows.append(self._row(round_index, recipe.name, result, mask, self.densities[round_index - 1]))
        self._write_results(rows)
      previous = current
      self._record_layer_densities(round_index, masks)

    title = f"{self.config.model.name} on {self.config.data.name}"
    faults.maybe_kill("plots_write")
    if jax.process_index() == 0:
      report.write_imp_plots(self.workdir, rows, self.layer_densities, title=title)
      report.write_imp_tensorboard(self.workdir, rows)
    print(report.format_table(rows, title=title), flush=True)
    log.info("IMP finished in %.1f s (this invocation); results in %s",
             time.time() - start, os.path.join(self.workdir, "results.json"))
    return rows

  # ----- masks -------------------------------------------------------------------------------------

  def _round_key(self, round_index: int) -> jax.Array:
    return jax.random.fold_in(jax.random.key(self.config.seeds.prune), round_index)

  def _compute_mask(self, round_index: int, recipe: recipes_lib.Recipe, previous: dict,
                    masks: dict, dense_model: Trained):
    key = self._round_key(round_index)
    if recipe.mask == "control":
      return masks[self.control.name]
    if recipe.mask == "random_like_control":
      return jax.jit(functools.partial(pruning.random_mask_like, prunable=self.prunable))(
          jax.random.fold_in(key, 1), masks[self.control.name])
    if self.imp.pruning_schedule == "oneshot":
      return self._oneshot_mask(dense_model.params, self.densities[round_index - 1], key)
    source = previous[recipe.name]
    return self._prune(source.params, source.mask, key)

  def expected_kept(self, round_index: int) -> int:
    """The exact prunable count a round's mask must keep (the schedule's, with exact rounding)."""
    if self.imp.pruning_schedule == "oneshot":
      density = self.densities[round_index - 1]
      return int(pruning.ceil_count(density, self.num_prunable))
    if self.imp.scope == "global":
      return pruning.iterative_counts(self.num_prunable, self.imp.pruning_rate, round_index,
                                      convention=self.imp.count_convention,
                                      ignored=self.num_ignored)[-1]
    return None  # layer-wise: checked per layer by the pruning tests, total varies with rounding

  def _check_mask(self, round_index: int, recipe: str, mask) -> None:
    """Density equals the schedule's; the mask is identical on every host (checksum)."""
    kept = pruning.sparsity_summary(mask, self.prunable)["total"]["kept"]
    expected = self.expected_kept(round_index)
    if expected is not None and kept != expected:
      raise InvariantError(f"round {round_index} {recipe}: mask keeps {kept} prunable weights, the "
                           f"schedule says {expected}; stopping.")
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      checksum = np.asarray(jax.jit(pruning.mask_checksum)(mask))  # one program, not per op
      all_sums = multihost_utils.process_allgather(checksum)
      if len(set(np.asarray(all_sums).ravel().tolist())) != 1:
        raise InvariantError(f"round {round_index} {recipe}: hosts hold different masks "
                             f"(checksums {all_sums}); stopping.")

  def _check_pruned_zero(self, round_index, recipe, params, mask) -> None:
    if bool(pruning.any_pruned_nonzero(params, mask)):
      raise InvariantError(f"round {round_index} {recipe}: a pruned weight is non-zero after "
                           "re-training; stopping.")

  # ----- runs --------------------------------------------------------------------------------------

  def _restore_dense(self, step: int) -> Trained:
    """A verified dense checkpoint (theta_0, theta_k); corruption here cannot be repaired by
    falling back, so it stops the run with :class:`~kdt.checkpoint.CheckpointCorruptError`."""
    ckpt = checkpoint_lib.Checkpointer(self.dense.directory)
    try:
      state, _ = ckpt.restore(step, self.trainer._abstract_state(self.dense))
    finally:
      ckpt.close()
    return Trained(state.params, state.batch_stats, self.dense.mask)

  def _retraining_run(self, round_index, recipe, mask, theta_0, theta_k, previous, dense_model,
                      teacher_tables) -> loop.Run:
    config, imp = self.config, self.imp
    effective = recipes_lib.resolve(recipe, self.control)
    lineage = previous[self.control.name if recipe.is_control else recipe.name]
    num_steps = config.train.num_steps
    schedule = experiment.schedule_spec(config)
    if effective.schedule == "full":
      start, end = 0, num_steps
    elif effective.schedule == "from_rewind":
      start, end = imp.rewind_step, num_steps
    else:  # finetune
      start = 0
      end = imp.finetune_steps or num_steps - imp.rewind_step
      lr = imp.finetune_learning_rate or float(schedule.make()(num_steps - 1))
      schedule = loop.ScheduleSpec(name="constant", learning_rate=lr, num_steps=end)

    direction = self._direction
    if effective.weights == "random":
      seed_key = jax.random.fold_in(jax.random.key(self.config.seeds.prune), 10_000 + round_index)
      fresh = _fresh_variables(self.model, self.dataset.info.input_shape, seed_key)
      source = Trained(fresh["params"], fresh.get("batch_stats", {}), mask)
    else:
      source = {"init": theta_0, "rewind": theta_k, "trained": lineage}[effective.weights]

    def init_state():
      return recipes_lib.reset_state(source.params, source.batch_stats, mask,
                                     direction.init(source.params), start)

    teacher, table = None, None
    if recipe.kd:
      teacher_model = dense_model if imp.teacher == "dense" else previous[recipe.name]
      if imp.cache_teacher_logits:
        cache_key = id(teacher_model)
        if cache_key not in teacher_tables:
          teacher_tables[cache_key] = self.trainer.teacher_logits_table(
              {"params": teacher_model.params, "batch_stats": teacher_model.batch_stats})
        table = teacher_tables[cache_key]
      else:
        teacher = {"params": teacher_model.params, "batch_stats": teacher_model.batch_stats}
    loss = experiment.loss_config(config)
    if not recipe.kd:
      loss = dataclasses.replace(loss, kd_stop_step=-1)
    run = loop.Run(
        name=f"round_{round_index:02d}/{recipe.name}",
        directory=os.path.join(round_dir(self.workdir, round_index, recipe.name), "train"),
        init_state=init_state, mask=mask, end_step=end, optimizer=experiment.optimizer_spec(config),
        schedule=schedule, loss=loss, teacher=teacher, teacher_logits_table=table,
        data_seed=config.seeds.data_order, augment_seed=config.seeds.augment)
    if self.tweaks.applies_to(recipe.name):
      run = self.tweaks.adapt_run(run, params=source.params, batch_stats=source.batch_stats,
                                  mask=mask, start=start, direction=direction,
                                  dataset=self.dataset)
    return run

  def _trainer_for(self, recipe) -> loop.Trainer:
    """The trainer of ``recipe``'s re-training: the tweaked network's, or the dense model's."""
    if not self.tweaks.applies_to(recipe.name) or self.tweaks.model is self.model:
      return self.trainer
    if self._tweaked_trainer is None:
      self._tweaked_trainer = experiment.make_trainer(
          self.config, self.workdir, self.dataset, self.tweaks.model, self.mesh,
          teacher_model=self.model)
    return self._tweaked_trainer

  # ----- results -----------------------------------------------------------------------------------

  def _row(self, round_index: int, recipe: str, result: loop.RunResult, mask, nominal: float) -> dict:
    summary = pruning.sparsity_summary(mask, self.prunable)["total"]
    history = result.meta["history"]
    row = {
        "round": round_index, "recipe": recipe,
        "density": summary["kept"] / summary["total"], "nominal_density": nominal or 1.0,
        "weights_kept": summary["kept"], "weights_prunable": summary["total"],
        "density_all_weights":  # open_lth's density: over every conv / dense weight matrix
            (summary["kept"] + self.num_ignored) / (summary["total"] + self.num_ignored),
        "test_accuracy": history[-1]["test_accuracy"],
        "best_test_accuracy": max(h["test_accuracy"] for h in history),
        "start_step": result.meta["start_step"], "end_step": int(result.state.step),
        "steps_trained": result.meta["steps_trained"], "wall_time": result.meta["wall_time"],
        "eval_history": history,
    }
    if "val_accuracy" in history[-1]:
      best = max(history, key=lambda h: h["val_accuracy"])
      row.update(val_accuracy=history[-1]["val_accuracy"], best_val_accuracy=best["val_accuracy"],
                 test_accuracy_at_best_val=best["test_accuracy"])
    return row

  def _write_results(self, rows) -> None:
    if jax.process_index() == 0:
      report.write_results(self.workdir, rows)

  def _record_layer_densities(self, round_index: int, masks: dict) -> None:
    """Per-layer densities of each own-lineage mask (the controls copy the control's densities)."""
    for name, mask in masks.items():
      if recipes_lib.RECIPES[name].is_control:
        continue
      self.layer_densities.setdefault(name, {})[round_index] = {
          k: v["density"] for k, v in pruning.sparsity_summary(mask, self.prunable).items()
          if k != "total"}


@functools.lru_cache(maxsize=None)
def _fresh_init(model, input_shape: tuple):
  """``key -> variables`` of ``model``, jitted once per (model, input shape), not once per round."""
  return jax.jit(lambda key: dict(model.init(key, jnp.zeros((1, *input_shape), jnp.float32),
                                             train=False)))


def _fresh_variables(model, input_shape, key) -> dict:
  """A new random initialisation (the random re-init control), jitted."""
  return _fresh_init(model, tuple(input_shape))(key)


def run_imp(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  """Experiment ``imp`` (see :class:`IMPDriver`)."""
  return IMPDriver(config, workdir).run()
