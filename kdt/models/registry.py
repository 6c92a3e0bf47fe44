"""Model registry: names, input-shape checks and ``create_model``."""

import dataclasses
import functools
import numbers
import re
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from kdt.models import init_schemes
from kdt.models import layers
from kdt.models.convnets import ConvNet
from kdt.models.lenet import LeNet
from kdt.models.mobilenet import MobileNetV2
from kdt.models.resnet import CifarResNet, OResNet, ResNet
from kdt.models.vgg import VGG
from kdt.models.wide_resnet import WideResNet

CIFAR_STEM_MAX_SIDE = 64
"""Models with two stems use the CIFAR one when max(height, width) <= this, else ImageNet's."""

_WIDE_RESNET = re.compile(r"wide_resnet_(\d+)_(\d+)")


@dataclasses.dataclass(frozen=True)
class _Spec:
  """How to build one registered model and which inputs it takes.

  Attributes:
    build: maps the input shape to a partial of the module class with its architecture fixed;
      ``create_model`` adds ``num_classes``, ``activation`` and ``dtype``.
    min_side: smallest height and width the model accepts.
    exact_side: the only height and width it accepts, if any.
    why: the reason for the limit, quoted in ``check_model_input``'s message.
  """

  build: Callable[[tuple[int, int, int]], Callable[..., nn.Module]]
  min_side: int = 1
  exact_side: int | None = None
  why: str = ""


def _fixed(cls: type[nn.Module], **attributes: Any) -> _Spec:
  return _Spec(lambda input_shape: functools.partial(cls, **attributes))


def _by_side(cls: type[nn.Module], **attributes: Any) -> _Spec:
  """A model whose stem (``"cifar"`` or ``"imagenet"``) is chosen from the input side."""

  def build(input_shape):
    stem = "cifar" if max(input_shape[:2]) <= CIFAR_STEM_MAX_SIDE else "imagenet"
    return functools.partial(cls, stem=stem, **attributes)

  return _Spec(build)


def _pooled(spec: _Spec, pools: int) -> _Spec:
  return dataclasses.replace(
      spec, min_side=2**pools,
      why=f"its {pools} stride-2 max-pool(s) would shrink a smaller map to nothing")


_OLD_AVG_POOL = "its AvgPool(8) expects the 8x8 final map of a 32x32 input"

_REGISTRY: dict[str, _Spec] = {
    "lenet_300_100": _fixed(LeNet),
    "conv2": _pooled(_fixed(ConvNet, widths=(64,)), 1),
    "conv4": _pooled(_fixed(ConvNet, widths=(64, 128)), 2),
    "conv6": _pooled(_fixed(ConvNet, widths=(64, 128, 256)), 3),
    **{f"resnet{d}": _fixed(CifarResNet, depth=d) for d in (20, 32, 44, 56, 110)},
    **{f"oresnet{d}": dataclasses.replace(_fixed(OResNet, depth=d), exact_side=32,
                                          why=_OLD_AVG_POOL)
       for d in (20, 32, 56, 110)},
    "resnet18": _by_side(ResNet, stage_sizes=(2, 2, 2, 2)),
    "resnet34": _by_side(ResNet, stage_sizes=(3, 4, 6, 3)),
    "resnet50": _by_side(ResNet, stage_sizes=(3, 4, 6, 3), bottleneck=True),
    **{f"vgg{d}": _pooled(_fixed(VGG, depth=d), 4) for d in (11, 16, 19)},
    "mobilenet_v2": _by_side(MobileNetV2),
    "wide_resnet_16_4": _fixed(WideResNet, depth=16, width=4),
    "wide_resnet_22_2": _fixed(WideResNet, depth=22, width=2),
}


def model_names() -> list[str]:
  """The registered model names (any ``wide_resnet_{depth}_{width}`` is accepted as well)."""
  return list(_REGISTRY)


def _lookup(name: str) -> _Spec:
  if name in _REGISTRY:
    return _REGISTRY[name]
  match = _WIDE_RESNET.fullmatch(name)
  if match:
    depth, width = map(int, match.groups())
    if depth < 10 or (depth - 4) % 6 or width < 1:
      raise ValueError(f"model {name!r}: wide_resnet_{{depth}}_{{width}} needs depth = 6n + 4 "
                       f">= 10 and width >= 1")
    return _fixed(WideResNet, depth=depth, width=width)
  raise ValueError(f"unknown model {name!r}; allowed: {', '.join(_REGISTRY)}, or "
                   f"wide_resnet_{{depth}}_{{width}} with depth = 6n + 4")


def check_model_input(name: str, input_shape: Sequence[int]) -> str | None:
  """Says why model ``name`` cannot take inputs of ``input_shape``, or returns None if it can.

  Pure Python, no JAX computation. Networks that end in global average pooling take any
  height and width; networks whose max-pools would shrink the map below one pixel need a
  minimum side, and the ``oresnet`` family, whose ``AvgPool(8)`` is sized for CIFAR, needs 32x32.

  Args:
    name: a registered model name or ``wide_resnet_{depth}_{width}``.
    input_shape: ``(height, width, channels)`` of one example.

  Returns:
    None, or an error message naming the model, the input shape and what the model accepts.

  Raises:
    ValueError: if ``name`` is not a known model.

  Examples:
    >>> check_model_input("resnet20", (32, 32, 3)) is None
    True
    >>> print(check_model_input("oresnet56", (64, 64, 3)))  # doctest: +NORMALIZE_WHITESPACE
    oresnet56 cannot take input shape (64, 64, 3): it needs a 32x32 input
    (its AvgPool(8) expects the 8x8 final map of a 32x32 input)
  """
  spec = _lookup(name)
  shape = tuple(input_shape)
  prefix = f"{name} cannot take input shape {shape}: it needs"
  if len(shape) != 3 or not all(isinstance(d, numbers.Integral) and d > 0 for d in shape):
    return f"{prefix} (height, width, channels) with three positive integers"
  height, width, _ = shape
  if spec.exact_side is not None and (height, width) != (spec.exact_side,) * 2:
    return f"{prefix} a {spec.exact_side}x{spec.exact_side} input ({spec.why})"
  if min(height, width) < spec.min_side:
    return f"{prefix} height and width >= {spec.min_side} ({spec.why})"
  return None


def create_model(name: str, *, num_classes: int, input_shape: Sequence[int],
                 activation: str = "relu", dtype: Any = jnp.float32,
                 init_scheme: str = "kdt") -> nn.Module:
  """Builds the Flax Linen module called ``name`` for inputs of ``input_shape``.

  ``resnet18``, ``resnet34``, ``resnet50`` and ``mobilenet_v2`` get their CIFAR stem when
  ``max(height, width) <= CIFAR_STEM_MAX_SIDE`` (64: CIFAR, Tiny-ImageNet) and their ImageNet
  stem otherwise. Every other model has one architecture. The module is called as
  ``model.apply(variables, x, train=...)`` with float NHWC ``x`` and returns float32 logits;
  models with BatchNorm keep running statistics in the ``batch_stats`` collection.

  Args:
    name: a name from ``model_names()``, or ``wide_resnet_{depth}_{width}`` (depth = 6n + 4).
    num_classes: number of output logits.
    input_shape: ``(height, width, channels)`` of one example.
    activation: key of ``ACTIVATIONS``; replaces every ReLU of the network.
    dtype: compute dtype (e.g. ``jnp.bfloat16``); parameters are always float32.
    init_scheme: a key of ``init_schemes.INIT_SCHEMES``: ``"kdt"`` (each model's own
      initialisation), ``"open_lth"`` or ``"kd_ticket"`` (the reference code's; see
      :mod:`kdt.models.init_schemes`). Other schemes return a subclass of the model class whose
      ``init`` re-draws the parameters.

  Returns:
    The unbound module.

  Raises:
    ValueError: for an unknown model, activation or init scheme, a bad ``num_classes``, or an
      input shape the model cannot take (see ``check_model_input``).

  Examples:
    >>> model = create_model("resnet20", num_classes=10, input_shape=(32, 32, 3))
    >>> model.depth, model.shortcut
    (20, 'conv')
  """
  spec = _lookup(name)
  layers.get_activation(activation)
  if not isinstance(num_classes, numbers.Integral) or num_classes < 1:
    raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
  problem = check_model_input(name, input_shape)
  if problem:
    raise ValueError(problem)
  factory = spec.build(tuple(input_shape))
  cifar_stem = max(tuple(input_shape)[:2]) <= CIFAR_STEM_MAX_SIDE
  problem = init_schemes.init_scheme_problem(name, init_scheme, cifar_stem=cifar_stem)
  if problem:
    raise ValueError(problem)
  cls = init_schemes.with_init_scheme(factory.func, init_scheme, name, cifar_stem)
  return cls(*factory.args, **factory.keywords, num_classes=num_classes, activation=activation,
             dtype=dtype)


def ghost_skip_problem(model_name: str, input_shape) -> str | None:
  """Why model ``model_name`` cannot take ghost skips, or None if it can (no JAX computation).

  Ghost skips need residual basic blocks: the CIFAR ResNets (``resnet20``..``resnet110``),
  ``resnet18``/``resnet34`` and the basic-block ``oresnet`` depths (20, 32).
  """
  model = create_model(model_name, num_classes=2, input_shape=input_shape)
  if not hasattr(model, "ghost_skips"):
    return (f"{type(model).__name__} has no residual basic blocks; ghost skips exist for "
            "CifarResNet, ResNet-18/34 and the basic-block oresnets")
  bottleneck = getattr(model, "bottleneck", False) or (
      isinstance(model, OResNet) and model.depth >= 54)
  if bottleneck:
    return "its blocks are bottleneck blocks; ToST adds ghost skips to basic blocks only"
  return None
