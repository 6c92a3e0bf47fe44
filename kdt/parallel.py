"""Data parallelism on one device mesh (axis ``"data"``), on one host or many.

State and masks are replicated; batches and teacher logits are sharded on their leading axis. The
train step is written as for one device (no ``pmean``): under ``jax.jit`` the compiler turns the
global-batch mean into an all-reduce, so BatchNorm statistics are global-batch statistics. The
option :func:`ghost_batch_norm` runs the forward pass per device in ``jax.shard_map`` instead, so
each device normalises with the statistics of its own slice of the batch ("ghost" BN, as the
per-GPU BN of older lottery-ticket code).

Multi-host: every process runs the same command and loads only its rows of each global batch;
:func:`global_batch` assembles the global ``jax.Array`` with
``jax.make_array_from_process_local_data``. :func:`maybe_initialize_distributed` starts JAX's own
distributed runtime, but only when asked:

* on a TPU pod (or a SLURM / Open MPI cluster JAX recognises): ``KDT_DISTRIBUTED=1`` or
  ``config.parallel.distributed=True``; ``jax.distributed.initialize()`` finds its peers itself;
* anywhere else, e.g. several processes on one machine: also set ``KDT_COORDINATOR=host:port``,
  ``KDT_NUM_PROCESSES`` and ``KDT_PROCESS_ID`` (``launch/local.sh --processes N`` does this). On
  CPU the processes talk through gloo collectives.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

log = logging.getLogger(__name__)

DATA_AXIS = "data"

ENV_DISTRIBUTED = "KDT_DISTRIBUTED"
ENV_COORDINATOR = "KDT_COORDINATOR"
ENV_NUM_PROCESSES = "KDT_NUM_PROCESSES"
ENV_PROCESS_ID = "KDT_PROCESS_ID"


def distributed_requested(requested: bool = False) -> bool:
  """Whether the distributed runtime should start: the config asks, or ``KDT_DISTRIBUTED=1``."""
  return bool(requested) or os.environ.get(ENV_DISTRIBUTED) == "1"


def distributed_arguments(environ: dict[str, str] | None = None) -> dict[str, Any]:
  """Explicit ``jax.distributed.initialize`` arguments from ``KDT_COORDINATOR`` & co.

  Args:
    environ: the environment (default ``os.environ``).

  Returns:
    ``{}`` when ``KDT_COORDINATOR`` is unset (TPU pods and clusters JAX detects by itself), else
    ``{"coordinator_address", "num_processes", "process_id"}``.

  Raises:
    ValueError: ``KDT_COORDINATOR`` is set without the other two, or they are not integers with
      ``0 <= KDT_PROCESS_ID < KDT_NUM_PROCESSES``.

  Examples:
    >>> distributed_arguments({"KDT_COORDINATOR": "127.0.0.1:4321", "KDT_NUM_PROCESSES": "2",
    ...                        "KDT_PROCESS_ID": "1"})
    {'coordinator_address': '127.0.0.1:4321', 'num_processes': 2, 'process_id': 1}
    >>> distributed_arguments({})
    {}
  """
  environ = os.environ if environ is None else environ
  coordinator = environ.get(ENV_COORDINATOR, "")
  if not coordinator:
    return {}
  raw = {name: environ.get(name, "") for name in (ENV_NUM_PROCESSES, ENV_PROCESS_ID)}
  try:
    num_processes, process_id = int(raw[ENV_NUM_PROCESSES]), int(raw[ENV_PROCESS_ID])
  except ValueError:
    raise ValueError(f"{ENV_COORDINATOR}={coordinator!r} needs integer {ENV_NUM_PROCESSES} and "
                     f"{ENV_PROCESS_ID}; got {raw}.") from None
  if num_processes < 1 or not 0 <= process_id < num_processes:
    raise ValueError(f"Need {ENV_NUM_PROCESSES} >= 1 and 0 <= {ENV_PROCESS_ID} < "
                     f"{ENV_NUM_PROCESSES}; got {raw}.")
  return {"coordinator_address": coordinator, "num_processes": num_processes,
          "process_id": process_id}


def maybe_initialize_distributed(requested: bool = False) -> bool:
  """Calls ``jax.distributed.initialize`` only when asked (config or ``KDT_DISTRIBUTED=1``).

  Without ``KDT_COORDINATOR`` it is called with no arguments, as on a TPU pod where every worker
  finds the others itself. With it, the coordinator address, process count and this process's id
  come from ``KDT_COORDINATOR``, ``KDT_NUM_PROCESSES`` and ``KDT_PROCESS_ID``. Calling it again
  in an already initialised process does nothing.

  Args:
    requested: ``config.parallel.distributed``.

  Returns:
    Whether the distributed runtime was initialised by this call.
  """
  if not distributed_requested(requested) or jax.distributed.is_initialized():
    return False
  kwargs = distributed_arguments()
  jax.distributed.initialize(**kwargs)
  log.info("jax.distributed initialised: process %d of %d, %d local / %d global devices.",
           jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count())
  return True


def is_main_process() -> bool:
  """True on process 0, the only one that writes JSON results, plots and TensorBoard events."""
  return jax.process_index() == 0


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
  if jax.process_count() == 1:  # one transfer call for the whole dict (~40 us a step less)
    return jax.device_put({k: np.asarray(v) for k, v in local_batch.items()}, sharding)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_batch.items()}


def replicate(tree: Any, mesh: jax.sharding.Mesh) -> Any:
  """Places a pytree (identical on every process) replicated on the mesh."""
  return jax.device_put(tree, replicated(mesh))


def to_host(tree: Any) -> Any:
  """Numpy copies of a pytree of replicated arrays, also when they span other processes' devices.

  ``np.asarray`` refuses an array with shards on another host; a replicated array's local shard
  is the whole array, so that is what is copied.
  """
  def fetch(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      if not x.is_fully_replicated:
        raise ValueError(f"to_host needs replicated arrays; got sharding {x.sharding}.")
      x = x.addressable_data(0)
    return np.asarray(x)
  return jax.tree.map(fetch, tree)


class GhostBatchNorm:
  """A model wrapper whose training forward pass normalises per device ("ghost" BatchNorm).

  ``apply(variables, x, train=True, mutable=["batch_stats"])`` runs the wrapped model in
  ``jax.shard_map`` over the mesh's ``"data"`` axis: each device sees its ``B / n`` rows, so the
  BatchNorm batch statistics are per-device ones, as with per-GPU BN under ``pmap``. The updated
  running averages are averaged over devices (``pmean``), so the replicated state stays replicated.
  Gradients need nothing by hand: the transpose of the ``shard_map`` sums the per-device parameter
  gradients of the global-batch loss. Every other call (evaluation, the teacher's forward pass,
  initialisation) goes to the wrapped model unchanged. With one device it computes what the model
  itself computes.

  Args:
    model: the Flax module.
    mesh: the data-parallel mesh (:func:`make_mesh`).
  """

  def __init__(self, model, mesh: jax.sharding.Mesh):
    self.model, self.mesh = model, mesh

  def __getattr__(self, name):
    return getattr(self.model, name)

  def apply(self, variables, x, *args, train: bool = False, mutable=False, **kwargs):
    if not (train and mutable):
      return self.model.apply(variables, x, *args, train=train, mutable=mutable, **kwargs)

    # Keyword arrays (the schedule ``step`` of step-conditioned models, RNG keys) enter
    # replicated, as explicit inputs rather than closed-over values.
    def per_device(variables, x, kwargs):
      out, updates = self.model.apply(variables, x, *args, train=True, mutable=mutable, **kwargs)
      return out, jax.lax.pmean(updates, DATA_AXIS)

    return jax.shard_map(per_device, mesh=self.mesh, in_specs=(P(), P(DATA_AXIS), P()),
                         out_specs=(P(DATA_AXIS), P()))(variables, x, kwargs)
