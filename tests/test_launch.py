"""launch/*.sh: argument checks, and the exact commands each script runs (printed by --dry-run)."""

import os
import shlex
import shutil
import subprocess
import textwrap
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(REPO, "launch")
SCRIPTS = ("local.sh", "tpu_create.sh", "tpu_setup.sh", "tpu_run.sh", "tpu_delete.sh")
POD = ["--name", "kdt-pod", "--zone", "us-central2-b"]
BASH = shutil.which("bash")


def _run(script, *args, env=None):
  return subprocess.run([BASH, os.path.join(LAUNCH, script), *args], cwd=REPO, text=True,
                        capture_output=True, env=env or dict(os.environ), timeout=60)


def _commands(script, *args):
  """The commands a script would run, each parsed into its argv (shell quoting undone)."""
  proc = _run(script, *args, "--dry-run")
  assert proc.returncode == 0, proc.stderr
  commands = []
  for line in _logical_lines(proc.stdout):
    if line.startswith("+ "):
      argv = shlex.split(line[2:])
      if argv[-2:-1] == ["2>&1"] or argv[-1] == "&":  # background jobs of local.sh
        argv = argv[:argv.index(">")] if ">" in argv else argv[:-1]
      commands.append(argv)
  return proc.stdout, commands


def _logical_lines(text):
  """Lines, with multi-line single-quoted arguments joined back to one command."""
  lines, current = [], ""
  for line in text.splitlines():
    current = f"{current}\n{line}" if current else line
    try:
      shlex.split(current)
    except ValueError:  # an open quote: the command continues on the next line
      continue
    lines.append(current)
    current = ""
  return lines


def _option(argv, flag):
  values = [a.split("=", 1)[1] for a in argv if a.startswith(flag + "=")]
  assert len(values) == 1, (flag, argv)
  return values[0]


def test_tpu_create_dry_run():
  out, commands = _commands("tpu_create.sh", *POD, "--accelerator-type", "v4-32", "--spot",
                            "--project", "my-project")
  assert commands == [["gcloud", "compute", "tpus", "tpu-vm", "create", "kdt-pod",
                       "--zone=us-central2-b", "--project=my-project", "--accelerator-type=v4-32",
                       "--version=tpu-ubuntu2204-base", "--spot"]]
  assert "Creating TPU 'kdt-pod' (v4-32" in out
  _, commands = _commands("tpu_create.sh", *POD, "--accelerator-type=v6e-8")
  assert "--version=v2-alpha-tpuv6e" in commands[0] and "--spot" not in commands[0]


def test_tpu_setup_dry_run():
  out, commands = _commands("tpu_setup.sh", *POD)
  archive = commands[0][commands[0].index("-czf") + 1]
  assert commands[0] == ["tar", "--exclude-vcs", "--exclude-vcs-ignores", "-czf", archive, "-C",
                         REPO, "."]
  assert commands[1] == ["gcloud", "compute", "tpus", "tpu-vm", "scp", archive,
                         "kdt-pod:kdt-src.tar.gz", "--zone=us-central2-b", "--worker=all"]
  assert commands[2][:8] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "kdt-pod",
                             "--zone=us-central2-b", "--worker=all"]
  remote = _option(commands[2], "--command")
  for step in ("tar -xzf ~/kdt-src.tar.gz -C ~/kdt", "python3 -m venv ~/kdt-venv",
               'pip install -q -e "$HOME/kdt[gcs]" "jax[tpu]"'):
    assert step in remote
  assert "copy" in out and len(commands) == 3


def test_tpu_run_dry_run():
  _, commands = _commands("tpu_run.sh", *POD, "--config", "configs/quickstart.py",
                          "--workdir", "gs://my-bucket/kdt/q", "--config.imp.recipes=('lth','kd')",
                          "--config.train.num_steps", "10")
  assert len(commands) == 1
  argv = commands[0]
  assert argv[:9] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "kdt-pod",
                      "--zone=us-central2-b", "--worker=all", argv[8]]
  remote = shlex.split(_option(argv, "--command"))
  assert remote == ["cd", "~/kdt", "&&", "KDT_DISTRIBUTED=1", "~/kdt-venv/bin/python", "-m",
                    "kdt.main", "--config=configs/quickstart.py", "--workdir=gs://my-bucket/kdt/q",
                    "--config.imp.recipes=('lth','kd')", "--config.train.num_steps=10"]


def test_tpu_delete_dry_run():
  out, commands = _commands("tpu_delete.sh", *POD, "--project=p-1")
  assert commands == [["gcloud", "compute", "tpus", "tpu-vm", "delete", "kdt-pod",
                       "--zone=us-central2-b", "--project=p-1", "--quiet"]]
  assert "workdir is kept" in out


def test_local_dry_run_one_and_two_processes():
  _, commands = _commands("local.sh", "--config", "configs/quickstart.py", "--workdir", "/tmp/w",
                          "--python", "py3", "--config.train.num_steps=5")
  assert commands == [["py3", "-m", "kdt.main", "--config=configs/quickstart.py",
                       "--workdir=/tmp/w", "--config.train.num_steps=5"]]
  out, commands = _commands("local.sh", "--config", "configs/quickstart.py", "--workdir", "/tmp/w",
                            "--python", "py3", "--processes", "2", "--devices", "4",
                            "--port", "23456")
  main = ["py3", "-m", "kdt.main", "--config=configs/quickstart.py", "--workdir=/tmp/w"]
  for i, argv in enumerate(commands):
    assert argv == ["env", "JAX_PLATFORMS=cpu", argv[2], "KDT_DISTRIBUTED=1",
                    "KDT_COORDINATOR=127.0.0.1:23456", "KDT_NUM_PROCESSES=2",
                    f"KDT_PROCESS_ID={i}", *main]
    assert argv[2].startswith("XLA_FLAGS=") and argv[2].endswith(
        "--xla_force_host_platform_device_count=4")
  assert len(commands) == 2
  assert "/tmp/w/logs/process_1.log" in out


@pytest.mark.parametrize("script, args, message", [
    ("tpu_create.sh", ["--zone", "us-central2-b", "--accelerator-type", "v4-8"], "--name is required"),
    ("tpu_create.sh", [*POD, "--accelerator-type", "big-tpu"], "does not look like a TPU type"),
    ("tpu_create.sh", ["--name", "Bad_Name", "--zone", "us-central2-b", "--accelerator-type", "v4-8"],
     "not a valid TPU name"),
    ("tpu_setup.sh", ["--name", "kdt-pod", "--zone", "central"], "does not look like a zone"),
    ("tpu_run.sh", [*POD, "--config", "configs/quickstart.py", "--workdir", "/tmp/local"],
     "must be a gs://BUCKET/PATH URL"),
    ("tpu_run.sh", [*POD, "--config", "configs/nope.py", "--workdir", "gs://bkt/x"], "not found"),
    ("tpu_run.sh", [*POD, "--workdir", "gs://bkt/x"], "--config is required"),
    ("tpu_delete.sh", [*POD, "--force"], "unknown argument '--force'"),
    ("tpu_delete.sh", ["--name"], "--name needs a value"),
    ("local.sh", ["--config", "configs/quickstart.py", "--workdir", "/tmp/w", "--processes", "0"],
     "must be a positive integer"),
    ("local.sh", ["--config", "configs/quickstart.py", "--workdir", "/tmp/w", "--port", "80"],
     "must be a number in [1024, 65535]"),
    ("local.sh", ["--workdir", "/tmp/w"], "--config is required"),
])
def test_bad_arguments_are_refused_before_anything_runs(script, args, message):
  proc = _run(script, *args, "--dry-run")
  assert proc.returncode == 2
  assert message in proc.stderr and "--help" in proc.stderr
  assert "+ " not in proc.stdout


def test_without_gcloud_a_real_run_stops_with_a_clear_message(tmp_path):
  # A PATH holding only the few tools the scripts need before calling gcloud (never gcloud itself,
  # even on a machine that has it: this test must not reach Google Cloud).
  for tool in ("dirname", "basename", "awk", "sed", "cat"):
    os.symlink(shutil.which(tool), tmp_path / tool)
  proc = _run("tpu_delete.sh", *POD, env=dict(os.environ, PATH=str(tmp_path)))
  assert proc.returncode == 2 and "gcloud not found" in proc.stderr
  assert "+ " not in proc.stdout


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_has_help_and_strict_mode(script):
  proc = _run(script, "--help")
  assert proc.returncode == 0 and "Usage:" in proc.stdout
  with open(os.path.join(LAUNCH, script), encoding="utf-8") as f:
    text = f.read()
  assert text.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in text
  assert os.access(os.path.join(LAUNCH, script), os.X_OK)


def test_local_stops_the_other_processes_when_one_fails(tmp_path):
  """Process 1 fails at once; process 0 ignores SIGTERM (as one stuck in a collective would): it
  is killed after the grace period and local.sh exits with the failure's status."""
  fake = tmp_path / "fake_python"
  fake.write_text(textwrap.dedent("""\
      #!/usr/bin/env bash
      case "${KDT_PROCESS_ID:-}" in
        1) echo "process 1 fails"; exit 3 ;;
        0) trap '' TERM; echo "process 0 hangs"; exec sleep 60 ;;
        *) echo 23457 ;;  # the free-port probe
      esac
      """))
  fake.chmod(0o755)
  start = time.time()
  proc = _run("local.sh", "--config", "configs/quickstart.py", "--workdir", str(tmp_path / "w"),
              "--processes", "2", "--python", str(fake),
              env=dict(os.environ, KDT_STOP_GRACE_SECONDS="1"))
  assert proc.returncode == 3
  assert time.time() - start < 30
  assert "a process exited with status 3; stopping the others" in proc.stderr
  assert "process 1 fails" in (tmp_path / "w" / "logs" / "process_1.log").read_text()
