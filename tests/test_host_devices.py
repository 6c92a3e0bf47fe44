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
