"""The names kdt's registries accept, importable without JAX (for ``--help`` and ``--list_fields``).

The registries themselves (:mod:`kdt.models.registry`, :mod:`kdt.data.registry`,
:mod:`kdt.tickets.recipes`, :mod:`kdt.train.optim`, ...) import JAX or Flax, which takes seconds; the
command line's help must print at once. ``tests/test_help.py`` checks that every list here equals
its registry's, so the two never drift apart: add a name to the registry and here.
"""

from __future__ import annotations

from kdt import config_lib

EXPERIMENTS: tuple[str, ...] = tuple(config_lib.EXPERIMENTS)

RECIPES: dict[str, str] = {
    "lth": "reset to theta_0, full schedule (Frankle & Carbin 2019)",
    "rewind": "reset to theta_k, steps k..T (Frankle et al. 2019/2020)",
    "lr_rewind": "keep trained weights, replay the LR schedule from k (Renda et al. 2020)",
    "finetune": "keep trained weights, constant small LR (Renda et al. 2020)",
    "pf_liu": "keep trained weights, dense schedule restarted for T steps (Liu et al. 2021 P&F)",
    "kd": "theta_0, full schedule, distillation from the dense teacher (Ma et al. 2021)",
    "kd_rewind": "theta_k, steps k..T, distillation (Ma et al. 2021)",
    "kd_lr_rewind": "trained weights, LR replayed from k, distillation",
    "random_reinit": "control: the control recipe's mask, fresh random init",
    "random_prune": "control: random mask with the same per-layer densities",
    "tost": "control recipe's mask re-trained with ToST's tweaks (config.tost)",
}
"""Re-training recipes (:data:`kdt.tickets.recipes.RECIPES`) with one line each."""

CONTROL_RECIPES: tuple[str, ...] = ("random_reinit", "random_prune", "tost")
"""Recipes that re-train another recipe's mask (``imp.control_recipe``)."""

MODELS: tuple[str, ...] = (
    "lenet_300_100", "conv2", "conv4", "conv6", "resnet20", "resnet32", "resnet44", "resnet56",
    "resnet110", "oresnet20", "oresnet32", "oresnet56", "oresnet110", "resnet18", "resnet34",
    "resnet50", "vgg11", "vgg16", "vgg19", "mobilenet_v2", "wide_resnet_16_4", "wide_resnet_22_2")
""":func:`kdt.models.model_names` (any ``wide_resnet_{depth}_{width}`` is accepted too)."""

DATASETS: tuple[str, ...] = ("digits", "mnist", "fashion_mnist", "cifar10", "cifar100",
                             "imagenet2012", "tiny_imagenet")
""":func:`kdt.data.dataset_names`."""

ACTIVATIONS: tuple[str, ...] = ("elu", "gelu", "lisht", "mish", "pswish", "relu", "softplus",
                                "swish")
OPTIMIZERS: tuple[str, ...] = ("sgd", "adam", "adamw")
SCHEDULES: tuple[str, ...] = ("constant", "step", "cosine", "linear", "exponential")
SELECTORS: tuple[str, ...] = ("conv", "conv_dense", "conv_dense_no_head")
SCORES: tuple[str, ...] = ("magnitude", "random", "snip", "grasp", "synflow", "taylor")
""":data:`kdt.pruning.SCORES`."""
ALLOCATIONS: tuple[str, ...] = ("global", "layerwise", "uniform", "erk")
""":data:`kdt.pruning.ALLOCATIONS`."""
KD_REDUCTIONS: tuple[str, ...] = ("batchmean", "mean")
LAST_BATCH: tuple[str, ...] = ("drop", "keep")
""":data:`kdt.data.order.LAST_BATCH`."""
LABEL_SMOOTHING_CONVENTIONS: tuple[str, ...] = ("uniform", "off_target")

CHOICES: dict[str, tuple[str, ...]] = {
    "experiment": EXPERIMENTS,
    "model.name": MODELS,
    "model.activation": ACTIVATIONS,
    "model.compute_dtype": tuple(config_lib.DTYPES),
    "data.name": DATASETS,
    "data.augment": tuple(config_lib.AUGMENTATIONS),
    "data.last_batch": LAST_BATCH,
    "optimizer.name": OPTIMIZERS,
    "schedule.name": SCHEDULES,
    "loss.label_smoothing_convention": LABEL_SMOOTHING_CONVENTIONS,
    "loss.kd_reduction": KD_REDUCTIONS,
    "train.report_metric": ("auto", "final", "best_val", "last_mean"),
    "imp.recipes": tuple(RECIPES),
    "imp.pruning_schedule": ("iterative", "oneshot"),
    "imp.score": SCORES,
    "imp.allocation": ALLOCATIONS,
    "imp.prune_at": ("trained", "init", "rewind"),
    "imp.selector": SELECTORS,
    "imp.control_recipe": tuple(r for r in RECIPES if r not in CONTROL_RECIPES),
    "imp.teacher": ("dense", "previous"),
    "imp.random_reinit_start": ("control", "zero"),
    "imp.count_convention": ("exact", "open_lth"),
    "model.init_scheme": ("kdt", "open_lth", "kd_ticket"),
    "imp.mask_basis": ("identity", "dct"),
    "lmc.networks": ("dense", "imp", "random"),
    "lmc.splits": ("train", "test", "val"),
    "lmc.batch_norm": ("reestimate", "interpolate"),
    "lmc.distance_weights": ("prunable", "all"),
    "tost.activation": ("",) + ACTIVATIONS,
    "tost.lrsi": tuple(config_lib.TOST_LRSI),
    "tost.gradinit_alg": tuple(config_lib.GRADINIT_ALGS),
    "tost.gradinit_variant": tuple(config_lib.GRADINIT_VARIANTS),
    "dst.methods": tuple(config_lib.DST_METHODS),
    "dst.allocation": tuple(config_lib.DST_ALLOCATIONS),
    "dst.drop_schedule": ("cosine", "constant"),
    "dst.init": ("dense", "sparsity_aware"),
    "prune_at_init.scores": SCORES,
    "prune_at_init.allocation": ALLOCATIONS,
    "prune_at_init.recipe": tuple(r for r in RECIPES if r not in CONTROL_RECIPES),
    "tickets.strategy": ("auto", "vmap", "sequential", "lax_map", "shard_map"),
}
"""Fields whose values come from a fixed list (for tuple fields: each element's list)."""
