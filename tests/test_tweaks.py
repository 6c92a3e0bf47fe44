"""ToST re-training tweaks: activation swap and anneal, ghost skips, label smoothing, GradInit, preset.

The IMP runs here use a tiny CIFAR ResNet (depth 8, width 4) on the 8x8 digits, so the ghost
branches are exercised end to end in a few seconds.
"""

import functools
import json
import os

import jax
import jax.extend.core as jex
import jax.numpy as jnp
import numpy as np
import pytest

from kdt import config_lib
from kdt import checkpoint as checkpoint_lib
from kdt import experiments
from kdt import workdir as workdir_lib
from kdt import models
from kdt import pruning
from kdt.models import resnet
from kdt.experiments import imp as imp_lib
from kdt.experiments import setup as setup_lib
from kdt.tickets import recipes as recipes_lib
from kdt.tickets import tweaks
from kdt.train import gradinit
from kdt.train import loop
from kdt.train import losses
from kdt.train import optim
from kdt.train import steps

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = (8, 8, 1)


def _tiny_resnet(activation="relu"):
  return models.CifarResNet(num_classes=10, depth=8, width=4, activation=activation)


def _variables(model, shape=DIGITS):
  return dict(model.init(jax.random.key(0), jnp.zeros((2, *shape)), train=False))


def _relu_sites(jaxpr) -> int:
  """ReLUs in a jaxpr and its sub-jaxprs: calls named ``relu`` and ``max`` with a literal 0."""
  sites = 0
  for eqn in jaxpr.eqns:
    if eqn.params.get("name") == "relu" or (eqn.primitive.name == "max" and any(
        isinstance(v, jex.Literal) and v.val == 0 for v in eqn.invars)):
      sites += 1
    sites += sum(_relu_sites(sub) for sub in jex.jaxprs_in_params(eqn.params))
  return sites


def _eval_relu_sites(model, variables, shape=DIGITS, **kwargs):
  fn = functools.partial(steps.apply_model, model, train=False, **kwargs)
  return _relu_sites(jax.make_jaxpr(fn)(variables, jnp.zeros((2, *shape))).jaxpr)


def _settings(**kwargs):
  return tweaks.TweakSettings(**kwargs)


# ----- activation swap and anneal -----------------------------------------------------------------

@pytest.mark.parametrize("activation", sorted(set(models.ACTIVATIONS) - {"relu"}))
def test_activation_swap_leaves_no_relu(activation):
  dense = _tiny_resnet()
  retrain = tweaks.retraining_model(dense, _settings(activation=activation, ghost_skips=True))
  variables = _variables(retrain)
  assert _eval_relu_sites(dense, _variables(dense)) > 0
  assert _eval_relu_sites(retrain, variables) == 0


def test_activation_swap_in_lenet_and_vgg_style_models():
  for name, shape in (("lenet_300_100", DIGITS), ("conv2", (8, 8, 3))):
    dense = models.create_model(name, num_classes=10, input_shape=shape)
    retrain = tweaks.retraining_model(dense, _settings(activation="mish"))
    assert _eval_relu_sites(dense, _variables(dense, shape), shape) > 0
    assert _eval_relu_sites(retrain, _variables(retrain, shape), shape) == 0


def test_ramp_and_blend():
  assert float(tweaks.ramp(0, 10, 20)) == 0.0
  assert float(tweaks.ramp(20, 10, 20)) == 0.5
  assert float(tweaks.ramp(10_000, 10, 20)) == 1.0
  assert tweaks.ramp(5, 0, 0) == 0.0 and tweaks.ramp(None, 0, 10) == 1.0
  x = jnp.linspace(-3.0, 3.0, 13)
  np.testing.assert_array_equal(tweaks.blend(x, 0.0, smooth="swish", target="relu"), jax.nn.silu(x))
  np.testing.assert_array_equal(tweaks.blend(x, 1.0, smooth="swish", target="relu"), jax.nn.relu(x))
  np.testing.assert_allclose(tweaks.blend(x, 0.25, smooth="swish", target="relu"),
                             0.75 * jax.nn.silu(x) + 0.25 * jax.nn.relu(x), rtol=1e-6)


def test_scheduled_model_anneals_to_relu_and_fades_ghosts():
  dense = _tiny_resnet()
  settings = _settings(activation="swish", activation_anneal_start=10, activation_anneal_steps=20,
                       ghost_skips=True, ghost_fade_start=0, ghost_fade_steps=40)
  model = tweaks.retraining_model(dense, settings)
  assert isinstance(model, tweaks.ScheduledModel) and model.conditioned_on_step
  variables = _variables(model)
  x = jax.random.normal(jax.random.key(1), (4, *DIGITS))
  apply = jax.jit(lambda v, s: steps.apply_model(model, v, x, train=False, step=s))
  swish_ghost = _tiny_resnet("swish").clone(ghost_skips=True)
  relu_ghost = _tiny_resnet().clone(ghost_skips=True)
  # Before the anneal starts and before any fade: the swish network with full ghosts.
  np.testing.assert_allclose(apply(variables, 0), swish_ghost.apply(variables, x), rtol=1e-5,
                             atol=1e-6)
  # After the anneal and the fade: exactly the plain ReLU network on the non-ghost weights.
  plain = tweaks.lower(variables, _variables(dense))
  np.testing.assert_allclose(apply(variables, 40), dense.apply(plain, x), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(apply(variables, None), dense.apply(plain, x), rtol=1e-5, atol=1e-6)
  # Mid-way: ghost scale 1 - 20/40 with the half-annealed activation.
  half = relu_ghost.clone(activation=functools.partial(tweaks.blend, t=0.5, smooth="swish",
                                                       target="relu"), ghost_scale=0.5)
  np.testing.assert_allclose(apply(variables, 20), half.apply(variables, x), rtol=1e-5, atol=1e-6)


def test_train_and_eval_steps_pass_the_step_to_step_conditioned_models():
  dense = models.create_model("lenet_300_100", num_classes=10, input_shape=DIGITS)
  model = tweaks.retraining_model(dense, _settings(activation="elu", activation_anneal_steps=4))
  variables = _variables(model)
  direction = optim.OptimizerSpec().make()
  mask = jax.tree.map(lambda p: jnp.ones(p.shape, bool), variables["params"])
  batch = {"image": jax.random.normal(jax.random.key(2), (8, *DIGITS)),
           "label": jnp.arange(8) % 10, "weight": jnp.ones(8)}
  from kdt.train.state import create_train_state
  outs = {}
  for step in (0, 4):
    state = create_train_state(variables, direction, step=step)
    _, metrics = steps.train_step(state, mask, batch, None, model=model, direction=direction,
                                  schedule=lambda s: 0.1, loss=losses.LossConfig())
    outs[step] = float(metrics["loss"])
    evaluated = steps.eval_step(variables["params"], {}, mask, batch, model=model, step=step)
    ref = dense.clone(activation="elu" if step == 0 else "relu")
    expected = steps.eval_step(variables["params"], {}, mask, batch, model=ref)
    np.testing.assert_allclose(float(evaluated["loss"]), float(expected["loss"]), rtol=1e-6)
  assert outs[0] != outs[4]


# ----- ghost skips ----------------------------------------------------------------------------------

def test_ghost_branches_are_never_pruned_and_start_at_the_constant():
  dense = _tiny_resnet()
  retrain = tweaks.retraining_model(dense, _settings(ghost_skips=True))
  params = _variables(retrain)["params"]
  prunable = pruning.prunable_leaves(params, "conv_dense")
  names = pruning.leaf_names(params)
  flags = jax.tree.leaves(prunable)
  ghosts = [n for n in names if "ghost" in n]
  assert len(ghosts) == 3 * 2 * 3  # 3 blocks x 2 branches x (kernel, BN scale, BN bias)
  assert not any(f for n, f in zip(names, flags) if "ghost" in n)
  assert any(f for n, f in zip(names, flags) if "ghost" not in n)
  # Even pruning everything prunable leaves every ghost weight.
  mask = pruning.mask_for_density(pruning.magnitude(params), prunable, 0.0)
  for n, m in zip(names, jax.tree.leaves(mask)):
    assert bool(np.all(m)) == ("ghost" in n or not dict(zip(names, flags))[n])

  # Lifting the dense network adds ghost leaves at exactly their initial values.
  lifter = tweaks.RetrainTweaks(_tiny_config(ghost_skips=True), dense, DIGITS)
  dense_vars = _variables(dense)
  lifted_p, lifted_b = jax.jit(lifter.lift_variables)(dense_vars["params"],
                                                      dense_vars["batch_stats"])
  for block in ("layer1_0", "layer2_0", "layer3_0"):
    for i in (1, 2):
      kernel = np.asarray(lifted_p[block][f"ghost{i}_conv"]["kernel"])
      np.testing.assert_array_equal(kernel, np.full(kernel.shape, 1e-4, np.float32))
      np.testing.assert_array_equal(lifted_p[block][f"ghost{i}_bn"]["scale"], 1.0)
      np.testing.assert_array_equal(lifted_p[block][f"ghost{i}_bn"]["bias"], 0.0)
      np.testing.assert_array_equal(lifted_b[block][f"ghost{i}_bn"]["var"], 1.0)
  assert resnet.GHOST_INIT == 1e-4
  # Non-ghost leaves are the dense ones, bit for bit, and lowering gives them back.
  low_p, low_b = lifter.lower_variables(lifted_p, lifted_b)
  for a, b in zip(jax.tree.leaves((low_p, low_b)), jax.tree.leaves(
      (dense_vars["params"], dense_vars["batch_stats"]))):
    np.testing.assert_array_equal(a, b)
  dense_mask = jax.tree.map(lambda p: jnp.asarray(np.random.default_rng(0).random(p.shape) < 0.5),
                            dense_vars["params"])
  lifted_mask = lifter.lift_mask(dense_mask)
  for n, m in zip(pruning.leaf_names(lifted_mask), jax.tree.leaves(lifted_mask)):
    if "ghost" in n:
      assert bool(np.all(m))


def test_ghost_skip_validation():
  assert models.ghost_skip_problem("resnet20", (32, 32, 3)) is None
  assert models.ghost_skip_problem("resnet18", (32, 32, 3)) is None
  assert "bottleneck" in models.ghost_skip_problem("resnet50", (32, 32, 3))
  assert "bottleneck" in models.ghost_skip_problem("oresnet56", (32, 32, 3))
  assert "residual" in models.ghost_skip_problem("vgg16", (32, 32, 3))
  config = _tiny_config(ghost_skips=True)
  config.model.name = "lenet_300_100"
  with pytest.raises(config_lib.ConfigError, match="tost.ghost_skips"):
    config_lib.validate(config, device_count=1)


# ----- label smoothing, GradInit, run adaptation --------------------------------------------------

def test_label_smoothing_uses_the_off_target_convention():
  lifter = tweaks.RetrainTweaks(_tiny_config(label_smoothing=0.1), _tiny_resnet(), DIGITS)
  loss = lifter.loss(losses.LossConfig(kd_alpha=0.5))
  assert loss.label_smoothing == 0.1 and loss.label_smoothing_convention == "off_target"
  assert loss.kd_alpha == 0.5
  targets = losses.smoothed_targets(jnp.array([3]), 10, loss.label_smoothing,
                                    loss.label_smoothing_convention)
  np.testing.assert_allclose(targets[0, 3], 0.9, rtol=1e-6)
  np.testing.assert_allclose(targets[0, 0], 0.1 / 9, rtol=1e-6)
  off = tweaks.RetrainTweaks(_tiny_config(), _tiny_resnet(), DIGITS)
  assert off.loss(losses.LossConfig()) == losses.LossConfig()


def test_rescale_adam_matches_the_reference_update():
  params = {"a": jnp.ones((2,)), "b": jnp.zeros((3,))}
  settings = gradinit.GradInitSettings(lr=0.1, grad_clip=1.0, min_scale=0.5)
  state = gradinit.init_scale_state(params)
  active = {"a": jnp.array(True), "b": jnp.array(False)}
  floors = {"a": 0.5, "b": 0.0}
  state = gradinit.rescale_adam(state, {"a": jnp.float32(3.0), "b": jnp.float32(1.0)}, active,
                                floors, constraint=False, settings=settings)
  # Step 1 of Adam on a clipped gradient (1.0): m = 0.1, v = 0.001, update = lr * 1 = 0.1.
  np.testing.assert_allclose(float(state.alpha["a"]), 0.9, rtol=1e-5)
  assert float(state.alpha["b"]) == 1.0  # zero-norm leaves are skipped
  for _ in range(20):
    state = gradinit.rescale_adam(state, {"a": jnp.float32(1.0), "b": jnp.float32(1.0)}, active,
                                  floors, constraint=True, settings=settings)
  assert float(state.alpha["a"]) == 0.5  # clamped at min_scale
  assert int(state.step) == 1 and int(state.cons_step) == 20


def test_gradinit_search_lowers_the_post_step_loss_and_keeps_pruned_weights_zero():
  config = _tiny_config()
  dataset = setup_lib.load_data(config)
  model = models.create_model("lenet_300_100", num_classes=10, input_shape=DIGITS)
  variables = _variables(model)
  mask = jax.tree.map(lambda p: jnp.asarray(np.random.default_rng(1).random(p.shape) < 0.3),
                      variables["params"])
  settings = gradinit.GradInitSettings(iters=20, lr=1e-2)
  result = gradinit.search(model, variables["params"], {}, mask, dataset, settings, batch_size=32,
                           augment="none", seed=0)
  scales = jax.tree.leaves(result.scales)
  assert any(abs(float(s) - 1.0) > 1e-3 for s in scales)
  assert all(float(s) >= 0.0 for s in scales)
  assert result.history[-1]["iter"] == 20 and np.isfinite(result.history[-1]["loss1"])
  # Biases start at zero: GradInit skips them (scale stays 1).
  assert float(result.scales["stem"]["bias"]) == 1.0


def _plain_run(directory, mask):
  return loop.Run(name="r", directory=directory, init_state=None, mask=mask, end_step=10,
                  optimizer=optim.OptimizerSpec(), schedule=optim.ScheduleSpec("constant", 0.1, 10))


def test_adapt_run_lifts_mask_and_weights_and_tweaks_the_loss(tmp_path):
  config = _tiny_config(ghost_skips=True, label_smoothing=0.1)
  dense = _tiny_resnet()
  lifter = tweaks.RetrainTweaks(config, dense, DIGITS)
  dense_vars = _variables(dense)
  mask = jax.tree.map(lambda p: jnp.ones(p.shape, bool).at[(0,) * p.ndim].set(False),
                      dense_vars["params"])
  direction = optim.OptimizerSpec().make()
  run = _plain_run(str(tmp_path / "round" / "train"), mask)
  adapted = lifter.adapt_run(run, params=dense_vars["params"],
                             batch_stats=dense_vars["batch_stats"], mask=mask, start=3,
                             direction=direction, dataset=None)
  state = jax.jit(adapted.init_state)()
  assert int(state.step) == 3
  assert adapted.loss.label_smoothing == 0.1
  assert adapted.loss.label_smoothing_convention == "off_target"
  assert not os.path.exists(tmp_path / "round" / "gradinit_scales.json")
  ghost_kernels = 0
  for name, p, m in zip(pruning.leaf_names(state.params), jax.tree.leaves(state.params),
                        jax.tree.leaves(adapted.mask)):
    assert p.shape == m.shape
    assert not np.any(np.asarray(p)[~np.asarray(m)])  # pruned entries are 0
    if "ghost" in name and name.endswith("kernel"):
      ghost_kernels += 1
      assert bool(np.all(m))
      np.testing.assert_array_equal(p, np.full(p.shape, 1e-4, np.float32))
  assert ghost_kernels == 6
  assert "ghost1_bn" in state.batch_stats["layer2_0"]


def test_adapt_run_applies_gradinit_scales_once(tmp_path):
  config = _quickstart()
  config.tost.lrsi = "masked"
  config.tost.gradinit_iters = 2
  config.train.batch_size = 32
  dense = models.create_model("lenet_300_100", num_classes=10, input_shape=DIGITS)
  lifter = tweaks.RetrainTweaks(config, dense, DIGITS)
  variables = _variables(dense)
  mask = jax.tree.map(lambda p: jnp.asarray(np.random.default_rng(2).random(p.shape) < 0.5),
                      variables["params"])
  direction = optim.OptimizerSpec().make()
  run = _plain_run(str(tmp_path / "round" / "train"), mask)
  dataset = setup_lib.load_data(config)
  adapted = lifter.adapt_run(run, params=variables["params"], batch_stats={}, mask=mask, start=0,
                             direction=direction, dataset=dataset)
  saved = json.load(open(tmp_path / "round" / "gradinit_scales.json"))
  assert saved["lrsi"] == "masked" and saved["history"][-1]["iter"] == 2
  state = adapted.init_state()
  for name, p, p0, m in zip(pruning.leaf_names(state.params), jax.tree.leaves(state.params),
                            jax.tree.leaves(variables["params"]), jax.tree.leaves(mask)):
    np.testing.assert_allclose(p, np.where(m, p0 * saved["scales"][name], 0.0), rtol=1e-6)
  assert any(saved["scales"][n] != 1.0 for n in saved["scales"] if n.endswith("kernel"))
  # A second call loads the saved scales instead of searching again.
  os.chmod(tmp_path / "round", 0o500)  # a new search would have to write here
  try:
    again = lifter.adapt_run(run, params=variables["params"], batch_stats={}, mask=mask, start=0,
                             direction=direction, dataset=None)
  finally:
    os.chmod(tmp_path / "round", 0o700)
  for a, b in zip(jax.tree.leaves(again.init_state().params), jax.tree.leaves(state.params)):
    np.testing.assert_array_equal(a, b)


# ----- the preset and the IMP driver ----------------------------------------------------------------

def _quickstart():
  return config_lib.load_file(os.path.join(REPO, "configs", "quickstart.py"))


def _tiny_config(**tost):
  config = _quickstart()
  config.model.name = "resnet20"
  config.train.num_steps = 12
  config.train.batch_size = 32
  config.train.eval_every_steps = 0
  config.train.log_every_steps = 0
  config.train.checkpoint_every_steps = 6
  config.schedule.milestones = (8,)
  config.imp.recipes = ("lth",)
  config.imp.num_rounds = 2
  config.imp.selector = "conv_dense"
  config.imp.rewind_step = 4
  for k, v in tost.items():
    config.tost[k] = v
  return config


def test_preset_turns_every_tweak_on():
  config = config_lib.tost_preset(_quickstart())
  assert "tost" in config.imp.recipes
  assert (config.tost.activation, config.tost.ghost_skips, config.tost.label_smoothing,
          config.tost.lrsi, config.tost.gradinit_variant) == ("swish", True, 0.1, "masked",
                                                               "tost_unmasked")
  with pytest.raises(config_lib.ConfigError, match="tost.ghost_skips"):
    config_lib.validate(config, device_count=1)  # LeNet has no residual blocks
  config.tost.ghost_skips = False
  config_lib.validate(config, device_count=1)
  for path in ("quickstart_tost.py", "cifar10_resnet18_tost.py", "cifar100_resnet18_tost.py",
               "cifar10_vgg16_tost.py"):
    cfg = config_lib.load_file(os.path.join(REPO, "configs", path))
    assert "tost" in cfg.imp.recipes and cfg.tost.activation and cfg.tost.label_smoothing == 0.1


@pytest.mark.parametrize("field,value,match", [
    ("activation", "tanh", "tost.activation"),
    ("lrsi", "before", "tost.lrsi"),
    ("gradinit_variant", "unmasked", "tost.gradinit_variant"),
    ("recipes", ("kd",), "tost.recipes"),
    ("ghost_fade_steps", 5, "tost.ghost_fade_steps"),
    ("activation_anneal_steps", 5, "tost.activation_anneal_steps"),
    ("label_smoothing", 1.0, "tost.label_smoothing"),
])
def test_bad_tweak_values_name_the_field(field, value, match):
  config = _quickstart()
  config.tost[field] = value
  with pytest.raises(config_lib.ConfigError, match=match):
    config_lib.validate(config, device_count=1)


def test_tost_recipe_without_tweaks_is_an_error():
  config = _quickstart()
  config.imp.recipes = ("lth", "tost")
  with pytest.raises(config_lib.ConfigError, match="imp.recipes"):
    config_lib.validate(config, device_count=1)


def test_imp_with_tweaks_end_to_end(tmp_path, monkeypatch):
  """LTH + tweaks on LTH's masks, a tweaked own lineage, and an untouched plain recipe."""
  del monkeypatch
  config = config_lib.tost_preset(_tiny_config(), lrsi="none")
  config.imp.recipes = ("lth", "rewind", "tost")
  config.tost.recipes = ("rewind",)       # rewind's own lineage is re-trained with the tweaks
  config.tost.activation_anneal_steps = 6
  config.tost.ghost_fade_steps = 8
  config_lib.validate(config, device_count=1)
  workdir = str(tmp_path / "tost")
  workdir_lib.prepare_workdir(config, workdir)
  setup = experiments.build_setup(config, workdir, model=_tiny_resnet())
  driver = imp_lib.IMPRounds(setup, config.imp, workdir)
  rows = driver.run()
  assert [(r["round"], r["recipe"]) for r in rows] == [
      (0, "dense"), (1, "lth"), (1, "rewind"), (1, "tost"), (2, "lth"), (2, "rewind"),
      (2, "tost")]
  for r in (1, 2):
    for a, b in zip(jax.tree.leaves(_load_mask(driver, r, "lth")),
                    jax.tree.leaves(_load_mask(driver, r, "tost"))):
      np.testing.assert_array_equal(a, b)
  by = {(r["round"], r["recipe"]): r for r in rows}
  assert by[2, "tost"]["weights_kept"] == by[2, "lth"]["weights_kept"] == by[2, "rewind"][
      "weights_kept"]
  assert by[1, "rewind"]["start_step"] == 4
  # The tweaked runs trained a network with ghost branches, which were never pruned.
  trainer = driver._trainer_for(recipes_lib.RECIPES["tost"])
  assert trainer is not driver.trainer
  assert trainer is driver._trainer_for(recipes_lib.RECIPES["rewind"])
  assert driver._trainer_for(recipes_lib.RECIPES["lth"]) is driver.trainer
  assert isinstance(trainer.model, tweaks.ScheduledModel)
  lifter = tweaks.RetrainTweaks(config, driver.model, DIGITS)

  def like():
    v = lifter._init_variables(lifter.model)
    return recipes_lib.reset_state(v["params"], v["batch_stats"], lifter.lift_mask(
        jax.tree.map(lambda x: jnp.ones(x.shape, bool), lifter.dense_shapes()["params"])),
        setup.optimizer.make().init(v["params"]), 0)

  ckpt = checkpoint_lib.Checkpointer(
      os.path.join(imp_lib.round_dir(workdir, 2, "rewind"), "train"))
  try:
    state, _ = ckpt.restore(12, jax.eval_shape(like))
  finally:
    ckpt.close()
  names = pruning.leaf_names(state.params)
  ghosts = [p for n, p in zip(names, jax.tree.leaves(state.params)) if "ghost" in n and
            n.endswith("kernel")]
  assert len(ghosts) == 6 and all(np.all(np.asarray(g) != 0) for g in ghosts)
  # Round 2 of the tweaked lineage pruned the lowered (ghost-free) trained weights.
  mask2 = _load_mask(driver, 2, "rewind")
  assert not any("ghost" in n for n in pruning.leaf_names(mask2))

  # Without config.tost the lth rows are the same, bit for bit (the tweaks touch nothing else).
  plain = _tiny_config()
  plain.imp.num_rounds = 1
  plain_dir = str(tmp_path / "plain")
  workdir_lib.prepare_workdir(plain, plain_dir)
  plain_rows = imp_lib.run_rounds(experiments.build_setup(plain, plain_dir, model=_tiny_resnet()),
                                  plain.imp, plain_dir)
  strip = lambda rs: [{k: v for k, v in r.items() if k != "wall_time"} for r in rs
                      if r["recipe"] in ("dense", "lth") and r["round"] <= 1]
  assert len(strip(plain_rows)) == 2 and strip(rows) == strip(plain_rows)


def _load_mask(driver, round_index, recipe):
  return driver.masks.load_or_compute(imp_lib.round_dir(driver.workdir, round_index, recipe),
                                      driver.dense.mask, None)


def test_seed_summary_gives_mean_spread_and_paired_gaps(tmp_path):
  from kdt import compare
  runs = []
  for seed, (dense, lth, tost) in enumerate([(0.9, 0.8, 0.85), (0.8, 0.7, 0.8), (1.0, 0.9, 0.9)]):
    rows = [{"round": 0, "recipe": "dense", "density": 1.0, "test_accuracy": dense},
            {"round": 1, "recipe": "lth", "density": 0.5, "test_accuracy": lth},
            {"round": 1, "recipe": "tost", "density": 0.5, "test_accuracy": tost}]
    os.makedirs(tmp_path / str(seed))
    json.dump(rows, open(tmp_path / str(seed) / "results.json", "w"))
    json.dump({"seeds": {"init": seed}, "model": {"name": "lenet_300_100"}},
              open(tmp_path / str(seed) / "config.json", "w"))
    runs.append(str(tmp_path / str(seed)))
  summary = compare.main(["--workdirs", *runs, "--out", str(tmp_path / "out"), "--baseline", "lth"])
  by = {(s["recipe"], s["round"]): s for s in summary}
  assert by["lth", 1]["n"] == 3
  np.testing.assert_allclose(by["lth", 1]["mean"], 0.8)
  np.testing.assert_allclose(by["lth", 1]["std"], 0.1)
  np.testing.assert_allclose(by["tost", 1]["gap_mean"], (0.05 + 0.1 + 0.0) / 3)
  np.testing.assert_allclose(by["tost", 1]["gap_std"], np.std([0.05, 0.1, 0.0], ddof=1))
  assert "gap_mean" not in by["lth", 1] and "gap_mean" not in by["dense", 0]
  assert os.path.exists(tmp_path / "out" / "accuracy_vs_weights.png")
  assert json.load(open(tmp_path / "out" / "summary.json"))["baseline"] == "lth"


def test_gradinit_objective_gradient_holds_the_inner_step_constant():
  """d/d alpha_l of L(alpha theta0 - eta g) / eta with g fixed: <grad L(theta'), theta0_l> / eta."""
  model = models.create_model("lenet_300_100", num_classes=10, input_shape=DIGITS)
  params0 = _variables(model)["params"]
  mask = jax.tree.map(lambda p: jnp.ones(p.shape, bool), params0)
  rng = np.random.default_rng(5)
  batch = lambda: {"image": jnp.asarray(rng.normal(size=(16, *DIGITS)), jnp.float32),
                   "label": jnp.asarray(rng.integers(0, 10, 16))}
  a, b = batch(), batch()
  alpha = jax.tree.map(lambda p: jnp.float32(0.8), params0)
  grads_fn = jax.jit(functools.partial(gradinit.scale_gradients, model=model),
                     static_argnames="settings")
  grads, metrics = grads_fn(alpha, params0, {}, mask, a, b,
                            settings=gradinit.GradInitSettings(eta=0.1))
  loss = lambda p, x: gradinit._loss(model, p, {}, mask, x["image"], x["label"])

  @jax.jit
  def expected_fn(alpha):
    theta = jax.tree.map(lambda s, p: s * p, alpha, params0)
    moved = jax.tree.map(lambda t, g: t - 0.1 * g, theta, jax.grad(loss)(theta, a))
    g1 = jax.grad(loss)(moved, b)
    return jax.tree.map(lambda g, p: jnp.sum(g * p) / 0.1, g1, params0), loss(moved, b)

  expected, loss1 = expected_fn(alpha)
  for x, y in zip(jax.tree.leaves(grads), jax.tree.leaves(expected)):
    np.testing.assert_allclose(x, y, rtol=2e-4, atol=1e-6)
  np.testing.assert_allclose(metrics["loss1"], loss1, rtol=1e-5)
  # With a norm constraint below the gradient norm, the step descends on ||g|| instead.
  grads, metrics = grads_fn(alpha, params0, {}, mask, a, b,
                            settings=gradinit.GradInitSettings(eta=0.1, gamma=1e-6))
  gnorm = lambda s: jnp.sqrt(sum(jnp.sum(x**2) for x in jax.tree.leaves(
      jax.grad(loss)(jax.tree.map(lambda c, p: c * p, s, params0), a))))
  for x, y in zip(jax.tree.leaves(grads), jax.tree.leaves(jax.jit(jax.grad(gnorm))(alpha))):
    np.testing.assert_allclose(x, y, rtol=2e-4, atol=1e-6)
  assert bool(metrics["constraint"]) and np.isnan(metrics["loss1"])


def _lenet_batches(seed):
  rng = np.random.default_rng(seed)
  batch = lambda: {"image": jnp.asarray(rng.normal(size=(16, *DIGITS)), jnp.float32),
                   "label": jnp.asarray(rng.integers(0, 10, 16))}
  return batch(), batch()


def test_tost_unmasked_gradinit_searches_with_the_pruned_coordinates():
  """ToST's type-2 search: pruned entries of theta0 are 0, but g, ||g|| and the look-ahead step
  theta' = theta - eta g are those of the unmasked network; the masked variant differs."""
  model = models.create_model("lenet_300_100", num_classes=10, input_shape=DIGITS)
  params0 = _variables(model)["params"]
  mask = jax.tree.map(lambda p: jnp.asarray(np.random.default_rng(3).random(p.shape) < 0.4),
                      params0)
  a, b = _lenet_batches(7)
  alpha = jax.tree.map(lambda p: jnp.float32(0.9), params0)
  grads_fn = jax.jit(functools.partial(gradinit.scale_gradients, model=model),
                     static_argnames="settings")
  unmasked, m_unmasked = grads_fn(alpha, params0, {}, mask, a, b,
                                  settings=gradinit.GradInitSettings(variant="tost_unmasked"))
  masked, m_masked = grads_fn(alpha, params0, {}, mask, a, b,
                              settings=gradinit.GradInitSettings(variant="masked"))
  theta0 = pruning.apply_mask(params0, mask)  # ToST zeroes the pruned weights before GradInit
  plain = lambda p, x: gradinit._loss(model, p, {}, None, x["image"], x["label"])

  @jax.jit
  def expected_fn(alpha):
    theta = jax.tree.map(lambda s, p: s * p, alpha, theta0)
    g = jax.grad(plain)(theta, a)
    gnorm = jnp.sqrt(sum(jnp.sum(x**2) for x in jax.tree.leaves(g)))
    moved = jax.tree.map(lambda t, x: t - 0.1 * x, theta, g)
    g1 = jax.grad(plain)(moved, b)
    return jax.tree.map(lambda x, p: jnp.sum(x * p) / 0.1, g1, theta0), gnorm, plain(moved, b)

  expected, gnorm, loss1 = expected_fn(alpha)
  np.testing.assert_allclose(m_unmasked["gnorm"], gnorm, rtol=1e-5)
  np.testing.assert_allclose(m_unmasked["loss1"], loss1, rtol=1e-5)
  for x, y in zip(jax.tree.leaves(unmasked), jax.tree.leaves(expected)):
    np.testing.assert_allclose(x, y, rtol=2e-4, atol=1e-6)
  # The pruned coordinates carry gradient: the masked search sees a smaller ||g||.
  assert float(m_masked["gnorm"]) < 0.9 * float(m_unmasked["gnorm"])
  assert any(not np.allclose(x, y, rtol=1e-3) for x, y in
             zip(jax.tree.leaves(unmasked), jax.tree.leaves(masked)))


def test_gradinit_evaluates_a_scheduled_network_at_the_start_step():
  """With an activation anneal the search scales the network re-training starts with."""
  dense = models.create_model("lenet_300_100", num_classes=10, input_shape=DIGITS)
  model = tweaks.retraining_model(dense, _settings(activation="swish", activation_anneal_steps=100,
                                                   activation_anneal_start=50))
  assert model.conditioned_on_step
  params0 = _variables(dense)["params"]
  mask = jax.tree.map(lambda p: jnp.ones(p.shape, bool), params0)
  a, b = _lenet_batches(9)
  alpha = jax.tree.map(lambda p: jnp.float32(1.0), params0)
  settings = gradinit.GradInitSettings(variant="masked")
  _, metrics = gradinit.scale_gradients(alpha, params0, {}, mask, a, b, 10, model=model,
                                        settings=settings)
  swish = dense.clone(activation="swish")
  at_start = losses.cross_entropy(swish.apply({"params": params0}, a["image"], train=True),
                                  a["label"])
  at_end = losses.cross_entropy(dense.apply({"params": params0}, a["image"], train=True),
                                a["label"])
  assert abs(float(at_start) - float(at_end)) > 1e-3
  np.testing.assert_allclose(metrics["loss0"], at_start, rtol=1e-5)


def test_adapt_run_searches_gradinit_at_the_runs_start_step(tmp_path, monkeypatch):
  config = _quickstart()
  config.tost.lrsi = "masked"
  config.tost.gradinit_variant = "masked"
  dense = models.create_model("lenet_300_100", num_classes=10, input_shape=DIGITS)
  lifter = tweaks.RetrainTweaks(config, dense, DIGITS)
  variables = _variables(dense)
  mask = jax.tree.map(lambda p: jnp.ones(p.shape, bool), variables["params"])
  seen = []

  def fake_search(model, params, batch_stats, mask, dataset, settings, **kwargs):
    seen.append((kwargs["start_step"], settings.variant))
    return gradinit.GradInitResult(scales=jax.tree.map(lambda p: jnp.float32(1.0), params),
                                   history=[])

  monkeypatch.setattr(gradinit, "search", fake_search)
  run = _plain_run(str(tmp_path / "round" / "train"), mask)
  adapt = lambda start: lifter.adapt_run(  # noqa: E731
      run, params=variables["params"], batch_stats={}, mask=mask, start=start,
      direction=optim.OptimizerSpec().make(), dataset=setup_lib.load_data(config))
  adapt(7)
  assert seen == [(7, "masked")]
  adapt(7)  # the saved scales are loaded
  assert len(seen) == 1
  # Scales saved by another search (here: another start step; an older kdt's masked search
  # saved no variant at all) are not reused.
  adapt(8)
  assert seen == [(7, "masked"), (8, "masked")]
