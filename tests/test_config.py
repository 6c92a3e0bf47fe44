"""Config files load and validate; bad fields fail before compute, naming the field."""

import glob
import os

import ml_collections
import pytest

from kdt import config_lib
from kdt import schema


class _Attr:
  """Attribute access over nested plain dicts, so BAD rows read like config code."""

  def __init__(self, tree):
    object.__setattr__(self, "_tree", tree)

  def __getattr__(self, name):
    return _Attr(self._tree[name])

  def __setitem__(self, key, value):
    self._tree[key] = value

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(glob.glob(os.path.join(REPO, "configs", "*.py")))


def load(path):
  return config_lib.load_file(path)


def test_there_are_configs():
  names = {os.path.basename(p) for p in CONFIG_FILES}
  assert {"quickstart.py", "mnist_lenet_300_100.py", "cifar10_resnet20.py", "cifar10_vgg16.py",
          "cifar10_resnet110_kd_ticket.py", "imagenet_resnet50.py", "mnist_lenet_300_100_lth.py",
          "cifar10_resnet20_imp_rewind.py", "cifar10_resnet110_kd_rewind.py",
          "imagenet_resnet50_kd_rewind.py", "cifar10_resnet56_lr_rewind.py"} <= names


@pytest.mark.parametrize("path", CONFIG_FILES, ids=os.path.basename)
def test_every_config_validates(path):
  config = load(path)
  config_lib.validate(config, device_count=8 if config.train.batch_size % 8 == 0 else 1)
  module_doc = open(path, encoding="utf-8").read()
  assert "python -m kdt.main --config configs/" in module_doc, "docstring must give the command"
  assert "Expected" in module_doc, "docstring must give the expected result"


def _quickstart():
  return load(os.path.join(REPO, "configs", "quickstart.py"))


BAD = [
    ("unknown top-level key", lambda c: c.__setitem__("learning_rate", 0.1), "learning_rate"),
    ("unknown nested key", lambda c: c.train.__setitem__("num_step", 5), "train.num_step"),
    ("wrong type", lambda c: c.train.__setitem__("batch_size", "64"), "train.batch_size"),
    ("float for int", lambda c: c.train.__setitem__("num_steps", 10.5), "train.num_steps"),
    ("unknown model", lambda c: c.model.__setitem__("name", "resnet21"), "model.name"),
    ("unknown dataset", lambda c: c.data.__setitem__("name", "cifar11"), "data.name"),
    ("model/data mismatch", lambda c: (c.model.__setitem__("name", "oresnet110")), "model.name"),
    ("unknown activation", lambda c: c.model.__setitem__("activation", "relu7"), "model.activation"),
    ("negative lr", lambda c: c.optimizer.__setitem__("learning_rate", -0.1), "optimizer.learning_rate"),
    ("momentum >= 1", lambda c: c.optimizer.__setitem__("momentum", 1.0), "optimizer.momentum"),
    ("unknown optimizer", lambda c: c.optimizer.__setitem__("name", "lamb"), "optimizer.name"),
    ("unknown schedule", lambda c: c.schedule.__setitem__("name", "poly"), "schedule.name"),
    ("milestone past end", lambda c: c.schedule.__setitem__("milestones", (10_000,)), "schedule.milestones"),
    ("unsorted milestones", lambda c: c.schedule.__setitem__("milestones", (300, 200)), "schedule.milestones"),
    ("kd alpha > 1", lambda c: c.loss.__setitem__("kd_alpha", 1.5), "loss.kd_alpha"),
    ("kd temperature 0", lambda c: c.loss.__setitem__("kd_temperature", 0.0), "loss.kd_temperature"),
    ("kd reduction", lambda c: c.loss.__setitem__("kd_reduction", "sum"), "loss.kd_reduction"),
    ("label smoothing 1", lambda c: c.loss.__setitem__("label_smoothing", 1.0), "loss.label_smoothing"),
    ("batch > dataset", lambda c: c.train.__setitem__("batch_size", 4096), "train.batch_size"),
    ("val_size too big", lambda c: c.data.__setitem__("val_size", 5000), "data.val_size"),
    ("pinned past end", lambda c: c.train.__setitem__("pinned_steps", (5, 10_000)), "train.pinned_steps"),
    ("unknown augment", lambda c: c.data.__setitem__("augment", "mixup"), "data.augment"),
    ("unknown experiment", lambda c: c.__setitem__("experiment", "lottery"), "experiment"),
    ("negative seed", lambda c: c.seeds.__setitem__("init", -1), "seeds.init"),
]


BAD += [
    ("misspelled recipe", lambda c: c.imp.__setitem__("recipes", ("lth", "rewnd")), "imp.recipes"),
    ("empty recipe list", lambda c: c.imp.__setitem__("recipes", ()), "imp.recipes"),
    ("duplicate recipe", lambda c: c.imp.__setitem__("recipes", ("lth", "lth")), "imp.recipes"),
    ("negative pruning rate", lambda c: c.imp.__setitem__("pruning_rate", -0.2), "imp.pruning_rate"),
    ("pruning rate > 1", lambda c: c.imp.__setitem__("pruning_rate", 1.5), "imp.pruning_rate"),
    ("pruning rate 1", lambda c: c.imp.__setitem__("pruning_rate", 1.0), "imp.pruning_rate"),
    ("zero rounds", lambda c: c.imp.__setitem__("num_rounds", 0), "imp.num_rounds"),
    ("rewind beyond training", lambda c: c.imp.__setitem__("rewind_step", 300), "imp.rewind_step"),
    ("unknown pruning schedule", lambda c: c.imp.__setitem__("pruning_schedule", "gradual"),
     "imp.pruning_schedule"),
    ("densities with iterative", lambda c: c.imp.__setitem__("densities", (0.5, 0.25)), "imp.densities"),
    ("unknown selector", lambda c: c.imp.__setitem__("selector", "dense_only"), "imp.selector"),
    ("unknown score", lambda c: c.imp.__setitem__("score", "snap"), "imp.score"),
    ("unknown allocation", lambda c: c.imp.__setitem__("allocation", "blockwise"), "imp.allocation"),
    ("synflow not global", lambda c: (c.imp.__setitem__("score", "synflow"),
                                      c.imp.__setitem__("allocation", "erk")), "imp.allocation"),
    ("unknown prune_at", lambda c: c.imp.__setitem__("prune_at", "final"), "imp.prune_at"),
    ("unknown teacher", lambda c: c.imp.__setitem__("teacher", "oracle"), "imp.teacher"),
    ("control not in recipes", lambda c: c.imp.__setitem__("control_recipe", "kd_rewind"),
     "imp.control_recipe"),
    ("kd alpha < 0 with kd recipe", lambda c: c.loss.__setitem__("kd_alpha", -0.1), "loss.kd_alpha"),
    ("kd temperature < 0", lambda c: c.loss.__setitem__("kd_temperature", -4.0), "loss.kd_temperature"),
    ("kd stop past end", lambda c: c.loss.__setitem__("kd_stop_step", 10_000), "loss.kd_stop_step"),
    ("negative finetune steps", lambda c: c.imp.__setitem__("finetune_steps", -5), "imp.finetune_steps"),
    ("imp key typo", lambda c: c.imp.__setitem__("num_round", 3), "imp.num_round"),
    ("recipes wrong type", lambda c: c.imp.__setitem__("recipes", "lth"), "imp.recipes"),
]


# Issue 14 (fidelity to the peers' protocols).
BAD += [
    ("unknown count convention", lambda c: c.imp.__setitem__("count_convention", "openlth"),
     "imp.count_convention"),
    ("open_lth count with layerwise allocation",
     lambda c: (c.imp.__setitem__("allocation", "layerwise"),
                c.imp.__setitem__("count_convention", "open_lth")),
     "imp.count_convention"),
    ("unknown init scheme", lambda c: c.model.__setitem__("init_scheme", "pytorch"), "model.init_scheme"),
    ("kd_ticket init for lenet", lambda c: c.model.__setitem__("init_scheme", "kd_ticket"),
     "model.init_scheme"),
    ("three means for grey digits", lambda c: c.data.__setitem__("mean", (0.1, 0.2, 0.3)), "data.mean"),
    ("zero std", lambda c: c.data.__setitem__("std", (0.0,)), "data.std"),
    ("std not a number", lambda c: c.data.__setitem__("std", ("wide",)), "data.std"),
    ("unknown last batch", lambda c: c.data.__setitem__("last_batch", "pad"), "data.last_batch"),
]

@pytest.mark.parametrize("name,mutate,field", BAD, ids=[b[0] for b in BAD])
def test_bad_config_names_the_field(name, mutate, field):
  # Mutate the plain dict, as a hand-written config file could (ConfigDict itself type-checks).
  tree = config_lib.to_dict(_quickstart())
  mutate(_Attr(tree))
  config = ml_collections.ConfigDict(tree)
  with pytest.raises(config_lib.ConfigError) as info:
    config_lib.validate(config, device_count=1)
  assert info.value.field == field, str(info.value)
  assert f"config.{field}=" in str(info.value)
  assert "allowed" in str(info.value)


def test_batch_not_divisible_by_devices():
  config = _quickstart()
  config.train.batch_size = 60
  with pytest.raises(config_lib.ConfigError, match=r"train.batch_size=60 .*multiple of the device count \(8\)"):
    config_lib.validate(config, device_count=8)


def test_diff_lists_changed_fields():
  a = config_lib.to_dict(_quickstart())
  c = _quickstart()
  c.train.num_steps = 7
  c.model.activation = "swish"
  assert config_lib.diff(a, config_lib.to_dict(c)) == [
      "model.activation: 'relu' -> 'swish'", "train.num_steps: 300 -> 7"]


def test_at_least_30_malformed_configs():
  assert len(BAD) >= 30


def test_cache_teacher_logits_needs_unaugmented_data():
  config = _quickstart()
  config.data.augment = "flip"
  config.imp.cache_teacher_logits = True
  with pytest.raises(config_lib.ConfigError, match="imp.cache_teacher_logits"):
    config_lib.validate(config, device_count=1)


OPEN_LTH_CONFIGS = ("mnist_lenet_300_100.py", "cifar10_resnet20.py", "cifar10_resnet20_imp_rewind.py",
                    "cifar10_resnet20_lmc.py", "cifar10_vgg16.py", "cifar10_vgg16_lmc.py",
                    "imagenet_resnet50.py")


@pytest.mark.parametrize("name", OPEN_LTH_CONFIGS)
def test_open_lth_configs_use_open_lth_init(name):
  assert load(os.path.join(REPO, "configs", name)).model.init_scheme == "open_lth"
  assert _quickstart().model.init_scheme == "kdt"


PYTORCH_EPOCH_CONFIGS = {  # config: (steps of its schedule, steps per epoch with the partial batch)
    "mnist_lenet_300_100.py": (18_760, 469), "fashion_mnist_lenet_300_100_open_lth.py": (18_760, 469),
    "cifar10_resnet20.py": (62_560, 391), "cifar10_vgg16_lmc.py": (62_560, 391),
    "cifar10_resnet110_kd_ticket.py": (64_064, 352), "imagenet_resnet50.py": (112_680, 1252)}


@pytest.mark.parametrize("name", sorted(PYTORCH_EPOCH_CONFIGS))
def test_peer_configs_keep_the_last_partial_batch(name):
  """open_lth and KD-ticket iterate ceil(n / batch) steps per epoch (PyTorch's drop_last=False):
  "40 epochs" of MNIST are 18,760 steps, not 18,720."""
  config = load(os.path.join(REPO, "configs", name))
  assert config.data.last_batch == "keep"
  assert config.train.num_steps == PYTORCH_EPOCH_CONFIGS[name][0]
  assert _quickstart().data.last_batch == "drop"  # quickstart results stay bit-identical


OPEN_LTH_IMP_CONFIGS = ("mnist_lenet_300_100_lth.py", "cifar10_resnet20_imp_rewind.py",
                        "cifar10_resnet20_lmc.py", "cifar10_vgg16_lmc.py")


@pytest.mark.parametrize("name", OPEN_LTH_IMP_CONFIGS)
def test_open_lth_configs_count_as_open_lth(name):
  assert load(os.path.join(REPO, "configs", name)).imp.count_convention == "open_lth"
  assert _quickstart().imp.count_convention == "exact"  # quickstart results stay bit-identical


def test_normalization_fields_reach_the_dataset():
  config = _quickstart()
  config.data.mean, config.data.std = (0.5,), (0.25,)
  config_lib.validate(config, device_count=1)
  from kdt.experiments import setup as setup_lib
  info = setup_lib.load_data(config).info
  assert (info.mean, info.std) == ((0.5,), (0.25,))


# ---------------------------------------------------------------------------------------------
# One schema (kdt.schema): every field declared once, the dataclasses filled by one `spec`.

def _carriers():
  """(dataclass, group, prefix, fields that come from elsewhere) of every group carrier."""
  from kdt.pruning import dynamic, registry
  from kdt.tickets import tweaks
  from kdt.train import gradinit, loop, losses, optim
  return [(optim.OptimizerSpec, "optimizer", "", {}),
          (optim.ScheduleSpec, "schedule", "", {"learning_rate": 0.1, "num_steps": 1000}),
          (losses.LossConfig, "loss", "", {}),
          (loop.LoopSettings, "train", "", {}),
          (tweaks.TweakSettings, "tost", "", {}),
          (gradinit.GradInitSettings, "tost", "gradinit_", {}),
          (registry.Pruner, "imp", "", {"prunable": {}}),
          (dynamic.DropSchedule, "dst", "", {})]


def test_every_field_has_one_help_line():
  helps = schema.help_texts()
  fields = set()
  for experiment in config_lib.EXPERIMENTS:
    tree = config_lib.to_dict(config_lib.base_config(experiment))
    fields |= set(config_lib._flatten(tree))  # pylint: disable=protected-access
  assert fields == set(helps)
  assert all(text.strip() and "\n" not in text for text in helps.values())


def test_list_fields_prints_every_fields_help():
  from kdt import main
  for experiment in config_lib.EXPERIMENTS:
    lines = main.list_fields(config_lib.base_config(experiment)).splitlines()[2:]
    assert lines and all("  # " in line for line in lines), experiment


def test_base_config_is_built_from_the_schema():
  config = config_lib.base_config("dst")
  assert set(config) == {*schema.TOP_LEVEL, *schema.COMMON_GROUPS, "imp", "tost", "dst"}
  for group in ("loss", "imp", "tost", "dst"):
    assert set(config[group]) == set(schema._group(group))  # pylint: disable=protected-access
  assert config.loss.kd_alpha == schema.default("loss.kd_alpha") == 0.9
  assert config.tost.gradinit_iters == schema.default("tost.gradinit_iters") == 390


def test_dataclasses_default_to_the_schema():
  """Every dataclass field named like a field of its group has that field's default, so a
  dataclass built from the default config equals the dataclass's own defaults."""
  import dataclasses
  config = config_lib.base_config("dst")
  checked = 0
  for cls, group, prefix, values in _carriers():
    required = {}
    for f in dataclasses.fields(cls):
      if prefix + f.name in config[group]:
        default = schema.default(f"{group}.{prefix}{f.name}")
        if f.default is dataclasses.MISSING:  # e.g. ScheduleSpec.name: always given
          required[f.name] = default
        else:
          assert f.default == default and type(f.default) is type(default), (cls, f.name)
          checked += 1
    if cls.__name__ != "DropSchedule":  # its fields are named otherwise (dst.py maps them)
      assert (schema.spec(cls, config[group], prefix=prefix, **values)
              == cls(**values, **required)), cls
  assert checked >= 40
  from kdt.pruning import dynamic
  assert dynamic.DropSchedule().initial == schema.default("dst.drop_fraction")
  assert dynamic.DropSchedule().every == schema.default("dst.update_every")
  assert dynamic.DropSchedule().kind == schema.default("dst.drop_schedule")


def test_no_hand_written_from_config():
  for cls, *_ in _carriers():
    assert not hasattr(cls, "from_config"), cls


def test_spec_is_generic_and_casts_by_the_field_type():
  """A group field reaches a dataclass field of its name with no code; values cast to the
  annotated type; ``values`` win over the group; fields the group lacks keep their default."""
  import dataclasses

  @dataclasses.dataclass(frozen=True)
  class Toy:
    rate: float
    steps: tuple[int, ...] = ()
    on: bool = False
    name: str = "x"
    extra: int = 7

  group = ml_collections.ConfigDict({"rate": 1, "steps": [3, 4], "on": 1, "name": "y",
                                     "unrelated": "z"})
  toy = schema.spec(Toy, group)
  assert toy == Toy(rate=1.0, steps=(3, 4), on=True, name="y", extra=7)
  assert type(toy.rate) is float and type(toy.steps) is tuple
  assert schema.spec(Toy, group, rate=0.5).rate == 0.5
  tost = ml_collections.ConfigDict({"gradinit_rate": 2, "rate": 9})
  assert schema.spec(Toy, tost, prefix="gradinit_").rate == 2.0


def test_a_new_group_field_reaches_the_dataclasses(monkeypatch):
  """Adding a field is one schema line: the config has it, ``spec`` fills a dataclass with it."""
  import dataclasses
  from kdt.train import losses
  monkeypatch.setitem(schema.COMMON_GROUPS, "loss", dict(
      schema.COMMON_GROUPS["loss"], kd_new=schema.Field(3, "a new field")))
  config = config_lib.base_config()
  assert config.loss.kd_new == 3 and schema.help_texts()["loss.kd_new"] == "a new field"
  config.loss.kd_alpha = 0.5
  wider = dataclasses.make_dataclass("Wider", [("kd_new", int, dataclasses.field(default=0))],
                                     bases=(losses.LossConfig,), frozen=True)
  assert schema.spec(wider, config.loss) == wider(kd_alpha=0.5, kd_new=3)


def test_schema_imports_no_jax():
  import subprocess
  import sys
  code = "import sys, kdt.schema, kdt.config_lib; assert 'jax' not in sys.modules, 'jax'"
  subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_quickstarts_share_the_digits_training():
  paths = glob.glob(os.path.join(REPO, "configs", "quickstart*.py"))
  assert len(paths) >= 6
  for path in paths:
    config = load(path)
    assert "config_lib.digits_quickstart(config)" in open(path, encoding="utf-8").read(), path
    assert (config.model.name, config.data.name, config.train.num_steps,
            config.train.batch_size, tuple(config.schedule.milestones)) == (
                "lenet_300_100", "digits", 300, 64, (200,)), path
