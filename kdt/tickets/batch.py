"""Many tickets at once: K training runs of one model advanced together, step by step.

The stability experiments (one rewound network trained under two data orders), seed sweeps and
recipes compared at the same density all train K copies of one model that differ only in their
starting state, their mask, their data order and their augmentation randomness.
:class:`BatchTrainer` trains such a batch of :class:`Ticket` s with the very step a single run uses
(:meth:`kdt.train.loop.Trainer.step_function`), so each ticket computes what its own run would.
Strategies:

* ``"vmap"`` — the K states, masks, batches and RNG keys stacked on a leading "ticket" axis and the
  step ``jax.vmap``-ed: one compiled program per step for all K. The default on GPU/TPU.
* ``"sequential"`` — the single run's compiled step called once per ticket (one compile, K
  dispatches per step): bit-for-bit a one-by-one run. The default on CPU, where XLA lowers a
  convolution vmapped over its weights to a grouped convolution that is slower than K plain ones.
* ``"lax_map"`` — one program that loops over the stacked tickets with ``jax.lax.map``: the
  activation memory of one ticket instead of K (for accelerators short of memory; slowest on CPU).
* ``"shard_map"`` — the ticket axis split over this host's devices with ``jax.shard_map`` (each
  device trains its own tickets, vmapped; no cross-device traffic). One process only.

Measured on the 2-core CPU of this project (K=4 tickets, batch 64 each, the strategies interleaved
step by step on a shared, loaded machine, medians of per-step ratios): ResNet-20 on CIFAR-shaped
32x32x3 inputs — vmap 2.9x the time of sequential (8.3 s vs 3.1 s per step); Conv-2 on digits —
vmap 2.6x, lax_map 12.8x; with 4 host devices, shard_map took 0.74x the time of sequential run
data-parallel over those devices, but both were slower than sequential on one device. ``"auto"``
picks per backend (:func:`choose_strategy`) and the run log says which and why; ``python -m
kdt.tickets.batch`` (and ``python -m kdt.bench --sections tickets``) re-measure.

With ``"vmap"``, ``"sequential"`` and ``"lax_map"`` the data-parallel mesh still applies (state
replicated, each ticket's batch sharded over ``"data"``), on one host or many. All tickets share
the model, optimizer, schedule, loss, KD teacher (if any) and step range (they start at the same
schedule step); the results equal training them one by one (``tests/test_batch.py``).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from kdt import checkpoint as checkpoint_lib
from kdt import parallel
from kdt.train import losses
from kdt.train import loop
from kdt.train import optim
from kdt.train.state import TrainState

log = logging.getLogger(__name__)

STRATEGIES = ("auto", "vmap", "sequential", "lax_map", "shard_map")
TICKET_AXIS = "ticket"


@dataclasses.dataclass
class Ticket:
  """One of the K runs trained together.

  Attributes:
    name: for logs (``"seed_1"``, ``"order_b"``, ``"kd"``).
    init_state: builds its starting state (as :attr:`kdt.train.loop.Run.init_state`).
    mask: bool pytree with the params' structure.
    data_seed: its data-order seed.
    augment_seed: its augmentation seed.
  """

  name: str
  init_state: Callable[[], TrainState]
  mask: Any
  data_seed: int = 0
  augment_seed: int = 0


@dataclasses.dataclass
class BatchResult:
  """What a batch of tickets produced.

  Attributes:
    states: each ticket's final :class:`TrainState` (replicated on the data mesh), in order.
    evaluations: each ticket's final :meth:`kdt.train.loop.Trainer.evaluate_all` result.
    strategy: the strategy used.
    wall_time: seconds spent training in this invocation.
  """

  states: list[TrainState]
  evaluations: list[dict]
  strategy: str
  wall_time: float


def stack(trees: Sequence[Any]) -> Any:
  """Stacks K pytrees of one structure along a new leading axis.

  Examples:
    >>> stack([{"w": jnp.zeros(2)}, {"w": jnp.ones(2)}])["w"].shape
    (2, 2)
  """
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def unstack(tree: Any, count: int) -> list[Any]:
  """The inverse of :func:`stack`: K pytrees, the k-th holding row k of every leaf."""
  return [jax.tree.map(lambda x, k=k: x[k], tree) for k in range(count)]


def choose_strategy(strategy: str, num_tickets: int, *, backend: str | None = None,
                    local_devices: int | None = None, process_count: int | None = None
                    ) -> tuple[str, str]:
  """Resolves ``"auto"`` for this backend and checks that the strategy can run here.

  ``"auto"`` is ``"vmap"`` on GPU/TPU and ``"sequential"`` on CPU (see the measurements in the
  module docstring; re-measure with :func:`benchmark`).

  Args:
    strategy: one of :data:`STRATEGIES`.
    num_tickets: K.
    backend: ``jax.default_backend()`` if None.
    local_devices: ``jax.local_device_count()`` if None.
    process_count: ``jax.process_count()`` if None.

  Returns:
    ``(strategy, reason)``; the reason goes to the run log.

  Raises:
    ValueError: unknown strategy, or ``"shard_map"`` where it cannot run.

  Examples:
    >>> choose_strategy("auto", 4, backend="tpu", local_devices=4, process_count=1)[0]
    'vmap'
    >>> choose_strategy("auto", 4, backend="cpu", local_devices=1, process_count=1)[0]
    'sequential'
  """
  backend = jax.default_backend() if backend is None else backend
  local_devices = jax.local_device_count() if local_devices is None else local_devices
  process_count = jax.process_count() if process_count is None else process_count
  if strategy not in STRATEGIES:
    raise ValueError(f"strategy={strategy!r} is invalid: allowed one of {list(STRATEGIES)}.")
  if strategy == "shard_map" and (process_count != 1 or num_tickets % local_devices):
    raise ValueError(
        f"strategy='shard_map' needs one process and K a multiple of its device count; here "
        f"K={num_tickets}, {local_devices} local device(s), {process_count} process(es).")
  if strategy != "auto":
    return strategy, "requested"
  if backend == "cpu":
    return "sequential", ("auto on cpu: the compiled single-ticket step once per ticket (vmapped "
                          "convolutions lower to slower grouped ones on CPU)")
  return "vmap", f"auto on {backend}: one vmapped program for all tickets"


def map_over_tickets(step_fn: Callable, strategy: str, *,
                     ticket_mesh: jax.sharding.Mesh | None = None) -> Callable:
  """Maps one ticket's step over a leading ticket axis (one program for all tickets).

  Args:
    step_fn: ``(state, mask, raw_batch, teacher, augment_key) -> (state, metrics)`` of one ticket
      (:meth:`kdt.train.loop.Trainer.step_function`).
    strategy: ``"vmap"``, ``"lax_map"`` or ``"shard_map"``.
    ticket_mesh: for ``"shard_map"``: a 1-D mesh with axis ``"ticket"``.

  Returns:
    ``(states, masks, raw_batches, teacher, augment_keys) -> (states, metrics)``, every argument
    but ``teacher`` (shared by all tickets) with the leading ticket axis. Pure.
  """
  vmapped = jax.vmap(step_fn, in_axes=(0, 0, 0, None, 0))
  if strategy == "vmap":
    return vmapped
  if strategy == "lax_map":
    def looped(states, masks, batches, teacher, keys):
      return jax.lax.map(lambda xs: step_fn(xs[0], xs[1], xs[2], teacher, xs[3]),
                         (states, masks, batches, keys))
    return looped
  if strategy == "shard_map":
    t = P(TICKET_AXIS)
    return jax.shard_map(vmapped, mesh=ticket_mesh, in_specs=(t, t, t, P(), t), out_specs=(t, t))
  raise ValueError(f"strategy={strategy!r} is invalid: allowed 'vmap', 'lax_map', 'shard_map'.")


class _Sequential:
  """K states kept apart, each advanced by the single run's compiled step."""

  def __init__(self, trainer: loop.Trainer, run: loop.Run, tickets: Sequence[Ticket], teacher):
    self.trainer, self.tickets, self.teacher = trainer, tickets, teacher
    self.step_fn = trainer.train_step_for(run)
    self.masks = [parallel.replicate(parallel.to_host(t.mask), trainer.mesh) for t in tickets]
    self.keys = [jax.random.key(t.augment_seed) for t in tickets]
    self.sharding = parallel.replicated(trainer.mesh)
    self._stack = jax.jit(stack, out_shardings=self.sharding)

  def init(self) -> list:
    return [jax.jit(t.init_state, out_shardings=self.sharding)() for t in self.tickets]

  def advance(self, states: list, step: int) -> tuple[list, dict]:
    out = []
    for state, ticket, mask, key in zip(states, self.tickets, self.masks, self.keys):
      raw = parallel.global_batch(self.trainer._train_batch(step, ticket), self.trainer.mesh)  # pylint: disable=protected-access
      out.append(self.step_fn(state, mask, raw, self.teacher, key))
    return [s for s, _ in out], {"loss": [m["loss"] for _, m in out]}

  def stacked(self, states: list):
    return self._stack(states)

  def from_stacked(self, stacked) -> list:
    return unstack(stacked, len(self.tickets))

  def per_ticket(self, states: list) -> list:
    return states


class _Mapped:
  """K states stacked on a leading axis, advanced by one mapped program (vmap/lax_map/shard_map)."""

  def __init__(self, trainer: loop.Trainer, run: loop.Run, tickets: Sequence[Ticket], teacher,
               strategy: str):
    self.trainer, self.tickets, self.strategy = trainer, tickets, strategy
    if strategy == "shard_map":
      ticket_mesh = jax.sharding.Mesh(np.array(jax.local_devices()), (TICKET_AXIS,))
      self.sharding = self.batch_sharding = NamedSharding(ticket_mesh, P(TICKET_AXIS))
      shared = NamedSharding(ticket_mesh, P())
    else:
      ticket_mesh = None
      self.sharding = shared = parallel.replicated(trainer.mesh)
      self.batch_sharding = NamedSharding(trainer.mesh, P(None, parallel.DATA_AXIS))
    mapped = map_over_tickets(trainer.step_function(loop.Trainer.variant(run)), strategy,
                              ticket_mesh=ticket_mesh)
    self.step_fn = jax.jit(mapped, donate_argnums=(0,),
                           out_shardings=(self.sharding, self.sharding))
    self.masks = jax.device_put(stack([parallel.to_host(t.mask) for t in tickets]), self.sharding)
    seeds = jnp.asarray([t.augment_seed for t in tickets])
    self.keys = jax.device_put(jax.vmap(jax.random.key)(seeds), self.sharding)
    self.teacher = None if teacher is None else jax.device_put(teacher, shared)

  def init(self):
    return jax.jit(lambda: stack([t.init_state() for t in self.tickets]),
                   out_shardings=self.sharding)()

  def advance(self, states, step: int):
    rows = _by_key([self.trainer._train_batch(step, t) for t in self.tickets])  # pylint: disable=protected-access
    local = {k: np.stack(v) for k, v in rows.items()}
    if self.strategy == "shard_map":  # one process holds every ticket's rows
      raw = jax.device_put(local, self.batch_sharding)
    else:
      raw = {k: jax.make_array_from_process_local_data(self.batch_sharding, v)
             for k, v in local.items()}
    return self.step_fn(states, self.masks, raw, self.teacher, self.keys)

  def stacked(self, states):
    return states

  def from_stacked(self, stacked):
    return stacked

  def per_ticket(self, states) -> list:
    if self.strategy == "shard_map":  # evaluation runs on the data mesh
      states = parallel.replicate(jax.device_get(states), self.trainer.mesh)
    return unstack(states, len(self.tickets))


def _by_key(batches: Sequence[dict]) -> dict[str, list]:
  return {k: [b[k] for b in batches] for k in batches[0]}


class BatchTrainer:
  """Trains K :class:`Ticket` s of one model together (see the module docstring).

  Args:
    trainer: the single-run :class:`kdt.train.loop.Trainer` (model, dataset, mesh, batch sizes,
      augmentation); its step, batches and evaluation are reused as they are.
    strategy: one of :data:`STRATEGIES`.
  """

  def __init__(self, trainer: loop.Trainer, strategy: str = "auto"):
    if strategy not in STRATEGIES:
      raise ValueError(f"strategy={strategy!r} is invalid: allowed one of {list(STRATEGIES)}.")
    self.trainer = trainer
    self.strategy = strategy

  def engine(self, tickets: Sequence[Ticket], run: loop.Run, teacher=None):
    """The resolved strategy, why, and the object that advances the tickets."""
    strategy, reason = choose_strategy(self.strategy, len(tickets))
    if strategy == "shard_map" and self.trainer.ghost_batch_norm:
      raise ValueError("strategy='shard_map' cannot be combined with ghost BatchNorm (both map "
                       "over the devices); use 'sequential', 'vmap' or 'lax_map'.")
    if strategy == "sequential":
      return strategy, reason, _Sequential(self.trainer, run, tickets, teacher)
    return strategy, reason, _Mapped(self.trainer, run, tickets, teacher, strategy)

  def train(self, tickets: Sequence[Ticket], *, end_step: int, optimizer: optim.OptimizerSpec,
            schedule: optim.ScheduleSpec, loss: losses.LossConfig = losses.LossConfig(),
            teacher: dict | None = None, directory: str | None = None,
            name: str = "tickets") -> BatchResult:
    """Trains every ticket from its starting state to ``end_step``, together.

    Args:
      tickets: the K tickets; their starting states must share ``step`` (the schedule position).
      end_step: train until ``state.step == end_step``.
      optimizer: optimizer settings (shared).
      schedule: LR schedule (shared).
      loss: loss settings (shared).
      teacher: ``{"params", "batch_stats"}`` of a frozen KD teacher shared by all tickets, or None.
      directory: if given, the stacked states are checkpointed there every
        ``settings.checkpoint_every_steps`` and at the end; a re-run resumes from the latest one,
        and a finished batch is loaded, not retrained.
      name: for logs.

    Returns:
      A :class:`BatchResult`.

    Raises:
      ValueError: no tickets, tickets starting at different steps, a directory holding other
        tickets, or a strategy that cannot run here.
      kdt.train.loop.NonFiniteLossError: a ticket's loss became NaN/inf (the message names it).
    """
    if not tickets:
      raise ValueError("train() needs at least one ticket.")
    names = [t.name for t in tickets]
    run = loop.Run(name=name, directory=directory or "", init_state=tickets[0].init_state,
                   mask=tickets[0].mask, end_step=end_step, optimizer=optimizer,
                   schedule=schedule, loss=loss, teacher=teacher)
    strategy, reason, engine = self.engine(tickets, run, teacher)
    log.info("[%s] %d tickets (%s) with strategy %s (%s).", name, len(tickets), ", ".join(names),
             strategy, reason)
    settings = self.trainer.settings
    ckpt = None
    if directory:
      ckpt = checkpoint_lib.Checkpointer(directory, pinned_steps=(end_step,),
                                         keep_last=settings.keep_checkpoints)
    wall = 0.0
    try:
      states, step, finished = None, None, False
      if ckpt is not None and ckpt.latest_step() is not None:
        stored = ckpt.restore_meta(ckpt.latest_step()).get("tickets")
        if stored != names:
          raise ValueError(f"{directory} holds tickets {stored}, not {names}; use another "
                           "directory.")
        shapes = jax.eval_shape(tickets[0].init_state)
        like = jax.tree.map(lambda x: jax.ShapeDtypeStruct(
            (len(tickets), *x.shape), x.dtype, sharding=parallel.replicated(self.trainer.mesh)),
            shapes)
        restored = ckpt.restore_latest(like)
        if restored is not None:
          step, stacked, meta = restored
          if strategy == "shard_map":
            stacked = jax.device_put(jax.device_get(stacked), engine.sharding)
          states, finished = engine.from_stacked(stacked), bool(meta.get("finished"))
          log.info("[%s] %s tickets at step %d of %d.", name,
                   "finished" if finished else "resuming", step, end_step)
      if states is None:
        states = engine.init()
        starts = {int(parallel.to_host(s.step)) for s in engine.per_ticket(states)}
        if len(starts) != 1:
          raise ValueError(f"tickets start at different schedule steps {sorted(starts)}; "
                           "BatchTrainer trains tickets that share their step range.")
        step = starts.pop()
      meta = {"tickets": names, "strategy": strategy, "finished": False}

      start_time, pending = time.time(), []
      while step < end_step:
        states, metrics = engine.advance(states, step)
        pending.append((step, metrics))
        step += 1
        if step == end_step or (settings.log_every_steps and step % settings.log_every_steps == 0):
          _check_and_log(name, names, pending, end_step)
          pending = []
        if ckpt is not None and step < end_step and settings.checkpoint_every_steps and \
            step % settings.checkpoint_every_steps == 0:
          ckpt.save(step, _replicated(engine.stacked(states), self.trainer.mesh, strategy), meta)
      wall = time.time() - start_time
      if ckpt is not None and not finished:
        ckpt.save(step, _replicated(engine.stacked(states), self.trainer.mesh, strategy),
                  {**meta, "finished": True})
    finally:
      if ckpt is not None:
        ckpt.close()

    per_ticket = engine.per_ticket(states)
    evaluations = [self.trainer.evaluate_all(s.params, s.batch_stats, t.mask)
                   for s, t in zip(per_ticket, tickets)]
    for ticket, result in zip(tickets, evaluations):
      log.info("[%s/%s] finished: %s", name, ticket.name,
               "  ".join(f"{k} {v:.4f}" for k, v in result.items() if k.endswith("accuracy")))
    return BatchResult(per_ticket, evaluations, strategy, wall)


def _replicated(stacked, mesh, strategy: str):
  """Checkpoints always hold the stacked states replicated on the data mesh."""
  if strategy == "shard_map":
    return parallel.replicate(jax.device_get(stacked), mesh)
  return stacked


def _check_and_log(name: str, names: Sequence[str], pending: list, end_step: int) -> None:
  """Fetches the pending per-ticket losses, stops on a non-finite one, logs their means."""
  fetched = [np.asarray(parallel.to_host(m["loss"]), np.float64) for _, m in pending]
  for (at_step, _), values in zip(pending, fetched):
    for ticket, value in zip(names, values.tolist()):
      if not math.isfinite(value):
        raise loop.NonFiniteLossError(
            f"[{name}/{ticket}] non-finite loss ({value}) at step {at_step}; stopping.")
  means = np.mean(fetched, axis=0)
  log.info("[%s] step %d/%d  loss %s", name, pending[-1][0] + 1, end_step,
           "  ".join(f"{ticket} {value:.4f}" for ticket, value in zip(names, means)))


# ----- measuring the strategies ---------------------------------------------------------------------

def benchmark(model_name: str = "conv2", dataset_name: str = "digits", num_tickets: int = 4,
              batch_size: int = 64, steps: int = 10,
              strategies: Sequence[str] = ("sequential", "vmap", "lax_map")) -> dict[str, float]:
  """Seconds per training step of all K tickets under each strategy (compilation excluded).

  Args:
    model_name: a :func:`kdt.models.model_names` entry.
    dataset_name: an in-memory dataset (its training images).
    num_tickets: K.
    batch_size: global batch per ticket.
    steps: timed steps (after one warm-up step that compiles).
    strategies: which to time (``"shard_map"`` needs K to be a multiple of the local devices).

  Returns:
    ``{strategy: seconds per step}``.
  """
  from kdt import data as data_lib  # pylint: disable=import-outside-toplevel
  from kdt import models as models_lib  # pylint: disable=import-outside-toplevel

  dataset = data_lib.load_dataset(dataset_name)
  model = models_lib.create_model(model_name, num_classes=dataset.info.num_classes,
                                  input_shape=dataset.info.input_shape)
  settings = loop.LoopSettings(batch_size=batch_size, log_every_steps=0, checkpoint_every_steps=0)
  trainer = loop.Trainer(model, dataset, parallel.make_mesh(), settings)
  optimizer = optim.OptimizerSpec()
  schedule = optim.ScheduleSpec(name="constant", learning_rate=0.01, num_steps=steps + 1)
  direction = optimizer.make()
  tickets = []
  for k in range(num_tickets):
    init = loop.init_state_fn(model, dataset.info.input_shape, direction, seed=k)
    mask = jax.tree.map(lambda x: np.ones(x.shape, bool), jax.eval_shape(init).params)
    tickets.append(Ticket(f"seed_{k}", init, mask, data_seed=k, augment_seed=k))
  run = loop.Run(name="bench", directory="", init_state=tickets[0].init_state,
                 mask=tickets[0].mask, end_step=steps + 1, optimizer=optimizer, schedule=schedule)
  seconds = {}
  for strategy in strategies:
    _, _, engine = BatchTrainer(trainer, strategy).engine(tickets, run)
    states = engine.init()
    states, metrics = engine.advance(states, 0)
    jax.block_until_ready((states, metrics))
    start = time.perf_counter()
    for step in range(1, steps + 1):
      states, metrics = engine.advance(states, step)
    jax.block_until_ready((states, metrics))
    seconds[strategy] = (time.perf_counter() - start) / steps
  return seconds


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
  """``python -m kdt.tickets.batch``: times the strategies here and prints their ratios."""
  parser = argparse.ArgumentParser(description="Times the many-tickets strategies on this backend.")
  parser.add_argument("--model", default="conv2")
  parser.add_argument("--dataset", default="digits")
  parser.add_argument("--tickets", type=int, default=4)
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--strategies", default="sequential,vmap,lax_map")
  args = parser.parse_args(argv)
  seconds = benchmark(args.model, args.dataset, args.tickets, args.batch_size, args.steps,
                      tuple(args.strategies.split(",")))
  fastest = min(seconds, key=seconds.get)
  print(f"{args.tickets} tickets of {args.model} on {args.dataset}, batch {args.batch_size}, "
        f"backend {jax.default_backend()} ({jax.local_device_count()} local devices):")
  for strategy, value in seconds.items():
    print(f"  {strategy:<10} {1e3 * value:8.1f} ms/step  ({value / seconds[fastest]:.2f}x the fastest)")
  print(f"fastest here: {fastest}; 'auto' picks {choose_strategy('auto', args.tickets)[0]}")
  return seconds


if __name__ == "__main__":
  main()
