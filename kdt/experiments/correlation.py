"""Experiment ``correlation``: Liu et al.'s learning-rate sweep (I/O over :mod:`kdt.analysis`).

"Lottery Ticket Preserves Weight Correlation" (Liu et al. 2021; docs/methods.md). For each learning
rate in ``config.correlation.learning_rates``: IMP (recipes ``lth``, ``random_reinit`` and
``pf_liu``, the ``imp`` group's pruning settings, :func:`kdt.experiments.imp.run_rounds` on this
experiment's Setup with that learning rate) in ``lr_<lr>/`` from the same theta_0, then the
theta_0 <-> trained correlation of the dense network and of the last round's ticket (over its
surviving weights), the winning gap (``lth`` minus ``random_reinit`` test accuracy per round), Liu
et al.'s comparison of the ticket with pruning & fine-tuning at the same pruning algorithm and
training budget (``pf_gap``: ``pf_liu`` minus ``lth``; recipe in :mod:`kdt.tickets.recipes`), and
how much the ticket's mask overlaps the mask that theta_0's own magnitudes would give. Test
accuracies are the evaluation protocol's (``report_metric``, :mod:`kdt.evaluation`). Writes
``results.json`` (one row per learning rate), ``plots/correlation.png`` and
``plots/mask_overlap.png``.

Workdir::

  lr_0.1/dense/                  the dense run at learning rate 0.1 (theta_0 is shared)
  lr_0.1/round_RR/<recipe>/      its IMP rounds
  results.json, results.csv      one row per learning rate
  correlation_summary.json       mask overlap of the last round's tickets across learning rates

Every training run checkpoints in its own directory and masks are saved once, so the sweep resumes.
"""

from __future__ import annotations

import functools
import logging
import os
import time

import jax
import jax.numpy as jnp
import ml_collections

from kdt import evaluation
from kdt import fileio
from kdt import plots
from kdt import pruning
from kdt.analysis import correlation
from kdt.experiments import imp as imp_lib
from kdt.experiments.setup import Setup

log = logging.getLogger(__name__)


def _lr_dirname(learning_rate: float) -> str:
  return f"lr_{learning_rate:g}"


def pinned_steps(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  """The dense runs' rewind points: IMP's ``imp.rewind_step``."""
  return (int(config.imp.rewind_step),)


def run(setup: Setup, config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  """Experiment ``correlation``: Liu et al.'s learning-rate sweep (see the module docstring)."""
  start = time.time()
  workdir = fileio.absolute(workdir)
  corr_cfg, imp = config.correlation, config.imp
  num_rounds, top_p = int(imp.num_rounds), float(corr_cfg.top_p)
  weight_corr = jax.jit(functools.partial(correlation.weight_correlation, prunable=setup.prunable,
                                          top_p=top_p))
  allocation = imp.allocation
  init_mask = jax.jit(lambda params, density: pruning.mask_for_density(
      pruning.magnitude(params), setup.prunable, density, allocation=allocation))
  overlap = jax.jit(lambda a, b: pruning.mask_overlap(a, b, setup.prunable))
  random_like = jax.jit(functools.partial(pruning.random_mask_like, prunable=setup.prunable))

  rows, final_masks, names = [], [], []
  for learning_rate in corr_cfg.learning_rates:
    sub_dir = os.path.join(workdir, _lr_dirname(learning_rate))
    at_lr = setup.with_learning_rate(learning_rate, os.path.join(sub_dir, "dense"))
    group = imp_lib.imp_group(imp, recipes=("lth", "random_reinit", "pf_liu"),
                              control_recipe="lth")
    log.info("[correlation] learning rate %g: IMP in %s", learning_rate, sub_dir)
    imp_rows = imp_lib.run_rounds(at_lr, group, sub_dir)
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
    accuracy = lambda r, recipe: by[(r, recipe)][evaluation.REPORTED]  # noqa: E731
    per_round = []
    for r in range(1, num_rounds + 1):
      density = by[(r, "lth")]["density"]
      from_init = init_mask(theta_0.params, jnp.float32(density))
      key = jax.random.fold_in(jax.random.key(config.seeds.prune), 20_000 + r)
      per_round.append({
          "round": r, "density": density,
          "lth_test_accuracy": accuracy(r, "lth"),
          "random_reinit_test_accuracy": accuracy(r, "random_reinit"),
          "pf_liu_test_accuracy": accuracy(r, "pf_liu"),
          "pf_liu_density": by[(r, "pf_liu")]["density"],
          "winning_gap": accuracy(r, "lth") - accuracy(r, "random_reinit"),
          "pf_gap": accuracy(r, "pf_liu") - accuracy(r, "lth"),
          "init_mask_jaccard": correlation.to_python(overlap(masks[r], from_init))["jaccard"],
          "random_mask_jaccard": correlation.to_python(
              overlap(masks[r], random_like(key, masks[r])))["jaccard"],
      })
    last = per_round[-1]
    rows.append({
        "learning_rate": float(learning_rate), "report_metric": by[(0, "dense")]["report_metric"],
        "dense_test_accuracy": accuracy(0, "dense"),
        "density": last["density"], "lth_test_accuracy": last["lth_test_accuracy"],
        "random_reinit_test_accuracy": last["random_reinit_test_accuracy"],
        "pf_liu_test_accuracy": last["pf_liu_test_accuracy"], "pf_gap": last["pf_gap"],
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
    if jax.process_index() == 0:
      fileio.write_json(os.path.join(workdir, "results.json"), rows)
      fileio.write_csv(os.path.join(workdir, "results.csv"), rows,
                       [k for k, v in rows[0].items() if not isinstance(v, (dict, list))])

  matrices = correlation.pairwise_mask_overlap(final_masks, setup.prunable)
  mask_overlap = {"names": names, "jaccard": matrices["jaccard"].tolist(),
                  "hamming": matrices["hamming"].tolist(),
                  "round": num_rounds, "density": rows[-1]["density"]}
  if jax.process_index() == 0:
    fileio.write_json(os.path.join(workdir, "correlation_summary.json"),
                      {"mask_overlap": mask_overlap})
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
            f"{'ticket acc':>10}  {'reinit acc':>10}  {'gap':>7}  {'P&F acc':>8}  {'P&F-LTH':>7}  "
            f"{'mask~init J':>11}")
  lines = ([title] if title else []) + [header, "-" * len(header)]
  for r in rows:
    lines.append(
        f"{r['learning_rate']:>8g}  {r['dense_test_accuracy']:>9.4f}  "
        f"{_fmt(r['dense_magnitude_pearson'], 11)}  {_fmt(r['dense_top_overlap'], 9)}  "
        f"{r['lth_test_accuracy']:>10.4f}  {r['random_reinit_test_accuracy']:>10.4f}  "
        f"{r['winning_gap']:>+7.4f}  {r['pf_liu_test_accuracy']:>8.4f}  {r['pf_gap']:>+7.4f}  "
        f"{r['init_mask_jaccard']:>11.3f}")
  if rows:
    lines.append(f"(|w| pearson and top-{rows[0]['top_p']:g} overlap: theta_0 vs the trained dense "
                 f"network; ticket / reinit at {100 * rows[0]['density']:.1f}% of the weights; "
                 "P&F: pruning & fine-tuning, Liu et al., same budget; mask~init J: Jaccard of the "
                 "ticket's mask with theta_0's own magnitude mask)")
  return "\n".join(lines)


def _fmt(value, width: int) -> str:
  return f"{'n/a':>{width}}" if value is None else f"{value:>{width}.3f}"
