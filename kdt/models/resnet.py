"""Residual networks: CIFAR ResNet-20..110, the KD-ticket ``oresnet`` and ResNet-18/34/50.

Every network here is built from the post-activation blocks of He et al. ("Deep Residual Learning
for Image Recognition", CVPR 2016). Blocks of a network are named ``layer{stage}_{index}``
(stage from 1, index from 0, as torchvision's ``layer1.0``); inside a block the modules are
``conv1``/``bn1``, ``conv2``/``bn2`` (and ``conv3``/``bn3``), and ``shortcut_conv``/``shortcut_bn``
for a projection shortcut.

ToST's "ghost" skip connections (Jaiswal et al., ICML 2022, ``skip_connection/models/
resnet_modified.py``) are an option of the basic-block networks (``ghost_skips=True``): each
:class:`BasicBlock` gets two extra 1x1 conv + BN branches, ``ghost1_conv``/``ghost1_bn`` and
``ghost2_conv``/``ghost2_bn``, whose kernels start at the constant ``ghost_init`` (0.0001). Their
names contain ``ghost``, so :func:`kdt.pruning.prunable_leaves` never prunes them.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdt.models import layers

SHORTCUTS = ("conv", "pad")


def _shortcut(x: jax.Array, features: int, strides: int, kind: str, train: bool,
              dtype: Any) -> jax.Array:
  """Identity if the shape is kept, else a 1x1 conv + BN ("conv") or zero padding ("pad")."""
  if x.shape[-1] == features and strides == 1:
    return x
  if kind == "pad":  # He et al. option A: subsample, then zero-pad the new channels.
    x = x[:, ::strides, ::strides, :]
    extra = features - x.shape[-1]
    return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
  x = layers.conv(features, 1, strides=strides, dtype=dtype, name="shortcut_conv")(x)
  return layers.batch_norm(train=train, dtype=dtype, name="shortcut_bn")(x)


GHOST_INIT = 1e-4
"""ToST's constant initial value of every ghost-branch conv weight (``weight.data.fill_(0.0001)``)."""


def _ghost_branch(x: jax.Array, features: int, strides: int, index: int, init: float,
                  train: bool, dtype: Any) -> jax.Array:
  """A ghost skip branch: 1x1 conv (kernel constant ``init``, no bias) + BN."""
  y = nn.Conv(features, (1, 1), strides=strides, padding=0, use_bias=False,
              kernel_init=nn.initializers.constant(init), dtype=dtype, param_dtype=jnp.float32,
              name=f"ghost{index}_conv")(x)
  return layers.batch_norm(train=train, dtype=dtype, name=f"ghost{index}_bn")(y)


class BasicBlock(nn.Module):
  """Two 3x3 convs with BN; act(bn2(conv2(act(bn1(conv1(x))))) + shortcut(x)).

  With ``ghost=True`` (ToST ghost skips) the block computes

  .. math::  h = \\mathrm{act}(\\mathrm{bn}_1(\\mathrm{conv}_1 x) + s\\,g_1(x)),\\qquad
             y = \\mathrm{act}(\\mathrm{bn}_2(\\mathrm{conv}_2 h) + \\mathrm{shortcut}(x) + s\\,g_2(h)),

  where :math:`g_1` (stride of ``conv1``) and :math:`g_2` are 1x1 conv + BN branches whose
  kernels start at the constant ``ghost_init``, and :math:`s` is ``ghost_scale`` (1 in ToST; a
  fade-out schedule lowers it to 0, where the block is the plain block again).

  Attributes:
    features: output channels.
    strides: stride of ``conv1`` (and of the shortcut).
    shortcut: ``"conv"`` (1x1 conv + BN when the shape changes) or ``"pad"`` (option A).
    activation: key of ``layers.ACTIVATIONS`` (or an elementwise function).
    ghost: add the two ghost skip branches.
    ghost_init: constant initial value of the ghost conv kernels.
    ghost_scale: multiplier of both ghost branches (a float, or a traced scalar).
    dtype: compute dtype; parameters are float32.
  """

  features: int
  strides: int = 1
  shortcut: str = "conv"
  activation: Any = "relu"
  ghost: bool = False
  ghost_init: float = GHOST_INIT
  ghost_scale: Any = 1.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    layers.check_choice("shortcut", self.shortcut, SHORTCUTS)
    act = layers.get_activation(self.activation)
    y = layers.conv(self.features, 3, strides=self.strides, dtype=self.dtype, name="conv1")(x)
    y = layers.batch_norm(train=train, dtype=self.dtype, name="bn1")(y)
    if self.ghost:
      y = y + self.ghost_scale * _ghost_branch(x, self.features, self.strides, 1, self.ghost_init,
                                               train, self.dtype)
    h = act(y)
    y = layers.conv(self.features, 3, dtype=self.dtype, name="conv2")(h)
    y = layers.batch_norm(train=train, dtype=self.dtype, name="bn2")(y)
    y = y + _shortcut(x, self.features, self.strides, self.shortcut, train, self.dtype)
    if self.ghost:
      y = y + self.ghost_scale * _ghost_branch(h, self.features, 1, 2, self.ghost_init, train,
                                               self.dtype)
    return act(y)


def _check_ghost(model: nn.Module, bottleneck: bool) -> None:
  if model.ghost_skips and bottleneck:
    raise ValueError(f"{type(model).__name__}: ghost_skips=True needs basic blocks; this network "
                     "uses bottleneck blocks (ToST adds ghost skips to BasicBlock only)")


class Bottleneck(nn.Module):
  """1x1 reduce, 3x3 (strided), 1x1 expand to ``4 * features``, each with BN, plus shortcut.

  The stride sits on the 3x3 conv, as in torchvision ("ResNet v1.5") and the KD-ticket code.

  Attributes:
    features: bottleneck width; the block outputs ``4 * features`` channels.
    strides: stride of ``conv2`` (and of the projection shortcut).
    activation: key of ``layers.ACTIVATIONS``.
    dtype: compute dtype; parameters are float32.
  """

  features: int
  strides: int = 1
  activation: str = "relu"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    act = layers.get_activation(self.activation)
    y = layers.conv(self.features, 1, dtype=self.dtype, name="conv1")(x)
    y = act(layers.batch_norm(train=train, dtype=self.dtype, name="bn1")(y))
    y = layers.conv(self.features, 3, strides=self.strides, dtype=self.dtype, name="conv2")(y)
    y = act(layers.batch_norm(train=train, dtype=self.dtype, name="bn2")(y))
    y = layers.conv(4 * self.features, 1, dtype=self.dtype, name="conv3")(y)
    y = layers.batch_norm(train=train, dtype=self.dtype, name="bn3")(y)
    return act(y + _shortcut(x, 4 * self.features, self.strides, "conv", train, self.dtype))


class CifarResNet(nn.Module):
  """The CIFAR ResNet-N of He et al. (2016), as open_lth's ``cifar_resnet_N``.

  A 3x3 stem conv with ``width`` channels, three stages of ``(depth - 2) / 6`` basic blocks with
  ``width``, ``2 * width`` and ``4 * width`` channels (the first block of stages 2 and 3 has
  stride 2), global average pooling and the ``head``.

  ``shortcut="conv"`` is open_lth's 1x1 conv + BN projection (ResNet-20: 272,474 parameters for
  10 classes); ``shortcut="pad"`` is He et al.'s parameter-free option A (269,722; the paper's
  "0.27M").

  Initialisation: convolutions He normal fan-out (``layers.CONV_INIT``), BN gamma=1, beta=0, and
  the head open_lth's ``kaiming_normal`` (He normal, fan-in) with zero bias. open_lth itself
  uses fan-in for the convolutions too and draws BN gamma from U(0, 1): ``init_scheme="open_lth"``
  (:mod:`kdt.models.init_schemes`).

  Attributes:
    num_classes: number of output logits.
    depth: 6n + 2 layers.
    width: channels of the first stage (open_lth's W, 16 by default).
    shortcut: ``"conv"`` or ``"pad"``.
    activation: key of ``layers.ACTIVATIONS`` (or an elementwise function).
    ghost_skips: ToST ghost skip branches in every block (see :class:`BasicBlock`).
    ghost_init: constant initial value of the ghost conv kernels.
    ghost_scale: multiplier of every ghost branch.
    dtype: compute dtype; parameters are float32.
  """

  num_classes: int
  depth: int = 20
  width: int = 16
  shortcut: str = "conv"
  activation: Any = "relu"
  ghost_skips: bool = False
  ghost_init: float = GHOST_INIT
  ghost_scale: Any = 1.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if self.depth < 8 or (self.depth - 2) % 6:
      raise ValueError(f"CifarResNet depth must be 6n + 2 with n >= 1, got {self.depth}")
    act = layers.get_activation(self.activation)
    x = layers.conv(self.width, 3, dtype=self.dtype, name="stem")(x)
    x = act(layers.batch_norm(train=train, dtype=self.dtype, name="stem_bn")(x))
    for stage in range(3):
      for index in range((self.depth - 2) // 6):
        x = BasicBlock(self.width * 2**stage, strides=2 if stage and not index else 1,
                       shortcut=self.shortcut, activation=self.activation,
                       ghost=self.ghost_skips, ghost_init=self.ghost_init,
                       ghost_scale=self.ghost_scale, dtype=self.dtype,
                       name=f"layer{stage + 1}_{index}")(x, train)
    return layers.head(layers.global_avg_pool(x), self.num_classes,
                       kernel_init=layers.HE_NORMAL_FAN_IN, dtype=self.dtype)


class OResNet(nn.Module):
  """The KD-ticket / ToST CIFAR ResNet (``oresnet``, ``ResNetOld``), depth quirk included.

  With ``n = (depth - 2) // 6``, each of the three stages (16, 32, 64 channels) has ``n`` blocks,
  which are **bottleneck** blocks (x4 expansion) when ``depth >= 54`` and basic blocks otherwise.
  So "ResNet-56" is an 83-layer bottleneck net (about 0.854M conv weights) and "ResNet-110" is
  the 164-layer ResNet-164 layout (about 1.676M). A 1x1 conv + BN projects the shortcut whenever
  the shape changes. The head follows an ``AvgPool(8)``, so the input must be 32x32 (its final
  map is 8x8).

  Initialisation as the reference: convolutions N(0, 2 / (k * k * C_out)) (``layers.CONV_INIT``),
  BN gamma=1, beta=0; the head keeps PyTorch's default ``nn.Linear`` weight init (bias zero here).

  References: Ma et al., "Good Students Play Big Lottery Better" (2021); ``VITA-Group/ToST``
  ``label-smoothening/models/oresnet.py``.

  Attributes:
    num_classes: number of output logits.
    depth: 6n + 2.
    activation: key of ``layers.ACTIVATIONS`` (or an elementwise function).
    ghost_skips: ToST ghost skip branches (basic-block depths < 54 only).
    ghost_init: constant initial value of the ghost conv kernels.
    ghost_scale: multiplier of every ghost branch.
    dtype: compute dtype; parameters are float32.
  """

  num_classes: int
  depth: int = 56
  activation: Any = "relu"
  ghost_skips: bool = False
  ghost_init: float = GHOST_INIT
  ghost_scale: Any = 1.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if self.depth < 8 or (self.depth - 2) % 6:
      raise ValueError(f"OResNet depth must be 6n + 2 with n >= 1, got {self.depth}")
    act = layers.get_activation(self.activation)
    x = layers.conv(16, 3, dtype=self.dtype, name="stem")(x)
    x = act(layers.batch_norm(train=train, dtype=self.dtype, name="stem_bn")(x))
    _check_ghost(self, self.depth >= 54)
    ghost = {"ghost": True, "ghost_init": self.ghost_init,
             "ghost_scale": self.ghost_scale} if self.ghost_skips else {}
    block = Bottleneck if self.depth >= 54 else BasicBlock
    for stage, features in enumerate((16, 32, 64)):
      for index in range((self.depth - 2) // 6):
        x = block(features, strides=2 if stage and not index else 1, activation=self.activation,
                  dtype=self.dtype, name=f"layer{stage + 1}_{index}", **ghost)(x, train)
    x = nn.avg_pool(x, (8, 8), strides=(8, 8)).reshape((x.shape[0], -1))
    return layers.head(x, self.num_classes, kernel_init=layers.TORCH_LINEAR_INIT,
                       dtype=self.dtype)


class ResNet(nn.Module):
  """ResNet-18/34/50 (He et al. 2016) with a CIFAR or an ImageNet stem.

  ``stem="imagenet"`` is the original 7x7 stride-2 conv and 3x3 stride-2 max-pool (torchvision;
  ResNet-50 has 25,557,032 parameters for 1000 classes). ``stem="cifar"`` is the common CIFAR
  adaptation (kuangliu/pytorch-cifar, used by KD-ticket): a 3x3 stride-1 conv and no max-pool
  (ResNet-18: 11,173,962 parameters for 10 classes). Four stages of 64, 128, 256, 512 channels
  (x4 for bottlenecks), global average pooling (kuangliu's ``avg_pool2d(4)`` on 32x32 inputs),
  ``head``.

  Initialisation: convolutions He normal fan-out and BN gamma=1, beta=0 (torchvision); the head
  keeps PyTorch's default ``nn.Linear`` weight init (bias zero here).

  Attributes:
    num_classes: number of output logits.
    stage_sizes: blocks per stage, e.g. (2, 2, 2, 2) for ResNet-18, (3, 4, 6, 3) for 34 and 50.
    bottleneck: bottleneck blocks (ResNet-50) instead of basic blocks.
    stem: ``"cifar"`` or ``"imagenet"``.
    activation: key of ``layers.ACTIVATIONS`` (or an elementwise function).
    ghost_skips: ToST ghost skip branches (basic blocks only, i.e. ResNet-18/34).
    ghost_init: constant initial value of the ghost conv kernels.
    ghost_scale: multiplier of every ghost branch.
    dtype: compute dtype; parameters are float32.
  """

  num_classes: int
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  bottleneck: bool = False
  stem: str = "cifar"
  activation: Any = "relu"
  ghost_skips: bool = False
  ghost_init: float = GHOST_INIT
  ghost_scale: Any = 1.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    layers.check_choice("stem", self.stem, layers.STEMS)
    act = layers.get_activation(self.activation)
    imagenet = self.stem == "imagenet"
    x = layers.conv(64, 7 if imagenet else 3, strides=2 if imagenet else 1, dtype=self.dtype,
                    name="stem")(x)
    x = act(layers.batch_norm(train=train, dtype=self.dtype, name="stem_bn")(x))
    if imagenet:
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    _check_ghost(self, self.bottleneck)
    ghost = {"ghost": True, "ghost_init": self.ghost_init,
             "ghost_scale": self.ghost_scale} if self.ghost_skips else {}
    block = Bottleneck if self.bottleneck else BasicBlock
    for stage, size in enumerate(self.stage_sizes):
      for index in range(size):
        x = block(64 * 2**stage, strides=2 if stage and not index else 1,
                  activation=self.activation, dtype=self.dtype,
                  name=f"layer{stage + 1}_{index}", **ghost)(x, train)
    return layers.head(layers.global_avg_pool(x), self.num_classes,
                       kernel_init=layers.TORCH_LINEAR_INIT, dtype=self.dtype)
