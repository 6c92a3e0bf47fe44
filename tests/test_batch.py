"""Many runs at once (the ticket axis): every strategy gives what training the runs one by one gives."""

import dataclasses
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
  """A trainer on digits and K LeNet run factories differing in init, mask, data order,
  augmentation and KD teacher (``make_runs(root)`` -> the K runs, checkpointing under root)."""
  dataset = dataset or data_lib.load_dataset("digits")
  model = models_lib.create_model("lenet_300_100", num_classes=10,
                                  input_shape=dataset.info.input_shape)
  settings = loop.LoopSettings(batch_size=32, eval_batch_size=120, log_every_steps=5,
                               eval_every_steps=5, checkpoint_every_steps=4, keep_checkpoints=1)
  trainer = loop.Trainer(model, dataset, parallel.make_mesh(), settings)
  direction = OPTIMIZER.make()
  parts = []
  for k in range(num_tickets):
    init = loop.init_state_fn(model, dataset.info.input_shape, direction, seed=k)
    shapes = jax.eval_shape(init).params
    # Ticket k keeps the weights whose hashed index is not divisible by k + 2: distinct masks.
    mask = jax.tree.map(lambda x, k=k: (np.arange(int(np.prod(x.shape))).reshape(x.shape) * 7919
                                        % (k + 2)) != 0, shapes)
    teacher_state = loop.init_state_fn(model, dataset.info.input_shape, direction, seed=99 + k)()
    teacher = {"params": teacher_state.params, "batch_stats": teacher_state.batch_stats}
    parts.append((f"ticket_{k}", _masked(init, mask), mask, teacher, 10 + k, 20 + k))

  def make_runs(root, teacher=True):
    return [loop.Run(name=name, directory=os.path.join(str(root), name), init_state=init,
                     mask=mask, end_step=END_STEP, optimizer=OPTIMIZER, schedule=SCHEDULE,
                     loss=LOSS, teacher=teacher_vars if teacher else None, data_seed=data_seed,
                     augment_seed=augment_seed)
            for name, init, mask, teacher_vars, data_seed, augment_seed in parts]

  return trainer, make_runs


def _masked(init, mask):
  """The starting state with the pruned weights zeroed (as IMP's weight reset does)."""
  return lambda: (lambda state: state.replace(params=steps.apply_mask(state.params, mask)))(init())


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """The runs trained one by one by the single-run loop."""
  trainer, make_runs = _setup()
  results = [trainer.train(run) for run in make_runs(tmp_path_factory.mktemp("one_by_one"))]
  return [parallel.to_host(r.state.params) for r in results], [r.meta["history"] for r in results]


def _max_difference(a, b):
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _assert_matches(results, runs, reference, atol):
  want_params, want_histories = reference
  for k, (result, run) in enumerate(zip(results, runs)):
    assert int(result.state.step) == END_STEP and result.meta["finished"]
    assert _max_difference(result.state.params, want_params[k]) <= atol
    for p, m in zip(jax.tree.leaves(result.state.params), jax.tree.leaves(run.mask)):
      assert not np.any(np.asarray(p)[~m])  # pruned weights stayed exactly zero
    history = result.meta["history"]
    assert [h["step"] for h in history] == [h["step"] for h in want_histories[k]] == [5, 10]
    for got, want in zip(history, want_histories[k]):
      assert got["test_accuracy"] == pytest.approx(want["test_accuracy"], abs=1e-5)
      assert got["test_loss"] == pytest.approx(want["test_loss"], abs=1e-4)
  # The tickets really differ (masks, seeds, teachers): the batch did not train one K times.
  assert _max_difference(results[0].state.params, results[1].state.params) > 1e-3


@pytest.mark.parametrize("strategy, atol", [("sequential", 0.0), ("lax_map", 1e-6), ("vmap", 1e-6)])
def test_train_runs_equals_one_by_one(strategy, atol, reference, tmp_path, caplog):
  trainer, make_runs = _setup()
  runs = make_runs(tmp_path)
  with caplog.at_level("INFO", logger="kdt.tickets.batch"):
    results = batch.train_runs(trainer, runs, strategy=strategy)
  _assert_matches(results, runs, reference, atol)
  if strategy != "sequential":
    assert f"3 runs together with strategy {strategy}" in caplog.text
  # Each run checkpointed in its own directory, in the single-run format: the single-run loop
  # loads them as finished (it would raise if it trained: the dataset crashes at step 0).
  trainer, make_runs = _setup(_CrashAt(data_lib.load_dataset("digits"), 0))
  for run, result in zip(make_runs(tmp_path), results):
    again = trainer.train(run)
    assert _max_difference(again.state.params, result.state.params) == 0.0


def test_max_per_program_splits_the_batch(reference, tmp_path, caplog):
  trainer, make_runs = _setup()
  runs = make_runs(tmp_path)
  with caplog.at_level("INFO", logger="kdt.tickets.batch"):
    results = batch.train_runs(trainer, runs, strategy="vmap", max_per_program=2)
  assert "2 runs together" in caplog.text and "3 runs together" not in caplog.text
  _assert_matches(results, runs, reference, 1e-6)


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


def test_resume_after_a_crash_mid_batch(tmp_path, reference):
  dataset = data_lib.load_dataset("digits")
  trainer, make_runs = _setup(_CrashAt(dataset, 6))
  with pytest.raises(KeyboardInterrupt):
    batch.train_runs(trainer, make_runs(tmp_path), strategy="vmap")
  for k in range(3):  # each run checkpointed at step 4 in its own directory, killed at step 6
    assert sorted(os.listdir(tmp_path / f"ticket_{k}")) == ["4"]
  trainer, make_runs = _setup(dataset)
  runs = make_runs(tmp_path)
  resumed = batch.train_runs(trainer, runs, strategy="vmap")
  _assert_matches(resumed, runs, reference, 1e-6)


class _StopAt(_CrashAt):
  """A dataset that requests a stop (as SIGTERM / Ctrl-C do) when asked for step ``step``."""

  def train_batch(self, step, *args, **kwargs):
    if step == self._step:
      loop._STOP_REQUESTED.set()  # pylint: disable=protected-access
    return self._dataset.train_batch(step, *args, **kwargs)


def test_ctrl_c_mid_batch_checkpoints_every_run_and_resumes(tmp_path, reference):
  dataset = data_lib.load_dataset("digits")
  trainer, make_runs = _setup(_StopAt(dataset, 6))
  try:
    with pytest.raises(loop.PreemptedError, match="step 7") as stopped:
      batch.train_runs(trainer, make_runs(tmp_path), strategy="vmap")
  finally:
    loop._STOP_REQUESTED.clear()  # pylint: disable=protected-access
  assert stopped.value.exit_code in (130, 143)
  for k in range(3):  # every run saved the step it reached, in its own directory
    assert "7" in os.listdir(tmp_path / f"ticket_{k}")
  trainer, make_runs = _setup(dataset)
  runs = make_runs(tmp_path)
  _assert_matches(batch.train_runs(trainer, runs, strategy="vmap"), runs, reference, 1e-6)


def test_runs_at_different_steps_train_in_separate_groups(tmp_path, reference, caplog):
  """A kill between two runs' checkpoint writes leaves them at different steps: each group
  still ends where one-by-one training ends."""
  dataset = data_lib.load_dataset("digits")
  crashing, make_runs = _setup(_CrashAt(dataset, 6))
  with pytest.raises(KeyboardInterrupt):  # run 0 alone, killed at step 6: checkpoint at step 4
    crashing.train(make_runs(tmp_path)[0])
  trainer, make_runs = _setup(dataset)
  runs = make_runs(tmp_path)
  with caplog.at_level("INFO", logger="kdt.tickets.batch"):
    results = batch.train_runs(trainer, runs, strategy="vmap")
  assert "2 runs together" in caplog.text  # runs 1 and 2; run 0 continues alone
  _assert_matches(results, runs, reference, 1e-6)


def test_cached_teacher_logits_per_ticket(tmp_path):
  """Each ticket's own cached teacher logits (IMP's ``cache_teacher_logits``) under vmap."""
  trainer, make_runs = _setup()
  runs = [dataclasses.replace(run, teacher=None,
                              teacher_logits_table=trainer.teacher_logits_table(run.teacher))
          for run in make_runs(tmp_path / "a")]
  one_by_one = [trainer.train(dataclasses.replace(run, directory=str(tmp_path / "b" / run.name)))
                for run in runs]
  together = batch.train_runs(trainer, runs, strategy="vmap")
  for a, b in zip(one_by_one, together):
    assert _max_difference(a.state.params, b.state.params) <= 1e-6


def test_non_finite_loss_names_the_run(tmp_path):
  trainer, make_runs = _setup(num_tickets=2)
  runs = make_runs(tmp_path, teacher=False)
  good_init = runs[1].init_state

  def poisoned():
    state = good_init()
    return state.replace(params=jax.tree.map(lambda p: p * jnp.nan, state.params))

  runs[1] = dataclasses.replace(runs[1], name="poisoned", init_state=poisoned)
  with pytest.raises(loop.NonFiniteLossError, match="poisoned"):
    batch.train_runs(trainer, runs, strategy="vmap")


def test_drive_advances_plans_in_lockstep_and_train_jobs_keeps_order(tmp_path):
  """Two plans' requests are trained as one list; each plan gets its own results back."""
  trainer, make_runs = _setup(num_tickets=4)
  runs = make_runs(tmp_path, teacher=False)
  calls = []

  def plan(first, second):
    (a,) = yield [batch.Job(trainer.with_name_prefix(f"p{first}/"), runs[first])]
    (b,) = yield [batch.Job(trainer.with_name_prefix(f"p{first}/"), runs[second])]
    return int(a.state.step), b.meta["run"]

  def train(jobs):
    calls.append([job.trainer.named(job.run).name for job in jobs])
    return batch.train_jobs(jobs, strategy="sequential")

  out = batch.drive([plan(0, 1), plan(2, 3)], train)
  assert calls == [["p0/ticket_0", "p2/ticket_2"], ["p0/ticket_1", "p2/ticket_3"]]
  assert out == [(END_STEP, "p0/ticket_1"), (END_STEP, "p2/ticket_3")]
  assert trainer.with_name_prefix("x/").compile_cache_id == trainer.compile_cache_id


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
    trainer, make_runs = t._setup()
    runs = make_runs({root!r})
    results = batch.train_runs(trainer, runs, strategy="shard_map")
    assert jax.local_device_count() == len(runs)
    leaves = [np.asarray(x) for r in results for x in jax.tree.leaves(r.state.params)]
    np.savez({out!r}, *leaves)
    """)


def test_shard_map_over_three_devices_equals_one_by_one(tmp_path, reference):
  """One ticket per device (3 fake CPU devices), compared with the one-by-one runs on 1 device."""
  want_params, _ = reference
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(JAX_PLATFORMS="cpu", JAX_DISABLE_MOST_OPTIMIZATIONS="1",
             XLA_FLAGS="--xla_force_host_platform_device_count=3")
  out = str(tmp_path / "params.npz")
  script = _SHARD_MAP_SCRIPT.format(tests=os.path.dirname(os.path.abspath(__file__)), out=out,
                                    root=str(tmp_path / "runs"))
  proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=180)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with np.load(out) as saved:
    got = [saved[f"arr_{i}"] for i in range(len(saved.files))]
  want = [np.asarray(x) for params in want_params for x in jax.tree.leaves(params)]
  assert len(got) == len(want)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=0, atol=1e-6)


def test_together_advances_plans_in_lockstep_and_returns_each_value():
  """``together`` yields every pending plan's jobs as one batch and hands each plan its share of
  the results; a plan that finishes early drops out; ``drive`` runs it."""
  def plan(name, steps):
    got = []
    for step in range(steps):
      (result,) = yield [f"{name}{step}"]
      got.append(result)
    return got

  batches = []

  def train(jobs):
    batches.append(list(jobs))
    return [job.upper() for job in jobs]

  assert batch.drive([plan("a", 2), plan("b", 3)], train) == [["A0", "A1"], ["B0", "B1", "B2"]]
  assert batches == [["a0", "b0"], ["a1", "b1"], ["b2"]]

  def outer():
    values = yield from batch.together([plan("c", 1), plan("d", 1)])
    (last,) = yield ["e0"]
    return values, last

  assert batch.drive([outer()], train) == [([["C0"], ["D0"]], "E0")]


def test_train_jobs_trains_a_run_named_twice_once(tmp_path, caplog):
  """Plans driven together all ask for the shared dense run first: jobs with the same directory
  are one run — trained once (not two tickets writing one checkpoint), its result to each."""
  trainer, make_runs = _setup(num_tickets=2)
  first, second = make_runs(tmp_path)
  jobs = [batch.Job(trainer, first), batch.Job(trainer, second), batch.Job(trainer, first)]
  with caplog.at_level("INFO", logger="kdt.tickets.batch"):
    results = batch.train_jobs(jobs, strategy="vmap")
  assert "2 runs together with strategy vmap" in caplog.text
  assert results[0] is results[2] and results[0] is not results[1]
  assert int(results[0].state.step) == END_STEP
