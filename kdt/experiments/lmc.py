"""Experiment ``lmc``: linear mode connectivity against the rewind step (I/O over :mod:`kdt.analysis`).

(Frankle et al., "Linear Mode Connectivity and the LTH"; "Stabilizing the LTH"; docs/methods.md
§3). For every rewind step ``k`` in ``config.lmc.rewind_steps`` and every network kind

* ``dense``: the full network;
* ``imp``: the IMP subnetwork of each analysed round. Its mask comes from IMP with rewinding to
  ``k`` (recipe ``rewind``, LMC Algorithm 2; ``lmc.mask_rewind_step >= 0`` uses the masks of one
  IMP run rewound to that step for every ``k`` instead), with ``config.imp``'s pruning settings;
* ``random``: a random mask with the IMP mask's per-layer counts (the control),

copies start from :math:`m \\odot \\theta_k` (weights and BatchNorm statistics of the dense run at
step ``k``, a fresh optimizer state, the schedule continuing at ``k``, exactly the ``rewind``
recipe) and train to ``train.num_steps``: the first copy with ``seeds.data_order`` /
``seeds.augment``, one more copy per ``lmc.pair_seeds`` entry with that seed for both data order
and augmentation. For each pair (first copy, other copy) it records

* the error along the linear path at ``lmc.num_alphas`` points on ``lmc.splits``, the
  instability (:mod:`kdt.analysis.interpolation`) and the verdicts *stable* (test instability
  < ``lmc.stable_threshold``) and *matching* (mean test accuracy of the copies within
  ``lmc.matching_tolerance`` of the dense run's);
* stability to data order: L2 distance and angle between the masked trained copies, and the
  distance relative to the distance travelled from theta_k;
* for subnetworks, stability to pruning: distance and angle between the first copy and the dense
  first copy (trained inside the full network, same data order) masked with the same mask;
* the theta_k <-> trained weight correlation of the first copy (:mod:`kdt.analysis.correlation`).

Every copy starts where the recipe ``rewind`` says (:meth:`kdt.tickets.recipes.Recipe.start` with
theta_k), so LMC's copies and IMP's rewound tickets cannot disagree about what rewinding means.
Every copy that starts at the same k — the dense pair and each analysed round's IMP and random
pairs — trains as one batch of tickets (:func:`kdt.tickets.batch.train_runs`, ``config.tickets``:
``sequential`` on CPU gives exactly the one-by-one results, ``vmap`` one program for all), and with
``config.replicates = N`` every replicate's copies at that k join the same batch
(:func:`run_replicates`). The IMP subnetwork's first copy *is* IMP's round run (same start, mask,
schedule and seeds), so it is loaded from the IMP rounds rather than trained twice. The masks come
from IMP's own plan (:meth:`kdt.experiments.imp.IMPRounds.plan`) on this experiment's Setup (same
dense run).

Workdir::

  dense/                              the dense run from theta_0 (every k pinned)
  imp/k_000020/round_RR/              IMP rewound to k = 20 (its rounds; the dense run is dense/)
  lmc/k_000020/dense/order_1/         a copy from theta_20 trained with data order 1
  lmc/k_000020/imp_r03/order_1/       the other copy of the round-3 IMP subnetwork
  lmc/k_000020/random_r03/mask, order_0/, order_1/
  lmc/k_000020/<network>/analysis.json  that row's measurements (never recomputed)
  results.json, results.csv           one row per (k, network, round)
  lmc_summary.json                    stability onsets per network, mask overlap matrices
  plots/instability_vs_rewind.png, interpolation.png, correlation.png, mask_overlap.png,
  plots/stability_distance.png

The experiment resumes: every training run checkpoints in its own directory, masks and row
analyses are saved once, and finished pieces are loaded, never redone.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from typing import Any, Generator, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from kdt import evaluation
from kdt import fileio
from kdt import parallel
from kdt import plots
from kdt import pruning
from kdt import report
from kdt.analysis import correlation
from kdt.analysis import interpolation
from kdt.analysis import stability
from kdt.experiments import imp as imp_lib
from kdt.experiments.setup import Setup
from kdt.tickets import batch as batch_lib
from kdt.tickets import recipes as recipes_lib
from kdt.train import loop

log = logging.getLogger(__name__)

LMC_COLUMNS = ("k", "network", "round", "density", "test_accuracy", "test_accuracy_last_mean",
               "test_accuracy_at_best_val", "report_metric", "reported_test_accuracy",
               "dense_test_accuracy",
               "instability", "stable", "matching", "instability_test", "instability_train",
               "instability_val", "endpoint_error_test", "max_error_test", "endpoint_error_train",
               "max_error_train", "l2", "angle", "l2_relative", "pruning_l2", "pruning_angle",
               "magnitude_pearson", "top_overlap", "steps_trained")


Model = recipes_lib.Weights


def pinned_steps(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  """The dense run's rewind points: every k of ``lmc.rewind_steps`` and the mask step."""
  mask_step = int(config.lmc.mask_rewind_step)
  return tuple(int(k) for k in config.lmc.rewind_steps) + ((mask_step,) if mask_step >= 0 else ())


def run(setup: Setup, config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  """Experiment ``lmc`` (see :class:`LMCExperiment`)."""
  return LMCExperiment(setup, config, workdir).run()


def run_replicates(setups: Sequence[Setup], config: ml_collections.ConfigDict) -> list[dict]:
  """Experiment ``lmc`` for every replicate's Setup, advanced together
  (:func:`kdt.tickets.batch.drive`): the replicates' dense runs, IMP rounds and copies at each k
  train as one batch of tickets. Each replicate keeps its own directory, ``results.json``,
  ``lmc_summary.json`` and plots; returns every replicate's rows, each with its ``replicate``."""
  del config  # each replicate's Setup holds its own config (its seeds)
  experiments = [LMCExperiment(setup, setup.config, setup.workdir) for setup in setups]
  per_replicate = batch_lib.drive([e.plan() for e in experiments], setups[0].train_jobs)
  rows = []
  for index, (experiment, replicate_rows) in enumerate(zip(experiments, per_replicate)):
    experiment.report(replicate_rows)
    rows += [dict(row, replicate=index) for row in replicate_rows]
  print(report.format_table(rows, title=f"{setups[0].title}, {len(setups)} replicates"),
        flush=True)
  return rows


def _write_json(path: str, payload: Any) -> None:
  if jax.process_index() == 0:
    fileio.makedirs(os.path.dirname(path))
    fileio.write_json(path, payload)


# ---------------------------------------------------------------------------------------------
# Evaluation along the linear path.


class PathEvaluator:
  """Evaluates networks on the linear path between two trained networks.

  Args:
    trainer: the :class:`kdt.train.loop.Trainer` (its ``evaluate`` runs each point).
    batch_norm: ``"reestimate"`` or ``"interpolate"`` (:mod:`kdt.analysis.interpolation`).
    bn_images: ``[n, B, H, W, C]`` preprocessed training batches for ``"reestimate"`` (None for
      models without BatchNorm).
  """

  def __init__(self, trainer: loop.Trainer, batch_norm: str, bn_images: jax.Array | None):
    self.trainer, self.batch_norm, self.bn_images = trainer, batch_norm, bn_images
    self._point = jax.jit(functools.partial(interpolation.interpolated_variables,
                                            model=trainer.model, batch_norm=batch_norm),
                          out_shardings=parallel.replicated(trainer.mesh))

  def errors(self, a: Model, b: Model, mask: Any, alphas, splits) -> dict[str, list[float]]:
    """``{split: [error at each alpha]}``; ``alpha = 0`` is ``a``, ``alpha = 1`` is ``b``."""
    out = {split: [] for split in splits}
    for alpha in alphas:
      params, stats = self._point(a.params, a.batch_stats, b.params, b.batch_stats,
                                  jnp.float32(alpha), bn_images=self.bn_images)
      for split in splits:
        out[split].append(1.0 - self.trainer.evaluate(params, stats, mask, split)["accuracy"])
    return out


def bn_training_images(setup: Setup, num_batches: int) -> jax.Array | None:
  """``num_batches`` training batches' images (:meth:`Setup.training_batches`), or None for a
  model without BatchNorm."""
  if not jax.tree.leaves(jax.eval_shape(setup.dense.init_state).batch_stats):
    return None
  return setup.training_batches(num_batches)["image"]


# ---------------------------------------------------------------------------------------------
# Experiment lmc.


def _copy_run(setup: Setup, name: str, directory: str, source: Model, mask: Any, start: int,
              data_seed: int, augment_seed: int) -> loop.Run:
  """A copy trained as the recipe ``rewind`` says, from ``mask * source`` = theta_k at k = ``start``."""
  rewind = recipes_lib.RECIPES["rewind"].start(
      theta_0=source, theta_k=source, trained=source, fresh=None, schedule=setup.schedule,
      loss=setup.loss, budget=recipes_lib.Budget(num_steps=int(setup.config.train.num_steps),
                                                 rewind_step=start))
  return loop.Run(name=name, directory=directory, init_state=setup.reset(rewind, mask), mask=mask,
                  end_step=rewind.end_step, optimizer=setup.optimizer, schedule=rewind.schedule,
                  loss=rewind.loss, data_seed=data_seed, augment_seed=augment_seed)


def _as_model(result: loop.RunResult) -> Model:
  return Model(result.state.params, result.state.batch_stats)


def _network_label(network: str, density: float) -> str:
  return "dense" if network == "dense" else f"{'IMP' if network == 'imp' else 'random'} " \
                                            f"{100 * density:.1f}%"


class LMCExperiment:
  """Runs experiment ``lmc`` for one config and workdir (see the module docstring)."""

  def __init__(self, setup: Setup, config: ml_collections.ConfigDict, workdir: str):
    self.config, self.lmc = config, config.lmc
    self.workdir = fileio.absolute(workdir)
    self.ks = sorted(int(k) for k in self.lmc.rewind_steps)
    self.setup = setup
    self.rounds = sorted(int(r) for r in self.lmc.rounds) or list(
        range(1, config.imp.num_rounds + 1))
    self.sparse = any(n in self.lmc.networks for n in ("imp", "random"))
    self.alphas = [float(a) for a in np.asarray(interpolation.alpha_grid(self.lmc.num_alphas))]
    self.splits = list(self.lmc.splits)
    self.verdict_split = "test" if "test" in self.splits else self.splits[0]
    leaves = self.setup.prunable if self.lmc.distance_weights == "prunable" else None
    self._metrics = jax.jit(functools.partial(stability.pair_metrics, leaves=leaves))
    self._correlation = jax.jit(functools.partial(correlation.weight_correlation,
                                                  prunable=self.setup.prunable,
                                                  top_p=float(self.lmc.top_p)))
    self._random_mask = jax.jit(functools.partial(pruning.random_mask_like,
                                                  prunable=self.setup.prunable))
    self._evaluator = None
    self._imp_masks: dict[int, dict[int, Any]] = {}

  # ----- masks ------------------------------------------------------------------------------------

  def imp_workdir(self, mask_step: int) -> str:
    return os.path.join(self.workdir, "imp", f"k_{mask_step:06d}")

  def _mask_step(self, k: int) -> int:
    return k if self.lmc.mask_rewind_step < 0 else int(self.lmc.mask_rewind_step)

  def imp_masks_plan(self, k: int) -> Generator[list[batch_lib.Job], list[loop.RunResult],
                                                 dict[int, Any]]:
    """``{round: mask}`` of IMP rewound to k's mask step, running that IMP's plan first if
    needed (a sub-plan: ``masks = yield from self.imp_masks_plan(k)``)."""
    step = self._mask_step(k)
    if step not in self._imp_masks:
      imp = imp_lib.imp_group(self.config.imp, recipes=("rewind",), control_recipe="rewind",
                              rewind_step=step, num_rounds=max(self.rounds))
      log.info("[lmc] IMP with rewinding to step %d (masks for k = %s) in %s", step,
               "every k" if self.lmc.mask_rewind_step >= 0 else k, self.imp_workdir(step))
      rounds = imp_lib.IMPRounds(self.setup, imp, self.imp_workdir(step))
      rounds.report((yield from rounds.plan()))
      self._imp_masks[step] = {
          r: self.setup.load_mask(imp_lib.round_dir(self.imp_workdir(step), r, "rewind"))
          for r in self.rounds}
    return self._imp_masks[step]

  def random_mask(self, k: int, round_index: int, imp_mask: Any) -> Any:
    """The control: a random mask with ``imp_mask``'s per-layer counts (saved once)."""
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(self.config.seeds.prune), k),
                             round_index)
    return self.setup.load_mask(self._row_dir(k, "random", round_index),
                                lambda: self._random_mask(key, imp_mask))

  # ----- rows -------------------------------------------------------------------------------------

  def _row_dir(self, k: int, network: str, round_index: int) -> str:
    name = "dense" if network == "dense" else f"{network}_r{round_index:02d}"
    return os.path.join(self.workdir, "lmc", f"k_{k:06d}", name)

  def evaluator(self) -> PathEvaluator:
    if self._evaluator is None:
      mode = self.lmc.batch_norm
      images = bn_training_images(self.setup, self.lmc.bn_batches) if mode == "reestimate" else None
      self._evaluator = PathEvaluator(self.setup.trainer, mode, images)
    return self._evaluator

  def run(self) -> list[dict]:
    """Dense run, then every k and network; returns the result rows (also written to disk)."""
    start = time.time()
    (rows,) = batch_lib.drive([self.plan()], self.setup.train_jobs)
    self.report(rows)
    log.info("lmc finished in %.1f s (this invocation); results in %s", time.time() - start,
             os.path.join(self.workdir, "results.json"))
    return rows

  def plan(self) -> Generator[list[batch_lib.Job], list[loop.RunResult], list[dict]]:
    """The experiment as a coroutine (:func:`kdt.tickets.batch.drive`): yields the runs it needs
    trained now, receives their results, returns the result rows.

    It yields the dense run; then, for every k, IMP's rounds rewound to k's mask step (its own
    plan, :meth:`kdt.experiments.imp.IMPRounds.plan`) and finally every copy that starts at k —
    the dense pair and each analysed round's IMP and random pairs — as one batch of tickets
    (they share the step range k..T, the optimizer and the loss). Several plans driven together
    (the replicates) train their batches as one.
    """
    setup = self.setup
    (dense,) = yield [batch_lib.Job(setup.trainer, setup.dense)]
    self.dense_accuracy = dense.final["test_accuracy"]
    rows: list[dict] = []
    for k in self.ks:
      state, _ = setup.trainer.restore_step(setup.dense, k)  # a damaged theta_k is replayed
      theta_k = Model(state.params, state.batch_stats)
      masks = (yield from self.imp_masks_plan(k)) if self.sparse else {}
      # (network, round, mask, the first copy's existing directory, whether the pairs are needed)
      pieces = []
      if "dense" in self.lmc.networks or self.sparse:
        pieces.append(("dense", 0, setup.dense.mask, setup.dense.directory if k == 0 else None,
                       "dense" in self.lmc.networks))
      for round_index in self.rounds if self.sparse else ():
        imp_mask = masks[round_index]
        if "imp" in self.lmc.networks:
          first = None
          if self._mask_step(k) == k:  # IMP's round run is this subnetwork's first copy
            first = os.path.join(imp_lib.round_dir(self.imp_workdir(k), round_index, "rewind"),
                                 "train")
          pieces.append(("imp", round_index, imp_mask, first, True))
        if "random" in self.lmc.networks:
          pieces.append(("random", round_index, self.random_mask(k, round_index, imp_mask), None,
                         True))
      runs = [self._copy_runs(k, network, round_index, theta_k, mask, first, need_pairs)
              for network, round_index, mask, first, need_pairs in pieces]
      results = yield [batch_lib.Job(setup.trainer, run) for copies in runs for run in copies]
      position, dense_first = 0, None
      for (network, round_index, mask, _, _), copies in zip(pieces, runs):
        trained = results[position:position + len(copies)]
        position += len(copies)
        if network == "dense":
          dense_first = trained[0]
          if "dense" not in self.lmc.networks:
            continue
        rows.append(self._row(k, network, round_index, mask, theta_k, trained,
                              None if network == "dense" else dense_first))
        self._write(rows)
    return rows

  def report(self, rows: list[dict]) -> None:
    """``lmc_summary.json``, the plots and the terminal table of this experiment's ``rows``."""
    summary = self._summary(rows)
    _write_json(os.path.join(self.workdir, "lmc_summary.json"), summary)
    if jax.process_index() == 0:
      plots.write_lmc_plots(self.workdir, rows, summary, title=self._title(),
                            threshold=float(self.lmc.stable_threshold))
    print(format_lmc_table(rows, summary, title=self._title()), flush=True)

  def _title(self) -> str:
    return f"{self.config.model.name} on {self.config.data.name}"

  def _copy_runs(self, k, network, round_index, theta_k, mask, first_directory,
                 need_pairs: bool = True) -> list[loop.Run]:
    """The copies of one (k, network, round): the first one (config seeds; in
    ``first_directory`` if that run exists already) and one per ``lmc.pair_seeds`` entry — only
    the first if the pairs are not needed (the dense first copy is the reference of the pruning
    stability)."""
    directory = self._row_dir(k, network, round_index)
    name = os.path.relpath(directory, self.workdir)
    seeds = self.config.seeds
    specs = [(first_directory or os.path.join(directory, f"order_{seeds.data_order}"),
              seeds.data_order, seeds.augment)]
    if need_pairs:
      specs += [(os.path.join(directory, f"order_{s}"), s, s) for s in self.lmc.pair_seeds]
    return [_copy_run(self.setup, f"{name}/order_{data_seed}", run_dir, theta_k, mask, k,
                      data_seed, augment_seed) for run_dir, data_seed, augment_seed in specs]

  def _row(self, k: int, network: str, round_index: int, mask: Any, theta_k: Model,
           copies: list[loop.RunResult], dense_first: loop.RunResult | None) -> dict:
    """One row of results (loaded from ``analysis.json`` if this row was measured before)."""
    path = os.path.join(self._row_dir(k, network, round_index), "analysis.json")
    if fileio.exists(path):
      with fileio.open(path, encoding="utf-8") as f:
        return json.load(f)
    log.info("[lmc] measuring k=%d %s%s", k, network, f" round {round_index}" if round_index else "")
    lmc = self.lmc
    summary = pruning.sparsity_summary(mask, self.setup.prunable)["total"]
    density = summary["kept"] / summary["total"]
    first = _as_model(copies[0])
    accuracies = [c.final["test_accuracy"] for c in copies]
    row: dict[str, Any] = {
        "k": k, "network": network, "round": round_index, "density": density,
        "label": _network_label(network, density), "weights_kept": summary["kept"],
        "copy_test_accuracy": accuracies, "test_accuracy": float(np.mean(accuracies)),
        **{k: v for k, v in evaluation.mean_over_runs([
            evaluation.accuracies(c.meta["history"], start_step=c.meta["start_step"],
                                  **evaluation.settings(self.config)) for c in copies]).items()
           if k != "test_accuracy"},
        "dense_test_accuracy": self.dense_accuracy, "steps_trained": self.config.train.num_steps - k,
        "pair_seeds": list(lmc.pair_seeds), "alphas": self.alphas,
        "distance_weights": lmc.distance_weights,
        "batch_norm": lmc.batch_norm if jax.tree.leaves(first.batch_stats) else "none",
    }
    curves: dict[str, list[list[float]]] = {s: [] for s in self.splits}
    pair_stats: list[dict] = []
    for other in copies[1:]:
      errors = self.evaluator().errors(first, _as_model(other), mask, self.alphas, self.splits)
      for split in self.splits:
        curves[split].append(errors[split])
      pair_stats.append(correlation.to_python(
          self._metrics(first.params, other.state.params, mask, theta_k.params)))
    row["curves"] = {f"{s}_error": curves[s] for s in self.splits}
    for split in self.splits:
      summaries = [interpolation.path_summary(self.alphas, c) for c in curves[split]]
      for key in ("instability", "endpoint_error", "max_error"):
        values = [s[key] for s in summaries]
        row[f"{key}_{split}"] = float(np.mean(values))
        if len(values) > 1:
          row[f"{key}_{split}_min"], row[f"{key}_{split}_max"] = min(values), max(values)
    row["instability"] = row[f"instability_{self.verdict_split}"]
    row["stable"] = stability.is_stable(row["instability"], lmc.stable_threshold)
    row["matching"] = stability.is_matching(row["test_accuracy"], self.dense_accuracy,
                                            lmc.matching_tolerance)
    for key in ("l2", "angle", "l2_relative", "travelled"):
      values = [p[key] for p in pair_stats if p[key] is not None]
      row[key] = float(np.mean(values)) if values else None
    row["pruning_l2"] = row["pruning_angle"] = None
    if dense_first is not None:
      pruning_stats = correlation.to_python(
          self._metrics(dense_first.state.params, first.params, mask, theta_k.params))
      row["pruning_l2"], row["pruning_angle"] = pruning_stats["l2"], pruning_stats["angle"]
    corr = correlation.to_python(self._correlation(theta_k.params, first.params, mask))
    row["magnitude_pearson"] = corr["mean"]["magnitude_pearson"]
    row["pearson"] = corr["mean"]["pearson"]
    row["top_overlap"] = corr["mean"]["top_overlap"]
    row["layers"] = {name: values for name, values in corr.items() if name != "mean"}
    _write_json(path, row)
    return row

  def _write(self, rows: list[dict]) -> None:
    _write_json(os.path.join(self.workdir, "results.json"), rows)
    if jax.process_index() == 0:
      fileio.write_csv(os.path.join(self.workdir, "results.csv"), rows, LMC_COLUMNS)

  def _summary(self, rows: list[dict]) -> dict:
    """Stability / matching onsets per (network, round) and the mask overlap matrices."""
    onsets = {}
    for label in dict.fromkeys(_series_key(r) for r in rows):
      series = sorted((r for r in rows if _series_key(r) == label), key=lambda r: r["k"])
      ks = [r["k"] for r in series]
      onsets[label] = {
          "stable_from_k": stability.onset(ks, [r["stable"] for r in series]),
          "matching_from_k": stability.onset(ks, [r["matching"] for r in series]),
          "density": series[0]["density"]}
    summary = {"dense_test_accuracy": self.dense_accuracy, "onsets": onsets,
               "stable_threshold": self.lmc.stable_threshold,
               "matching_tolerance": self.lmc.matching_tolerance,
               "verdict_split": self.verdict_split}
    if self._imp_masks:
      names, masks = [], []
      for step in sorted(self._imp_masks):
        for round_index in self.rounds:
          names.append(f"k={step} r{round_index}")
          masks.append(self._imp_masks[step][round_index])
      if "random" in self.lmc.networks:
        k, round_index = self.ks[0], self.rounds[-1]
        names.append(f"random r{round_index}")
        masks.append(self.random_mask(
            k, round_index, self._imp_masks[self._mask_step(k)][round_index]))
      overlap = correlation.pairwise_mask_overlap(masks, self.setup.prunable)
      summary["mask_overlap"] = {"names": names, "jaccard": overlap["jaccard"].tolist(),
                                 "hamming": overlap["hamming"].tolist()}
    return summary


def _series_key(row: dict) -> str:
  return "dense" if row["network"] == "dense" else f"{row['network']}_r{row['round']:02d}"


def format_lmc_table(rows: list[dict], summary: dict, title: str = "") -> str:
  """The ``lmc`` rows and onsets as a fixed-width terminal table."""
  header = (f"{'k':>7}  {'network':<14} {'test acc':>8}  {'instab test':>11}  "
            f"{'instab train':>12}  {'stable':>6}  {'matching':>8}  {'L2':>8}  {'angle':>6}")
  lines = ([title] if title else []) + [
      f"dense network test accuracy {summary['dense_test_accuracy']:.4f}", header,
      "-" * len(header)]
  for r in rows:
    train = r.get("instability_train")
    lines.append(
        f"{r['k']:>7}  {r['label']:<14} {r['test_accuracy']:>8.4f}  "
        f"{100 * r.get('instability_test', r['instability']):>10.2f}%  "
        f"{'' if train is None else f'{100 * train:.2f}%':>12}  "
        f"{'yes' if r['stable'] else 'no':>6}  {'yes' if r['matching'] else 'no':>8}  "
        f"{r['l2'] if r['l2'] is None else round(r['l2'], 3):>8}  "
        f"{r['angle'] if r['angle'] is None else round(r['angle'], 1):>6}")
  lines.append("onsets (first k from which every larger k is stable / matching):")
  for label, o in summary["onsets"].items():
    lines.append(f"  {label:<12} density {100 * o['density']:6.2f}%  stable from k="
                 f"{o['stable_from_k']}  matching from k={o['matching_from_k']}")
  return "\n".join(lines)

