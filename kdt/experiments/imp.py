"""Experiment ``imp``: dense run, rounds of pruning, re-training under every requested recipe.

Layout on disk (the experiment's whole position; re-running the same command resumes from it)::

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
per-layer counts) in every round. Which weights a round starts from, on which part of the
schedule and with which loss is the recipe's own business (:meth:`kdt.tickets.recipes.Recipe.start`).

Re-training tweaks (``config.tost``, :mod:`kdt.tickets.tweaks`): the recipe ``tost`` re-trains
the control recipe's subnetwork, and the recipes in ``tost.recipes`` their own, with ToST's
tweaks (smooth activation, ghost skips, label smoothing, GradInit) on a network of their own;
``round_RR/<recipe>/gradinit_scales.json`` holds the GradInit scales. Masks stay those of the
dense network's parameters (ghost branches are never pruned).

Tickets in another basis (``imp.mask_basis``, :mod:`kdt.pruning.basis`): the network is
parametrised by the coefficients c of w = B c, so training, pruning, masks and the reported
densities are all about coefficients.

Composition: other experiments run IMP on their own :class:`Setup` with an ``imp`` group of their
own (:func:`imp_group`), not through a sub-config and another driver — correlation and dst through
:func:`run_rounds`; LMC and prune_at_init through :meth:`IMPRounds.plan` inside their own plans
(``yield from``, :func:`kdt.tickets.batch.together`), so IMP's runs batch with theirs.

A finished run (final checkpoint marked finished) is loaded, never retrained; a saved mask is
loaded, never recomputed.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from typing import Any, Generator, Sequence

import jax
import ml_collections
import numpy as np

from kdt import evaluation
from kdt import faults
from kdt import fileio
from kdt import pruning
from kdt import report
from kdt import schema
from kdt import timing
from kdt.experiments.setup import InvariantError
from kdt.experiments.setup import Setup
from kdt.tickets import batch as batch_lib
from kdt.tickets import recipes as recipes_lib
from kdt.tickets import tweaks as tweaks_lib
from kdt.train import loop

log = logging.getLogger(__name__)

Weights = recipes_lib.Weights


def pinned_steps(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  """The dense run's rewind points: ``imp.rewind_step``."""
  return (int(config.imp.rewind_step),)


def run(setup: Setup, config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  """Experiment ``imp``: the dense run, then every round and recipe; returns the result rows."""
  return run_rounds(setup, config.imp, workdir)


def run_rounds(setup: Setup, imp: ml_collections.ConfigDict, workdir: str, *,
               write_report: bool = True) -> list[dict]:
  """IMP with the ``imp`` group on ``setup`` (its dense run), rounds in ``workdir``.

  Args:
    setup: the experiment's Setup; its dense run must pin ``imp.rewind_step``.
    imp: an ``imp`` config group (``config.imp``, or :func:`imp_group`'s variant).
    workdir: where the rounds, results and plots go.
    write_report: write plots and TensorBoard scalars and print the table at the end.

  Returns:
    The result rows: the dense run, then one row per (round, recipe).
  """
  return IMPRounds(setup, imp, workdir).run(write_report=write_report)


def run_replicates(setups: Sequence[Setup], config: ml_collections.ConfigDict) -> list[dict]:
  """Experiment ``imp`` for every replicate's Setup, advanced together round by round.

  Each replicate's dense run, and each round's recipes, train as one batch of tickets across the
  replicates (:func:`kdt.tickets.batch.drive`); every replicate keeps its own directory,
  ``results.json`` and masks. Returns every replicate's rows, each with its ``replicate``.
  """
  rounds = [IMPRounds(setup, config.imp, setup.workdir) for setup in setups]
  per_replicate = batch_lib.drive([r.plan() for r in rounds], setups[0].train_jobs)
  rows = [dict(row, replicate=index) for index, replicate_rows in enumerate(per_replicate)
          for row in replicate_rows]
  rounds[0].report(rows, workdir=os.path.dirname(setups[0].workdir))
  return rows


def imp_group(imp: ml_collections.ConfigDict, **overrides) -> ml_collections.ConfigDict:
  """A copy of the ``imp`` group with ``overrides`` (an experiment's own IMP variant)."""
  group = ml_collections.ConfigDict(imp.to_dict())
  for key, value in overrides.items():
    if key not in group:
      raise KeyError(f"imp.{key} is not a field of the imp group")
    group[key] = value
  return group


def round_dir(workdir: str, round_index: int, recipe: str) -> str:
  """The directory of one recipe's round (its ``mask`` and ``train`` run)."""
  return os.path.join(fileio.absolute(workdir), f"round_{round_index:02d}", recipe)


def round_densities(imp: ml_collections.ConfigDict) -> list[float]:
  """Nominal density of each round 1..R: ``(1 - rate)^r``, or the one-shot list."""
  if imp.pruning_schedule == "oneshot" and imp.densities:
    return [float(d) for d in imp.densities]
  return list(pruning.iterative_densities(imp.pruning_rate, imp.num_rounds))


def budget(setup: Setup, imp: ml_collections.ConfigDict) -> recipes_lib.Budget:
  """The recipes' step budget: T, k and the fine-tuning settings of ``imp``."""
  return recipes_lib.Budget(num_steps=int(setup.config.train.num_steps),
                            rewind_step=int(imp.rewind_step),
                            finetune_steps=int(imp.finetune_steps),
                            finetune_learning_rate=float(imp.finetune_learning_rate),
                            random_reinit_from_zero=imp.random_reinit_start == "zero")


class IMPRounds:
  """One IMP experiment on a Setup (see the module docstring)."""

  def __init__(self, setup: Setup, imp: ml_collections.ConfigDict, workdir: str):
    self.setup, self.imp, self.workdir = setup, imp, fileio.absolute(workdir)
    self.config = setup.config
    self.model, self.trainer, self.dense = setup.model, setup.trainer, setup.dense
    self.prunable, self.num_prunable = setup.prunable, setup.num_prunable
    self.masks = setup.masks
    # ToST re-training tweaks (config.tost): the re-training network and its own trainer.
    self.tweaks = tweaks_lib.RetrainTweaks(self.config, self.model, setup.dataset.info.input_shape)
    self._tweaked_trainer = None
    self.densities = round_densities(imp)
    self.recipes = [recipes_lib.RECIPES[n] for n in imp.recipes]
    # Own-lineage recipes first: the controls need the control recipe's mask of the same round.
    self.recipes.sort(key=lambda r: r.is_control)
    self.control = recipes_lib.RECIPES[imp.control_recipe]
    self._prune = jax.jit(self._prune_fn, static_argnames=("density",))
    self._score_batches = None
    self.layer_densities: dict[str, dict[int, dict[str, float]]] = {}

  # ----- pure pieces, jitted ----------------------------------------------------------------------

  def pruner(self, batch_stats: Any) -> pruning.Pruner:
    """``imp.score`` with ``imp.allocation`` for this network (BatchNorm statistics
    ``batch_stats`` of the weights being scored, in eval mode)."""
    imp, model = self.imp, self.model

    def apply_fn(params, x):
      variables = {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}
      return model.apply(variables, x, train=False)

    return schema.spec(
        pruning.Pruner, imp, prunable=self.prunable,
        loss_fn=pruning.classification_loss(apply_fn), apply_fn=apply_fn,
        input_shape=(1, *self.setup.dataset.info.input_shape), ignored=self.setup.num_ignored)

  def _prune_fn(self, params, batch_stats, mask, key, batches, *, density):
    """The round's mask of ``params`` under ``mask`` — pure (``density`` None: a round of
    ``imp.pruning_rate`` of the remaining weights; else one shot to ``density``)."""
    pruner = self.pruner(batch_stats)
    if density is None:
      return pruner.round(params, mask, float(self.imp.pruning_rate), None, key, batches)
    return pruner.to_density(params, mask, density, key, batches)

  # ----- the experiment ---------------------------------------------------------------------------

  def plan(self) -> Generator[list[batch_lib.Job], list[loop.RunResult], list[dict]]:
    """The experiment as a coroutine: yields the runs it needs trained now (the dense run, then
    each round's recipes), receives their results, returns the result rows.

    :func:`kdt.tickets.batch.drive` advances several plans together (the replicates), so a
    round's runs of every replicate train as one batch of tickets.
    """
    (dense,) = yield [batch_lib.Job(self.trainer, self.dense)]
    rows = [self._row(0, "dense", dense, self.dense.mask, 0.0)]
    theta_0 = self._restore_dense(0)
    theta_k = self._restore_dense(self.imp.rewind_step)
    dense_model = Weights(dense.state.params, dense.state.batch_stats)
    previous = {r.name: (dense_model, self.dense.mask) for r in self.recipes}
    points = {"init": theta_0, "rewind": theta_k, "trained": dense_model}
    teacher_tables: dict[int, np.ndarray] = {}

    for round_index in range(1, self.imp.num_rounds + 1):
      masks: dict[str, Any] = {}
      jobs = []
      for recipe in self.recipes:
        directory = round_dir(self.workdir, round_index, recipe.name)
        with timing.timed("pruning"):
          mask = self.setup.load_mask(
              directory, lambda: self._compute_mask(round_index, recipe, previous, masks, points))
          masks[recipe.name] = mask
          faults.maybe_kill("after_prune", f"round_{round_index:02d}/{recipe.name}")
          self._check_mask(round_index, recipe.name, mask)
        with timing.timed("setup"):
          run = self._retraining_run(round_index, recipe, mask, theta_0, theta_k, previous,
                                     dense_model, teacher_tables)
        jobs.append(batch_lib.Job(self._trainer_for(recipe), run))
      results = yield jobs
      current: dict[str, tuple[Weights, Any]] = {}
      for recipe, job, result in zip(self.recipes, jobs, results):
        with timing.timed("pruning"):
          self._check_pruned_zero(round_index, recipe.name, result.state.params, job.run.mask)
        params, batch_stats = result.state.params, result.state.batch_stats
        if self.tweaks.applies_to(recipe.name):  # drop ghost leaves: later rounds prune the rest
          params, batch_stats = self.tweaks.lower_variables(params, batch_stats)
        mask = masks[recipe.name]  # the network's own mask (a tweaked run's has ghost leaves)
        current[recipe.name] = (Weights(params, batch_stats), mask)
        rows.append(self._row(round_index, recipe.name, result, mask,
                              self.densities[round_index - 1]))
      self._write_results(rows)
      previous = current
      self._record_layer_densities(round_index, masks)
    return rows

  def run(self, write_report: bool = True) -> list[dict]:
    """Dense run, then every round and recipe; returns the results rows."""
    start = time.time()
    (rows,) = batch_lib.drive([self.plan()], self.setup.train_jobs)
    if write_report:
      self.report(rows)
    log.info("IMP finished in %.1f s (this invocation); results in %s",
             time.time() - start, os.path.join(self.workdir, "results.json"))
    return rows

  def report(self, rows: list[dict], workdir: str | None = None) -> None:
    """Plots, TensorBoard summary and the terminal table of ``rows`` (in ``workdir``, default
    this experiment's)."""
    workdir = workdir or self.workdir
    faults.maybe_kill("plots_write")
    with timing.timed("results_and_plots"):
      if jax.process_index() == 0:
        report.write_imp_plots(workdir, rows, self.layer_densities, title=self.setup.title)
        report.write_imp_tensorboard(workdir, rows)
      print(report.format_table(rows, title=self.setup.title), flush=True)

  # ----- masks -------------------------------------------------------------------------------------

  def _round_key(self, round_index: int) -> jax.Array:
    return jax.random.fold_in(jax.random.key(self.config.seeds.prune), round_index)

  def _compute_mask(self, round_index: int, recipe: recipes_lib.Recipe, previous: dict,
                    masks: dict, points: dict):
    """The mask of ``recipe`` in ``round_index`` (``points``: theta_0, theta_k, dense model)."""
    key = self._round_key(round_index)
    if recipe.mask == "control":
      return masks[self.control.name]
    if recipe.mask == "random_like_control":
      return jax.jit(functools.partial(pruning.random_mask_like, prunable=self.prunable))(
          jax.random.fold_in(key, 1), masks[self.control.name])
    density = self.densities[round_index - 1]
    oneshot = self.imp.pruning_schedule == "oneshot"
    if oneshot:
      source, mask = points["trained"], self.dense.mask
    else:
      source, mask = previous[recipe.name]
    if self.imp.prune_at != "trained":  # a mask taken at a pinned point (theta_0 or theta_k)
      source = points[self.imp.prune_at]
    # Iterative rounds of global / layer-wise pruning remove a fraction of what remains;
    # everything else prunes to the round's density.
    needs_density = (oneshot or self.imp.allocation not in ("global", "layerwise")
                     or self.imp.score == "synflow")
    return self._prune(source.params, source.batch_stats, mask, key, self._batches(),
                       density=float(density) if needs_density else None)

  def _batches(self) -> Any:
    """The data scores' training batches (``imp.score_batches`` of them), or None."""
    if self.imp.score not in pruning.DATA_SCORES:
      return None
    if self._score_batches is None:
      self._score_batches = self.setup.training_batches(int(self.imp.score_batches))
    return self._score_batches

  def expected_kept(self, round_index: int) -> int | None:
    """The exact prunable count a round's mask must keep (the schedule's, with exact rounding)."""
    imp, density = self.imp, self.densities[round_index - 1]
    oneshot = imp.pruning_schedule == "oneshot"
    if imp.score == "synflow" or (oneshot and imp.allocation in ("global", "erk")):
      return int(pruning.ceil_count(density, self.num_prunable))
    if not oneshot and imp.allocation == "global":
      return pruning.iterative_counts(self.num_prunable, imp.pruning_rate, round_index,
                                      convention=imp.count_convention,
                                      ignored=self.setup.num_ignored)[-1]
    # layer-wise / uniform: per-layer ceilings, checked by the pruning tests; iterative ERK: a
    # layer with fewer remaining weights than its ERK count keeps them all.
    return None

  def _check_mask(self, round_index: int, recipe: str, mask) -> None:
    """Density equals the schedule's; the mask is identical on every host (checksum)."""
    kept = pruning.sparsity_summary(mask, self.prunable)["total"]["kept"]
    expected = self.expected_kept(round_index)
    if expected is not None and kept != expected:
      raise InvariantError(f"round {round_index} {recipe}: mask keeps {kept} prunable weights, the "
                           f"schedule says {expected}; stopping.")
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
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

  def _restore_dense(self, step: int) -> Weights:
    """A verified dense checkpoint (theta_0, theta_k); a damaged one is rebuilt with a warning by
    replaying the dense run (:meth:`kdt.train.loop.Trainer.restore_step`)."""
    with timing.timed("checkpoints"):
      state, _ = self.trainer.restore_step(self.dense, step)
    return Weights(state.params, state.batch_stats)

  def _retraining_run(self, round_index, recipe, mask, theta_0, theta_k, previous, dense_model,
                      teacher_tables) -> loop.Run:
    config, imp = self.config, self.imp
    lineage, _ = previous[recipe.lineage(self.control)]

    def fresh():
      key = jax.random.fold_in(jax.random.key(config.seeds.prune), 10_000 + round_index)
      return self.setup.fresh_weights(key)

    start = recipe.start(theta_0=theta_0, theta_k=theta_k, trained=lineage, fresh=fresh,
                         schedule=self.dense.schedule, loss=self.setup.loss,
                         budget=budget(self.setup, imp), control=self.control)
    teacher, table = None, None
    if start.kd:
      teacher_model = dense_model if imp.teacher == "dense" else previous[recipe.name][0]
      variables = {"params": teacher_model.params, "batch_stats": teacher_model.batch_stats}
      if imp.cache_teacher_logits:
        cache_key = id(teacher_model)
        if cache_key not in teacher_tables:
          teacher_tables[cache_key] = self.trainer.teacher_logits_table(variables)
        table = teacher_tables[cache_key]
      else:
        teacher = variables
    run = loop.Run(
        name=f"round_{round_index:02d}/{recipe.name}",
        directory=os.path.join(round_dir(self.workdir, round_index, recipe.name), "train"),
        init_state=self.setup.reset(start, mask), mask=mask, end_step=start.end_step,
        optimizer=self.setup.optimizer, schedule=start.schedule, loss=start.loss,
        teacher=teacher, teacher_logits_table=table, data_seed=config.seeds.data_order,
        augment_seed=config.seeds.augment)
    if self.tweaks.applies_to(recipe.name):
      run = self.tweaks.adapt_run(run, params=start.weights.params,
                                  batch_stats=start.weights.batch_stats, mask=mask,
                                  start=start.start_step, direction=self.setup.optimizer.make(),
                                  dataset=self.setup.dataset)
    return run

  def _trainer_for(self, recipe) -> loop.Trainer:
    """The trainer of ``recipe``'s re-training: the tweaked network's, or the dense model's."""
    if not self.tweaks.applies_to(recipe.name) or self.tweaks.model is self.model:
      return self.trainer
    if self._tweaked_trainer is None:
      self._tweaked_trainer = self.setup.make_trainer(self.tweaks.model, teacher_model=self.model)
    return self._tweaked_trainer

  # ----- results -----------------------------------------------------------------------------------

  def _row(self, round_index: int, recipe: str, result: loop.RunResult, mask, nominal: float) -> dict:
    summary = pruning.sparsity_summary(mask, self.prunable)["total"]
    history, ignored = result.meta["history"], self.setup.num_ignored
    return {
        "round": round_index, "recipe": recipe,
        "density": summary["kept"] / summary["total"], "nominal_density": nominal or 1.0,
        "weights_kept": summary["kept"], "weights_prunable": summary["total"],
        "density_all_weights":  # open_lth's density: over every conv / dense weight matrix
            (summary["kept"] + ignored) / (summary["total"] + ignored),
        **evaluation.accuracies(history, start_step=result.meta["start_step"],
                                **evaluation.settings(self.config)),
        "start_step": result.meta["start_step"], "end_step": int(result.state.step),
        "steps_trained": result.meta["steps_trained"], "wall_time": result.meta["wall_time"],
        "eval_history": history,
    }

  def _write_results(self, rows) -> None:
    with timing.timed("results_and_plots"):
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
