"""Conv-2, Conv-4 and Conv-6: the small VGG-like CIFAR-10 networks of the lottery-ticket paper."""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdt.models import layers


class ConvNet(nn.Module):
  """Frankle & Carbin's Conv-N: stages of two 3x3 convs and a 2x2 max-pool, then an MLP.

  Conv-2, Conv-4 and Conv-6 have ``widths`` (64,), (64, 128) and (64, 128, 256); the dense
  layers are 256-256 and the output layer (Frankle & Carbin, "The Lottery Ticket Hypothesis",
  ICLR 2019, Figure 2). Convolutions have biases and 'SAME' padding; there is no BatchNorm.

  Parameter counts on 32x32x3 inputs with 10 classes: Conv-2 4,301,642 and Conv-4 2,425,930
  (paper: 4.3M and 2.4M). Conv-6 has 2,262,602: the paper's "1.7M" does not fit its own
  architecture (its 1.1M conv weights plus the 4096x256 first dense layer alone exceed 2.1M).

  Initialisation: convolutions use kdt's He normal fan-out (``layers.CONV_INIT``); dense layers
  use Glorot normal, the paper's "Gaussian Glorot" initialisation; biases start at zero.

  Attributes:
    num_classes: number of output logits.
    widths: output channels of each stage of two convolutions.
    dense_widths: widths of the hidden dense layers.
    activation: key of ``layers.ACTIVATIONS`` used after every conv and hidden dense layer.
    dtype: compute dtype; parameters are float32.
  """

  num_classes: int
  widths: Sequence[int] = (64,)
  dense_widths: Sequence[int] = (256, 256)
  activation: str = "relu"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train  # No BatchNorm or dropout.
    act = layers.get_activation(self.activation)
    for stage, width in enumerate(self.widths):
      for j in range(2):
        index = 2 * stage + j
        name = "stem" if index == 0 else f"conv{index + 1}"
        x = act(layers.conv(width, 3, use_bias=True, dtype=self.dtype, name=name)(x))
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape((x.shape[0], -1))
    for i, width in enumerate(self.dense_widths):
      x = act(layers.dense(width, kernel_init=nn.initializers.glorot_normal(), dtype=self.dtype,
                           name=f"fc{i + 1}")(x))
    return layers.head(x, self.num_classes, kernel_init=nn.initializers.glorot_normal(),
                       dtype=self.dtype)
