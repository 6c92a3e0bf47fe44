"""Many tickets at once: every strategy gives what training the tickets one by one gives."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdt import data as data_lib
from kdt import models as models_lib
from kdt import parallel
from kdt.tickets import batch
from kdt.train import loop
from kdt.train import losses
from kdt.train import optim
from kdt.train import steps

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
END_STEP = 10
OPTIMIZER = optim.OptimizerSpec(name="sgd", momentum=0.9, weight_decay=1e-4)
SCHEDULE = optim.ScheduleSpec(name="step", learning_rate=0.05, num_steps=END_STEP, milestones=(6,))
LOSS = losses.LossConfig(kd_alpha=0.5, kd_temperature=2.0)


def _setup(dataset=None, num_tickets=3):
  """A trainer on digits and K LeNet tickets differing in init, mask, data order and augmentation."""
  dataset = dataset or data_lib.load_dataset("digits")
  model = models_lib.create_model("lenet_300_100", num_classes=10,
                                  input_shape=dataset.info.input_shape)
  settings = loop.LoopSettings(batch_size=32, eval_batch_size=120, log_every_steps=5,
                               checkpoint_every_steps=4, keep_checkpoints=1)
  trainer = loop.Trainer(model, dataset, parallel.make_mesh(), settings)
  direction = OPTIMIZER.make()
  tickets = []
  for k in range(num_tickets):
    init = loop.init_state_fn(model, dataset.info.input_shape, direction, seed=k)
    shapes = jax.eval_shape(init).params
    # Ticket k keeps the weights whose hashed index is not divisible by k + 2: distinct masks.
    mask = jax.tree.map(lambda x, k=k: (np.arange(int(np.prod(x.shape))).reshape(x.shape) * 7919
                                        % (k + 2)) != 0, shapes)
    tickets.append(batch.Ticket(f"ticket_{k}", _masked(init, mask), mask, data_seed=10 + k,
                                augment_seed=20 + k))
  teacher_init = loop.init_state_fn(model, dataset.info.input_shape, direction, seed=99)()
  teacher = {"params": teacher_init.params, "batch_stats": teacher_init.batch_stats}
  return trainer, tickets, teacher


def _masked(init, mask):
  """The starting state with the pruned weights zeroed (as IMP's weight reset does)."""
  return lambda: (lambda state: state.replace(params=steps.apply_mask(state.params, mask)))(init())


def _one_by_one(trainer, tickets, teacher, root):
  results = []
  for ticket in tickets:
    run = loop.Run(name=ticket.name, directory=str(root / ticket.name),
                   init_state=ticket.init_state, mask=ticket.mask, end_step=END_STEP,
                   optimizer=OPTIMIZER, schedule=SCHEDULE, loss=LOSS, teacher=teacher,
                   data_seed=ticket.data_seed, augment_seed=ticket.augment_seed)
    results.append(trainer.train(run))
  return results


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  trainer, tickets, teacher = _setup()
  results = _one_by_one(trainer, tickets, teacher, tmp_path_factory.mktemp("one_by_one"))
  return [parallel.to_host(r.state.params) for r in results], [r.final for r in results]


def _max_difference(a, b):
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize("strategy, atol", [("sequential", 0.0), ("lax_map", 1e-6), ("vmap", 1e-6)])
def test_batch_equals_one_by_one(strategy, atol, reference):
  want_params, want_evals = reference
  trainer, tickets, teacher = _setup()
  result = batch.BatchTrainer(trainer, strategy).train(
      tickets, end_step=END_STEP, optimizer=OPTIMIZER, schedule=SCHEDULE, loss=LOSS,
      teacher=teacher)
  assert result.strategy == strategy
  for k, state in enumerate(result.states):
    assert int(state.step) == END_STEP
    assert _max_difference(state.params, want_params[k]) <= atol
    # pruned weights stayed exactly zero
    for p, m in zip(jax.tree.leaves(state.params), jax.tree.leaves(tickets[k].mask)):
      assert not np.any(np.asarray(p)[~m])
    for key in ("test_accuracy", "test_loss"):
      assert result.evaluations[k][key] == pytest.approx(want_evals[k][key], abs=1e-5)
  # The tickets really differ (masks, seeds): the batch did not train one ticket K times.
  assert _max_difference(result.states[0].params, result.states[1].params) > 1e-3


class _CrashAt:
  """A dataset that raises (like a killed process) when asked for the batch of ``step``."""

  def __init__(self, dataset, step):
    self._dataset, self._step = dataset, step

  def __getattr__(self, name):
    return getattr(self._dataset, name)

  def train_batch(self, step, *args, **kwargs):
    if step == self._step:
      raise KeyboardInterrupt("simulated kill")
    return self._dataset.train_batch(step, *args, **kwargs)


def test_resume_after_a_crash_and_finished_batches_are_loaded(tmp_path, reference):
  want_params, _ = reference
  dataset = data_lib.load_dataset("digits")
  directory = str(tmp_path / "tickets")
  trainer, tickets, teacher = _setup(_CrashAt(dataset, 6))
  with pytest.raises(KeyboardInterrupt):
    batch.BatchTrainer(trainer, "vmap").train(tickets, end_step=END_STEP, optimizer=OPTIMIZER,
                                              schedule=SCHEDULE, loss=LOSS, teacher=teacher,
                                              directory=directory)
  assert sorted(os.listdir(directory)) == ["4"]  # checkpointed at step 4, killed at step 6
  trainer, tickets, teacher = _setup(dataset)
  resumed = batch.BatchTrainer(trainer, "vmap").train(
      tickets, end_step=END_STEP, optimizer=OPTIMIZER, schedule=SCHEDULE, loss=LOSS,
      teacher=teacher, directory=directory)
  for k, state in enumerate(resumed.states):
    assert _max_difference(state.params, want_params[k]) <= 1e-6
  # Run again: the finished batch is loaded (no step trained), with the same weights.
  trainer, tickets, teacher = _setup(_CrashAt(dataset, 0))  # would raise if it trained
  again = batch.BatchTrainer(trainer, "sequential").train(
      tickets, end_step=END_STEP, optimizer=OPTIMIZER, schedule=SCHEDULE, loss=LOSS,
      teacher=teacher, directory=directory)
  for a, b in zip(again.states, resumed.states):
    assert _max_difference(a.params, b.params) == 0.0
  with pytest.raises(ValueError, match="holds tickets"):
    batch.BatchTrainer(trainer).train(tickets[:2], end_step=END_STEP, optimizer=OPTIMIZER,
                                      schedule=SCHEDULE, directory=directory)


def test_non_finite_loss_names_the_ticket():
  trainer, tickets, _ = _setup(num_tickets=2)
  good_init = tickets[1].init_state

  def poisoned():
    state = good_init()
    return state.replace(params=jax.tree.map(lambda p: p * jnp.nan, state.params))

  tickets[1] = batch.Ticket("poisoned", poisoned, tickets[1].mask)
  with pytest.raises(loop.NonFiniteLossError, match="poisoned"):
    batch.BatchTrainer(trainer, "vmap").train(tickets, end_step=2, optimizer=OPTIMIZER,
                                              schedule=SCHEDULE)


def test_tickets_must_share_their_step_range():
  trainer, tickets, _ = _setup(num_tickets=2)
  start = tickets[1].init_state
  tickets[1] = batch.Ticket("later", lambda: start().replace(step=jnp.asarray(3, jnp.int32)),
                            tickets[1].mask)
  with pytest.raises(ValueError, match="different schedule steps"):
    batch.BatchTrainer(trainer).train(tickets, end_step=END_STEP, optimizer=OPTIMIZER,
                                      schedule=SCHEDULE)


def test_choose_strategy_per_backend_and_checks():
  assert batch.choose_strategy("auto", 4, backend="cpu", local_devices=8, process_count=1)[0] == \
      "sequential"
  for backend in ("gpu", "tpu"):
    assert batch.choose_strategy("auto", 4, backend=backend, local_devices=8,
                                 process_count=2)[0] == "vmap"
  assert batch.choose_strategy("shard_map", 8, backend="cpu", local_devices=4,
                               process_count=1) == ("shard_map", "requested")
  with pytest.raises(ValueError, match="multiple of its device count"):
    batch.choose_strategy("shard_map", 6, backend="cpu", local_devices=4, process_count=1)
  with pytest.raises(ValueError, match="one process"):
    batch.choose_strategy("shard_map", 4, backend="cpu", local_devices=4, process_count=2)
  with pytest.raises(ValueError, match="allowed one of"):
    batch.choose_strategy("pmap", 4)


_SHARD_MAP_SCRIPT = textwrap.dedent("""
    import sys
    import jax, numpy as np
    sys.path.insert(0, {tests!r})
    import test_batch as t
    from kdt.tickets import batch
    trainer, tickets, teacher = t._setup()
    result = batch.BatchTrainer(trainer, "shard_map").train(
        tickets, end_step=t.END_STEP, optimizer=t.OPTIMIZER, schedule=t.SCHEDULE, loss=t.LOSS,
        teacher=teacher)
    assert result.strategy == "shard_map" and jax.local_device_count() == len(tickets)
    leaves = [np.asarray(x) for s in result.states for x in jax.tree.leaves(s.params)]
    np.savez({out!r}, *leaves)
    """)


def test_shard_map_over_three_devices_equals_one_by_one(tmp_path, reference):
  """One ticket per device (3 fake CPU devices), compared with the one-by-one runs on 1 device."""
  want_params, _ = reference
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(JAX_PLATFORMS="cpu", JAX_DISABLE_MOST_OPTIMIZATIONS="1",
             XLA_FLAGS="--xla_force_host_platform_device_count=3")
  out = str(tmp_path / "params.npz")
  script = _SHARD_MAP_SCRIPT.format(tests=os.path.dirname(os.path.abspath(__file__)), out=out)
  proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=180)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with np.load(out) as saved:
    got = [saved[f"arr_{i}"] for i in range(len(saved.files))]
  want = [np.asarray(x) for params in want_params for x in jax.tree.leaves(params)]
  assert len(got) == len(want)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=0, atol=1e-6)
