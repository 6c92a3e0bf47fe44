"""Experiments ``lmc`` and ``correlation``: the I/O edge of :mod:`kdt.analysis`.

**lmc** (Frankle et al., "Linear Mode Connectivity and the LTH"; "Stabilizing the LTH"; METHODS.md
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

The two copies are trained one after another by the ordinary :class:`kdt.train.loop.Trainer`;
a "ticket axis" that trains both at once can replace :func:`_train_copies` without changing
anything else. The IMP subnetwork's first copy *is* IMP's round run (same start, mask, schedule
and seeds), so it is loaded from the IMP workdir rather than trained twice.

Workdir::

  dense/                              the dense run from theta_0 (every k pinned)
  imp/k_000020/                       a complete IMP workdir: IMP rewound to k = 20
  lmc/k_000020/dense/order_1/         a copy from theta_20 trained with data order 1
  lmc/k_000020/imp_r03/order_1/       the other copy of the round-3 IMP subnetwork
  lmc/k_000020/random_r03/mask, order_0/, order_1/
  lmc/k_000020/<network>/analysis.json  that row's measurements (never recomputed)
  results.json, results.csv           one row per (k, network, round)
  lmc_summary.json                    stability onsets per network, mask overlap matrices
  plots/instability_vs_rewind.png, interpolation.png, correlation.png, mask_overlap.png,
  plots/stability_distance.png

**correlation** (Liu et al., "Lottery Ticket Preserves Weight Correlation"; METHODS.md §5). For
each learning rate in ``config.correlation.learning_rates``: IMP (recipes ``lth`` and
``random_reinit``) in ``lr_<lr>/`` from the same theta_0, then the theta_0 <-> trained
correlation of the dense network and of the last round's ticket (over its surviving weights), the
winning gap (``lth`` minus ``random_reinit`` test accuracy per round), and how much the ticket's
mask overlaps the mask that theta_0's own magnitudes would give. Writes ``results.json`` (one row
per learning rate), ``plots/correlation.png`` and ``plots/mask_overlap.png``.

Both experiments resume: every training run checkpoints in its own directory, masks and row
analyses are saved once, and finished pieces are loaded, never redone.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from kdt import checkpoint as checkpoint_lib
from kdt import config_lib
from kdt import data as data_lib
from kdt import experiment
from kdt import parallel
from kdt import pruning
from kdt.analysis import correlation
from kdt.analysis import interpolation
from kdt.analysis import plots
from kdt.analysis import stability
from kdt.tickets import imp as imp_lib
from kdt.tickets import recipes as recipes_lib
from kdt.train import loop

log = logging.getLogger(__name__)

LMC_COLUMNS = ("k", "network", "round", "density", "test_accuracy", "dense_test_accuracy",
               "instability", "stable", "matching", "instability_test", "instability_train",
               "instability_val", "endpoint_error_test", "max_error_test", "endpoint_error_train",
               "max_error_train", "l2", "angle", "l2_relative", "pruning_l2", "pruning_angle",
               "magnitude_pearson", "top_overlap", "steps_trained")


@dataclasses.dataclass
class Model:
  """A trained (or rewound) network: parameters and BatchNorm statistics."""
  params: Any
  batch_stats: Any


class _Setup:
  """What every run of one experiment shares: mesh, data, model, one Trainer, the dense run."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, pinned_steps=()):
    self.config, self.workdir = config, os.path.abspath(workdir)
    self.mesh = parallel.make_mesh()
    self.dataset = experiment.load_data(config)
    self.model = experiment.build_model(config, self.dataset.info)
    self.trainer = experiment.make_trainer(config, workdir, self.dataset, self.model, self.mesh)
    self.direction = experiment.optimizer_spec(config).make()
    self.dense = experiment.dense_run(config, workdir, self.model, pinned_steps=pinned_steps)
    shapes = jax.eval_shape(self.dense.init_state).params
    self.prunable = pruning.prunable_leaves(shapes, config.imp.selector,
                                            prune_stem=config.imp.prune_stem)
    self.masks = imp_lib.MaskStore()
    self._replicated = parallel.replicated(self.mesh)

  def restore(self, directory: str, step: int | None = None) -> tuple[Model, dict]:
    """The state saved at ``step`` (None = latest) of a run with the dense run's structure."""
    shapes = jax.eval_shape(self.dense.init_state)
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=self._replicated), shapes)
    ckpt = checkpoint_lib.Checkpointer(directory)
    try:
      step = ckpt.latest_step() if step is None else step
      state, meta = ckpt.restore(step, abstract)
    finally:
      ckpt.close()
    return Model(state.params, state.batch_stats), meta

  def load_mask(self, directory: str, compute=None) -> Any:
    """The mask saved in ``directory`` (computed and saved first when ``compute`` is given)."""
    return self.masks.load_or_compute(directory, self.dense.mask, compute)


def _imp_config(config: ml_collections.ConfigDict, **imp_overrides) -> ml_collections.ConfigDict:
  """An ``imp`` experiment config with ``config``'s shared groups and ``imp`` overrides.

  Groups only the ``imp`` experiment has keep their defaults.
  """
  fields = config_lib.to_dict(config_lib.base_config("imp"))
  own = config_lib.to_dict(config)
  for group in fields:
    if group != "experiment" and group in own:
      fields[group] = own[group]
  optimizer = imp_overrides.pop("optimizer", {})
  fields["optimizer"].update(optimizer)
  fields["imp"].update(imp_overrides)
  sub = ml_collections.ConfigDict(fields)
  config_lib.validate(sub)
  return sub


def _run_imp(config: ml_collections.ConfigDict, workdir: str, dense: loop.Run | None = None
             ) -> list[dict]:
  """Runs (or loads) a whole IMP workdir; returns its result rows."""
  experiment.prepare_workdir(config, workdir)
  return imp_lib.IMPDriver(config, workdir, dense=dense).run()


def _write_json(path: str, payload: Any) -> None:
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    experiment.write_json_atomic(path, payload)


def _write_csv(path: str, rows: list[dict], columns) -> None:
  if jax.process_index() != 0:
    return
  columns = [c for c in columns if any(c in r for r in rows)]
  lines = [",".join(columns)]
  for row in rows:
    lines.append(",".join("" if row.get(c) is None else str(row[c]) for c in columns))
  tmp = f"{path}.tmp.{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
  os.replace(tmp, path)


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


def bn_training_images(setup: _Setup, num_batches: int) -> jax.Array | None:
  """``num_batches`` preprocessed training batches (data order ``seeds.data_order``), stacked.

  Returns None for models without BatchNorm. Augmented like training batches, with a fixed key.
  """
  if not jax.tree.leaves(jax.eval_shape(setup.dense.init_state).batch_stats):
    return None
  config, dataset, trainer = setup.config, setup.dataset, setup.trainer
  batch_size, seed = config.train.batch_size, config.seeds.data_order
  info = dataset.info
  key = jax.random.key(config.seeds.augment)
  batches = []
  for step in range(num_batches):
    if info.streaming:
      local = dataset.train_batch(step, batch_size, seed, augment=trainer.augment,
                                  augment_seed=config.seeds.augment)
      augment = "none"
    else:
      local = dataset.train_batch(step, batch_size, seed)
      augment = trainer.augment
    images = parallel.global_batch(local, setup.mesh)["image"]
    batches.append(data_lib.preprocess(images, jax.random.fold_in(key, step), info=info,
                                       train=True, augment=augment))
  return jnp.stack(batches)


# ---------------------------------------------------------------------------------------------
# Experiment lmc.


def _copy_run(setup: _Setup, name: str, directory: str, source: Model, mask: Any, start: int,
              data_seed: int, augment_seed: int) -> loop.Run:
  """A copy trained from ``mask * source`` at schedule step ``start`` to ``train.num_steps``."""
  config, direction = setup.config, setup.direction

  def init_state():
    return recipes_lib.reset_state(source.params, source.batch_stats, mask,
                                   direction.init(source.params), start)

  loss = dataclasses.replace(experiment.loss_config(config), kd_stop_step=-1)
  return loop.Run(name=name, directory=directory, init_state=init_state, mask=mask,
                  end_step=config.train.num_steps, optimizer=experiment.optimizer_spec(config),
                  schedule=experiment.schedule_spec(config), loss=loss, data_seed=data_seed,
                  augment_seed=augment_seed)


def _train_copies(setup: _Setup, name: str, directory: str, source: Model, mask: Any, k: int,
                  first_directory: str | None = None) -> list[loop.RunResult]:
  """The first copy (config seeds) and one copy per ``lmc.pair_seeds``, trained in turn.

  Args:
    setup: the shared setup.
    name: run-name prefix (logs, TensorBoard).
    directory: where the copies' checkpoint directories go (``order_<seed>``).
    source: theta_k.
    mask: the (sub)network's mask.
    k: the rewind step.
    first_directory: an existing run directory that holds the first copy (IMP's round run, or
      the dense run for k = 0), or None.

  Returns:
    ``[first copy, other copies...]``.
  """
  seeds = setup.config.seeds
  specs = [(first_directory or os.path.join(directory, f"order_{seeds.data_order}"),
            seeds.data_order, seeds.augment)]
  specs += [(os.path.join(directory, f"order_{s}"), s, s) for s in setup.config.lmc.pair_seeds]
  results = []
  for run_dir, data_seed, augment_seed in specs:
    run = _copy_run(setup, f"{name}/order_{data_seed}", run_dir, source, mask, k, data_seed,
                    augment_seed)
    results.append(setup.trainer.train(run))
  return results


def _as_model(result: loop.RunResult) -> Model:
  return Model(result.state.params, result.state.batch_stats)


def _network_label(network: str, density: float) -> str:
  return "dense" if network == "dense" else f"{'IMP' if network == 'imp' else 'random'} " \
                                            f"{100 * density:.1f}%"


class LMCExperiment:
  """Runs experiment ``lmc`` for one config and workdir (see the module docstring)."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    self.config, self.lmc = config, config.lmc
    self.workdir = os.path.abspath(workdir)
    self.ks = sorted(int(k) for k in self.lmc.rewind_steps)
    mask_step = int(self.lmc.mask_rewind_step)
    pinned = tuple(self.ks) + ((mask_step,) if mask_step >= 0 else ())
    self.setup = _Setup(config, workdir, pinned_steps=pinned)
    self.rounds = sorted(int(r) for r in self.lmc.rounds) or list(
        range(1, config.imp.num_rounds + 1))
    self.sparse = any(n in self.lmc.networks for n in ("imp", "random"))
    self.alphas = [float(a) for a in np.asarray(interpolation.alpha_grid(self.lmc.num_alphas))]
    self.splits = list(self.lmc.splits)
    self.verdict_split = "test" if "test" in self.splits else self.splits[0]
    self._metrics = jax.jit(stability.pair_metrics)
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

  def imp_masks(self, k: int) -> dict[int, Any]:
    """``{round: mask}`` of IMP rewound to k's mask step, running that IMP first if needed."""
    step = self._mask_step(k)
    if step not in self._imp_masks:
      sub = _imp_config(self.config, recipes=("rewind",), control_recipe="rewind",
                        rewind_step=step, num_rounds=max(self.rounds))
      log.info("[lmc] IMP with rewinding to step %d (masks for k = %s) in %s", step,
               "every k" if self.lmc.mask_rewind_step >= 0 else k, self.imp_workdir(step))
      _run_imp(sub, self.imp_workdir(step), dense=self.setup.dense)
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
    setup = self.setup
    dense = setup.trainer.train(setup.dense)
    self.dense_accuracy = dense.final["test_accuracy"]
    rows: list[dict] = []
    for k in self.ks:
      theta_k, _ = setup.restore(setup.dense.directory, k)
      first_dense = setup.dense.directory if k == 0 else None
      dense_copies = None
      if "dense" in self.lmc.networks or self.sparse:
        dense_copies = self._copies_or_first(k, "dense", 0, theta_k, setup.dense.mask,
                                             first_dense, need_pairs="dense" in self.lmc.networks)
      if "dense" in self.lmc.networks:
        rows.append(self._row(k, "dense", 0, setup.dense.mask, theta_k, dense_copies, None))
        self._write(rows)
      if not self.sparse:
        continue
      masks = self.imp_masks(k)
      for round_index in self.rounds:
        imp_mask = masks[round_index]
        if "imp" in self.lmc.networks:
          first = None
          if self._mask_step(k) == k:  # IMP's round run is this subnetwork's first copy
            first = os.path.join(imp_lib.round_dir(self.imp_workdir(k), round_index, "rewind"),
                                 "train")
          copies = self._copies_or_first(k, "imp", round_index, theta_k, imp_mask, first)
          rows.append(self._row(k, "imp", round_index, imp_mask, theta_k, copies, dense_copies[0]))
          self._write(rows)
        if "random" in self.lmc.networks:
          mask = self.random_mask(k, round_index, imp_mask)
          copies = self._copies_or_first(k, "random", round_index, theta_k, mask, None)
          rows.append(self._row(k, "random", round_index, mask, theta_k, copies, dense_copies[0]))
          self._write(rows)

    summary = self._summary(rows)
    _write_json(os.path.join(self.workdir, "lmc_summary.json"), summary)
    if jax.process_index() == 0:
      plots.write_lmc_plots(self.workdir, rows, summary, title=self._title(),
                            threshold=float(self.lmc.stable_threshold))
    print(format_lmc_table(rows, summary, title=self._title()), flush=True)
    log.info("lmc finished in %.1f s (this invocation); results in %s", time.time() - start,
             os.path.join(self.workdir, "results.json"))
    return rows

  def _title(self) -> str:
    return f"{self.config.model.name} on {self.config.data.name}"

  def _copies_or_first(self, k, network, round_index, theta_k, mask, first_directory,
                       need_pairs: bool = True) -> list[loop.RunResult]:
    """The copies of one (k, network, round) — only the first one if the pairs are not needed
    (the dense first copy is the reference of the pruning stability)."""
    directory = self._row_dir(k, network, round_index)
    name = os.path.relpath(directory, self.workdir)
    if need_pairs:
      return _train_copies(self.setup, name, directory, theta_k, mask, k, first_directory)
    seeds = self.config.seeds
    run_dir = first_directory or os.path.join(directory, f"order_{seeds.data_order}")
    run = _copy_run(self.setup, f"{name}/order_{seeds.data_order}", run_dir, theta_k, mask, k,
                    seeds.data_order, seeds.augment)
    return [self.setup.trainer.train(run)]

  def _row(self, k: int, network: str, round_index: int, mask: Any, theta_k: Model,
           copies: list[loop.RunResult], dense_first: loop.RunResult | None) -> dict:
    """One row of results (loaded from ``analysis.json`` if this row was measured before)."""
    path = os.path.join(self._row_dir(k, network, round_index), "analysis.json")
    if os.path.exists(path):
      with open(path, encoding="utf-8") as f:
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
        "dense_test_accuracy": self.dense_accuracy, "steps_trained": self.config.train.num_steps - k,
        "pair_seeds": list(lmc.pair_seeds), "alphas": self.alphas,
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
    _write_csv(os.path.join(self.workdir, "results.csv"), rows, LMC_COLUMNS)

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
        masks.append(self.random_mask(k, round_index, self.imp_masks(k)[round_index]))
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


def run_lmc(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  """Experiment ``lmc`` (see :class:`LMCExperiment`)."""
  return LMCExperiment(config, workdir).run()


# ---------------------------------------------------------------------------------------------
# Experiment correlation.


def _lr_dirname(learning_rate: float) -> str:
  return f"lr_{learning_rate:g}"


def run_correlation(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  """Experiment ``correlation``: Liu et al.'s learning-rate sweep (see the module docstring)."""
  start = time.time()
  workdir = os.path.abspath(workdir)
  setup = _Setup(config, workdir)
  corr_cfg, imp = config.correlation, config.imp
  num_rounds, top_p = int(imp.num_rounds), float(corr_cfg.top_p)
  weight_corr = jax.jit(functools.partial(correlation.weight_correlation, prunable=setup.prunable,
                                          top_p=top_p))
  allocation = "global" if imp.scope == "global" else "layerwise"
  init_mask = jax.jit(lambda params, density: pruning.mask_for_density(
      pruning.magnitude(params), setup.prunable, density, allocation=allocation))
  overlap = jax.jit(lambda a, b: pruning.mask_overlap(a, b, setup.prunable))
  random_like = jax.jit(functools.partial(pruning.random_mask_like, prunable=setup.prunable))

  rows, final_masks, names = [], [], []
  for learning_rate in corr_cfg.learning_rates:
    sub_dir = os.path.join(workdir, _lr_dirname(learning_rate))
    sub = _imp_config(config, recipes=("lth", "random_reinit"), control_recipe="lth",
                      optimizer={"learning_rate": float(learning_rate)})
    log.info("[correlation] learning rate %g: IMP in %s", learning_rate, sub_dir)
    imp_rows = _run_imp(sub, sub_dir)
    theta_0, _ = setup.restore(os.path.join(sub_dir, "dense"), 0)
    trained, _ = setup.restore(os.path.join(sub_dir, "dense"), config.train.num_steps)
    masks = {r: setup.load_mask(imp_lib.round_dir(sub_dir, r, "lth")) for r in
             range(1, num_rounds + 1)}
    ticket, _ = setup.restore(os.path.join(imp_lib.round_dir(sub_dir, num_rounds, "lth"), "train"))
    dense_corr = correlation.to_python(weight_corr(theta_0.params, trained.params,
                                                   setup.dense.mask))
    ticket_corr = correlation.to_python(weight_corr(theta_0.params, ticket.params,
                                                    masks[num_rounds]))
    by = {(r["round"], r["recipe"]): r for r in imp_rows}
    per_round = []
    for r in range(1, num_rounds + 1):
      density = by[(r, "lth")]["density"]
      from_init = init_mask(theta_0.params, jnp.float32(density))
      key = jax.random.fold_in(jax.random.key(config.seeds.prune), 20_000 + r)
      per_round.append({
          "round": r, "density": density,
          "lth_test_accuracy": by[(r, "lth")]["test_accuracy"],
          "random_reinit_test_accuracy": by[(r, "random_reinit")]["test_accuracy"],
          "winning_gap": by[(r, "lth")]["test_accuracy"] - by[(r, "random_reinit")]["test_accuracy"],
          "init_mask_jaccard": correlation.to_python(overlap(masks[r], from_init))["jaccard"],
          "random_mask_jaccard": correlation.to_python(
              overlap(masks[r], random_like(key, masks[r])))["jaccard"],
      })
    last = per_round[-1]
    rows.append({
        "learning_rate": float(learning_rate), "dense_test_accuracy": by[(0, "dense")]["test_accuracy"],
        "density": last["density"], "lth_test_accuracy": last["lth_test_accuracy"],
        "random_reinit_test_accuracy": last["random_reinit_test_accuracy"],
        "winning_gap": last["winning_gap"], "init_mask_jaccard": last["init_mask_jaccard"],
        "random_mask_jaccard": last["random_mask_jaccard"], "top_p": top_p,
        "dense_pearson": dense_corr["mean"]["pearson"],
        "dense_magnitude_pearson": dense_corr["mean"]["magnitude_pearson"],
        "dense_top_overlap": dense_corr["mean"]["top_overlap"],
        "ticket_pearson": ticket_corr["mean"]["pearson"],
        "ticket_magnitude_pearson": ticket_corr["mean"]["magnitude_pearson"],
        "ticket_top_overlap": ticket_corr["mean"]["top_overlap"],
        "dense_layers": {k: v for k, v in dense_corr.items() if k != "mean"},
        "ticket_layers": {k: v for k, v in ticket_corr.items() if k != "mean"},
        "rounds": per_round, "workdir": sub_dir,
    })
    final_masks.append(masks[num_rounds])
    names.append(f"lr {learning_rate:g}")
    _write_json(os.path.join(workdir, "results.json"), rows)
    _write_csv(os.path.join(workdir, "results.csv"), rows,
               [k for k, v in rows[0].items() if not isinstance(v, (dict, list))])

  matrices = correlation.pairwise_mask_overlap(final_masks, setup.prunable)
  mask_overlap = {"names": names, "jaccard": matrices["jaccard"].tolist(),
                  "hamming": matrices["hamming"].tolist(),
                  "round": num_rounds, "density": rows[-1]["density"]}
  _write_json(os.path.join(workdir, "correlation_summary.json"), {"mask_overlap": mask_overlap})
  title = f"{config.model.name} on {config.data.name}"
  if jax.process_index() == 0:
    plots.write_correlation_plots(workdir, rows, mask_overlap, title=title)
  print(format_correlation_table(rows, title=title), flush=True)
  log.info("correlation finished in %.1f s (this invocation); results in %s",
           time.time() - start, os.path.join(workdir, "results.json"))
  return rows


def format_correlation_table(rows: list[dict], title: str = "") -> str:
  """The ``correlation`` rows as a fixed-width terminal table."""
  header = (f"{'lr':>8}  {'dense acc':>9}  {'|w| pearson':>11}  {'top-p ovl':>9}  "
            f"{'ticket acc':>10}  {'reinit acc':>10}  {'gap':>7}  {'mask~init J':>11}")
  lines = ([title] if title else []) + [header, "-" * len(header)]
  for r in rows:
    lines.append(
        f"{r['learning_rate']:>8g}  {r['dense_test_accuracy']:>9.4f}  "
        f"{_fmt(r['dense_magnitude_pearson'], 11)}  {_fmt(r['dense_top_overlap'], 9)}  "
        f"{r['lth_test_accuracy']:>10.4f}  {r['random_reinit_test_accuracy']:>10.4f}  "
        f"{r['winning_gap']:>+7.4f}  {r['init_mask_jaccard']:>11.3f}")
  if rows:
    lines.append(f"(|w| pearson and top-{rows[0]['top_p']:g} overlap: theta_0 vs the trained dense "
                 f"network; ticket / reinit at {100 * rows[0]['density']:.1f}% of the weights; "
                 "mask~init J: Jaccard of the ticket's mask with theta_0's own magnitude mask)")
  return "\n".join(lines)


def _fmt(value, width: int) -> str:
  return f"{'n/a':>{width}}" if value is None else f"{value:>{width}.3f}"
