"""kdt.host_devices: the automatic CPU split, its config field, and applying it before JAX starts."""

import doctest
import os
import subprocess
import sys

import pytest

from kdt import config_lib
from kdt import host_devices

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_doctests():
  assert doctest.testmod(host_devices).failed == 0


def test_auto_count_policy():
  assert host_devices.auto_count("resnet20", (32, 32, 3), (128, 500), cores=2) == 4
  assert host_devices.auto_count("conv6", (32, 32, 3), (128, 1000), cores=1) == 2
  assert host_devices.auto_count("vgg16", (32, 32, 3), (100, 500), cores=64) == 5  # divides both
  assert host_devices.auto_count("resnet20", (32, 32, 3), (127,), cores=2) == 1
  assert host_devices.auto_count("lenet_300_100", (28, 28, 1), (128,), cores=8) == 1
  assert host_devices.auto_count("conv2", (8, 8, 1), (64,), cores=2) == 1
  assert host_devices.auto_count("resnet20", (32, 32, 3), (128,), cores=2,
                                 ghost_batch_norm=True) == 1


def test_count_for_reads_the_config():
  config = config_lib.base_config("train")
  config.model.name, config.data.name = "resnet20", "cifar10"
  config.train.batch_size, config.train.eval_batch_size = 128, 500
  expected = host_devices.auto_count("resnet20", (32, 32, 3), (128, 500))
  assert host_devices.count_for(config) == expected
  config.parallel.host_devices = 3
  assert host_devices.count_for(config) == 3
  config.parallel.host_devices = 0
  config.model.name, config.data.name = "lenet_300_100", "mnist"
  assert host_devices.count_for(config) == 1
  config.data.name = "no_such_dataset"  # left to config_lib.validate to report
  assert host_devices.count_for(config) == 1


def test_config_field_is_validated():
  config = config_lib.base_config("train")
  config.parallel.host_devices = -1
  with pytest.raises(config_lib.ConfigError, match="parallel.host_devices"):
    config_lib.validate(config, device_count=1)


def _devices_after(code: str, env_extra: dict[str, str]) -> str:
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"} | env_extra
  env["JAX_PLATFORMS"] = "cpu"
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=120, check=True)
  return proc.stdout.strip().splitlines()[-1]


def test_configure_splits_the_cpu_before_jax_starts():
  code = ("import jax; from kdt import host_devices; applied = host_devices.configure(3); "
          "print(applied, jax.device_count())")
  assert _devices_after(code, {}) == "True 3"


def test_configure_respects_the_users_choice_and_a_started_backend():
  code = ("import jax; from kdt import host_devices; applied = host_devices.configure(3); "
          "print(applied, jax.device_count())")
  flags = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  assert _devices_after(code, flags) == "False 2"
  late = ("import jax; jax.device_count(); from kdt import host_devices; "
          "print(host_devices.configure(3), jax.device_count())")
  assert _devices_after(late, {}) == "False 1"


# ----- 8 host devices: collectives must not starve (issue 15, item 4) -----------------------------
#
# XLA's CPU client had exactly one thread per device on a small machine (max(cores, devices)); a
# collective needs all of them at once, so a launch of the next program holding one of them left
# the collective's last part without a thread: 7 of 8 threads waited in the all-reduce rendezvous
# until XLA aborted (exit 134). Before the fix, _STRESS hung in 5 of 6 runs on this project's
# loaded 2-core machine and the quickstart aborted; see kdt.host_devices.

_STRESS = """
import sys, time
import numpy as np
from kdt import host_devices
host_devices.configure(8)
import jax, jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
rows, repl = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
def step(w, x):  # written for one device; jit inserts the all-reduce of the batch mean
  g = jnp.mean(jnp.tanh(x @ w), axis=0)
  return w - 1e-3 * g[None, :], jnp.sum(g)
step = jax.jit(step, donate_argnums=(0,), out_shardings=(repl, repl))
w = jax.device_put(jnp.ones((256, 256)), repl)
rng = np.random.default_rng(0)
for i in range(int(sys.argv[1])):  # the host runs ahead: nothing is fetched until the end
  w, m = step(w, jax.device_put(rng.random((64, 256), np.float32), rows))
  jnp.add(w, 1.0)  # a non-collective program on all 8 devices in between
print("done", float(m))
"""


class _BurnCpu:
  """A sibling process that keeps one core busy (the loaded-machine condition)."""

  def __enter__(self):
    self.proc = subprocess.Popen([sys.executable, "-c", "while 1: pass"])
    return self

  def __exit__(self, *exc):
    self.proc.kill()
    self.proc.wait()


def _env_without_device_flags(**extra) -> dict:
  env = {k: v for k, v in os.environ.items()
         if k not in ("XLA_FLAGS", "PJRT_NPROC", "NPROC", "JAX_NUM_CPU_DEVICES")}
  env.update(JAX_PLATFORMS="cpu", **extra)
  return env


def _assert_no_stuck_collective(proc):
  stuck = "waiting for `all reduce" in proc.stderr or "Termination timeout" in proc.stderr
  assert proc.returncode == 0 and not stuck, (proc.returncode, proc.stderr[-3000:])


def test_eight_devices_get_spare_threads_for_collectives():
  code = ("import os, jax, jax.numpy as jnp; from kdt import config_lib, host_devices; "
          "config = config_lib.base_config('imp'); config.model.name = 'lenet_300_100'; "
          "config.data.name = 'digits'; host_devices.configure_for(config); "
          "jnp.ones(3).block_until_ready(); "
          "names = [open(f'/proc/self/task/{t}/comm').read().strip() "
          "for t in os.listdir('/proc/self/task')]; "
          "print(jax.device_count(), names.count('tf_XLAEigen'))")
  # The user's XLA_FLAGS choose 8 devices; kdt leaves the count alone but adds the threads.
  count, threads = _devices_after(
      code, {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}).split()
  assert int(count) == 8 and int(threads) >= 16
  # kdt's own split (config.parallel.host_devices) does the same.
  code = code.replace("config.data.name = 'digits';",
                      "config.data.name = 'digits'; config.parallel.host_devices = 8;")
  count, threads = _devices_after(code, {}).split()
  assert int(count) == 8 and int(threads) >= 16


def test_many_collectives_in_flight_on_eight_devices_under_load():
  """46 s on the loaded 2-core machine (3000 small data-parallel steps, one burning sibling)."""
  with _BurnCpu():
    proc = subprocess.run([sys.executable, "-c", _STRESS, "3000"], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env=_env_without_device_flags())
  _assert_no_stuck_collective(proc)
  assert "done" in proc.stdout


# The quickstart runs themselves are the reproduction, but cost 5.3 and 4.5 min on this
# project's 2-core machine at load ~10 (measured with --durations): over the suite's budget, so
# they run when KDT_SLOW_TESTS=1. The two tests above (~20 s and ~45 s) run always; the stress
# test hung in 5 of 6 runs before the fix.
_SLOW = pytest.mark.skipif(not os.environ.get("KDT_SLOW_TESTS"),
                           reason="5 min each on 2 cores; set KDT_SLOW_TESTS=1")


def _quickstart(workdir, *overrides):
  return subprocess.run(
      [sys.executable, "-m", "kdt.main", "--config", "configs/quickstart.py", "--workdir",
       str(workdir), *overrides], cwd=REPO, capture_output=True, text=True, timeout=900,
      env=_env_without_device_flags(XLA_FLAGS="--xla_force_host_platform_device_count=8"))


@_SLOW
def test_eight_device_quickstart(tmp_path):
  """The README's quickstart command with 8 host devices, as issue 15 ran it (5.3 min, load 10)."""
  proc = _quickstart(tmp_path)
  _assert_no_stuck_collective(proc)
  assert os.path.exists(tmp_path / "results.json")


@_SLOW
def test_eight_device_quickstart_under_load(tmp_path):
  """The same with a CPU-burning sibling process, cut to 2 rounds (4.5 min, load 10)."""
  with _BurnCpu():
    proc = _quickstart(tmp_path, "--config.imp.num_rounds=2")
  _assert_no_stuck_collective(proc)
  assert os.path.exists(tmp_path / "results.json")
