"""Every config field kdt knows, declared once: its default (which fixes its type) and its help.

Two tables, :data:`COMMON_GROUPS` and :data:`OPTIONAL_GROUPS`, are the whole config schema:
:func:`kdt.config_lib.base_config` builds the ``ml_collections.ConfigDict`` from them (the
``--config.a.b=v`` fields), the validator checks types against their defaults, ``python -m
kdt.main --list_fields`` prints their help, and the frozen dataclasses that carry a group into the
code (``OptimizerSpec``, ``LossConfig``, ``TweakSettings``, ...) take their defaults from them
with :func:`default`; :func:`spec` fills those from a resolved config group (kdt's one
``from_config``, called at the edges).

Adding a field is one line in its group below, ``"name": Field(default, "help")``; a dataclass
that carries the group gets it by declaring ``name: type = schema.default("group.name")``.

This module imports nothing but the standard library: configs, ``--help`` and the pure core
(which may not import :mod:`kdt.config_lib`) all read it.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, TypeVar


@dataclasses.dataclass(frozen=True)
class Field:
  """One config field.

  Attributes:
    default: its default value; its type is the field's type (a tuple: a list of its elements'
      type, ``()``: a list of numbers or strings).
    help: one line for ``--list_fields``.
  """
  default: Any
  help: str


TOP_LEVEL: dict[str, Field] = {
    "experiment": Field("train", "what runs: the module kdt.experiments.<experiment>"),
    "replicates": Field(1, "seeds of the whole experiment in one workdir (replicate_RR/ each); "
                        "replicate r uses seeds.* + 1000 r (config_lib.replicate_config)"),
}
"""The fields outside any group (``config.experiment``: its groups are
:data:`kdt.config_lib.EXPERIMENT_GROUPS`)."""

COMMON_GROUPS: dict[str, dict[str, Field]] = {
    "seeds": {
        "init": Field(0, "parameter initialisation"),
        "data_order": Field(0, "epoch permutations"),
        "augment": Field(0, "crop / flip randomness"),
        "prune": Field(0, "random pruning baselines"),
    },
    "model": {
        "name": Field("lenet_300_100", "the network (kdt.models.model_names)"),
        "activation": Field("relu", "hidden-layer activation (kdt.models.ACTIVATIONS)"),
        "compute_dtype": Field("float32", "dtype of the forward pass"),
        "init_scheme": Field("kdt", 'initialisation: "kdt", "open_lth" or "kd_ticket" '
                             "(kdt.models.init_schemes)"),
    },
    "data": {
        "name": Field("digits", "the dataset (kdt.data.dataset_names)"),
        "dir": Field("", 'raw archives (IDX .gz, CIFAR tarballs); "" = TFDS'),
        "tfds_dir": Field("", 'TFDS data_dir; "" = TFDS default (~/tensorflow_datasets)'),
        "val_size": Field(0, "first val_size training images become the validation set"),
        "augment": Field("default", "training augmentation; \"default\" = the dataset's own"),
        "mean": Field((), "per-channel input-normalisation means; () = the dataset's own"),
        "std": Field((), "per-channel standard deviations; () = the dataset's own"),
        "last_batch": Field("drop", 'an epoch\'s last incomplete batch: "drop" (468 steps per '
                            '60k-image epoch at 128) or "keep" (469; open_lth, KD-ticket)'),
    },
    "train": {
        "batch_size": Field(128, "global training batch (split over the devices)"),
        "num_steps": Field(1000, "optimizer steps of the dense run (the schedule's length T)"),
        "eval_batch_size": Field(500, "global evaluation batch"),
        "eval_every_steps": Field(0, "0 = evaluate only at the end"),
        "eval_every_epochs": Field(0.0, "> 0: evaluate every this many epochs (instead of steps)"),
        "eval_at_start": Field(False,
                               'also evaluate at the run\'s first step (open_lth "epoch 0")'),
        "log_every_steps": Field(100, "training loss / accuracy logged every this many steps"),
        "checkpoint_every_steps": Field(500, "steps between checkpoints"),
        "keep_checkpoints": Field(2, "latest N kept besides pinned steps"),
        "pinned_steps": Field((), "extra steps kept forever (rewind points)"),
        "report_metric": Field("auto", "test accuracy tables and plots report (kdt.evaluation): "
                               '"final", "best_val" (at the best validation evaluation), '
                               '"last_mean" (mean of the last report_last_evals), "auto" '
                               "(best_val if data.val_size > 0, else final)"),
        "report_last_evals": Field(5, "evaluations averaged in test_accuracy_last_mean"),
    },
    "optimizer": {
        "name": Field("sgd", "sgd, adam or adamw (kdt.train.optim.OPTIMIZERS)"),
        "learning_rate": Field(0.1, "peak learning rate (the schedule scales it)"),
        "momentum": Field(0.9, "SGD momentum (0 = plain SGD)"),
        "nesterov": Field(False, "Nesterov momentum (sgd)"),
        "weight_decay": Field(1e-4, "L2 weight decay (adamw: decoupled, scaled by the rate)"),
    },
    "schedule": {
        "name": Field("step", "learning-rate schedule (kdt.train.optim.SCHEDULES)"),
        "milestones": Field((), "step schedule: steps where the rate is multiplied by gamma"),
        "gamma": Field(0.1, "step schedule: factor at each milestone"),
        "warmup_steps": Field(0, "linear warm-up from 0 over these steps"),
        "end_learning_rate": Field(0.0, "cosine / linear / exponential: the rate at the end"),
    },
    "loss": {
        "label_smoothing": Field(0.0, "smoothing mass alpha in [0, 1)"),
        "label_smoothing_convention": Field(
            "uniform", '"uniform": alpha/C everywhere; "off_target": alpha/(C-1) off target'),
        "kd_alpha": Field(0.9, "weight of the distillation term (0.9 = 90 % KD, 10 % CE)"),
        "kd_temperature": Field(4.0, "softmax temperature T of teacher and student"),
        "kd_reduction": Field("batchmean", 'KL reduction: "batchmean" or PyTorch\'s "mean"'),
        "kd_stop_step": Field(-1, "-1 = KD for the whole run; else plain CE from this step"),
    },
    "parallel": {
        "distributed": Field(False, "call jax.distributed.initialize() (also KDT_DISTRIBUTED=1)"),
        "ghost_batch_norm": Field(False, 'BN statistics per device ("ghost" BN) instead of global'),
        "host_devices": Field(0, "CPU: split into n host devices; 0 = auto (kdt.host_devices)"),
    },
    "tickets": {
        "strategy": Field("auto", "how runs that share a program train together on a ticket axis: "
                          "auto, vmap, sequential, lax_map, shard_map (kdt.tickets.batch)"),
        "max_per_program": Field(0, "at most this many tickets in one program (memory); 0 = all"),
    },
}
"""The groups every experiment has, in config order."""

OPTIONAL_GROUPS: dict[str, dict[str, Field]] = {
    # Iterative magnitude pruning and the re-training recipes. Defaults follow open_lth's
    # sparse_global IMP (20 % of the remaining weights per round, global magnitude, conv + dense
    # kernels) with the dense run's final model as the KD teacher, except the count:
    # count_convention="exact" removes exactly ceil(rate x remaining prunable); "open_lth" is
    # open_lth's arithmetic (its count includes the ignored layers, plus one; see
    # kdt.pruning.iterative_kept_count), which every config reproducing an open_lth setting uses.
    "imp": {
        "recipes": Field(("lth", "rewind", "kd", "random_reinit"),
                         "re-training recipes of each round (python -m kdt.main --help)"),
        "num_rounds": Field(5, "pruning rounds"),
        "pruning_rate": Field(0.2, "fraction of the remaining weights removed per round"),
        "count_convention": Field("exact", '"exact": ceil(rate*R) of R prunable; "open_lth": its '
                                  "sparse_global arithmetic (pruning.iterative_kept_count)"),
        "pruning_schedule": Field("iterative",
                                  'or "oneshot": every round prunes the dense weights'),
        "densities": Field((), "oneshot only: explicit densities; () = (1-rate)^r"),
        "score": Field("magnitude",
                       "kdt.pruning.SCORES: magnitude random snip grasp synflow taylor"),
        "allocation": Field("global", "kdt.pruning.ALLOCATIONS: global layerwise uniform erk"),
        "prune_at": Field("trained", 'weights scored: "trained" (IMP), "init" (theta_0: pruning at '
                          'initialisation), "rewind" (theta_k)'),
        "score_batches": Field(1, "snip / grasp / taylor: training batches scored"),
        "synflow_iterations": Field(100, "synflow: pruning rounds per mask (Tanaka et al.)"),
        "erk_power_scale": Field(1.0, "erk: exponent of the ERK densities (0 = uniform)"),
        "selector": Field("conv_dense", "prunable weights: see kdt.pruning.selectors.PRESETS"),
        "prune_stem": Field(True, "whether the first conv layer (the stem) is prunable"),
        "rewind_step": Field(0, "theta_k for rewind / lr_rewind recipes (steps)"),
        "control_recipe": Field("lth", "whose mask random_reinit / random_prune control"),
        "teacher": Field("dense", 'KD teacher: "dense" (round 0) or "previous" round\'s model'),
        "cache_teacher_logits": Field(False,
                                      "teacher logits once per run (un-augmented data only)"),
        "finetune_steps": Field(0, "0 = T - rewind_step (Renda et al.: rewinding's budget)"),
        "finetune_learning_rate": Field(0.0, "0 = the dense schedule's final learning rate"),
        "random_reinit_start": Field(
            "control", "random_reinit starts where its control does (open_lth's "
            'randomly_reinitialize: k for rewind), or "zero": 0..T'),
        "mask_basis": Field("identity", 'prune coefficients c of w = B c: "identity" or "dct"'),
    },
    # Instability analysis against the rewind step (docs/methods.md §3). For each rewind step k,
    # copies of the dense network and of IMP subnetworks (masks from config.imp's pruning
    # settings, re-training recipe rewind) start from theta_k and train to train.num_steps under
    # different data orders; see kdt.analysis.experiments.
    "lmc": {
        "rewind_steps": Field((0, 100, 500, 2000), "the k's (steps of the dense run)"),
        "networks": Field(("dense", "imp", "random"),
                          "random = random mask, IMP's per-layer counts"),
        "rounds": Field((), "IMP rounds analysed; () = every round 1..imp.num_rounds"),
        "mask_rewind_step": Field(-1, "-1: IMP rewound to each k finds k's masks (LMC Alg. 2); "
                                  ">= 0: one IMP run rewound to this step, masks for all k"),
        "pair_seeds": Field((1,), "data-order + augmentation seeds of the second copies"),
        "num_alphas": Field(30, "evenly spaced points on the linear path"),
        "splits": Field(("test", "train"), "error along the path on these splits"),
        "batch_norm": Field("reestimate", 'or "interpolate" the running statistics'),
        "bn_batches": Field(8, "training batches for the BN re-estimation"),
        "stable_threshold": Field(0.02, "instability (test error) below this: stable"),
        "matching_tolerance": Field(0.002, "accuracy within this of the dense run's: matching"),
        "top_p": Field(0.2, "top-p magnitude overlap of theta_k vs trained"),
        "distance_weights": Field(
            "prunable", "L2 / angle over the masked prunable weights (Stabilizing the LTH), or "
            '"all" parameters (BN, biases, head too)'),
    },
    # Liu et al.'s learning-rate sweep (docs/methods.md §5). For each learning rate: dense
    # training from the same theta_0, IMP with recipes lth and random_reinit (config.imp's
    # pruning settings), then init <-> trained weight correlation and mask overlap.
    "correlation": {
        "learning_rates": Field((0.01, 0.03, 0.1), "the learning rates swept"),
        "top_p": Field(0.2, "top-p magnitude overlap of theta_0 vs trained"),
    },
    # ToST's sparse re-training tweaks (docs/methods.md §2.2). They change only the re-training of
    # a pruned network; the dense run is never touched. They apply to the recipe tost (the control
    # recipe's mask, weights and schedule, re-trained with the tweaks: "LTH + tweaks" on exactly
    # the LTH masks) and to the recipes listed in tost.recipes. Every tweak is off by default;
    # kdt.config_lib.tost_preset turns them all on. The gradinit_* fields are
    # kdt.train.gradinit.GradInitSettings (ToST code defaults).
    "tost": {
        "recipes": Field((), "recipes re-trained with the tweaks besides ``tost``"),
        "activation": Field("", 're-training activation (ACTIVATIONS key); "" = model\'s own'),
        "activation_anneal_steps": Field(
            0, ">0: blend back to the model's activation over these steps"),
        "activation_anneal_start": Field(0, "schedule step where the blend starts"),
        "ghost_skips": Field(False, "two 1x1 conv + BN ghost branches per residual block"),
        "ghost_init": Field(1e-4, "constant initial ghost conv weight (ToST: 0.0001)"),
        "ghost_fade_steps": Field(0, ">0: scale the ghost branches down to 0 over these steps"),
        "ghost_fade_start": Field(0, "schedule step where the fade starts"),
        "label_smoothing": Field(0.0, "re-training label smoothing, alpha/(C-1) off target"),
        "lrsi": Field("none", 'GradInit scales: "none", "dense" (before masking), "masked"'),
        "gradinit_iters": Field(390, "GradInit iterations"),
        "gradinit_lr": Field(1e-3, "GradInit: Adam learning rate of the scales"),
        "gradinit_alg": Field("sgd", 'GradInit: the inner step\'s optimizer, "sgd" or "adam"'),
        "gradinit_eta": Field(0.1, "GradInit: the inner step's learning rate"),
        "gradinit_min_scale": Field(0.01, "GradInit: lower bound of the weight scales"),
        "gradinit_grad_clip": Field(1.0, "GradInit: clip of each scale's gradient (0 = none)"),
        "gradinit_gamma": Field(0.0, "gradient-norm constraint; 0 = none (the code's inf)"),
        "gradinit_normalize_grad": Field(False, "GradInit: sgd inner step along g / |g|"),
        "gradinit_batch_size": Field(0, "0 = train.batch_size"),
        "gradinit_variant": Field("tost_unmasked", 'lrsi="masked": "tost_unmasked" (ToST type-2: '
                                  "gradient, its norm and the look-ahead step include the pruned "
                                  'weights) or "masked" (kept weights only)'),
    },
    # Sparse training from scratch (RigL, SET), docs/methods.md §6. Each method trains a random
    # sparse network (per-layer densities by allocation) from theta_0 for train.num_steps with the
    # dense run's schedule, updating the mask every update_every steps up to update_end_step. The
    # densities are the IMP rounds' (from imp.pruning_rate and imp.num_rounds) unless densities
    # lists others; the prunable weights are imp.selector's.
    "dst": {
        "methods": Field(("rigl", "set"), '"rigl", "set", "static" (fixed random mask)'),
        "densities": Field((), "() = the IMP rounds' densities (1 - rate)^r"),
        "compare_imp": Field(True, "also run IMP (config.imp) in workdir/imp"),
        "allocation": Field("erk", 'initial per-layer densities: "erk", "uniform", "layerwise"'),
        "erk_power_scale": Field(1.0, "erk: exponent of the ERK densities (0 = uniform)"),
        "update_every": Field(100, "Delta T, steps between mask updates"),
        "update_end_step": Field(0, "last update step; 0 = 75 % of train.num_steps"),
        "drop_fraction": Field(0.3, "alpha, the fraction of active weights moved per update"),
        "drop_schedule": Field("cosine", 'or "constant"'),
        "init": Field("dense", '"dense" (theta_0 masked) or "sparsity_aware" (fan-in)'),
    },
    # Masks at theta_0 against IMP's. For each score, a one-shot mask of theta_0 at every IMP round
    # density (imp.pruning_rate, imp.num_rounds), re-trained by recipe exactly as IMP's tickets;
    # see kdt.experiments.prune_at_init. Scoring settings (imp.score_batches,
    # imp.synflow_iterations, imp.erk_power_scale) come from the imp group.
    "prune_at_init": {
        "scores": Field(("snip", "grasp", "synflow", "random"), "kdt.pruning.SCORES"),
        "allocation": Field("global", "kdt.pruning.ALLOCATIONS (synflow: global only)"),
        "recipe": Field("lth", "how every mask is re-trained (a non-control recipe)"),
        "compare_imp": Field(True, "also run IMP (config.imp) in workdir/imp"),
    },
}
"""The groups only some experiments have (which: :data:`kdt.config_lib.EXPERIMENT_GROUPS`)."""


def _group(name: str) -> dict[str, Field]:
  return COMMON_GROUPS[name] if name in COMMON_GROUPS else OPTIONAL_GROUPS[name]


def default(field: str) -> Any:
  """The default of ``field``, named as after ``--config.`` (``"loss.kd_alpha"``)."""
  if "." not in field:
    return TOP_LEVEL[field].default
  group, name = field.split(".")
  return _group(group)[name].default


def help_texts() -> dict[str, str]:
  """Every field's help, by its dotted name (``"loss.kd_alpha"``; ``"experiment"``)."""
  texts = {name: f.help for name, f in TOP_LEVEL.items()}
  for groups in (COMMON_GROUPS, OPTIONAL_GROUPS):
    for group, fields in groups.items():
      texts.update({f"{group}.{name}": f.help for name, f in fields.items()})
  return texts


T = TypeVar("T")


def _cast(kind: Any, value: Any) -> Any:
  """``value`` as the annotated type ``kind`` (scalars and tuples of them; others as they are)."""
  if typing.get_origin(kind) is tuple:
    return tuple(_cast(typing.get_args(kind)[0], v) for v in value)
  return kind(value) if kind in (bool, int, float, str) else value


def spec(cls: type[T], group: Any, *, prefix: str = "", **values: Any) -> T:
  """The frozen dataclass ``cls`` filled from a config group: kdt's one ``from_config``.

  Each field ``name`` of ``cls`` takes ``values[name]`` when given, else ``group[prefix + name]``
  when the group has that field, else its dataclass default (which :func:`default`
  gives for a group's fields); values are cast to the field's annotated type. A new group field
  reaches every dataclass with a field of its name, no code needed.

  Args:
    cls: a dataclass, e.g. :class:`kdt.train.losses.LossConfig`.
    group: a config group (``config.loss``) or any mapping.
    prefix: the group's names of ``cls``'s fields start with it (``"gradinit_"``).
    **values: fields that come from elsewhere (``learning_rate=config.optimizer.learning_rate``).

  Returns:
    ``cls(**fields)``.

  Example:
    ``spec(optim.ScheduleSpec, config.schedule, learning_rate=config.optimizer.learning_rate,
    num_steps=config.train.num_steps)``.
  """
  hints = typing.get_type_hints(cls)
  fields = {}
  for f in dataclasses.fields(cls):
    if f.name in values:
      fields[f.name] = _cast(hints[f.name], values[f.name])
    elif prefix + f.name in group:
      fields[f.name] = _cast(hints[f.name], group[prefix + f.name])
  return cls(**fields)
