"""Config schema, shared fragments and validation.

Every config file in ``configs/`` starts from :func:`base_config` and overrides fields; the schema
is the base config itself (every allowed field, with its type given by its default). Before any
compute, :func:`validate` checks the *resolved* config (after ``--config.a.b=v`` overrides):
unknown keys, wrong types, values out of range and inconsistent combinations each raise one
:class:`ConfigError` naming the field, the value and what is allowed.

All durations are in optimizer steps (``num_steps``, ``milestones``, ``rewind_step``, ...). Config
files convert paper epochs to steps with :func:`epochs_to_steps` and say so in their docstrings.
"""

from __future__ import annotations

import json
import math
from typing import Any

import ml_collections

EXPERIMENTS = ("train", "imp")
AUGMENTATIONS = ("default", "none", "flip", "crop_flip", "inception_crop_flip")
DTYPES = ("float32", "bfloat16")


class ConfigError(ValueError):
  """A config field has a bad value. The message names the field, the value and what is allowed."""

  def __init__(self, field: str, value: Any, allowed: str):
    self.field, self.value, self.allowed = field, value, allowed
    super().__init__(f"config.{field}={value!r} is invalid: allowed {allowed}.")


def base_config(experiment: str = "train") -> ml_collections.ConfigDict:
  """Every field kdt knows for ``experiment``, with defaults.

  Config files override fields; a field not in here is an error.
  """
  c = ml_collections.ConfigDict()
  c.experiment = experiment

  c.seeds = ml_collections.ConfigDict()
  c.seeds.init = 0          # parameter initialisation
  c.seeds.data_order = 0    # epoch permutations
  c.seeds.augment = 0       # crop / flip randomness
  c.seeds.prune = 0         # random pruning baselines

  c.model = ml_collections.ConfigDict()
  c.model.name = "lenet_300_100"
  c.model.activation = "relu"
  c.model.compute_dtype = "float32"

  c.data = ml_collections.ConfigDict()
  c.data.name = "digits"
  c.data.dir = ""           # raw archives (IDX .gz, CIFAR tarballs); "" = TFDS
  c.data.tfds_dir = ""      # TFDS data_dir; "" = TFDS default (~/tensorflow_datasets)
  c.data.val_size = 0       # first val_size training images become the validation set
  c.data.augment = "default"

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 128
  c.train.num_steps = 1000
  c.train.eval_batch_size = 500
  c.train.eval_every_steps = 0        # 0 = evaluate only at the end
  c.train.log_every_steps = 100
  c.train.checkpoint_every_steps = 500
  c.train.keep_checkpoints = 2        # latest N kept besides pinned steps
  c.train.pinned_steps = ()           # extra steps kept forever (rewind points)

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "sgd"
  c.optimizer.learning_rate = 0.1
  c.optimizer.momentum = 0.9
  c.optimizer.nesterov = False
  c.optimizer.weight_decay = 1e-4

  c.schedule = ml_collections.ConfigDict()
  c.schedule.name = "step"
  c.schedule.milestones = ()
  c.schedule.gamma = 0.1
  c.schedule.warmup_steps = 0
  c.schedule.end_learning_rate = 0.0

  c.loss = ml_collections.ConfigDict()
  c.loss.label_smoothing = 0.0
  c.loss.label_smoothing_convention = "uniform"
  c.loss.kd_alpha = 0.9
  c.loss.kd_temperature = 4.0
  c.loss.kd_reduction = "batchmean"
  c.loss.kd_stop_step = -1            # -1 = KD for the whole run

  c.parallel = ml_collections.ConfigDict()
  c.parallel.distributed = False      # call jax.distributed.initialize() (also KDT_DISTRIBUTED=1)

  if experiment == "imp":
    c.imp = imp_fields()
  return c


def imp_fields() -> ml_collections.ConfigDict:
  """The ``config.imp`` group: iterative magnitude pruning and the re-training recipes.

  Defaults follow open_lth's ``sparse_global`` IMP (20 % of the remaining weights per round,
  global magnitude, conv + dense kernels) with the dense run's final model as the KD teacher.
  """
  imp = ml_collections.ConfigDict()
  imp.recipes = ("lth", "rewind", "kd", "random_reinit")
  imp.num_rounds = 5
  imp.pruning_rate = 0.2              # fraction of the remaining weights removed per round
  imp.pruning_schedule = "iterative"  # or "oneshot": every round prunes the dense weights
  imp.densities = ()                  # oneshot only: explicit densities; () = (1-rate)^r
  imp.score = "magnitude"             # or "random"
  imp.scope = "global"                # or "layerwise"
  imp.selector = "conv_dense"         # see kdt.pruning.selectors.PRESETS
  imp.prune_stem = True
  imp.rewind_step = 0                 # theta_k for rewind / lr_rewind recipes (steps)
  imp.control_recipe = "lth"          # whose mask random_reinit / random_prune control
  imp.teacher = "dense"               # KD teacher: "dense" (round 0) or "previous" round's model
  imp.cache_teacher_logits = False    # teacher logits once per run (un-augmented data only)
  imp.finetune_steps = 0              # 0 = T - rewind_step (Renda et al.: rewinding's budget)
  imp.finetune_learning_rate = 0.0    # 0 = the dense schedule's final learning rate
  return imp


def epochs_to_steps(epochs: float, num_examples: int, batch_size: int) -> int:
  """Optimizer steps in ``epochs`` epochs (drop-remainder batching, as the data pipeline does)."""
  return int(round(epochs * (num_examples // batch_size)))


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


def diff(old: dict, new: dict) -> list[str]:
  """Fields that differ between two resolved configs (as dicts), formatted ``field: old -> new``."""
  flat_old, flat_new = _flatten(old), _flatten(new)
  lines = []
  for key in sorted(set(flat_old) | set(flat_new)):
    if flat_old.get(key, "<absent>") != flat_new.get(key, "<absent>"):
      lines.append(f"{key}: {flat_old.get(key, '<absent>')!r} -> {flat_new.get(key, '<absent>')!r}")
  return lines


# ---------------------------------------------------------------------------------------------
# Validation.

def _type_name(value) -> str:
  return "a list of int" if isinstance(value, (tuple, list)) else type(value).__name__


def _check_structure(config: dict, schema: dict, prefix: str = "") -> None:
  for key, value in config.items():
    name = f"{prefix}{key}"
    if key not in schema:
      raise ConfigError(name, value, f"no such field; known fields here: {sorted(schema)}")
    expected = schema[key]
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
  from kdt import models as models_lib
  from kdt.train import losses, optim

  cfg = to_dict(config)
  _choice(cfg, "experiment", EXPERIMENTS)
  _check_structure(cfg, to_dict(base_config(cfg["experiment"])))
  for seed in ("init", "data_order", "augment", "prune"):
    _range(cfg, f"seeds.{seed}", 0)

  _choice(cfg, "model.name", models_lib.model_names())
  _choice(cfg, "model.activation", sorted(models_lib.ACTIVATIONS))
  _choice(cfg, "model.compute_dtype", DTYPES)
  _choice(cfg, "data.name", data_lib.dataset_names())
  _choice(cfg, "data.augment", AUGMENTATIONS)
  info = data_lib.dataset_info(cfg["data"]["name"])
  if cfg["data"]["augment"] == "inception_crop_flip" and not info.streaming:
    raise ConfigError("data.augment", "inception_crop_flip",
                      "'default', 'none', 'flip' or 'crop_flip' for the in-memory dataset "
                      f"{info.name!r} (inception crops need a streaming dataset)")
  _range(cfg, "data.val_size", 0, info.num_train - 1)
  problem = models_lib.check_model_input(cfg["model"]["name"], info.input_shape)
  if problem:
    raise ConfigError("model.name", cfg["model"]["name"],
                      f"a model that accepts {cfg['data']['name']} inputs {info.input_shape}: {problem}")

  train = cfg["train"]
  _range(cfg, "train.batch_size", 1)
  _range(cfg, "train.num_steps", 1)
  _range(cfg, "train.eval_batch_size", 1)
  for field in ("eval_every_steps", "log_every_steps", "checkpoint_every_steps"):
    _range(cfg, f"train.{field}", 0)
  _range(cfg, "train.keep_checkpoints", 1)
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
  if cfg["experiment"] == "imp":
    _validate_imp(cfg, info)


def _validate_imp(cfg: dict, info) -> None:
  """Checks of the ``imp`` group (see :func:`imp_fields`)."""
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
  _choice(cfg, "imp.score", ("magnitude", "random"))
  _choice(cfg, "imp.scope", ("global", "layerwise"))
  _choice(cfg, "imp.selector", selectors.PRESETS)
  _range(cfg, "imp.rewind_step", 0, num_steps - 1)
  _choice(cfg, "imp.teacher", ("dense", "previous"))
  _range(cfg, "imp.finetune_steps", 0)
  _range(cfg, "imp.finetune_learning_rate", 0.0)
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
