"""kdt.pruning: which weights to prune, how to score them, and exact-count masks.

The pieces, all pure and jit-able over parameter pytrees unless noted:

* :mod:`~kdt.pruning.selectors`: :func:`prunable_leaves` marks prunable leaves
  with static Python bools by regex rules over '/'-joined paths (presets
  ``"conv"``, ``"conv_dense"``, ``"conv_dense_no_head"``).
* :mod:`~kdt.pruning.scores`: magnitude, random, SNIP, GraSP, Taylor-1 and
  SynFlow; every score is "remove lowest".
* :mod:`~kdt.pruning.masks`: global / layer-wise pruning of ``ceil(f * R)`` of
  the remaining weights (or open_lth's count arithmetic), one-shot masks for a density (global,
  layer-wise, uniform, ERK), apply, random masks with the same layer-wise counts,
  summaries (host-side), overlap and checksums.
* :mod:`~kdt.pruning.schedules`: IMP densities and exact counts, one-shot lists
  (KD-ticket), SynFlow's exponential schedule, gradual (polynomial) sparsity.
* :mod:`~kdt.pruning.dynamic`: RigL / SET drop-and-grow mask updates, their
  drop-fraction schedule and the sparsity-aware (per-neuron fan-in) initialisation.
* :mod:`~kdt.pruning.registry`: :class:`Pruner` — ``imp.score`` x ``imp.allocation`` by name,
  the one place a config string becomes a pruning behaviour.
* :mod:`~kdt.pruning.basis`: masks on the coefficients of the weights in an
  orthonormal basis (identity, DCT), the "generalized lottery ticket".

A typical IMP round::

  prunable = prunable_leaves(params, "conv_dense")
  mask = ones_like_params(params)
  prune = jax.jit(functools.partial(prune_global, prunable=prunable, fraction=0.2))
  mask = prune(magnitude(trained_params), mask)
  params = apply_mask(rewind_params, mask)
"""

from kdt.pruning.masks import ALLOCATIONS
from kdt.pruning.masks import COUNT_CONVENTIONS
from kdt.pruning.masks import any_pruned_nonzero
from kdt.pruning.masks import apply_mask
from kdt.pruning.masks import ceil_count
from kdt.pruning.masks import erk_densities
from kdt.pruning.masks import iterative_kept_count
from kdt.pruning.masks import mask_checksum
from kdt.pruning.masks import mask_for_count
from kdt.pruning.masks import mask_for_density
from kdt.pruning.masks import mask_overlap
from kdt.pruning.masks import ones_like_params
from kdt.pruning.masks import prune_global
from kdt.pruning.registry import DATA_SCORES
from kdt.pruning.registry import SCORES
from kdt.pruning.registry import Pruner
from kdt.pruning.masks import prune_layerwise
from kdt.pruning.masks import random_mask_like
from kdt.pruning.masks import sparsity_summary
from kdt.pruning.schedules import iterative_counts
from kdt.pruning.schedules import iterative_densities
from kdt.pruning.schedules import iterative_density
from kdt.pruning.schedules import kd_ticket_imagenet_sparsities
from kdt.pruning.schedules import kd_ticket_sparsities
from kdt.pruning.schedules import oneshot_densities
from kdt.pruning.schedules import polynomial_sparsity
from kdt.pruning.schedules import synflow_schedule
from kdt.pruning.scores import classification_loss
from kdt.pruning.scores import grasp
from kdt.pruning.scores import magnitude
from kdt.pruning.scores import random_scores
from kdt.pruning.scores import snip
from kdt.pruning.scores import synflow
from kdt.pruning.scores import synflow_scores
from kdt.pruning.scores import taylor
from kdt.pruning.selectors import PRESETS
from kdt.pruning.selectors import leaf_names
from kdt.pruning.selectors import path_to_str
from kdt.pruning.selectors import prunable_leaves

__all__ = (
    "ALLOCATIONS",
    "COUNT_CONVENTIONS",
    "DATA_SCORES",
    "PRESETS",
    "Pruner",
    "SCORES",
    "apply_mask",
    "ceil_count",
    "classification_loss",
    "erk_densities",
    "grasp",
    "iterative_counts",
    "iterative_densities",
    "iterative_density",
    "iterative_kept_count",
    "kd_ticket_imagenet_sparsities",
    "kd_ticket_sparsities",
    "leaf_names",
    "magnitude",
    "mask_checksum",
    "mask_for_count",
    "mask_for_density",
    "mask_overlap",
    "oneshot_densities",
    "ones_like_params",
    "path_to_str",
    "polynomial_sparsity",
    "prunable_leaves",
    "prune_global",
    "prune_layerwise",
    "random_mask_like",
    "random_scores",
    "snip",
    "sparsity_summary",
    "synflow",
    "synflow_schedule",
    "synflow_scores",
    "taylor",
)
