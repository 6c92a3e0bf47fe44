"""Data parallelism on one device mesh (axis ``"data"``), on one host or many.

State and masks are replicated; batches and teacher logits are sharded on their leading axis. The
train step is written as for one device (no ``pmean``): under ``jax.jit`` the compiler turns the
global-batch mean into an all-reduce, so BatchNorm statistics are global-batch statistics.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def maybe_initialize_distributed(requested: bool = False) -> bool:
  """Calls ``jax.distributed.initialize()`` only when asked (config or ``KDT_DISTRIBUTED=1``).

  Args:
    requested: ``config.parallel.distributed``.

  Returns:
    Whether the distributed runtime was initialised by this call.
  """
  if not (requested or os.environ.get("KDT_DISTRIBUTED") == "1"):
    return False
  jax.distributed.initialize()
  return True


def make_mesh() -> jax.sharding.Mesh:
  """A 1-D mesh over every device of every process."""
  return jax.make_mesh((jax.device_count(),), (DATA_AXIS,),
                       axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def global_batch(local_batch: dict[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
  """Assembles the global batch from this process's rows (every process calls this)."""
  sharding = batch_sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_batch.items()}


def replicate(tree: Any, mesh: jax.sharding.Mesh) -> Any:
  """Places a pytree (identical on every process) replicated on the mesh."""
  return jax.device_put(tree, replicated(mesh))
