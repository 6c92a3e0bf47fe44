"""Many tickets at once: training runs of one model advanced together on a leading ticket axis.

An IMP round's recipes that start at the same step, the replicates of an experiment
(``config.replicates``) and LMC's copies all train K copies of one model that differ only in their
starting state, mask, data order, augmentation stream and KD teacher. :func:`train_runs` trains
such :class:`~kdt.train.loop.Run` s together with the very step a single run uses
(:meth:`kdt.train.loop.Trainer.step_function`), each run checkpointing into its own directory in the
single-run format. ``config.tickets.strategy``:

* ``"vmap"`` — the K states, masks, batches, teachers and RNG keys stacked on a leading "ticket"
  axis and the step ``jax.vmap``-ed: one compiled program per step for all K. ``auto`` on GPU/TPU,
  where one LeNet or ResNet-20 at batch 128 uses a small part of the chip.
* ``"sequential"`` — the runs one after another through the single-run loop (one compile per
  variant, shared): bit-for-bit one-by-one runs. ``auto`` on CPU, where XLA lowers a convolution
  vmapped over its weights to a grouped convolution that is slower than K plain ones.
* ``"lax_map"`` — one program that loops over the stacked tickets with ``jax.lax.map``: the
  activation memory of one ticket instead of K (for accelerators short of memory; slowest on CPU).
* ``"shard_map"`` — the ticket axis split over this host's devices with ``jax.shard_map`` (each
  device trains its own tickets, vmapped; no cross-device traffic). One process only.

``config.tickets.max_per_program`` bounds K per program (memory). ``python -m kdt.bench --sections
tickets`` measures throughput and peak memory per strategy and K; the run log says which strategy
``auto`` picked and why. With ``"vmap"`` and ``"lax_map"`` the data-parallel mesh still applies
(state replicated, each ticket's batch sharded over ``"data"``), on one host or many; the results
equal training the runs one by one to float32 rounding (``tests/test_batch.py``).
"""

from __future__ import annotations

import logging
import math
import os
import time
from typing import Any, Callable, Generator, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from kdt import parallel
from kdt import timing
from kdt.train import loop

log = logging.getLogger(__name__)

STRATEGIES = ("auto", "vmap", "sequential", "lax_map", "shard_map")
"""``config.tickets.strategy``: how runs trained together advance (see the module docstring)."""
TICKET_AXIS = "ticket"


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
                     ticket_mesh: jax.sharding.Mesh | None = None,
                     teacher_axis: int | None = None) -> Callable:
  """Maps one ticket's step over a leading ticket axis (one program for all tickets).

  Args:
    step_fn: ``(state, mask, raw_batch, teacher, augment_key) -> (state, metrics)`` of one ticket
      (:meth:`kdt.train.loop.Trainer.step_function`).
    strategy: ``"vmap"``, ``"lax_map"`` or ``"shard_map"``.
    ticket_mesh: for ``"shard_map"``: a 1-D mesh with axis ``"ticket"``.
    teacher_axis: None: one ``teacher`` shared by all tickets (or no teacher); 0: each ticket's
      own teacher (variables, or cached logits) on the leading axis.

  Returns:
    ``(states, masks, raw_batches, teacher, augment_keys) -> (states, metrics)``, every argument
    with the leading ticket axis (``teacher`` as ``teacher_axis`` says). Pure.
  """
  vmapped = jax.vmap(step_fn, in_axes=(0, 0, 0, teacher_axis, 0))
  if strategy == "vmap":
    return vmapped
  if strategy == "lax_map":
    if teacher_axis is None:
      def looped(states, masks, batches, teacher, keys):
        return jax.lax.map(lambda xs: step_fn(xs[0], xs[1], xs[2], teacher, xs[3]),
                           (states, masks, batches, keys))
    else:
      def looped(states, masks, batches, teacher, keys):
        return jax.lax.map(lambda xs: step_fn(*xs), (states, masks, batches, teacher, keys))
    return looped
  if strategy == "shard_map":
    t = P(TICKET_AXIS)
    teacher_spec = P() if teacher_axis is None else t
    return jax.shard_map(vmapped, mesh=ticket_mesh, in_specs=(t, t, t, teacher_spec, t),
                         out_specs=(t, t))
  raise ValueError(f"strategy={strategy!r} is invalid: allowed 'vmap', 'lax_map', 'shard_map'.")


def _by_key(batches: Sequence[dict]) -> dict[str, list]:
  return {k: [b[k] for b in batches] for k in batches[0]}


def train_runs(trainer: loop.Trainer, runs: Sequence[loop.Run], *, strategy: str = "auto",
               max_per_program: int = 0) -> list[loop.RunResult]:
  """Trains every run to its end step; runs that can share a program train together.

  Runs share a program when they have the same compiled variant (optimizer, schedule, loss,
  teacher kind) and are at the same step with the same end step — e.g. an IMP round's ``lth``,
  ``kd``-less controls and the replicates of each. Each run keeps its own mask, data order,
  augmentation stream, teacher and checkpoint directory, in exactly the format of a single run:
  a killed batch resumes (each run from its own latest checkpoint), a finished run is loaded, and
  :meth:`kdt.train.loop.Trainer.train` reads what this wrote and vice versa.

  With ``"sequential"`` (``"auto"`` on CPU) the runs are trained one after another by
  :meth:`~kdt.train.loop.Trainer.train`: bit for bit what separate runs give, with the compiles
  shared. With ``"vmap"`` / ``"lax_map"`` / ``"shard_map"`` each group advances as one program
  over a leading ticket axis; the results equal one-by-one training to float32 rounding
  (``tests/test_batch.py``). Runs that resume at different steps (a kill between two runs'
  checkpoint writes) form separate groups.

  Args:
    trainer: the runs' trainer (model, dataset, mesh, cadence).
    runs: the runs (any order; results come back in that order).
    strategy: one of :data:`STRATEGIES`.
    max_per_program: at most this many tickets per program (a memory bound); 0 = no bound.

  Returns:
    One :class:`~kdt.train.loop.RunResult` per run.

  Raises:
    ValueError: an unknown strategy, or one that cannot run here.
    kdt.train.loop.NonFiniteLossError: a run's loss became NaN/inf (the message names it).
    kdt.train.loop.PreemptedError: SIGTERM or Ctrl-C; every run in flight has been checkpointed.
  """
  runs = list(runs)
  if not runs:
    return []
  resolved, reason = choose_strategy(strategy, len(runs))
  if resolved == "sequential" or len(runs) == 1:
    if len(runs) > 1:
      log.info("[tickets] %d runs one after another, strategy sequential (%s)", len(runs), reason)
    return [trainer.train(run) for run in runs]
  if resolved == "shard_map" and trainer.ghost_batch_norm:
    raise ValueError("tickets.strategy='shard_map' cannot be combined with ghost BatchNorm (both "
                     "map over the devices); use 'sequential', 'vmap' or 'lax_map'.")
  runs = [trainer.named(run) for run in runs]
  ckpts = [trainer.checkpointer(run) for run in runs]
  results: list[loop.RunResult | None] = [None] * len(runs)
  try:
    groups: dict[tuple, list[int]] = {}
    opened = {}
    for i, (run, ckpt) in enumerate(zip(runs, ckpts)):
      state, meta, finished = trainer.open_run(run, ckpt)
      if finished:
        results[i] = loop.RunResult(state, meta)
        continue
      opened[i] = (state, meta)
      key = (loop.Trainer.variant(run), int(state.step), run.end_step)
      groups.setdefault(key, []).append(i)
    for members in groups.values():
      size = max_per_program or len(members)
      for first in range(0, len(members), size):
        chunk = members[first:first + size]
        if len(chunk) == 1 or (resolved == "shard_map" and len(chunk) % jax.local_device_count()):
          for i in chunk:  # alone (or not divisible over the devices): the single-run loop
            results[i] = trainer.continue_run(runs[i], ckpts[i], *opened[i])
          continue
        log.info("[tickets] %d runs together with strategy %s (%s): %s", len(chunk), resolved,
                 reason, ", ".join(runs[i].name for i in chunk))
        trained = _train_together(trainer, [runs[i] for i in chunk], [ckpts[i] for i in chunk],
                                  [opened[i][0] for i in chunk], [opened[i][1] for i in chunk],
                                  resolved)
        for i, result in zip(chunk, trained):
          results[i] = result
  finally:
    for ckpt in ckpts:
      ckpt.close()
  return results


def _mapped_step(trainer: loop.Trainer, variant: tuple, strategy: str, ticket_mesh) -> Callable:
  """The jitted step of ``variant`` mapped over the ticket axis (cached on the trainer)."""
  teacher_axis = None if variant[3] == "none" else 0

  def build():
    mapped = map_over_tickets(trainer.step_function(variant), strategy, ticket_mesh=ticket_mesh,
                              teacher_axis=teacher_axis)
    sharding = (NamedSharding(ticket_mesh, P(TICKET_AXIS)) if strategy == "shard_map"
                else parallel.replicated(trainer.mesh))
    return jax.jit(mapped, donate_argnums=(0,), out_shardings=(sharding, sharding))

  return trainer.compiled(("tickets", strategy, variant), build)


def _train_together(trainer: loop.Trainer, runs: list[loop.Run], ckpts: list, states: list,
                    metas: list[dict], strategy: str) -> list[loop.RunResult]:
  """K runs at one step with one variant, advanced by one mapped program to their end step."""
  s, mesh, count = trainer.settings, trainer.mesh, len(runs)
  variant = loop.Trainer.variant(runs[0])
  teacher_kind = variant[3]
  if strategy == "shard_map":
    ticket_mesh = jax.sharding.Mesh(np.array(jax.local_devices()), (TICKET_AXIS,))
    sharding = batch_sharding = NamedSharding(ticket_mesh, P(TICKET_AXIS))
  else:
    ticket_mesh = None
    sharding = parallel.replicated(mesh)
    batch_sharding = NamedSharding(mesh, P(None, parallel.DATA_AXIS))
  step_fn = _mapped_step(trainer, variant, strategy, ticket_mesh)
  to_ticket_axis = jax.jit(stack, out_shardings=sharding)
  host_masks = [parallel.to_host(run.mask) for run in runs]
  masks = jax.device_put(stack(host_masks), sharding)
  replicated_masks = [parallel.replicate(m, mesh) for m in host_masks]
  keys = jax.device_put(jax.vmap(jax.random.key)(jnp.asarray([r.augment_seed for r in runs])),
                        sharding)
  teacher = None
  if teacher_kind == "model":
    teacher = jax.device_put(stack([parallel.to_host(r.teacher) for r in runs]), sharding)
  step, end_step = int(states[0].step), runs[0].end_step
  stacked = to_ticket_axis([jax.device_put(x, parallel.replicated(mesh)) for x in states])
  writers = [trainer.writer_factory(run.name, purge_step=step + 1) if trainer.writer_factory
             else None for run in runs]
  names = [run.name for run in runs]
  walls = [meta["wall_time"] for meta in metas]
  started = time.time()

  def per_run_states():
    if strategy == "shard_map":  # evaluation and checkpoints live on the data mesh
      return unstack(parallel.replicate(jax.device_get(stacked), mesh), count)
    return unstack(stacked, count)

  def save(at_step: int, finished: bool = False):
    with timing.timed("checkpoints"):
      for run, ckpt, state, meta, wall in zip(runs, ckpts, per_run_states(), metas, walls):
        meta["wall_time"] = wall + time.time() - started
        meta["finished"] = finished
        ckpt.save(at_step, state, meta)

  def evaluate(at_step: int):
    with timing.timed("eval"):
      for run, state, mask, meta, writer in zip(runs, per_run_states(), replicated_masks, metas,
                                                writers):
        trainer.record_eval(run, state, mask, at_step, meta, writer)

  pending: list[tuple[int, Any]] = []
  first_step = step
  with timing.timed("train_steps"):
    if s.eval_at_start and not metas[0]["history"]:
      evaluate(step)
    while step < end_step:
      if loop.stop_requested():
        if step > first_step:
          save(step)
        raise loop.stop_error("tickets: " + ", ".join(names), step, runs[0].directory)
      with timing.timed("data"):
        local = _by_key([trainer.train_batch(step, run) for run in runs])
        local = {k: np.stack(v) for k, v in local.items()}
        if strategy == "shard_map":  # one process holds every ticket's rows
          raw = jax.device_put(local, batch_sharding)
        else:
          raw = {k: jax.make_array_from_process_local_data(batch_sharding, v)
                 for k, v in local.items()}
        if teacher_kind == "cached":
          teacher = jnp.stack([trainer.cached_teacher_logits(step, run) for run in runs])
      stacked, metrics = trainer.call_step(step_fn, stacked, masks, raw, teacher, keys)
      pending.append((step, metrics))
      step += 1
      for meta in metas:
        meta["steps_trained"] += 1
      if step == end_step or (s.log_every_steps and step % s.log_every_steps == 0):
        _check_and_log(names, pending, end_step)
        pending = []
      if s.eval_every_steps and step % s.eval_every_steps == 0 and step < end_step:
        evaluate(step)
      if step < end_step and ((s.checkpoint_every_steps and step % s.checkpoint_every_steps == 0)
                              or step in runs[0].pinned_steps):
        save(step)
    if not metas[0]["history"] or metas[0]["history"][-1]["step"] != step:
      evaluate(step)
    save(step, finished=True)
  for writer in writers:
    if writer:
      writer.flush()
  trained = max(step - first_step, 1)
  seconds = (time.time() - started) / trained / count
  for run, meta in zip(runs, metas):  # each run's line, as the single-run loop writes it
    note = trainer.report_progress(loop.Progress(
        run.name, run.directory, step, meta["start_step"], run.end_step, step - first_step,
        seconds, float("nan"), float("nan"), finished=True))
    log.info("[%s] finished: %s%s", run.name, loop.format_eval(meta["history"][-1]), note)
  return [loop.RunResult(state, meta) for state, meta in zip(per_run_states(), metas)]


def _check_and_log(names: Sequence[str], pending: list, end_step: int) -> None:
  """Fetches the pending per-ticket losses, stops on a non-finite one, logs their means."""
  fetched = [np.asarray(parallel.to_host(m["loss"]), np.float64) for _, m in pending]
  for (at_step, _), values in zip(pending, fetched):
    for name, value in zip(names, values.tolist()):
      if not math.isfinite(value):
        raise loop.NonFiniteLossError(f"[{name}] non-finite loss ({value}) at step {at_step}; "
                                      "stopping.")
  means = np.mean(fetched, axis=0)
  log.info("[tickets] step %d/%d  train loss %s", pending[-1][0] + 1, end_step,
           "  ".join(f"{name} {value:.4f}" for name, value in zip(names, means)))


class Job(NamedTuple):
  """A run and the trainer that trains it (a replicate's trainer names its runs)."""
  trainer: loop.Trainer
  run: loop.Run


def train_jobs(jobs: Sequence[Job], *, strategy: str = "auto",
               max_per_program: int = 0) -> list[loop.RunResult]:
  """:func:`train_runs` over jobs whose trainers may differ only in their name prefix.

  Jobs of trainers that share compiled steps (copies made by
  :meth:`~kdt.train.loop.Trainer.with_name_prefix`, e.g. one per replicate) train together;
  others (ToST's tweaked network) in their own groups. Jobs with the same run directory are the
  same run (the dense run that several plans need first): it trains once and every such job gets
  its result. Results come back in the jobs' order.
  """
  first_of: dict[str, int] = {}
  groups: dict[int, list[int]] = {}
  for i, job in enumerate(jobs):
    if first_of.setdefault(os.path.normpath(job.run.directory), i) == i:
      groups.setdefault(job.trainer.compile_cache_id, []).append(i)
  results: list[loop.RunResult | None] = [None] * len(jobs)
  for members in groups.values():
    trainer = jobs[members[0]].trainer.with_name_prefix("")
    runs = [jobs[i].trainer.named(jobs[i].run) for i in members]
    for i, result in zip(members, train_runs(trainer, runs, strategy=strategy,
                                             max_per_program=max_per_program)):
      results[i] = result
  return [results[first_of[os.path.normpath(job.run.directory)]] for job in jobs]


Plan = Generator[list[Job], list[loop.RunResult], Any]
"""An experiment as a coroutine: yields the jobs it needs now, receives their results (in
order), and finally returns its own result."""


def together(plans: Sequence[Plan]) -> Plan:
  """One plan made of several advanced in lockstep: each step yields every plan's pending jobs
  at once (one batch of tickets) and returns each plan's return value, in order.

  Compose with ``yield from`` (``values = yield from together([...])``) inside a plan, or run with
  :func:`drive`.
  """
  plans = list(plans)
  returned: list[Any] = [None] * len(plans)
  pending: dict[int, list[Job]] = {}

  def advance(index: int, sent: list | None) -> None:
    try:
      pending[index] = next(plans[index]) if sent is None else plans[index].send(sent)
    except StopIteration as stop:
      returned[index] = stop.value
      pending.pop(index, None)

  for index in range(len(plans)):
    advance(index, None)
  while pending:
    order = list(pending)
    results = yield [job for index in order for job in pending[index]]
    position = 0
    for index in order:
      count = len(pending[index])
      advance(index, results[position:position + count])
      position += count
  return returned


def drive(plans: Sequence[Plan], train: Callable[[list[Job]], list[loop.RunResult]]) -> list:
  """Advances several plans in lockstep: each step trains every plan's pending jobs together.

  Args:
    plans: started-or-not generators (e.g. one IMP experiment per replicate).
    train: trains a list of jobs, returning their results in order (:func:`train_jobs`).

  Returns:
    Each plan's return value, in order.
  """
  plan = together(plans)
  try:
    jobs = next(plan)
    while True:
      jobs = plan.send(train(jobs))
  except StopIteration as stop:
    return stop.value
