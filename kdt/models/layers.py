"""Activations, initialisers and layer factories shared by every kdt model.

All factories keep parameters in float32 (``param_dtype``) and compute in the
``dtype`` they are given, so a model can run its forward pass in bfloat16 while
the optimiser sees float32 weights. Convolutions use PyTorch-style symmetric
padding (``kernel_size // 2`` on each side), which gives the same output sizes
and pixel alignment as the PyTorch reference code of each model.
"""

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdt.models import conv_grad


def _pswish(x: jax.Array) -> jax.Array:
  """Parametric swish with beta = 2 (ToST ``SwishParameteric``): x * sigmoid(2x)."""
  return x * jax.nn.sigmoid(2.0 * x)


def _lisht(x: jax.Array) -> jax.Array:
  """LiSHT (Roy et al. 2019): x * tanh(x)."""
  return x * jnp.tanh(x)


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "swish": jax.nn.silu,  # x * sigmoid(x); PyTorch nn.SiLU.
    "pswish": _pswish,
    "mish": jax.nn.mish,  # x * tanh(softplus(x)).
    # ToST uses PyTorch nn.GELU, whose default is the exact erf form.
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "elu": jax.nn.elu,  # alpha = 1, as PyTorch nn.ELU.
    "softplus": jax.nn.softplus,
    "lisht": _lisht,
}
"""Nonlinearities a model's ``activation`` attribute may name.

These are the ReLU replacements of ToST ("Training Your Sparse Neural Network
Better with Any Mask", Jaiswal et al., ICML 2022; ``LRsI/activations.py``).
"""


def get_activation(name: str | Callable[[jax.Array], jax.Array]) -> Callable[[jax.Array], jax.Array]:
  """Returns the activation function called ``name``.

  Args:
    name: a key of ``ACTIVATIONS``, or an elementwise function, returned as is. Functions are
      how a step-dependent blend of two activations reaches a model during sparse re-training
      (``kdt.tickets.tweaks``: the smooth activation annealed back to ReLU).

  Returns:
    The elementwise function.

  Raises:
    ValueError: if ``name`` is neither a key of ``ACTIVATIONS`` nor callable.
  """
  if callable(name):
    return name
  if name not in ACTIVATIONS:
    raise ValueError(f"unknown activation {name!r}; allowed: {', '.join(ACTIVATIONS)}")
  return ACTIVATIONS[name]


STEMS = ("cifar", "imagenet")
"""Input stems of the models that come in a CIFAR (small-input) and an ImageNet variant."""


def check_choice(attribute: str, value: Any, allowed: Sequence[Any]) -> None:
  """Raises ValueError naming ``attribute``, ``value`` and the ``allowed`` values."""
  if value not in allowed:
    raise ValueError(f"unknown {attribute} {value!r}; allowed: {', '.join(map(str, allowed))}")


# He et al. 2015 normal init with fan-out, PyTorch
# `kaiming_normal_(mode="fan_out", nonlinearity="relu")`, i.e.
# N(0, 2 / (k * k * C_out)). Used for every convolution in kdt.models.
CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# PyTorch `kaiming_normal_` defaults (fan-in): open_lth's `kaiming_normal`
# initializer, which it applies to Linear layers as well.
HE_NORMAL_FAN_IN = nn.initializers.variance_scaling(2.0, "fan_in", "normal")
# PyTorch's default nn.Linear weight init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
TORCH_LINEAR_INIT = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


def conv(
    features: int,
    kernel_size: int,
    *,
    dtype: Any,
    name: str,
    strides: int = 1,
    groups: int = 1,
    use_bias: bool = False,
) -> nn.Conv:
  """A square convolution with ``CONV_INIT`` and PyTorch-style padding.

  Its weight gradient is computed in batch chunks on CPU (``kdt.models.conv_grad``: same values up
  to float summation order, several times faster on XLA:CPU).
  """
  return nn.Conv(
      features,
      (kernel_size, kernel_size),
      strides=strides,
      padding=kernel_size // 2,
      feature_group_count=groups,
      use_bias=use_bias,
      kernel_init=CONV_INIT,
      dtype=dtype,
      param_dtype=jnp.float32,
      name=name,
      conv_general_dilated=conv_grad.conv_general_dilated,
  )


def batch_norm(*, train: bool, dtype: Any, name: str) -> nn.BatchNorm:
  """BatchNorm with PyTorch defaults (momentum 0.1, eps 1e-5), gamma=1, beta=0.

  Batch statistics are used when ``train`` is true and the running averages,
  kept in the ``batch_stats`` collection, otherwise. Unlike PyTorch, Flax
  updates the running variance with the biased batch variance.
  """
  return nn.BatchNorm(
      use_running_average=not train,
      momentum=0.9,
      epsilon=1e-5,
      dtype=dtype,
      param_dtype=jnp.float32,
      name=name,
  )


def dense(
    features: int, *, kernel_init: nn.initializers.Initializer, dtype: Any, name: str
) -> nn.Dense:
  """A Dense layer with zero bias and the given kernel initialiser."""
  return nn.Dense(
      features,
      kernel_init=kernel_init,
      dtype=dtype,
      param_dtype=jnp.float32,
      name=name,
  )


def head(
    x: jax.Array,
    num_classes: int,
    *,
    kernel_init: nn.initializers.Initializer,
    dtype: Any,
) -> jax.Array:
  """Applies the output classifier, a Dense named ``head``; logits are float32."""
  return dense(num_classes, kernel_init=kernel_init, dtype=dtype, name="head")(
      x
  ).astype(jnp.float32)


def global_avg_pool(x: jax.Array) -> jax.Array:
  """Averages an NHWC map over its spatial axes."""
  return jnp.mean(x, axis=(1, 2))
