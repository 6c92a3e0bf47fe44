"""VGG-11/16/19 with BatchNorm for CIFAR, as open_lth's ``cifar_vgg_N``."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdt.models import layers

# Output channels of each 3x3 conv; "M" is a 2x2 stride-2 max-pool (open_lth ``cifar_vgg.py``).
PLANS: dict[int, tuple[int | str, ...]] = {
    11: (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512),
    16: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512),
    19: (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
         512, 512, 512, 512),
}


class VGG(nn.Module):
  """CIFAR VGG (Simonyan & Zisserman 2015) with BN, one Dense ``head`` (open_lth ``cifar_vgg``).

  Each conv is a 3x3 conv with bias, BN and the activation; four max-pools take 32x32 to 2x2,
  and open_lth's final ``AvgPool2d(2)`` is written as global average pooling (the same on 32x32
  inputs, and valid on any input of at least 16x16). The first conv is named ``stem`` (its BN
  ``stem_bn``), the later ones ``conv{i}``/``bn{i}`` by layer number. Parameters for 10 classes:
  VGG-16 14,727,882 (open_lth / LMC "14.7M"), VGG-19 20,040,394 (Stabilizing "20.0M").

  Initialisation: convolutions He normal fan-out (``layers.CONV_INIT``), BN gamma=1, beta=0,
  head open_lth's ``kaiming_normal`` (He normal, fan-in); biases zero. open_lth uses fan-in for
  the convolutions too and draws BN gamma from U(0, 1): ``init_scheme="open_lth"``
  (:mod:`kdt.models.init_schemes`).

  Attributes:
    num_classes: number of output logits.
    depth: 11, 16 or 19.
    activation: key of ``layers.ACTIVATIONS``.
    dtype: compute dtype; parameters are float32.
  """

  num_classes: int
  depth: int = 16
  activation: str = "relu"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    layers.check_choice("VGG depth", self.depth, tuple(PLANS))
    act = layers.get_activation(self.activation)
    index = 0
    for spec in PLANS[self.depth]:
      if spec == "M":
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        continue
      index += 1
      conv_name, bn_name = ("stem", "stem_bn") if index == 1 else (f"conv{index}", f"bn{index}")
      x = layers.conv(spec, 3, use_bias=True, dtype=self.dtype, name=conv_name)(x)
      x = act(layers.batch_norm(train=train, dtype=self.dtype, name=bn_name)(x))
    return layers.head(layers.global_avg_pool(x), self.num_classes,
                       kernel_init=layers.HE_NORMAL_FAN_IN, dtype=self.dtype)
