"""Splitting one CPU into several XLA host devices, so data-parallel train steps run concurrently.

Why. On CPU, XLA's convolution weight gradient — most of a CNN train step — runs several times
slower than its forward convolution and keeps the cores only partly busy. Presenting the CPU to
JAX as ``n`` devices (``jax_num_cpu_devices``, the config form of XLA's
``--xla_force_host_platform_device_count``) and sharding the batch over them (kdt's ordinary data
parallelism, :mod:`kdt.parallel`) runs ``n`` per-device programs at once, which fills the cores:
on a 2-core Xeon, ResNet-20 / Conv-6 masked-KD train steps at batch 128 ran 1.12x / 1.23x faster
with 4 host devices than with one, each with its chunked weight gradient
(:mod:`kdt.models.conv_grad`; without it the split gained 1.3-1.5x). ``python -m kdt.bench``
reports the figure for the machine it runs on.
Small networks lose instead (LeNet-300-100 ran about 2-3x slower with 4 devices: the cross-device
reductions cost more than the split saves), so the split is only applied to convolutional networks
on images of at least :data:`MIN_SIDE` pixels.

Numerics. Nothing changes but float summation order: BatchNorm statistics stay global-batch
statistics and gradients are the global-batch mean (the step is written for one device and jit
inserts the reductions). With ``config.parallel.ghost_batch_norm`` the device count *is* the
semantics (one BN group per device), so ``auto`` then keeps one device.

Use. ``python -m kdt.main`` calls :func:`configure_for` before JAX starts. In a notebook, call it
right after ``import kdt`` and before any JAX computation::

  from kdt import host_devices
  host_devices.configure_for(config)

``config.parallel.host_devices``: ``0`` = automatic (the policy above), ``1`` = one device, ``n``
= exactly ``n`` host devices.

Threads for the collectives. XLA's CPU client sizes its two thread pools (the one that launches
and waits for per-device programs, and the intra-op pool whose threads sit in a collective's
rendezvous) to ``max(cores, devices)`` threads: on a 2-core machine with 8 host devices, exactly 8.
A data-parallel step is a collective program: all ``n`` per-device parts must be running at once
to meet in their all-reduce, each holding a pool thread. When the host runs ahead (kdt only
fetches metrics at log steps), the launch of a *later* program can also hold a pool thread,
blocked on a device whose queue of in-flight programs is full — and that queue only drains when
the collective completes. With no spare thread, the collective's last part never starts: 7 of 8
threads wait in the all-reduce rendezvous until XLA aborts the process (SIGABRT after 40 s). The
more devices per core and the more loaded the machine, the likelier: 8 devices on 2 cores with a
CPU-burning sibling, 3000 unsynchronised data-parallel steps, hung in 1 of 3 runs at load ~7 and
in 5 of 6 at load 10-14; with the threads below, 0 of 6 at load 14-18 (and the 8-device
quickstart, which had aborted, finished). :func:`reserve_threads`
therefore gives the CPU client ``2 * devices`` threads (``PJRT_NPROC``, read by XLA when the
backend starts): one per device for the running collective, one per device for the launches of
the next program. :func:`configure` and :func:`configure_for` call it whenever the CPU is split,
also when ``XLA_FLAGS`` / ``jax_num_cpu_devices`` chose the count.
"""

from __future__ import annotations

import logging
import os
import re

log = logging.getLogger(__name__)

MAX_DEVICES = 8
"""Upper bound of the automatic device count (measured only on small CPUs; kept conservative)."""

MIN_SIDE = 16
"""Inputs with a smaller height or width (scikit-learn's 8x8 digits) are never split."""

_XLA_FLAG = "--xla_force_host_platform_device_count"

THREADS_ENV = "PJRT_NPROC"
"""The environment variable XLA's CPU client sizes its thread pools from (``NPROC`` as fallback)."""


def cpu_cores() -> int:
  """CPU cores this process may run on."""
  try:
    return len(os.sched_getaffinity(0))
  except (AttributeError, OSError):
    return os.cpu_count() or 1


def auto_count(model_name: str, input_shape, batch_sizes, *, cores: int | None = None,
               ghost_batch_norm: bool = False) -> int:
  """The automatic host-device count for a model on CPU.

  ``min(2 * cores, MAX_DEVICES)`` devices, lowered to the largest count that divides every batch
  size, for convolutional networks (every kdt model but LeNet) on inputs of at least
  :data:`MIN_SIDE` pixels a side; 1 otherwise, and 1 with ghost BatchNorm.

  Args:
    model_name: a kdt model name.
    input_shape: ``(height, width, channels)`` of one example.
    batch_sizes: the global batch sizes the devices must divide (train and eval).
    cores: CPU cores (:func:`cpu_cores` if None).
    ghost_batch_norm: whether BN statistics are per device.

  Returns:
    The device count (>= 1).

  Examples:
    >>> auto_count("resnet20", (32, 32, 3), (128, 500), cores=2)
    4
    >>> auto_count("resnet20", (32, 32, 3), (128, 500), cores=16)
    4
    >>> auto_count("resnet20", (32, 32, 3), (128, 512), cores=16)
    8
    >>> auto_count("lenet_300_100", (28, 28, 1), (128,), cores=2)
    1
    >>> auto_count("resnet20", (8, 8, 1), (64,), cores=2)
    1
  """
  cores = cpu_cores() if cores is None else cores
  if ghost_batch_norm or model_name.startswith("lenet") or min(input_shape[:2]) < MIN_SIDE:
    return 1
  target = max(1, min(2 * cores, MAX_DEVICES))
  for count in range(target, 0, -1):
    if all(int(b) % count == 0 for b in batch_sizes):
      return count
  return 1


def count_for(config) -> int:
  """The host-device count ``config`` asks for (``config.parallel.host_devices``, 0 = auto)."""
  from kdt.data import registry  # pure Python, no JAX

  try:
    requested = int(config.parallel.host_devices)
    if requested >= 1:
      return requested
    info = registry.dataset_info(config.data.name)
    return auto_count(config.model.name, info.input_shape,
                      (int(config.train.batch_size), int(config.train.eval_batch_size)),
                      ghost_batch_norm=bool(config.parallel.ghost_batch_norm))
  except (AttributeError, KeyError, TypeError, ValueError):
    return 1  # a bad config: config_lib.validate reports it, naming the field


def backends_started() -> bool:
  """Whether JAX has started its backends (public API only: the device-count setting refuses a
  change once they have)."""
  import jax

  current = jax.config.jax_num_cpu_devices
  try:
    jax.config.update("jax_num_cpu_devices", current + 1 if current > 0 else 1)
  except RuntimeError:
    return True
  jax.config.update("jax_num_cpu_devices", current)
  return False


def requested_count() -> int | None:
  """The host-device count already chosen by ``XLA_FLAGS`` or ``jax_num_cpu_devices`` (or None)."""
  import jax

  if jax.config.jax_num_cpu_devices > 0:
    return int(jax.config.jax_num_cpu_devices)
  match = re.search(_XLA_FLAG + r"=(\d+)", os.environ.get("XLA_FLAGS", ""))
  return int(match.group(1)) if match else None


def already_set() -> str | None:
  """Why the host-device count is not kdt's to choose any more (or None if it is)."""
  import jax

  if _XLA_FLAG in os.environ.get("XLA_FLAGS", ""):
    return f"XLA_FLAGS sets {_XLA_FLAG}"
  if jax.config.jax_num_cpu_devices != -1:
    return f"jax_num_cpu_devices is already {jax.config.jax_num_cpu_devices}"
  if backends_started():
    return "JAX has already started its backends"
  return None


def reserve_threads(count: int, *, cores: int | None = None,
                    environ: dict[str, str] | None = None) -> int | None:
  """Gives XLA's CPU client enough threads for ``count`` devices' collectives (see module doc).

  Sets ``PJRT_NPROC`` to ``max(cores, 2 * count)`` unless the user set it (or ``NPROC``)
  already. Only effective before JAX starts its backends.

  Args:
    count: host devices.
    cores: CPU cores (:func:`cpu_cores` if None).
    environ: the environment to set it in (default ``os.environ``).

  Returns:
    The thread count set, or None when nothing was set (one device, or the user's own setting).

  Examples:
    >>> reserve_threads(8, cores=2, environ={})
    16
    >>> reserve_threads(1, cores=2, environ={}) is None
    True
    >>> reserve_threads(8, cores=2, environ={"PJRT_NPROC": "4"}) is None
    True
  """
  environ = os.environ if environ is None else environ
  if count <= 1 or THREADS_ENV in environ or "NPROC" in environ:
    return None
  threads = max(cpu_cores() if cores is None else cores, 2 * int(count))
  environ[THREADS_ENV] = str(threads)
  log.info("XLA CPU client: %d threads for %d host devices (%s; see kdt.host_devices).",
           threads, count, THREADS_ENV)
  return threads


def configure(count: int) -> bool:
  """Presents the CPU as ``count`` devices (before any JAX computation).

  Args:
    count: number of host devices; 1 leaves JAX's default alone.

  Returns:
    Whether the setting was applied. It is not when ``count`` is 1, when JAX's backends have
    started already, or when ``XLA_FLAGS`` / ``jax_num_cpu_devices`` chose a count (the user's
    choice wins); the reason is logged.
  """
  import jax

  if count <= 1:
    _reserve_for_requested()
    return False
  reason = already_set()
  if reason:
    log.info("Not splitting the CPU into %d devices: %s.", count, reason)
    _reserve_for_requested()
    return False
  reserve_threads(count)
  jax.config.update("jax_num_cpu_devices", int(count))
  log.info("CPU presented to JAX as %d host devices (config.parallel.host_devices; see "
           "kdt.host_devices).", count)
  return True


def configure_for(config) -> bool:
  """:func:`configure` with :func:`count_for` ``(config)``; nothing for distributed runs."""
  from kdt import parallel

  if parallel.distributed_requested(bool(config.parallel.distributed)):
    _reserve_for_requested()
    return False
  return configure(count_for(config))


def _reserve_for_requested() -> None:
  """:func:`reserve_threads` for a count the user chose (``XLA_FLAGS``), before JAX starts."""
  requested = requested_count()
  if requested and requested > 1 and not backends_started():
    reserve_threads(requested)
