"""The training state: a plain pytree that Orbax saves and restores as is."""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training.

  The model and the optimizer's update rule are *not* stored here: they are static and bound into
  the jitted step, so the state is a pure array pytree (checkpointable, shardable, donatable).
  Randomness (augmentation) is derived from ``(seed, step)``, so no RNG key needs to be carried:
  a resumed run draws exactly the keys an uninterrupted run would.

  Attributes:
    step: position on the learning-rate schedule (int32 scalar). A rewound run starts at the
      rewind step k, not at 0, so schedules and the KD cut-off are functions of ``step`` alone.
    params: model parameters.
    batch_stats: BatchNorm running statistics (empty dict for models without BN).
    opt_state: optax state of the update direction (momentum / Adam moments).
  """

  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: optax.OptState


def create_train_state(variables: dict, tx: optax.GradientTransformation, step: int = 0) -> TrainState:
  """Builds a fresh state (new optimizer state) from model variables.

  Args:
    variables: Flax variables with ``params`` and optionally ``batch_stats``.
    tx: the optimizer direction transformation (see :mod:`kdt.train.optim`).
    step: schedule position to start from.

  Returns:
    A :class:`TrainState`.
  """
  params = variables["params"]
  return TrainState(
      step=jnp.asarray(step, jnp.int32),
      params=params,
      batch_stats=variables.get("batch_stats", {}),
      opt_state=tx.init(params),
  )
