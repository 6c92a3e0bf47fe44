"""Base configs (from the schema, kdt.schema), shared fragments and validation.

Every config file in ``configs/`` starts from :func:`base_config` and overrides fields. The schema
is :mod:`kdt.schema`: each field of each group is declared there once, with its default (which
fixes its type) and its help for ``--list_fields``; :func:`base_config` builds the ConfigDict from
it. Before any compute, :func:`validate` checks the *resolved* config (after ``--config.a.b=v``
overrides): unknown keys, wrong types, values out of range and inconsistent combinations each
raise one :class:`ConfigError` naming the field, the value and what is allowed. At the edge,
:func:`kdt.schema.spec` turns a group into the frozen dataclass the code takes
(``schema.spec(losses.LossConfig, config.loss)``); it is kdt's one ``from_config``.

Adding a field:

1. one line in its group in :mod:`kdt.schema`: ``"name": Field(default, "help")``; the field now
   exists for ``--config.group.name=``, is type-checked, listed by ``--list_fields``, and reaches
   any dataclass built by :func:`kdt.schema.spec` that has a field ``name``;
2. a dataclass that should carry it declares ``name: type = schema.default("group.name")``;
3. range / choice checks, if any, in :func:`validate` (or the group's ``_validate_<group>``), and
   fixed value lists in :data:`kdt.names.CHOICES` for ``--list_fields``.

A field outside any group (like ``experiment``) is one line in :data:`kdt.schema.TOP_LEVEL`. A
new group is a new entry of :data:`kdt.schema.COMMON_GROUPS` (every experiment) or of
:data:`kdt.schema.OPTIONAL_GROUPS` plus its experiments in :data:`EXPERIMENT_GROUPS`.

All durations are in optimizer steps (``num_steps``, ``milestones``, ``rewind_step``, ...). Config
files convert paper epochs to steps with :func:`epochs_to_steps` and say so in their docstrings.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import ml_collections

from kdt import schema

EXPERIMENT_GROUPS: dict[str, tuple[str, ...]] = {
    "train": (),
    "imp": ("imp", "tost"),
    "dst": ("imp", "tost", "dst"),
    "lmc": ("imp", "lmc"),                    # lmc / correlation find their masks by IMP
    "correlation": ("imp", "correlation"),
    "prune_at_init": ("imp", "prune_at_init"),
}
"""Every experiment (``config.experiment``; run by the module ``kdt.experiments.<name>``) and the
config groups it has besides the common ones."""

EXPERIMENTS = tuple(EXPERIMENT_GROUPS)
AUGMENTATIONS = ("default", "none", "flip", "crop_flip", "inception_crop_flip")
DTYPES = ("float32", "bfloat16")


class ConfigError(ValueError):
  """A config field has a bad value. The message names the field, the value and what is allowed."""

  def __init__(self, field: str, value: Any, allowed: str):
    self.field, self.value, self.allowed = field, value, allowed
    super().__init__(f"config.{field}={value!r} is invalid: allowed {allowed}.")


def _group_config(fields: dict[str, schema.Field]) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({name: f.default for name, f in fields.items()})


def base_config(experiment: str = "train") -> ml_collections.ConfigDict:
  """Every field kdt knows for ``experiment``, with defaults (from :mod:`kdt.schema`).

  Config files override fields; a field not in here is an error.
  """
  c = _group_config(schema.TOP_LEVEL)
  c.experiment = experiment
  for group, fields in schema.COMMON_GROUPS.items():
    c[group] = _group_config(fields)
  for group in EXPERIMENT_GROUPS[experiment]:
    c[group] = _group_config(schema.OPTIONAL_GROUPS[group])
  return c


REPLICATE_SEED_STRIDE = 1000
"""Replicate r's seeds are the config's plus ``r * REPLICATE_SEED_STRIDE``: far from the small
offsets experiments add themselves (LMC's ``pair_seeds``), so no two replicates share a stream."""

SEED_FIELDS = tuple(schema.COMMON_GROUPS["seeds"])


def replicate_config(config: ml_collections.ConfigDict, replicate: int) -> ml_collections.ConfigDict:
  """The config of replicate ``replicate`` (0-based): every ``seeds.*`` + ``replicate * 1000``.

  Replicate 0 is the config itself, so ``replicates=1`` is exactly the single run.
  """
  out = config.copy_and_resolve_references()
  with out.unlocked():
    for field in SEED_FIELDS:
      out.seeds[field] = int(config.seeds[field]) + replicate * REPLICATE_SEED_STRIDE
  return out


def replicate_name(replicate: int) -> str:
  """The sub-directory of replicate ``replicate`` in a workdir with ``replicates > 1``."""
  return f"replicate_{replicate:02d}"


def epochs_to_steps(epochs: float, num_examples: int, batch_size: int,
                    last_batch: str = "drop") -> int:
  """Optimizer steps in ``epochs`` epochs of ``config.data.last_batch`` batching.

  ``"drop"``: ``num_examples // batch_size`` steps per epoch; ``"keep"`` (open_lth, KD-ticket:
  PyTorch's ``drop_last=False``): one more when the split does not divide, so open_lth's 40 MNIST
  epochs at batch 128 are 40 x 469 = 18,760 steps (:func:`kdt.data.order.steps_per_epoch`).

  Examples:
    >>> epochs_to_steps(40, 60_000, 128), epochs_to_steps(40, 60_000, 128, "keep")
    (18720, 18760)
  """
  full, rest = divmod(int(num_examples), int(batch_size))
  return int(round(epochs * (full + int(last_batch == "keep" and rest > 0))))


CIFAR_TRAIN = 50_000


def open_lth_cifar_recipe(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """open_lth's CIFAR-10 training (docs/methods.md §3.4a), in place; returns ``config``.

  Batch 128, SGD momentum 0.9, lr 0.1, x0.1 at epochs 80 and 120, weight decay 1e-4, 160 epochs
  (62,560 steps of 391: open_lth's loader keeps the last partial batch, ``data.last_batch="keep"``)
  on all 50,000 training images; crop (pad 4) + flip.
  """
  steps = lambda epochs: epochs_to_steps(epochs, CIFAR_TRAIN, 128, "keep")  # noqa: E731
  config.data.last_batch = "keep"
  config.data.val_size = 0
  config.train.batch_size = 128
  config.train.num_steps = steps(160)
  config.train.eval_batch_size = 1000
  config.train.eval_every_steps = steps(10)
  config.train.log_every_steps = 200
  config.train.checkpoint_every_steps = 2000
  config.optimizer.name = "sgd"
  config.optimizer.learning_rate = 0.1
  config.optimizer.momentum = 0.9
  config.optimizer.weight_decay = 1e-4
  config.schedule.name = "step"
  config.schedule.milestones = (steps(80), steps(120))
  return config


def kd_ticket_cifar_recipe(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The KD-ticket / ToST CIFAR training (docs/methods.md §1.6, §2.3), in place; returns ``config``.

  The first 5,000 training images are the validation set, 45,000 train; batch 128, SGD momentum
  0.9, lr 0.1, x0.1 at epochs 90 and 135, weight decay 2e-4, 182 epochs (64,064 steps of 352: the
  reference loader keeps the last partial batch, ``data.last_batch="keep"``); crop (pad 4) + flip; evaluation every epoch (best-validation test accuracy is reported). KD:
  T = 5, alpha = 0.9, KL reduction 'mean' over batch x classes (PyTorch's default).
  """
  val_size = 5_000
  steps = lambda epochs: epochs_to_steps(epochs, CIFAR_TRAIN - val_size, 128, "keep")  # noqa: E731
  config.data.last_batch = "keep"
  config.data.val_size = val_size
  config.train.batch_size = 128
  config.train.num_steps = steps(182)
  config.train.eval_batch_size = 1000
  config.train.eval_every_steps = steps(1)
  config.train.log_every_steps = 200
  config.train.checkpoint_every_steps = steps(1)
  config.optimizer.name = "sgd"
  config.optimizer.learning_rate = 0.1
  config.optimizer.momentum = 0.9
  config.optimizer.weight_decay = 2e-4
  config.schedule.name = "step"
  config.schedule.milestones = (steps(90), steps(135))
  config.loss.kd_temperature = 5.0
  config.loss.kd_alpha = 0.9
  config.loss.kd_reduction = "mean"
  return config


def digits_quickstart(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The quickstarts' training (``configs/quickstart*.py``), in place; returns ``config``.

  LeNet-300-100 on scikit-learn's digits (offline): batch 64, 300 steps (~13 epochs of the 1,437
  training digits), SGD momentum 0.9, weight decay 1e-4, x0.1 at step 200, evaluation every 100
  steps (batch 120), checkpoints every 150. The learning rate is each quickstart's own.
  """
  config.model.name = "lenet_300_100"
  config.data.name = "digits"
  config.train.batch_size = 64
  config.train.num_steps = 300
  config.train.eval_batch_size = 120
  config.train.log_every_steps = 100
  config.train.eval_every_steps = 100
  config.train.checkpoint_every_steps = 150
  config.optimizer.momentum = 0.9
  config.optimizer.weight_decay = 1e-4
  config.schedule.name = "step"
  config.schedule.milestones = (200,)
  return config


def load_file(path: str, overrides: Any = ()) -> ml_collections.ConfigDict:
  """``get_config()`` of the config file ``path``, with ``overrides`` applied.

  Args:
    path: a Python file defining ``get_config()`` (e.g. ``configs/quickstart.py``).
    overrides: ``{"train.num_steps": 24, ...}`` or ``(("train.num_steps", 24), ...)``: dotted
      field names (as after ``--config.``) and their values.

  Returns:
    The config (unlocked, not validated).
  """
  import importlib.util  # pylint: disable=import-outside-toplevel
  name = "kdt_config_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  items = overrides.items() if isinstance(overrides, dict) else overrides
  for field, value in items:
    node = config
    *parents, leaf = field.split(".")
    for part in parents:
      node = node[part]
    node[leaf] = value
  return config


def to_dict(config: ml_collections.ConfigDict) -> dict:
  """The config as plain JSON-able Python (tuples become lists)."""
  return json.loads(config.to_json())


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
  out = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict):
      out.update(_flatten(value, name + "."))
    else:
      out[name] = value
  return out


LOCATION_FIELDS = ("data.dir", "data.tfds_dir")
"""Where the data lives, not what the run is: a rerun may move them (see :func:`diff`)."""


def diff(old: dict, new: dict, *, ignore: tuple[str, ...] = ()) -> list[str]:
  """Fields that differ between two resolved configs (as dicts), formatted ``field: old -> new``.

  Fields named in ``ignore`` (e.g. :data:`LOCATION_FIELDS`) are left out.
  """
  flat_old, flat_new = _flatten(old), _flatten(new)
  lines = []
  for key in sorted((set(flat_old) | set(flat_new)) - set(ignore)):
    if flat_old.get(key, "<absent>") != flat_new.get(key, "<absent>"):
      lines.append(f"{key}: {flat_old.get(key, '<absent>')!r} -> {flat_new.get(key, '<absent>')!r}")
  return lines


# ---------------------------------------------------------------------------------------------
# Validation.

def _type_name(value) -> str:
  if isinstance(value, (tuple, list)):
    return f"a list of {type(value[0]).__name__}" if value else "a list"
  return type(value).__name__


def _check_structure(config: dict, known: dict, prefix: str = "") -> None:
  for key, value in config.items():
    name = f"{prefix}{key}"
    if key not in known:
      raise ConfigError(name, value, f"no such field; known fields here: {sorted(known)}")
    expected = known[key]
    if isinstance(expected, dict):
      if not isinstance(value, dict):
        raise ConfigError(name, value, f"a group of fields {sorted(expected)}")
      _check_structure(value, expected, name + ".")
      continue
    if isinstance(expected, bool):
      ok = isinstance(value, bool)
    elif isinstance(expected, int):
      ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(expected, float):
      ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif isinstance(expected, (list, tuple)):
      ok = isinstance(value, (list, tuple)) and all(
          isinstance(v, type(expected[0]) if expected else (int, str, float)) and not isinstance(v, bool)
          for v in value)
    else:
      ok = isinstance(value, type(expected))
    if not ok:
      raise ConfigError(name, value, f"a value of type {_type_name(expected)}")


def _choice(cfg: dict, field: str, allowed) -> None:
  value = _get(cfg, field)
  if value not in allowed:
    raise ConfigError(field, value, f"one of {list(allowed)}")


def _range(cfg: dict, field: str, low=None, high=None, *, low_open=False, high_open=False) -> None:
  value = _get(cfg, field)
  bad = ((low is not None and (value < low or (low_open and value == low))) or
         (high is not None and (value > high or (high_open and value == high))))
  if bad or (isinstance(value, float) and not math.isfinite(value)):
    lo = "-inf" if low is None else low
    hi = "inf" if high is None else high
    raise ConfigError(field, value, f"a number in {'(' if low_open else '['}{lo}, {hi}{')' if high_open else ']'}")


def _get(cfg: dict, field: str):
  node = cfg
  for part in field.split("."):
    node = node[part]
  return node


def validate(config: ml_collections.ConfigDict, *, device_count: int | None = None) -> None:
  """Checks a resolved config before any compute.

  Args:
    config: the resolved config.
    device_count: global device count for the batch-divisibility check (None = ``jax.device_count()``).

  Raises:
    ConfigError: on the first bad field, naming it, its value and what is allowed.
  """
  # Imported here so that `import kdt.config_lib` stays light (configs import this module).
  from kdt import data as data_lib
  from kdt import evaluation
  from kdt import models as models_lib
  from kdt.train import losses, optim

  cfg = to_dict(config)
  _choice(cfg, "experiment", EXPERIMENTS)
  missing = [g for g, v in to_dict(base_config(cfg["experiment"])).items()
             if isinstance(v, dict) and g not in cfg]
  if missing:
    raise ConfigError("experiment", cfg["experiment"],
                      f"an experiment whose config groups this config has (it lacks "
                      f"{', '.join('config.' + g for g in missing)}); start from a "
                      f"config of experiment {cfg['experiment']!r} in configs/ or from "
                      f"config_lib.base_config({cfg['experiment']!r})")
  _check_structure(cfg, to_dict(base_config(cfg["experiment"])))
  for seed in SEED_FIELDS:
    _range(cfg, f"seeds.{seed}", 0)
  _range(cfg, "replicates", 1)
  from kdt.tickets import batch as batch_lib  # pylint: disable=import-outside-toplevel
  _choice(cfg, "tickets.strategy", batch_lib.STRATEGIES)
  _range(cfg, "tickets.max_per_program", 0)

  _choice(cfg, "model.name", models_lib.model_names())
  _choice(cfg, "model.activation", sorted(models_lib.ACTIVATIONS))
  _choice(cfg, "model.compute_dtype", DTYPES)
  _choice(cfg, "model.init_scheme", models_lib.INIT_SCHEMES)
  _choice(cfg, "data.name", data_lib.dataset_names())
  _choice(cfg, "data.augment", AUGMENTATIONS)
  _choice(cfg, "data.last_batch", data_lib.order.LAST_BATCH)
  info = data_lib.dataset_info(cfg["data"]["name"])
  if cfg["data"]["augment"] == "inception_crop_flip" and not info.streaming:
    raise ConfigError("data.augment", "inception_crop_flip",
                      "'default', 'none', 'flip' or 'crop_flip' for the in-memory dataset "
                      f"{info.name!r} (inception crops need a streaming dataset)")
  _range(cfg, "data.val_size", 0, info.num_train - 1)
  for field in ("mean", "std"):
    try:
      data_lib.with_normalization(info, **{field: tuple(cfg["data"][field])})
    except (ValueError, TypeError) as e:
      raise ConfigError(f"data.{field}", tuple(cfg["data"][field]),
                        f"() for {info.name!r}'s own statistics, or 1 or {info.input_shape[-1]} "
                        f"finite numbers{' > 0' if field == 'std' else ''} ({e})") from None
  problem = models_lib.check_model_input(cfg["model"]["name"], info.input_shape)
  if problem:
    raise ConfigError("model.name", cfg["model"]["name"],
                      f"a model that accepts {cfg['data']['name']} inputs {info.input_shape}: {problem}")
  problem = models_lib.init_scheme_problem(
      cfg["model"]["name"], cfg["model"]["init_scheme"],
      cifar_stem=max(info.input_shape[:2]) <= models_lib.CIFAR_STEM_MAX_SIDE)
  if problem:
    raise ConfigError("model.init_scheme", cfg["model"]["init_scheme"],
                      f"one of {list(models_lib.INIT_SCHEMES)} that fits the model: {problem}")

  train = cfg["train"]
  _range(cfg, "train.batch_size", 1)
  _range(cfg, "train.num_steps", 1)
  _range(cfg, "train.eval_batch_size", 1)
  for field in ("eval_every_steps", "log_every_steps", "checkpoint_every_steps"):
    _range(cfg, f"train.{field}", 0)
  _range(cfg, "train.keep_checkpoints", 1)
  _range(cfg, "train.eval_every_epochs", 0.0)
  if train["eval_every_epochs"] and train["eval_every_steps"]:
    raise ConfigError("train.eval_every_epochs", train["eval_every_epochs"],
                      "0 when train.eval_every_steps > 0 (give the evaluation cadence one way)")
  _choice(cfg, "train.report_metric", evaluation.REPORT_METRICS)
  if train["report_metric"] == "best_val" and not cfg["data"]["val_size"]:
    raise ConfigError("train.report_metric", "best_val",
                      f"one of {[m for m in evaluation.REPORT_METRICS if m != 'best_val']} when "
                      "data.val_size is 0 (no validation split to select on)")
  _range(cfg, "train.report_last_evals", 1)
  _range(cfg, "parallel.host_devices", 0)
  num_train = info.num_train - cfg["data"]["val_size"]
  if train["batch_size"] > num_train:
    raise ConfigError("train.batch_size", train["batch_size"],
                      f"at most the {num_train} training examples of {cfg['data']['name']}")
  for step in train["pinned_steps"]:
    if not 0 <= step <= train["num_steps"]:
      raise ConfigError("train.pinned_steps", tuple(train["pinned_steps"]),
                        f"steps in [0, train.num_steps={train['num_steps']}]")
  if device_count is None:
    import jax
    device_count = jax.device_count()
  for field in ("batch_size", "eval_batch_size"):
    if train[field] % device_count:
      raise ConfigError(f"train.{field}", train[field],
                        f"a multiple of the device count ({device_count}) for data parallelism")
  if cfg["parallel"]["ghost_batch_norm"] and train["batch_size"] < 2 * device_count:
    raise ConfigError("parallel.ghost_batch_norm", True,
                      f"False, or train.batch_size >= 2 x the device count ({2 * device_count}) so "
                      "each device's BatchNorm sees at least 2 examples")

  _choice(cfg, "optimizer.name", optim.OPTIMIZERS)
  _range(cfg, "optimizer.learning_rate", 0.0, low_open=True)
  _range(cfg, "optimizer.momentum", 0.0, 1.0, high_open=True)
  _range(cfg, "optimizer.weight_decay", 0.0)
  if cfg["optimizer"]["nesterov"] and not cfg["optimizer"]["momentum"]:
    raise ConfigError("optimizer.nesterov", True, "False when optimizer.momentum is 0")

  _choice(cfg, "schedule.name", optim.SCHEDULES)
  milestones = list(cfg["schedule"]["milestones"])
  if milestones != sorted(milestones) or any(not 0 < m <= train["num_steps"] for m in milestones):
    raise ConfigError("schedule.milestones", tuple(milestones),
                      f"increasing steps in (0, train.num_steps={train['num_steps']}]")
  _range(cfg, "schedule.gamma", 0.0, 1.0, low_open=True)
  _range(cfg, "schedule.warmup_steps", 0, train["num_steps"])
  _range(cfg, "schedule.end_learning_rate", 0.0)
  if cfg["schedule"]["name"] == "exponential" and cfg["schedule"]["end_learning_rate"] <= 0:
    raise ConfigError("schedule.end_learning_rate", cfg["schedule"]["end_learning_rate"],
                      "a positive number for schedule.name='exponential'")

  _range(cfg, "loss.label_smoothing", 0.0, 1.0, high_open=True)
  _choice(cfg, "loss.label_smoothing_convention", losses.LABEL_SMOOTHING_CONVENTIONS)
  _range(cfg, "loss.kd_alpha", 0.0, 1.0)
  _range(cfg, "loss.kd_temperature", 0.0, low_open=True)
  _choice(cfg, "loss.kd_reduction", losses.KD_REDUCTIONS)
  _range(cfg, "loss.kd_stop_step", -1, train["num_steps"])
  for group in EXPERIMENT_GROUPS[cfg["experiment"]]:
    _GROUP_VALIDATORS[group](cfg, info)


def _validate_imp(cfg: dict, info) -> None:
  """Checks of the ``imp`` group (fields: :data:`kdt.schema.OPTIONAL_GROUPS`)."""
  from kdt.pruning import registry as pruning_registry
  from kdt.pruning import selectors
  from kdt.tickets import recipes as recipes_lib

  imp, num_steps = cfg["imp"], cfg["train"]["num_steps"]
  names = list(imp["recipes"])
  if not names:
    raise ConfigError("imp.recipes", (), f"a non-empty list of {sorted(recipes_lib.RECIPES)}")
  for name in names:
    if name not in recipes_lib.RECIPES:
      raise ConfigError("imp.recipes", tuple(names),
                        f"recipes from {sorted(recipes_lib.RECIPES)} (unknown: {name!r})")
  if len(set(names)) != len(names):
    raise ConfigError("imp.recipes", tuple(names), "each recipe at most once")
  _range(cfg, "imp.num_rounds", 1)
  _range(cfg, "imp.pruning_rate", 0.0, 1.0, low_open=True, high_open=True)
  _choice(cfg, "imp.pruning_schedule", ("iterative", "oneshot"))
  _choice(cfg, "imp.count_convention", ("exact", "open_lth"))
  if imp["count_convention"] == "open_lth" and (
      imp["allocation"] != "global" or imp["pruning_schedule"] != "iterative"
      or imp["score"] == "synflow"):
    raise ConfigError("imp.count_convention", "open_lth",
                      "'exact' unless imp.allocation='global', imp.pruning_schedule='iterative' "
                      "and imp.score is not 'synflow' (open_lth's sparse_global rule)")
  densities = list(imp["densities"])
  if densities:
    if imp["pruning_schedule"] != "oneshot":
      raise ConfigError("imp.densities", tuple(densities),
                        "() unless imp.pruning_schedule='oneshot' (iterative rounds use imp.pruning_rate)")
    if any(not 0 < d < 1 for d in densities) or densities != sorted(densities, reverse=True):
      raise ConfigError("imp.densities", tuple(densities), "decreasing densities in (0, 1)")
    if len(densities) != imp["num_rounds"]:
      raise ConfigError("imp.densities", tuple(densities),
                        f"exactly imp.num_rounds={imp['num_rounds']} densities")
  _choice(cfg, "imp.score", pruning_registry.SCORES)
  _choice(cfg, "imp.allocation", pruning_registry.ALLOCATIONS)
  if imp["score"] == "synflow" and imp["allocation"] != "global":
    raise ConfigError("imp.allocation", imp["allocation"],
                      "'global' with imp.score='synflow' (Synaptic-Flow prunes globally)")
  _choice(cfg, "imp.prune_at", ("trained", "init", "rewind"))
  _range(cfg, "imp.score_batches", 1)
  _range(cfg, "imp.synflow_iterations", 1)
  _range(cfg, "imp.erk_power_scale", 0.0)
  _choice(cfg, "imp.selector", selectors.PRESETS)
  _range(cfg, "imp.rewind_step", 0, num_steps - 1)
  _choice(cfg, "imp.teacher", ("dense", "previous"))
  _range(cfg, "imp.finetune_steps", 0)
  _range(cfg, "imp.finetune_learning_rate", 0.0)
  _choice(cfg, "imp.random_reinit_start", ("control", "zero"))
  _choice(cfg, "imp.mask_basis", ("identity", "dct"))
  control = imp["control_recipe"]
  if any(recipes_lib.RECIPES[n].is_control for n in names):
    own = [n for n in names if not recipes_lib.RECIPES[n].is_control]
    if control not in own:
      raise ConfigError("imp.control_recipe", control,
                        f"one of the non-control recipes in imp.recipes ({own}) when "
                        "random_reinit / random_prune are requested")
  if imp["cache_teacher_logits"]:
    augment = info.augment if cfg["data"]["augment"] == "default" else cfg["data"]["augment"]
    if augment != "none":
      raise ConfigError("imp.cache_teacher_logits", True,
                        f"False with augmentation {augment!r}: cached logits are for un-augmented "
                        "images, and KD needs the teacher on the same augmented batch (set "
                        "data.augment='none' to cache)")


def _distinct(cfg: dict, field: str, allowed: str, ok) -> list:
  """A non-empty list field whose values are distinct and each pass ``ok``."""
  values = list(_get(cfg, field))
  if not values or len(set(values)) != len(values) or not all(ok(v) for v in values):
    raise ConfigError(field, tuple(values), f"a non-empty list of distinct {allowed}")
  return values


def _validate_lmc(cfg: dict, info) -> None:
  """Checks of the ``lmc`` group (fields: :data:`kdt.schema.OPTIONAL_GROUPS`)."""
  num_steps, rounds = cfg["train"]["num_steps"], cfg["imp"]["num_rounds"]
  _distinct(cfg, "lmc.rewind_steps", f"steps in [0, train.num_steps - 1 = {num_steps - 1}]",
            lambda k: isinstance(k, int) and 0 <= k < num_steps)
  _distinct(cfg, "lmc.networks", "names from ['dense', 'imp', 'random']",
            lambda n: n in ("dense", "imp", "random"))
  chosen = list(cfg["lmc"]["rounds"])
  if len(set(chosen)) != len(chosen) or any(
      not isinstance(r, int) or not 1 <= r <= rounds for r in chosen):
    raise ConfigError("lmc.rounds", tuple(chosen),
                      f"() for every round, or distinct rounds in [1, imp.num_rounds = {rounds}]")
  _range(cfg, "lmc.mask_rewind_step", -1, num_steps - 1)
  first = cfg["seeds"]["data_order"]
  _distinct(cfg, "lmc.pair_seeds", f"seeds >= 0 other than seeds.data_order = {first} (the first "
            "copy's)", lambda s: isinstance(s, int) and s >= 0 and s != first)
  _range(cfg, "lmc.num_alphas", 2)
  splits = ("train", "test", "val") if cfg["data"]["val_size"] else ("train", "test")
  _distinct(cfg, "lmc.splits", f"splits from {list(splits)} ('val' needs data.val_size > 0)",
            lambda s: s in splits)
  _choice(cfg, "lmc.batch_norm", ("reestimate", "interpolate"))
  _range(cfg, "lmc.bn_batches", 1)
  _range(cfg, "lmc.stable_threshold", 0.0, 1.0, low_open=True)
  _range(cfg, "lmc.matching_tolerance", 0.0, 1.0)
  _range(cfg, "lmc.top_p", 0.0, 1.0, low_open=True)
  _choice(cfg, "lmc.distance_weights", ("prunable", "all"))


def _validate_correlation(cfg: dict, info) -> None:
  """Checks of the ``correlation`` group (fields: :data:`kdt.schema.OPTIONAL_GROUPS`)."""
  _distinct(cfg, "correlation.learning_rates", "positive learning rates",
            lambda lr: isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0)
  _range(cfg, "correlation.top_p", 0.0, 1.0, low_open=True)


# ---------------------------------------------------------------------------------------------
# Sparse re-training tweaks (ToST) and dynamic sparse training.

TOST_LRSI = ("none", "dense", "masked")
GRADINIT_ALGS = ("sgd", "adam")
GRADINIT_VARIANTS = ("tost_unmasked", "masked")


def tost_preset(config: ml_collections.ConfigDict, *, ghost_skips: bool = True,
                lrsi: str = "masked") -> ml_collections.ConfigDict:
  """Turns on every ToST tweak for the ``tost`` recipe ("combining all the tweaks", §2.1).

  Swish activation, ghost skips (residual networks with basic blocks only: pass
  ``ghost_skips=False`` for VGG, LeNet and the like), label smoothing 0.1 with the alpha/(C-1)
  convention, and GradInit layer-wise re-scaling with the code defaults of §2.2 on the pruned
  network as ToST's ``train_ticket_type2.py`` runs it (``gradinit_variant="tost_unmasked"``;
  ``lrsi="dense"`` for the variant before masking). Adds ``tost`` to ``imp.recipes``.

  Args:
    config: an ``imp`` (or ``dst``) config; changed in place.
    ghost_skips: whether to add ghost skip branches.
    lrsi: ``"masked"``, ``"dense"`` or ``"none"``.

  Returns:
    ``config``.
  """
  config.tost.activation = "swish"
  config.tost.ghost_skips = bool(ghost_skips)
  config.tost.label_smoothing = 0.1
  config.tost.lrsi = lrsi
  config.tost.gradinit_variant = "tost_unmasked"
  if "tost" not in config.imp.recipes:
    config.imp.recipes = tuple(config.imp.recipes) + ("tost",)
  return config


def tweaks_enabled(tost: dict) -> bool:
  """Whether any tweak of a ``tost`` group (as a dict) is on."""
  return bool(tost["activation"] or tost["ghost_skips"] or tost["label_smoothing"] > 0
              or tost["lrsi"] != "none")


def _validate_tost(cfg: dict, info) -> None:
  """Checks of the ``tost`` group (fields: :data:`kdt.schema.OPTIONAL_GROUPS`)."""
  from kdt import models as models_lib
  from kdt.tickets import recipes as recipes_lib

  tost, imp = cfg["tost"], cfg["imp"]
  recipes = list(tost["recipes"])
  for name in recipes:
    if name not in imp["recipes"] or name == "tost" or recipes.count(name) > 1:
      raise ConfigError("tost.recipes", tuple(recipes),
                        f"distinct recipes of imp.recipes {list(imp['recipes'])} other than 'tost' "
                        f"(bad: {name!r})")
  if tost["activation"]:
    _choice(cfg, "tost.activation", sorted(models_lib.ACTIVATIONS))
  for field in ("activation_anneal_steps", "activation_anneal_start", "ghost_fade_steps",
                "ghost_fade_start"):
    _range(cfg, f"tost.{field}", 0)
  if tost["activation_anneal_steps"] and tost["activation"] in ("", cfg["model"]["activation"]):
    raise ConfigError("tost.activation_anneal_steps", tost["activation_anneal_steps"],
                      f"0 unless tost.activation names an activation other than the model's "
                      f"({cfg['model']['activation']!r}) to anneal from")
  _range(cfg, "tost.ghost_init", 0.0)
  if tost["ghost_skips"]:
    problem = models_lib.ghost_skip_problem(cfg["model"]["name"], info.input_shape)
    if problem:
      raise ConfigError("tost.ghost_skips", True,
                        f"False for model {cfg['model']['name']!r}: {problem}")
  elif tost["ghost_fade_steps"]:
    raise ConfigError("tost.ghost_fade_steps", tost["ghost_fade_steps"],
                      "0 unless tost.ghost_skips=True")
  _range(cfg, "tost.label_smoothing", 0.0, 1.0, high_open=True)
  _choice(cfg, "tost.lrsi", TOST_LRSI)
  _range(cfg, "tost.gradinit_iters", 1)
  _range(cfg, "tost.gradinit_lr", 0.0, low_open=True)
  _choice(cfg, "tost.gradinit_alg", GRADINIT_ALGS)
  _range(cfg, "tost.gradinit_eta", 0.0, low_open=True)
  _range(cfg, "tost.gradinit_min_scale", 0.0)
  _range(cfg, "tost.gradinit_grad_clip", 0.0)
  _range(cfg, "tost.gradinit_gamma", 0.0)
  _range(cfg, "tost.gradinit_batch_size", 0, info.num_train - cfg["data"]["val_size"])
  _choice(cfg, "tost.gradinit_variant", GRADINIT_VARIANTS)
  tweaked = ["tost"] * ("tost" in imp["recipes"]) + recipes
  if tweaked and not tweaks_enabled(tost):
    field = "imp.recipes" if "tost" in imp["recipes"] else "tost.recipes"
    raise ConfigError(field, tuple(_get(cfg, field)),
                      "re-training with tweaks only when config.tost turns at least one on "
                      "(tost.activation, ghost_skips, label_smoothing or lrsi; see "
                      "config_lib.tost_preset)")
  if imp["teacher"] == "previous" and (tost["activation"] or tost["ghost_skips"]):
    kd = [n for n in recipes if recipes_lib.RECIPES[n].kd]
    if kd:
      raise ConfigError("imp.teacher", "previous",
                        f"'dense' when KD recipes {kd} are re-trained with an activation swap or "
                        "ghost skips (the previous round's student is then another network)")


DST_METHODS = ("rigl", "set", "static")
DST_ALLOCATIONS = ("erk", "uniform", "layerwise")


def _validate_dst(cfg: dict, info) -> None:
  """Checks of the ``dst`` group (fields: :data:`kdt.schema.OPTIONAL_GROUPS`)."""
  dst, num_steps = cfg["dst"], cfg["train"]["num_steps"]
  methods = list(dst["methods"])
  if not methods or any(m not in DST_METHODS for m in methods) or len(set(methods)) != len(methods):
    raise ConfigError("dst.methods", tuple(methods), f"distinct methods from {list(DST_METHODS)}")
  densities = list(dst["densities"])
  if any(not 0 < d < 1 for d in densities) or densities != sorted(set(densities), reverse=True):
    raise ConfigError("dst.densities", tuple(densities),
                      "() or distinct decreasing densities in (0, 1)")
  _choice(cfg, "dst.allocation", DST_ALLOCATIONS)
  _range(cfg, "dst.erk_power_scale", 0.0)
  _range(cfg, "dst.update_every", 1, num_steps)
  _range(cfg, "dst.update_end_step", 0, num_steps)
  _range(cfg, "dst.drop_fraction", 0.0, 1.0, low_open=True, high_open=True)
  _choice(cfg, "dst.drop_schedule", ("cosine", "constant"))
  _choice(cfg, "dst.init", ("dense", "sparsity_aware"))


def _validate_prune_at_init(cfg: dict, info) -> None:
  """Checks of the ``prune_at_init`` group (fields: :data:`kdt.schema.OPTIONAL_GROUPS`)."""
  del info
  from kdt.pruning import registry as pruning_registry
  from kdt.tickets import recipes as recipes_lib
  pai = cfg["prune_at_init"]
  _distinct(cfg, "prune_at_init.scores", f"scores from {list(pruning_registry.SCORES)}",
            lambda s: s in pruning_registry.SCORES)
  _choice(cfg, "prune_at_init.allocation", pruning_registry.ALLOCATIONS)
  if "synflow" in pai["scores"] and pai["allocation"] != "global":
    raise ConfigError("prune_at_init.allocation", pai["allocation"],
                      "'global' when prune_at_init.scores has 'synflow' (Synaptic-Flow prunes "
                      "globally)")
  own = sorted(n for n, r in recipes_lib.RECIPES.items() if not r.is_control)
  _choice(cfg, "prune_at_init.recipe", own)


_GROUP_VALIDATORS = {"imp": _validate_imp, "tost": _validate_tost, "dst": _validate_dst,
                     "lmc": _validate_lmc, "correlation": _validate_correlation,
                     "prune_at_init": _validate_prune_at_init}
