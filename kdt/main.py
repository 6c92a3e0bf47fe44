"""Command line: ``python -m kdt.main --config configs/<x>.py --workdir DIR [--config.a.b=v ...]``.

A tiny shell over :func:`kdt.experiment.run`; Colab calls that function directly.
"""

import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from kdt import checkpoint
from kdt import config_lib
from kdt import experiment
from kdt import host_devices
from kdt.data import DatasetUnavailableError
from kdt.train import loop

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file in configs/.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, results and plots.")
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    "allow_config_change", False,
    "Continue a workdir whose stored config differs from --config (logged and recorded in "
    "config_changes.json). Without it such a rerun is refused with the list of differing fields.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  loop.install_sigterm_handler()
  host_devices.configure_for(_CONFIG.value)  # before JAX starts: CPU split for conv nets
  try:
    experiment.run(_CONFIG.value, _WORKDIR.value, allow_config_change=_ALLOW_CONFIG_CHANGE.value)
  except (config_lib.ConfigError, experiment.WorkdirConfigMismatchError, DatasetUnavailableError,
          checkpoint.CheckpointError, loop.NonFiniteLossError, experiment.InvariantError) as e:
    print(f"kdt: error: {e}", file=sys.stderr)
    sys.exit(2)
  except loop.PreemptedError as e:
    print(f"kdt: {e}", file=sys.stderr)
    sys.exit(e.exit_code)
  except KeyboardInterrupt:  # a second Ctrl-C: stopped at once, the last checkpoint is kept
    print("kdt: interrupted — rerun the same command to continue.", file=sys.stderr)
    sys.exit(130)


if __name__ == "__main__":
  app.run(main)
