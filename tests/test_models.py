"""Tests for kdt.models: registry, exact parameter counts, naming contract, activations.

Parameter counts and output shapes come from ``jax.eval_shape`` (tracing only, no compute);
real forward passes run only for small models.
"""

import doctest
import functools
import math

import jax
import jax.extend.core as jex
import jax.numpy as jnp
import numpy as np
import pytest

from kdt import models
from kdt.models import registry

MNIST = (28, 28, 1)
CIFAR = (32, 32, 3)
IMAGENET = (224, 224, 3)

# (name, input shape, classes, exact parameter count incl. BN scale/bias; published figure).
CASES = [
    ("lenet_300_100", MNIST, 10, 266_610),  # Frankle & Carbin 2019: 266K.
    ("conv2", CIFAR, 10, 4_301_642),  # Frankle & Carbin 2019: 4.3M.
    ("conv4", CIFAR, 10, 2_425_930),  # Frankle & Carbin 2019: 2.4M.
    # Frankle & Carbin print 1.7M, which cannot hold: its 1.1M conv weights plus the
    # 4096x256 first dense layer alone make 2.2M.
    ("conv6", CIFAR, 10, 2_262_602),
    # open_lth conv shortcuts = option A counts (akamaster: 269,722 / 464,154 / 658,586 /
    # 853,018 / 1,727,962; He et al. 0.27M ... 1.7M) + 2,752 for the two 1x1 conv + BN.
    ("resnet20", CIFAR, 10, 272_474),
    ("resnet32", CIFAR, 10, 466_906),
    ("resnet44", CIFAR, 10, 661_338),
    ("resnet56", CIFAR, 10, 855_770),
    ("resnet110", CIFAR, 10, 1_730_714),
    ("oresnet20", CIFAR, 10, 272_474),  # basic blocks: same layout as resnet20.
    ("oresnet32", CIFAR, 10, 466_906),
    ("oresnet56", CIFAR, 10, 869_530),  # 83-layer bottleneck, 853,936 conv weights (~0.854M).
    ("oresnet110", CIFAR, 10, 1_704_154),  # ResNet-164 layout, 1,676,464 conv weights (~1.676M).
    ("resnet18", CIFAR, 10, 11_173_962),  # kuangliu CIFAR ResNet-18: 11.17M.
    ("resnet34", CIFAR, 10, 21_282_122),  # kuangliu CIFAR ResNet-34: 21.28M.
    ("resnet50", CIFAR, 10, 23_520_842),  # kuangliu CIFAR ResNet-50: 23.52M.
    ("resnet18", IMAGENET, 1000, 11_689_512),  # torchvision resnet18: 11,689,512.
    ("resnet34", IMAGENET, 1000, 21_797_672),  # torchvision resnet34: 21,797,672.
    ("resnet50", IMAGENET, 1000, 25_557_032),  # torchvision resnet50: 25,557,032.
    ("vgg11", CIFAR, 10, 9_231_114),  # open_lth cifar_vgg_11: 9.2M.
    ("vgg16", CIFAR, 10, 14_728_266),  # open_lth cifar_vgg_16 / LMC paper: 14.7M.
    ("vgg19", CIFAR, 10, 20_040_522),  # Stabilizing the LTH: 20.0M.
    ("mobilenet_v2", CIFAR, 10, 2_296_922),  # kuangliu CIFAR MobileNetV2: 2.30M.
    ("mobilenet_v2", IMAGENET, 1000, 3_504_872),  # torchvision mobilenet_v2: 3,504,872.
    ("wide_resnet_16_4", CIFAR, 10, 2_748_890),  # Zagoruyko & Komodakis: 2.7M.
    ("wide_resnet_22_2", CIFAR, 10, 1_079_642),  # RigL's WRN-22-2: ~1.1M.
    ("wide_resnet_28_10", CIFAR, 10, 36_479_194),  # by name parse; Zagoruyko & Komodakis: 36.5M.
]
CASE_IDS = [f"{name}-{shape[0]}" for name, shape, _, _ in CASES]
BATCH = 2


def _input(shape, dtype=jnp.float32):
  return jax.ShapeDtypeStruct((BATCH, *shape), dtype)


@functools.cache
def _abstract(name, shape, num_classes, activation="relu"):
  """Model and abstract (shape-only) variables, traced once per test session."""
  model = models.create_model(name, num_classes=num_classes, input_shape=shape,
                              activation=activation)
  return model, jax.eval_shape(model.init, jax.random.key(0), _input(shape))


def _num_params(params):
  return sum(leaf.size for leaf in jax.tree.leaves(params))


def _relu_sites(jaxpr: jex.Jaxpr) -> int:
  """ReLUs in a jaxpr and its sub-jaxprs: calls named ``relu`` and ``max`` with a literal 0."""
  sites = 0
  for eqn in jaxpr.eqns:
    if eqn.params.get("name") == "relu" or (eqn.primitive.name == "max" and any(
        isinstance(v, jex.Literal) and v.val == 0 for v in eqn.invars)):
      sites += 1
    sites += sum(_relu_sites(sub) for sub in jex.jaxprs_in_params(eqn.params))
  return sites


def _eval_relu_sites(name, activation):
  """ReLU sites in the inference-mode forward pass (train-mode BN has its own max(0, var))."""
  model, variables = _abstract(name, CIFAR, 10, activation)
  jaxpr = jax.make_jaxpr(functools.partial(model.apply, train=False))(variables, _input(CIFAR))
  return _relu_sites(jaxpr.jaxpr)


def test_every_registered_model_is_counted():
  assert set(models.model_names()) <= {name for name, *_ in CASES}
  assert len(models.model_names()) == len(set(models.model_names()))


@pytest.mark.parametrize("name,shape,num_classes,expected", CASES, ids=CASE_IDS)
def test_parameter_count(name, shape, num_classes, expected):
  _, variables = _abstract(name, shape, num_classes)
  assert _num_params(variables["params"]) == expected


@pytest.mark.parametrize("name,shape,num_classes,expected", CASES, ids=CASE_IDS)
def test_output_shape_and_dtype(name, shape, num_classes, expected):
  del expected
  model, variables = _abstract(name, shape, num_classes)
  logits = jax.eval_shape(functools.partial(model.apply, train=False), variables, _input(shape))
  assert logits.shape == (BATCH, num_classes)
  assert logits.dtype == jnp.float32
  logits, updates = jax.eval_shape(
      functools.partial(model.apply, train=True, mutable=["batch_stats"]), variables,
      _input(shape))
  assert logits.shape == (BATCH, num_classes)
  assert jax.tree.structure(updates.get("batch_stats", {})) == jax.tree.structure(
      variables.get("batch_stats", {}))


@pytest.mark.parametrize("name,shape,num_classes,expected", CASES, ids=CASE_IDS)
def test_stem_and_head_naming_contract(name, shape, num_classes, expected):
  del expected
  _, variables = _abstract(name, shape, num_classes)
  params = variables["params"]
  stem = params["stem"]["kernel"]
  if name.startswith("lenet"):  # Flatten, then Dense.
    assert stem.shape == (np.prod(shape), 300)
  else:  # HWIO conv on the input channels.
    assert stem.ndim == 4 and stem.shape[2] == shape[-1]
  assert params["head"]["kernel"].shape[1] == num_classes
  assert params["head"]["bias"].shape == (num_classes,)
  paths = jax.tree_util.tree_leaves_with_path(params)
  for path, leaf in paths:
    keys = [k.key for k in path]
    assert "stem" not in keys[1:] and "head" not in keys[1:], "only top-level stem/head"
    assert leaf.dtype == jnp.float32, path
    if path[-1].key == "kernel":
      assert leaf.ndim in (2, 4), path


@pytest.mark.parametrize("name", ["lenet_300_100", "conv2", "resnet20", "wide_resnet_10_1"])
def test_forward_pass(name):
  shape = MNIST if name.startswith("lenet") else CIFAR
  model = models.create_model(name, num_classes=10, input_shape=shape)
  x = jax.random.normal(jax.random.key(1), (BATCH, *shape))
  variables = model.init(jax.random.key(0), x)
  logits = model.apply(variables, x, train=False)
  assert logits.shape == (BATCH, 10) and logits.dtype == jnp.float32
  assert np.isfinite(logits).all()
  train_logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
  assert np.isfinite(train_logits).all()
  if "batch_stats" in variables:  # Running stats move towards the batch statistics.
    for before, after in zip(jax.tree.leaves(variables["batch_stats"]),
                             jax.tree.leaves(updates["batch_stats"])):
      assert not np.allclose(before, after)
    assert not np.allclose(train_logits, logits)
  else:
    np.testing.assert_allclose(train_logits, logits, rtol=1e-6)


def test_bfloat16_compute_keeps_float32_params_and_logits():
  model = models.create_model("resnet20", num_classes=10, input_shape=CIFAR, dtype=jnp.bfloat16)
  variables = jax.eval_shape(model.init, jax.random.key(0), _input(CIFAR))
  assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  jaxpr = jax.make_jaxpr(functools.partial(model.apply, train=False))(variables, _input(CIFAR))
  assert jaxpr.out_avals[0].dtype == jnp.float32
  convs = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "conv_general_dilated"]
  assert convs and all(e.outvars[0].aval.dtype == jnp.bfloat16 for e in convs)


def test_shortcut_conv_vs_pad():
  x = _input(CIFAR)
  counts = {}
  for shortcut in ("conv", "pad"):
    for depth in (20, 56):
      model = models.CifarResNet(num_classes=10, depth=depth, shortcut=shortcut)
      params = jax.eval_shape(model.init, jax.random.key(0), x)["params"]
      counts[shortcut, depth] = _num_params(params)
      has_projection = "shortcut_conv" in params["layer2_0"]
      assert has_projection == (shortcut == "conv")
  # He et al. option A (akamaster): ResNet-20 269,722 ("0.27M"), ResNet-56 853,018 ("0.85M").
  assert counts["pad", 20] == 269_722 and counts["pad", 56] == 853_018
  # Two projections: 16->32 (512 + 64 BN) and 32->64 (2,048 + 128 BN).
  assert counts["conv", 20] - counts["pad", 20] == counts["conv", 56] - counts["pad", 56] == 2_752
  with pytest.raises(ValueError, match="'none'.*conv, pad"):
    jax.eval_shape(models.CifarResNet(num_classes=10, shortcut="none").init,
                   jax.random.key(0), x)


def test_activation_functions():
  x = jnp.linspace(-4.0, 4.0, 17)
  sigmoid = lambda z: 1 / (1 + np.exp(-z))
  softplus = lambda z: np.log1p(np.exp(z))
  xn = np.asarray(x, np.float64)
  expected = {
      "relu": np.maximum(xn, 0),
      "swish": xn * sigmoid(xn),
      "pswish": xn * sigmoid(2 * xn),
      "mish": xn * np.tanh(softplus(xn)),
      "gelu": xn * 0.5 * (1 + np.vectorize(math.erf)(xn / np.sqrt(2))),
      "elu": np.where(xn > 0, xn, np.expm1(xn)),
      "softplus": softplus(xn),
      "lisht": xn * np.tanh(xn),
  }
  assert set(models.ACTIVATIONS) == set(expected)
  for name, fn in models.ACTIVATIONS.items():
    np.testing.assert_allclose(fn(x), expected[name], rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("activation", sorted(models.ACTIVATIONS))
def test_every_activation_builds_and_swaps_all_relus(activation):
  model, _ = _abstract("resnet20", CIFAR, 10, activation)
  assert model.activation == activation
  sites = _eval_relu_sites("resnet20", activation)
  if activation == "relu":
    assert sites > 0
  else:
    assert sites == 0


@pytest.mark.parametrize("name", models.model_names())
def test_activation_swap_leaves_no_relu(name):
  # Swish has no max at all, so any ReLU left anywhere in the network would show up.
  assert _eval_relu_sites(name, "relu") > 0
  assert _eval_relu_sites(name, "swish") == 0


@pytest.mark.parametrize("name,shape", [
    ("lenet_300_100", (1, 1, 1)),
    ("conv6", (8, 8, 3)),
    ("resnet20", (8, 8, 3)),
    ("resnet18", (8, 8, 3)),
    ("resnet50", (97, 131, 3)),
    ("mobilenet_v2", (16, 16, 1)),
    ("oresnet56", (32, 32, 1)),
    ("vgg16", (16, 16, 3)),
    ("wide_resnet_40_4", (8, 8, 3)),
])
def test_check_model_input_accepts(name, shape):
  assert models.check_model_input(name, shape) is None


@pytest.mark.parametrize("name,shape,needs", [
    ("oresnet56", (64, 64, 3), "a 32x32 input"),
    ("oresnet20", (28, 28, 1), "a 32x32 input"),
    ("conv6", (4, 8, 3), "height and width >= 8"),
    ("vgg19", (8, 8, 3), "height and width >= 16"),
    ("resnet20", (32, 32), "(height, width, channels) with three positive integers"),
    ("resnet20", (32, 0, 3), "(height, width, channels) with three positive integers"),
    ("resnet20", (32.0, 32, 3), "(height, width, channels) with three positive integers"),
])
def test_check_model_input_rejects(name, shape, needs):
  message = models.check_model_input(name, shape)
  assert message.startswith(f"{name} cannot take input shape {tuple(shape)}: it needs {needs}")
  with pytest.raises(ValueError) as error:
    models.create_model(name, num_classes=10, input_shape=shape)
  assert str(error.value) == message


def test_stem_follows_input_side():
  for name in ("resnet18", "resnet34", "resnet50", "mobilenet_v2"):
    small = models.create_model(name, num_classes=200, input_shape=(64, 64, 3))
    large = models.create_model(name, num_classes=1000, input_shape=(65, 65, 3))
    assert (small.stem, large.stem) == ("cifar", "imagenet")
  assert models.CIFAR_STEM_MAX_SIDE == 64


def test_wide_resnet_names_parse():
  model = models.create_model("wide_resnet_28_10", num_classes=100, input_shape=CIFAR)
  assert (model.depth, model.width, model.num_classes) == (28, 10, 100)
  for bad in ("wide_resnet_17_2", "wide_resnet_4_2", "wide_resnet_16_0"):
    with pytest.raises(ValueError, match=f"{bad}.*6n \\+ 4"):
      models.create_model(bad, num_classes=10, input_shape=CIFAR)


def test_unknown_names_list_the_allowed_ones():
  with pytest.raises(ValueError, match="'resnet21'.*lenet_300_100.*resnet20.*wide_resnet_22_2"):
    models.create_model("resnet21", num_classes=10, input_shape=CIFAR)
  with pytest.raises(ValueError, match="'vgg13'.*vgg16"):
    models.check_model_input("vgg13", CIFAR)
  with pytest.raises(ValueError, match="'tanh'.*relu, swish, pswish, mish, gelu, elu"):
    models.create_model("resnet20", num_classes=10, input_shape=CIFAR, activation="tanh")
  with pytest.raises(ValueError, match="num_classes"):
    models.create_model("resnet20", num_classes=0, input_shape=CIFAR)
  with pytest.raises(ValueError, match="'bogus'.*cifar, imagenet"):
    jax.eval_shape(models.ResNet(num_classes=10, stem="bogus").init, jax.random.key(0),
                   _input(CIFAR))


def test_docstring_examples():
  result = doctest.testmod(registry)
  assert result.attempted > 0 and result.failed == 0


# ----- initialisation schemes (issue 14, item 3) -------------------------------------------------


def _init_params(name, shape, scheme, seed=0):
  model = models.create_model(name, num_classes=10, input_shape=shape, init_scheme=scheme)
  init = jax.jit(lambda key: model.init(key, jnp.zeros((1, *shape)), train=False))
  return model, jax.tree.map(np.asarray, init(jax.random.key(seed))["params"])


def test_kdt_init_scheme_is_the_models_own_init():
  default = models.create_model("resnet20", num_classes=10, input_shape=CIFAR)
  kdt = models.create_model("resnet20", num_classes=10, input_shape=CIFAR, init_scheme="kdt")
  assert type(kdt) is type(default) and kdt == default
  a = jax.jit(lambda k: default.init(k, jnp.zeros((1, *CIFAR)), train=False))(jax.random.key(0))
  b = jax.jit(lambda k: kdt.init(k, jnp.zeros((1, *CIFAR)), train=False))(jax.random.key(0))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


def test_open_lth_init_scheme_statistics():
  """open_lth: kaiming_normal_ fan-in kernels, PyTorch-default biases, BN gamma ~ U(0, 1)."""
  _, p = _init_params("resnet20", CIFAR, "open_lth")
  kernel = p["layer3_2"]["conv2"]["kernel"]            # 3x3x64x64: fan-in 576, fan-out 576
  assert abs(kernel.std() / math.sqrt(2 / 576) - 1) < 0.02
  stem = p["stem"]["kernel"]                           # 3x3x3x16: fan-in 27 (fan-out 144)
  assert abs(stem.std() / math.sqrt(2 / 27) - 1) < 0.15
  shortcut = p["layer2_0"]["shortcut_conv"]["kernel"]  # 1x1x16x32: fan-in 16 (fan-out 32)
  assert abs(shortcut.std() / math.sqrt(2 / 16) - 1) < 0.15
  head = p["head"]
  assert abs(head["kernel"].std() / math.sqrt(2 / 64) - 1) < 0.15
  assert np.all(np.abs(head["bias"]) <= 1 / 8) and np.all(head["bias"] != 0)
  gammas = np.concatenate([p["stem_bn"]["scale"], p["layer1_0"]["bn1"]["scale"],
                           p["layer3_2"]["bn2"]["scale"]])
  assert np.all((gammas >= 0) & (gammas < 1)) and gammas.std() > 0.1
  assert np.all(p["layer1_0"]["bn1"]["bias"] == 0)
  # A plain normal, not the truncated one of Flax's variance_scaling: tails beyond 2 sigma.
  assert np.mean(np.abs(kernel) > 2 * math.sqrt(2 / 576)) > 0.03

  _, p = _init_params("lenet_300_100", MNIST, "open_lth")
  assert abs(p["stem"]["kernel"].std() / math.sqrt(2 / 784) - 1) < 0.01
  for layer, fan_in in (("stem", 784), ("fc2", 300), ("head", 100)):
    bias = p[layer]["bias"]
    assert np.all(np.abs(bias) <= 1 / math.sqrt(fan_in)) and np.all(bias != 0)
    assert abs(bias.std() / (1 / math.sqrt(3 * fan_in)) - 1) < 0.35   # U(-b, b): std b / sqrt 3

  _, p = _init_params("vgg11", CIFAR, "open_lth")
  bias = p["conv2"]["bias"]                            # conv 3x3x64x128: fan-in 576
  assert np.all(np.abs(bias) <= 1 / 24) and np.all(bias != 0)


def test_kd_ticket_init_scheme_statistics():
  """KD-ticket oresnet.py: normal_(0, sqrt(2 / (k*k*out))), BN 1 / 0, nn.Linear default head."""
  _, p = _init_params("oresnet20", CIFAR, "kd_ticket")
  kernel = p["layer3_2"]["conv1"]["kernel"]            # 3x3x64x64: fan-out 576
  assert abs(kernel.std() / math.sqrt(2 / 576) - 1) < 0.02
  stem = p["stem"]["kernel"]                           # fan-out 144
  assert abs(stem.std() / math.sqrt(2 / 144) - 1) < 0.15
  assert np.all(p["stem_bn"]["scale"] == 1) and np.all(p["stem_bn"]["bias"] == 0)
  head = p["head"]
  assert np.all(np.abs(head["kernel"]) <= 1 / 8) and np.all(np.abs(head["bias"]) <= 1 / 8)
  assert np.all(head["bias"] != 0)
  with pytest.raises(ValueError, match="kd_ticket.*lenet_300_100"):
    models.create_model("lenet_300_100", num_classes=10, input_shape=MNIST, init_scheme="kd_ticket")
  with pytest.raises(ValueError, match="kdt, open_lth, kd_ticket"):
    models.create_model("resnet20", num_classes=10, input_shape=CIFAR, init_scheme="torch")


def test_init_scheme_survives_clone_and_keeps_ghosts():
  model = models.create_model("resnet20", num_classes=10, input_shape=CIFAR, init_scheme="open_lth")
  ghosted = model.clone(ghost_skips=True)
  params = jax.jit(lambda k: ghosted.init(k, jnp.zeros((1, *CIFAR)), train=False))(jax.random.key(0))["params"]
  np.testing.assert_array_equal(params["layer1_0"]["ghost1_conv"]["kernel"], np.float32(1e-4))
  assert float(jnp.std(params["layer1_0"]["bn1"]["scale"])) > 0.05


def test_init_schemes_docstring_examples():
  from kdt.models import init_schemes
  result = doctest.testmod(init_schemes)
  assert result.attempted > 0 and result.failed == 0
