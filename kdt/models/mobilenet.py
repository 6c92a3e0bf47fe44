"""MobileNetV2 (Sandler et al., CVPR 2018) in a CIFAR and an ImageNet variant."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdt.models import layers

# (expansion, output channels, blocks, stride of the first block), Sandler et al. Table 2.
CONFIG = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
          (6, 160, 3, 2), (6, 320, 1, 1))


class InvertedResidual(nn.Module):
  """1x1 expand (``conv1``), 3x3 depthwise (``conv2``), linear 1x1 project (``conv3``), each + BN.

  The residual is added when the stride is 1 and the channels match. ``kuangliu=True`` follows
  the kuangliu/pytorch-cifar block: the expand conv is kept at expansion 1, and a stride-1 block
  that changes the channels adds a 1x1 conv + BN projection of its input (``shortcut_conv``).

  Attributes:
    features: output channels.
    expansion: width multiplier of the hidden (depthwise) layer.
    strides: stride of the depthwise conv.
    kuangliu: use the kuangliu/pytorch-cifar variant described above.
    activation: key of ``layers.ACTIVATIONS``, after the expand and depthwise convs.
    dtype: compute dtype; parameters are float32.
  """

  features: int
  expansion: int
  strides: int = 1
  kuangliu: bool = False
  activation: str = "relu"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    act = layers.get_activation(self.activation)
    hidden = x.shape[-1] * self.expansion
    y = x
    if self.expansion != 1 or self.kuangliu:
      y = layers.conv(hidden, 1, dtype=self.dtype, name="conv1")(y)
      y = act(layers.batch_norm(train=train, dtype=self.dtype, name="bn1")(y))
    y = layers.conv(hidden, 3, strides=self.strides, groups=hidden, dtype=self.dtype,
                    name="conv2")(y)
    y = act(layers.batch_norm(train=train, dtype=self.dtype, name="bn2")(y))
    y = layers.conv(self.features, 1, dtype=self.dtype, name="conv3")(y)
    y = layers.batch_norm(train=train, dtype=self.dtype, name="bn3")(y)
    if self.strides != 1:
      return y
    if x.shape[-1] == self.features:
      return y + x
    if self.kuangliu:
      x = layers.conv(self.features, 1, dtype=self.dtype, name="shortcut_conv")(x)
      return y + layers.batch_norm(train=train, dtype=self.dtype, name="shortcut_bn")(x)
    return y


class MobileNetV2(nn.Module):
  """MobileNetV2 with width multiplier 1: ``stem`` conv, 17 inverted residuals, 1x1 conv to 1280.

  ``stem="imagenet"`` is the paper's network as in torchvision (3,504,872 parameters for 1000
  classes; no dropout before the head here). ``stem="cifar"`` is kuangliu/pytorch-cifar's CIFAR
  version: stride 1 in the stem and in the second stage (so 32x32 inputs end at 4x4) and the
  ``kuangliu`` blocks of ``InvertedResidual`` (2,296,922 parameters for 10 classes). Blocks are
  named ``block{i}`` from 0, the last conv ``last_conv``/``last_bn``; global average pooling,
  then ``head``. Every nonlinearity is ``activation`` (the paper's ReLU6 and kuangliu's ReLU
  both map to the default ``"relu"``).

  Initialisation: convolutions He normal fan-out, BN gamma=1, beta=0 (torchvision); the head is
  N(0, 0.01) for ImageNet (torchvision) and PyTorch's default ``nn.Linear`` init for CIFAR
  (kuangliu); biases zero.

  Attributes:
    num_classes: number of output logits.
    stem: ``"cifar"`` or ``"imagenet"``.
    activation: key of ``layers.ACTIVATIONS``.
    dtype: compute dtype; parameters are float32.
  """

  num_classes: int
  stem: str = "cifar"
  activation: str = "relu"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    layers.check_choice("stem", self.stem, layers.STEMS)
    act = layers.get_activation(self.activation)
    cifar = self.stem == "cifar"
    x = layers.conv(32, 3, strides=1 if cifar else 2, dtype=self.dtype, name="stem")(x)
    x = act(layers.batch_norm(train=train, dtype=self.dtype, name="stem_bn")(x))
    index = 0
    for stage, (expansion, features, blocks, stride) in enumerate(CONFIG):
      first_stride = 1 if cifar and stage == 1 else stride
      for i in range(blocks):
        x = InvertedResidual(features, expansion, strides=first_stride if i == 0 else 1,
                             kuangliu=cifar, activation=self.activation, dtype=self.dtype,
                             name=f"block{index}")(x, train)
        index += 1
    x = layers.conv(1280, 1, dtype=self.dtype, name="last_conv")(x)
    x = act(layers.batch_norm(train=train, dtype=self.dtype, name="last_bn")(x))
    head_init = layers.TORCH_LINEAR_INIT if cifar else nn.initializers.normal(0.01)
    return layers.head(layers.global_avg_pool(x), self.num_classes, kernel_init=head_init,
                       dtype=self.dtype)
