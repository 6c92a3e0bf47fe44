"""LeNet-300-100, the fully connected MNIST network of the lottery-ticket papers."""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdt.models import layers


class LeNet(nn.Module):
  """Fully connected LeNet: flatten, hidden Dense layers with activations, then ``head``.

  With the default ``hidden=(300, 100)`` this is LeNet-300-100 (LeCun et al. 1998) as used by
  Frankle & Carbin (ICLR 2019) and open_lth ``mnist_lenet_300_100``: 266,610 parameters on 28x28x1
  MNIST. The first Dense is named ``stem``, the others ``fc2``, ``fc3``, ... by layer number.

  Initialisation follows open_lth's default ``kaiming_normal`` (He normal, fan-in) for every
  kernel; biases start at zero (PyTorch draws them from U(+-1/sqrt(fan_in)), as
  ``init_scheme="open_lth"`` does, :mod:`kdt.models.init_schemes`).

  Attributes:
    num_classes: number of output logits.
    hidden: widths of the hidden layers.
    activation: key of ``layers.ACTIVATIONS`` used after every hidden layer.
    dtype: compute dtype; parameters are float32.
  """

  num_classes: int
  hidden: Sequence[int] = (300, 100)
  activation: str = "relu"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train  # No BatchNorm or dropout.
    act = layers.get_activation(self.activation)
    x = x.reshape((x.shape[0], -1))
    for i, width in enumerate(self.hidden):
      name = "stem" if i == 0 else f"fc{i + 1}"
      x = act(layers.dense(width, kernel_init=layers.HE_NORMAL_FAN_IN, dtype=self.dtype,
                           name=name)(x))
    return layers.head(x, self.num_classes, kernel_init=layers.HE_NORMAL_FAN_IN, dtype=self.dtype)
