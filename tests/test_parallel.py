"""Data parallelism: 8 devices and 2 processes give the 1-device results; ghost BatchNorm; env parsing.

The multi-device runs need ``XLA_FLAGS`` / ``jax.distributed`` set up before JAX starts, so they run
``launch/local.sh`` in subprocesses (the test process itself has one CPU device). Each run is the
quickstart IMP cut down to a dense run and one round of the ``kd`` recipe (teacher logits, masks,
rewind point, results), compared through what it leaves in its workdir.
"""

import json
import os
import subprocess
import sys
import textwrap
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from kdt import config_lib
from kdt import parallel
from kdt.train import losses
from kdt.train import optim
from kdt.train import steps
from kdt.train.state import create_train_state

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOCAL_SH = os.path.join(REPO, "launch", "local.sh")
NUM_STEPS = 20
OVERRIDES = [
    f"--config.train.num_steps={NUM_STEPS}", "--config.train.batch_size=32",
    "--config.train.eval_batch_size=120", "--config.train.log_every_steps=10",
    "--config.schedule.milestones=(15,)", "--config.imp.rewind_step=10",
    "--config.imp.num_rounds=1", "--config.imp.recipes=('kd',)",
]
# Float tolerance of "same result" across device / process counts: the all-reduce sums the
# per-device gradient partial sums in another order than one device does (measured: <= 4e-7).
ATOL = 1e-5


def _env(**extra) -> dict:
  env = {k: v for k, v in os.environ.items()
         if k not in ("XLA_FLAGS", "KDT_DISTRIBUTED", "KDT_COORDINATOR")}
  env.update(JAX_PLATFORMS="cpu", JAX_DISABLE_MOST_OPTIMIZATIONS="1", PYTHON=sys.executable,
             **extra)
  return env


def _local(workdir, *args) -> float:
  """Runs the cut-down quickstart IMP through launch/local.sh; returns the wall time."""
  start = time.time()
  proc = subprocess.run(
      ["bash", LOCAL_SH, "--config", "configs/quickstart.py", "--workdir", str(workdir), *OVERRIDES,
       *args], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=240)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return time.time() - start


def _restore(path: str):
  """An Orbax item as numpy arrays, whatever device topology saved it."""
  checkpointer = ocp.StandardCheckpointer()
  metadata = checkpointer.metadata(path)
  metadata = getattr(metadata, "item_metadata", metadata)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), metadata)
  return jax.tree.map(np.asarray, checkpointer.restore(path, abstract))


def _artifacts(workdir) -> dict:
  """Dense and round-1 final parameters, the round-1 mask and the results rows of a workdir."""
  workdir = str(workdir)
  with open(os.path.join(workdir, "results.json"), encoding="utf-8") as f:
    results = json.load(f)
  return {
      "dense": _restore(os.path.join(workdir, "dense", str(NUM_STEPS), "state"))["params"],
      "kd": _restore(os.path.join(workdir, "round_01", "kd", "train", str(NUM_STEPS), "state"))["params"],
      "mask": _restore(os.path.join(workdir, "round_01", "kd", "mask")),
      "results": results,
  }


def _max_difference(a, b) -> float:
  return max(float(np.max(np.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _assert_same_run(got: dict, want: dict) -> float:
  """Masks identical; parameters within ATOL; returns the largest parameter difference."""
  for m, w in zip(jax.tree.leaves(got["mask"]), jax.tree.leaves(want["mask"])):
    np.testing.assert_array_equal(m, w)
  difference = max(_max_difference(got["dense"], want["dense"]),
                   _max_difference(got["kd"], want["kd"]))
  assert difference <= ATOL, difference
  rows = lambda a: [(r["round"], r["recipe"], r["weights_kept"]) for r in a["results"]]  # noqa: E731
  assert rows(got) == rows(want)
  for g, w in zip(got["results"], want["results"]):
    assert abs(g["test_accuracy"] - w["test_accuracy"]) <= 1 / 360 + 1e-9  # at most one digit
  return difference


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("one_device")
  _local(workdir)
  return _artifacts(workdir)


def test_eight_devices_give_the_one_device_run(tmp_path, reference):
  _local(tmp_path, "--devices", "8")
  difference = _assert_same_run(_artifacts(tmp_path), reference)
  print(f"1 vs 8 devices: max parameter difference {difference:.2e}")


def test_two_processes_give_the_one_process_run(tmp_path, reference):
  seconds = _local(tmp_path, "--processes", "2")
  difference = _assert_same_run(_artifacts(tmp_path), reference)
  # Process 1 ran the same program on its own half of every batch and logged to its file.
  with open(tmp_path / "logs" / "process_1.log", encoding="utf-8") as f:
    log = f.read()
  assert "process 1 of 2" in log and "round_01/kd" in log
  print(f"2 processes: {seconds:.1f} s, max parameter difference {difference:.2e}")


# ----- ghost BatchNorm ------------------------------------------------------------------------------

class _TinyBN(nn.Module):
  """Dense -> BatchNorm -> relu -> Dense: the smallest model whose output depends on BN statistics."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Dense(8, name="stem")(x.reshape((x.shape[0], -1)))
    x = nn.BatchNorm(use_running_average=not train, momentum=0.5)(x)
    return nn.Dense(3, name="head")(nn.relu(x))


def _tiny_setup(batch_size=16):
  model = _TinyBN()
  variables = model.init(jax.random.key(0), jnp.zeros((1, 4)), train=False)
  direction = optim.make_direction("sgd", momentum=0.9, nesterov=False, weight_decay=0.0)
  state = create_train_state(dict(variables), direction)
  mask = jax.tree.map(lambda p: jnp.ones(p.shape, bool), state.params)
  x = jax.random.normal(jax.random.key(1), (batch_size, 4))
  batch = {"image": x, "label": jnp.arange(batch_size) % 3}
  return model, direction, state, mask, batch


def _step(model, direction, state, mask, batch):
  return jax.jit(lambda s: steps.train_step(s, mask, batch, None, model=model, direction=direction,
                                            schedule=lambda step: 0.1, loss=losses.LossConfig()))(state)


def test_ghost_batch_norm_with_one_device_is_plain_batch_norm():
  model, direction, state, mask, batch = _tiny_setup()
  ghost = parallel.GhostBatchNorm(model, parallel.make_mesh())
  want, want_metrics = _step(model, direction, state, mask, batch)
  got, got_metrics = _step(ghost, direction, state, mask, batch)
  np.testing.assert_allclose(got_metrics["loss"], want_metrics["loss"], rtol=1e-6)
  for g, w in zip(jax.tree.leaves((got.params, got.batch_stats)),
                  jax.tree.leaves((want.params, want.batch_stats))):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
  # Evaluation and the teacher's forward pass go to the wrapped model unchanged.
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  np.testing.assert_array_equal(ghost.apply(variables, batch["image"], train=False),
                                model.apply(variables, batch["image"], train=False))


_GHOST_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    sys.path.insert(0, {tests!r})
    import test_parallel as t
    from kdt import parallel
    mesh = parallel.make_mesh()
    model, direction, state, mask, batch = t._tiny_setup(batch_size=16)
    variables = {{"params": state.params, "batch_stats": state.batch_stats}}
    rows = jax.device_put(batch["image"], parallel.batch_sharded(mesh))
    ghost = parallel.GhostBatchNorm(model, mesh)
    out, updates = jax.jit(lambda v, x: ghost.apply(v, x, train=True, mutable=["batch_stats"]))(
        variables, rows)
    # Each device normalised its own 2 rows: the same as the model applied to each slice.
    per_slice = [model.apply(variables, batch["image"][i:i + 2], train=True, mutable=["batch_stats"])
                 for i in range(0, 16, 2)]
    ghost_vs_slices = float(np.max(np.abs(np.asarray(out) - np.concatenate([o for o, _ in per_slice]))))
    mean_stats = jax.tree.map(lambda *s: np.mean(np.stack(s), 0), *[u for _, u in per_slice])
    stats_vs_slices = max(float(np.max(np.abs(np.asarray(a) - b))) for a, b in
                          zip(jax.tree.leaves(updates), jax.tree.leaves(mean_stats)))
    plain = model.apply(variables, batch["image"], train=True, mutable=["batch_stats"])[0]
    ghost_vs_global = float(np.max(np.abs(np.asarray(out) - np.asarray(plain))))
    # A training step through it runs and keeps the state replicated.
    new, metrics = t._step(ghost, direction, jax.device_put(state, parallel.replicated(mesh)), mask,
                           {{"image": rows, "label": batch["label"]}})
    print(json.dumps({{"devices": jax.device_count(), "ghost_vs_slices": ghost_vs_slices,
                      "stats_vs_slices": stats_vs_slices, "ghost_vs_global": ghost_vs_global,
                      "loss": float(metrics["loss"]),
                      "replicated": all(x.sharding.is_fully_replicated
                                        for x in jax.tree.leaves(new))}}))
    """)


def test_ghost_batch_norm_on_eight_devices_uses_per_device_statistics():
  script = _GHOST_SCRIPT.format(tests=os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                        env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=8"), timeout=120)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert result["devices"] == 8
  assert result["ghost_vs_slices"] < 1e-5
  assert result["stats_vs_slices"] < 1e-6
  assert result["ghost_vs_global"] > 1e-2  # per-device statistics really differ from global ones
  assert np.isfinite(result["loss"]) and result["replicated"]


def test_ghost_batch_norm_needs_two_examples_per_device():
  config = config_lib.base_config("train")
  config.train.batch_size = 8
  config.train.eval_batch_size = 8
  config.parallel.ghost_batch_norm = True
  config_lib.validate(config, device_count=4)
  with pytest.raises(config_lib.ConfigError, match="parallel.ghost_batch_norm"):
    config_lib.validate(config, device_count=8)


# ----- the distributed runtime is started only when asked ---------------------------------------------

def test_distributed_arguments_from_the_environment():
  env = {"KDT_COORDINATOR": "127.0.0.1:1234", "KDT_NUM_PROCESSES": "4", "KDT_PROCESS_ID": "3"}
  assert parallel.distributed_arguments(env) == {
      "coordinator_address": "127.0.0.1:1234", "num_processes": 4, "process_id": 3}
  assert parallel.distributed_arguments({}) == {}  # a TPU pod: JAX finds its peers itself
  for bad in ({"KDT_NUM_PROCESSES": "2"}, {"KDT_NUM_PROCESSES": "2", "KDT_PROCESS_ID": "2"},
              {"KDT_NUM_PROCESSES": "x", "KDT_PROCESS_ID": "0"}):
    with pytest.raises(ValueError, match="KDT_"):
      parallel.distributed_arguments({"KDT_COORDINATOR": "127.0.0.1:1234", **bad})


def test_distributed_runtime_is_not_started_unless_asked(monkeypatch):
  monkeypatch.delenv("KDT_DISTRIBUTED", raising=False)
  monkeypatch.setattr(jax.distributed, "initialize",
                      lambda **kwargs: pytest.fail("jax.distributed.initialize was called"))
  assert not parallel.maybe_initialize_distributed(False)
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: calls.append(kwargs))
  monkeypatch.setenv("KDT_DISTRIBUTED", "1")
  monkeypatch.delenv("KDT_COORDINATOR", raising=False)
  assert parallel.maybe_initialize_distributed(False)
  assert calls == [{}]


def test_to_host_copies_replicated_arrays():
  mesh = parallel.make_mesh()
  tree = {"a": jnp.arange(3.0), "b": {"c": jnp.ones((2, 2), bool)}}
  host = parallel.to_host(parallel.replicate(tree, mesh))
  assert isinstance(host["a"], np.ndarray)
  np.testing.assert_array_equal(host["a"], [0.0, 1.0, 2.0])
  assert host["b"]["c"].dtype == bool


# ----- a gs:// workdir: every non-Orbax file goes through kdt.fileio -----------------------------------

def test_gcs_workdir_config_results_plots_and_events(monkeypatch):
  """With an in-memory file system standing in for Cloud Storage (offline; Orbax's own gs:// I/O
  through tensorstore is not exercised here), the workdir files land at the URL, never at a mangled
  local path such as ``./gs:/bucket``."""
  fsspec = pytest.importorskip("fsspec")
  from fsspec.implementations.memory import MemoryFileSystem  # pylint: disable=import-outside-toplevel
  from kdt import fileio  # pylint: disable=import-outside-toplevel
  from kdt import report  # pylint: disable=import-outside-toplevel
  from kdt import workdir as workdir_lib  # pylint: disable=import-outside-toplevel
  from kdt.experiments import imp  # pylint: disable=import-outside-toplevel
  from kdt.experiments import setup as setup_lib  # pylint: disable=import-outside-toplevel

  class FakeGCS(MemoryFileSystem):
    protocol = ("gs", "gcs")
    store, pseudo_dirs = {}, [""]

  registry = sys.modules["fsspec.registry"]._registry  # pylint: disable=protected-access
  for protocol in ("gs", "gcs"):
    monkeypatch.setitem(registry, protocol, FakeGCS)
  monkeypatch.chdir(os.path.dirname(os.path.abspath(__file__)))
  workdir = "gs://kdt-test-bucket/runs/quickstart"
  sys.path.insert(0, os.path.join(REPO, "configs"))
  import quickstart  # pylint: disable=import-outside-toplevel
  config = quickstart.get_config()

  workdir_lib.prepare_workdir(config, workdir)
  assert config_lib.to_dict(workdir_lib.load_config(workdir)) == config_lib.to_dict(config)
  workdir_lib.prepare_workdir(config, workdir)  # the stored config is read back and matches
  rows = [{"round": 0, "recipe": "dense", "density": 1.0, "weights_kept": 10, "test_accuracy": 0.9,
           "reported_test_accuracy": 0.9, "steps_trained": 5},
          {"round": 1, "recipe": "lth", "density": 0.8, "weights_kept": 8, "test_accuracy": 0.85,
           "reported_test_accuracy": 0.86, "steps_trained": 5}]
  report.write_results(workdir, rows)
  assert workdir_lib.load_results(workdir) == rows
  report.write_imp_plots(workdir, rows, {"lth": {1: {"fc1/kernel": 0.8}}}, title="t")
  writer = report.create_writer(f"{workdir}/tensorboard/dense")
  writer.write_scalars(1, {"train/loss": 0.5})
  writer.close()

  for name in ("config.json", "results.json", "results.csv", "plots/accuracy_vs_weights.png",
               "plots/layer_density.png"):
    assert fileio.exists(f"{workdir}/{name}"), name
  with fileio.open(f"{workdir}/plots/accuracy_vs_weights.png", "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  events = [k for k in FakeGCS.store if "/tensorboard/dense/events.out.tfevents." in k]
  assert len(events) == 1 and FakeGCS.store[events[0]].getvalue()
  assert not any(".tmp." in k for k in FakeGCS.store)
  assert not os.path.exists("gs:")  # nothing written to a local path named after the URL
  # Checkpoint directories are URLs too (Orbax opens them with tensorstore).
  assert setup_lib.Setup.build(config, workdir).dense.directory == f"{workdir}/dense"
  assert imp.round_dir(workdir, 1, "lth") == f"{workdir}/round_01/lth"
