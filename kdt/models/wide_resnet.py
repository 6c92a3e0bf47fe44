"""Wide residual networks WRN-d-k (Zagoruyko & Komodakis, BMVC 2016)."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdt.models import layers


class WideBasicBlock(nn.Module):
  """Pre-activation block: conv1(act(bn1(x))), then conv2(act(bn2(.))), plus the shortcut.

  When the shape changes the shortcut is a 1x1 conv (``shortcut_conv``, no BN) of the
  pre-activated input, as in the reference PyTorch port (xternalz/WideResNet-pytorch).

  Attributes:
    features: output channels.
    strides: stride of ``conv1`` (and of the shortcut).
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
    y = act(layers.batch_norm(train=train, dtype=self.dtype, name="bn1")(x))
    if x.shape[-1] != self.features or self.strides != 1:
      x = layers.conv(self.features, 1, strides=self.strides, dtype=self.dtype,
                      name="shortcut_conv")(y)
    y = layers.conv(self.features, 3, strides=self.strides, dtype=self.dtype, name="conv1")(y)
    y = act(layers.batch_norm(train=train, dtype=self.dtype, name="bn2")(y))
    return x + layers.conv(self.features, 3, dtype=self.dtype, name="conv2")(y)


class WideResNet(nn.Module):
  """WRN-``depth``-``width`` for CIFAR: pre-activation wide residual stages, then ``head``.

  A 3x3 ``stem`` with 16 channels, three stages of pre-activation blocks with 16k, 32k and 64k
  channels, final BN (``final_bn``) + activation, global average pooling (the reference's
  ``AvgPool(8)`` on 32x32 inputs) and the ``head``. Each stage has ``(depth - 4) / 6`` blocks
  named ``layer{stage}_{index}``; stages 2 and 3 start with stride 2. No dropout. Parameters
  for 10 classes: WRN-16-4 2,748,890 (paper "2.7M"), WRN-22-2 1,079,642 (RigL's CIFAR-10
  network, "1.1M"), WRN-28-10 36,479,194 (paper "36.5M").

  Initialisation as the reference: convolutions He normal fan-out, BN gamma=1, beta=0, head
  PyTorch's default ``nn.Linear`` weight init with zero bias.

  Attributes:
    num_classes: number of output logits.
    depth: 6n + 4.
    width: widening factor k.
    activation: key of ``layers.ACTIVATIONS``.
    dtype: compute dtype; parameters are float32.
  """

  num_classes: int
  depth: int = 16
  width: int = 4
  activation: str = "relu"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if self.depth < 10 or (self.depth - 4) % 6 or self.width < 1:
      raise ValueError(f"WideResNet needs depth = 6n + 4 >= 10 and width >= 1, got depth "
                       f"{self.depth}, width {self.width}")
    act = layers.get_activation(self.activation)
    x = layers.conv(16, 3, dtype=self.dtype, name="stem")(x)
    for stage in range(3):
      for index in range((self.depth - 4) // 6):
        x = WideBasicBlock(16 * self.width * 2**stage, strides=2 if stage and not index else 1,
                           activation=self.activation, dtype=self.dtype,
                           name=f"layer{stage + 1}_{index}")(x, train)
    x = act(layers.batch_norm(train=train, dtype=self.dtype, name="final_bn")(x))
    return layers.head(layers.global_avg_pool(x), self.num_classes,
                       kernel_init=layers.TORCH_LINEAR_INIT, dtype=self.dtype)
