"""Bad input never gets past the front door, and nothing on disk is lost."""

import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from kdt import config_lib
from kdt import experiments
from kdt import workdir as workdir_lib
from kdt.experiments import imp as imp_lib
from kdt.train import loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--config.train.num_steps=12", "--config.train.batch_size=32",
         "--config.train.checkpoint_every_steps=4", "--config.train.log_every_steps=0",
         "--config.schedule.milestones=(8,)", "--config.imp.num_rounds=1",
         "--config.imp.rewind_step=4", "--config.imp.recipes=('lth',)"]


def _main(workdir, *extra):
  cmd = [sys.executable, "-m", "kdt.main", "--config", os.path.join(REPO, "configs/quickstart.py"),
         "--workdir", workdir, *SMALL, *extra]
  return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)


def _snapshot(workdir):
  out = {}
  for root, _, files in os.walk(workdir):
    for name in files:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, workdir)] = f.read()
  return out


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("finished"))
  result = _main(workdir)
  assert result.returncode == 0, result.stderr[-2000:]
  return workdir


@pytest.mark.parametrize("override,field", [
    ("--config.imp.recipes=('lth','kd_rewnd')", "imp.recipes"),
    ("--config.imp.pruning_rate=1.2", "imp.pruning_rate"),
    ("--config.loss.kd_alpha=2.0", "loss.kd_alpha"),
    ("--config.train.batch_size=5000", "train.batch_size"),
])
def test_bad_config_fails_before_compute_and_leaves_workdir_untouched(finished, override, field):
  before = _snapshot(finished)
  result = _main(finished, override)
  assert result.returncode == 2
  assert f"config.{field}=" in result.stderr and "allowed" in result.stderr
  assert "Traceback" not in result.stderr
  assert _snapshot(finished) == before


def test_different_config_is_refused_listing_fields(finished):
  before = _snapshot(finished)
  result = _main(finished, "--config.optimizer.learning_rate=0.1", "--config.seeds.data_order=3")
  assert result.returncode == 2
  assert "optimizer.learning_rate: 0.05 -> 0.1" in result.stderr
  assert "seeds.data_order: 0 -> 3" in result.stderr
  assert _snapshot(finished) == before


def test_allow_config_change_is_explicit_and_recorded(tmp_path, finished):
  workdir = str(tmp_path / "grow")
  shutil.copytree(finished, workdir)
  result = _main(workdir, "--config.imp.num_rounds=2", "--allow_config_change")
  assert result.returncode == 0, result.stderr[-2000:]
  assert "imp.num_rounds: 1 -> 2" in result.stdout + result.stderr
  assert "[round_01/lth] already finished" in result.stdout   # round 1 kept, round 2 trained
  with open(os.path.join(workdir, "config_changes.json")) as f:
    assert json.load(f)[0]["changes"] == ["imp.num_rounds: 1 -> 2"]
  with open(os.path.join(workdir, "results.json")) as f:
    assert [r["round"] for r in json.load(f)] == [0, 1, 2]


def test_checkpoint_of_another_model_is_refused_by_name(tmp_path, finished):
  workdir = str(tmp_path / "othermodel")
  shutil.copytree(finished, workdir)
  before = _snapshot(workdir)
  result = _main(workdir, "--config.model.name=conv2", "--allow_config_change")
  assert result.returncode == 2
  assert "holds a different model or state" in result.stderr
  assert "Traceback" not in result.stderr
  after = _snapshot(workdir)
  after.pop("config.json"), after.pop("config_changes.json"), before.pop("config.json")
  assert after == before


def test_missing_dataset_is_a_clear_error(tmp_path):
  result = _main(str(tmp_path / "w"), "--config.data.name=mnist", f"--config.data.dir={tmp_path}")
  assert result.returncode == 2
  assert "train-images-idx3-ubyte.gz" in result.stderr
  assert "Traceback" not in result.stderr


def test_non_finite_loss_names_step_and_recipe_and_rerun_does_not_continue(tmp_path):
  workdir = str(tmp_path / "nan")
  args = ("--config.optimizer.learning_rate=1e5", "--config.optimizer.momentum=0.0")
  first = _main(workdir, *args)
  assert first.returncode == 2
  assert "[dense] non-finite loss" in first.stderr and "at step" in first.stderr
  step = first.stderr.split("at step ")[1].split(";")[0]
  second = _main(workdir, *args)       # resumes from the last good checkpoint, fails again
  assert second.returncode == 2
  assert f"at step {step};" in second.stderr
  assert not os.path.exists(os.path.join(workdir, "results.json"))


def test_invariant_violation_stops_the_run(tmp_path, monkeypatch):
  config = config_lib.base_config("imp")
  for arg in SMALL:
    key, value = arg[len("--config."):].split("=")
    node = config
    for part in key.split(".")[:-1]:
      node = node[part]
    node[key.split(".")[-1]] = eval(value)  # pylint: disable=eval-used
  config.train.eval_batch_size = 120
  config.imp.selector = "conv_dense_no_head"
  workdir_lib.prepare_workdir(config, str(tmp_path))
  setup = experiments.build_setup(config, str(tmp_path))
  driver = imp_lib.IMPRounds(setup, config.imp, str(tmp_path))
  # a pruning function that prunes one weight too few breaks the schedule's exact count
  real_prune = driver._prune

  def prune_one_too_few(*args, **kwargs):
    new = real_prune(*args, **kwargs)
    kernel = np.asarray(new["stem"]["kernel"]).copy()
    kernel.flat[np.flatnonzero(~kernel)[0]] = True
    return dict(new, stem=dict(new["stem"], kernel=jax.numpy.asarray(kernel)))

  driver._prune = prune_one_too_few
  with pytest.raises(experiments.InvariantError, match="schedule says"):
    driver.run()
  mask = jax.tree.map(np.zeros_like, driver.dense.mask)
  params = jax.tree.map(lambda m: np.ones(m.shape, np.float32), mask)
  with pytest.raises(experiments.InvariantError, match="pruned weight is non-zero"):
    driver._check_pruned_zero(1, "lth", params, mask)


# ----- the battery: every malformed input is one line, exit status 2, and nothing on disk changes --


def _tree_hashes(workdir):
  """Every file's SHA-256 and every directory under ``workdir`` (the workdir's exact state)."""
  out = {}
  for root, dirs, files in os.walk(workdir):
    for name in dirs:
      out[os.path.relpath(os.path.join(root, name), workdir) + "/"] = "dir"
    for name in files:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, workdir)] = hashlib.sha256(f.read()).hexdigest()
  return out


def _with_small(overrides):
  """SMALL, each field that ``overrides`` sets left to the override (one value per field)."""
  fields = {o.split("=", 1)[0] for o in overrides}
  return [a for a in SMALL if a.split("=", 1)[0] not in fields] + list(overrides)


@pytest.fixture
def kdt_main(monkeypatch):
  """``python -m kdt.main ARGS`` in this process: ``(exit status, stderr)``.

  ml_collections reads the overrides from ``sys.argv``, defines one flag per overridden field and
  loads the config file into the module ``config_config`` (re-using it if it is loaded), so each
  call sets ``sys.argv`` and removes the previous call's field flags and module first. kdt's log
  handler, the signal handlers and the standard streams are put back afterwards.
  """
  from absl import flags
  from kdt import main as main_lib

  def run(*args):
    for name in [n for n in flags.FLAGS if n.startswith("config.")]:
      delattr(flags.FLAGS, name)
    flags.FLAGS.unparse_flags()
    argv = ["kdt", *args]
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.delitem(sys.modules, "config_config", raising=False)
    out, err = io.StringIO(), io.StringIO()
    handlers = logging.getLogger("kdt").handlers
    streams = [h.stream for h in handlers]
    signals = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
      with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        for handler in handlers:
          handler.stream = out
        main_lib.main(main_lib.parse_flags(argv))
      code = 0
    except SystemExit as e:
      code = e.code
    finally:
      for handler, stream in zip(handlers, streams):
        handler.stream = stream
      for s, h in signals.items():
        signal.signal(s, h)
    return code, err.getvalue()

  return run


def _config_file(directory, name, body):
  path = os.path.join(directory, name)
  with open(path, "w", encoding="utf-8") as f:
    f.write(body)
  return path


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
  """Broken config files, and copies of the finished workdir with a damaged ``config.json``."""
  directory = str(tmp_path_factory.mktemp("bad_files"))
  files = {
      "syntax": _config_file(directory, "syntax.py", "def get_config(:\n  pass\n"),
      "no_get_config": _config_file(directory, "no_get_config.py", "X = 1\n"),
      "returns_dict": _config_file(directory, "returns_dict.py", "def get_config():\n  return {}\n"),
      "raises": _config_file(directory, "raises.py",
                             "def get_config():\n  raise ValueError('no such dataset here')\n"),
      "no_imp_group": _config_file(
          directory, "no_imp_group.py",
          "from kdt import config_lib\n\ndef get_config():\n  config = config_lib.base_config("
          "'imp')\n  config.data.name = 'digits'\n  del config['imp']\n  return config\n"),
  }
  return files


@pytest.fixture(scope="module")
def damaged_workdirs(finished, tmp_path_factory):
  """Copies of the finished workdir whose ``config.json`` is truncated / not a config."""
  out = {}
  for name, text in (("truncated", '{"experiment": "imp", "imp": {"num_r'), ("list", "[1, 2]\n"),
                     ("binary", "\udcff\udcfe")):
    workdir = str(tmp_path_factory.mktemp(name))
    shutil.rmtree(workdir)
    shutil.copytree(finished, workdir)
    with open(os.path.join(workdir, "config.json"), "wb") as f:
      f.write(text.encode("utf-8", "surrogateescape"))
    out[name] = workdir
  return out


QUICKSTART = os.path.join(REPO, "configs", "quickstart.py")


def _config(name):
  return os.path.join(REPO, "configs", name)


# (config, overrides or extra flags, text the error line must contain). Every case runs against
# the finished workdir; overrides of a SMALL field replace SMALL's value.
BATTERY = [
    # flags and parsing
    (QUICKSTART, ["--config.optimizer.lerning_rate=0.1"], "no such config field"),
    (QUICKSTART, ["--config.imp.scope=global"], "use --config.imp.allocation"),
    (QUICKSTART, ["--config.train.num_steps=abc"], "--config.train.num_steps=abc"),
    (QUICKSTART, ["--config.seeds.init=1.5"], "--config.seeds.init=1.5"),
    (QUICKSTART, ["--config.parallel.distributed=maybe"], "Non-boolean"),
    (QUICKSTART, ["--config.train=3"], "--config.train"),
    (QUICKSTART, ["--config.schedule.milestones=(8,"], "milestones=(8,"),
    (QUICKSTART, ["--config.imp.recipes=('lth'"], "imp.recipes"),
    (QUICKSTART, ["--config.lmc.rewind_steps=(0,)"], "exists only in configs of experiment 'lmc'"),
    (QUICKSTART, ["--workdri=x"], "Did you mean: workdir"),
    (QUICKSTART, ["--allow_config_change=maybe"], "Non-boolean"),
    (QUICKSTART, ["extra"], "unexpected arguments"),
    (os.path.join(REPO, "configs"), [], "is a directory"),
    (_config("quickstrat.py"), [], "no such file"),
    ("syntax", [], "syntax error"),
    ("no_get_config", [], "no get_config()"),
    ("returns_dict", [], "not a ConfigDict"),
    ("raises", [], "no such dataset here"),
    ("no_imp_group", [], "imp"),
    # validation: bad values, wrong types, inconsistent combinations
    (QUICKSTART, ["--config.experiment=ipm"], "config.experiment='ipm'"),
    (QUICKSTART, ["--config.imp.recipes=('lth','kd_rewnd')"], "config.imp.recipes="),
    (QUICKSTART, ["--config.imp.recipes=('lth','lth')"], "at most once"),
    (QUICKSTART, ["--config.imp.num_rounds=0"], "config.imp.num_rounds=0"),
    (QUICKSTART, ["--config.imp.pruning_rate=nan"], "config.imp.pruning_rate=nan"),
    (QUICKSTART, ["--config.imp.rewind_step=100"], "config.imp.rewind_step=100"),
    (QUICKSTART, ["--config.imp.densities=(0.5,)"], "imp.pruning_schedule='oneshot'"),
    (QUICKSTART, ["--config.imp.pruning_schedule=oneshot", "--config.imp.densities=(0.5,0.2)"],
     "exactly imp.num_rounds=1 densities"),
    (QUICKSTART, ["--config.imp.recipes=('lth','random_reinit')", "--config.imp.control_recipe=kd"],
     "config.imp.control_recipe='kd'"),
    (QUICKSTART, ["--config.imp.teacher=bigger"], "config.imp.teacher='bigger'"),
    (QUICKSTART, ["--config.train.batch_size=5000"], "config.train.batch_size="),
    (QUICKSTART, ["--config.train.pinned_steps=(5,100)"], "config.train.pinned_steps=(5, 100)"),
    (QUICKSTART, ["--config.optimizer.learning_rate=-1"], "config.optimizer.learning_rate=-1.0"),
    (QUICKSTART, ["--config.loss.kd_alpha=2.0"], "config.loss.kd_alpha=2.0"),
    (QUICKSTART, ["--config.schedule.name=cosin"], "config.schedule.name='cosin'"),
    (QUICKSTART, ["--config.model.name=lenet_300_10"], "config.model.name='lenet_300_10'"),
    (QUICKSTART, ["--config.data.name=digitz"], "config.data.name='digitz'"),
    (_config("quickstart_lmc.py"), ["--config.lmc.rewind_steps=(0,100000)"], "lmc.rewind_steps"),
    (_config("quickstart_lmc.py"), ["--config.lmc.networks=('dense','sparse')"], "lmc.networks"),
    (_config("quickstart_dst.py"), ["--config.dst.methods=('rigl','sat')"], "dst.methods"),
    (_config("quickstart_dst.py"), ["--config.dst.update_every=0"], "dst.update_every=0"),
    (_config("quickstart_tost.py"), ["--config.tost.recipes=('lth','bogus')"], "tost.recipes"),
    (_config("quickstart_tost.py"), ["--config.tost.label_smoothing=1.5"], "tost.label_smoothing"),
    (_config("quickstart_correlation.py"), ["--config.correlation.learning_rates=(0.1,-0.1)"],
     "correlation.learning_rates"),
    (_config("quickstart_prune_at_init.py"), ["--config.prune_at_init.scores=('snap',)"],
     "prune_at_init.scores"),
    # the data is missing (the workdir exists)
    (QUICKSTART, ["--config.data.name=mnist", "--config.data.dir=/nonexistent/mnist"],
     "train-images-idx3-ubyte.gz"),
]


@pytest.mark.parametrize("config,args,needle", BATTERY,
                         ids=[f"{i:02d}-{(a or [c])[0].split('/')[-1][:40]}"
                              for i, (c, a, _) in enumerate(BATTERY)])
def test_battery_of_bad_inputs_is_one_line_and_leaves_the_workdir_byte_identical(
    finished, bad_files, kdt_main, config, args, needle):
  config = bad_files.get(config, config)
  overrides = _with_small(args) if config == QUICKSTART else list(args)
  before = _tree_hashes(finished)
  code, err = kdt_main("--config", config, "--workdir", finished, *overrides)
  assert code == 2, err
  lines = err.splitlines()
  assert len(lines) == 1 and lines[0].startswith("kdt: error: "), err
  assert needle in lines[0]
  assert _tree_hashes(finished) == before


@pytest.mark.parametrize("damage,needle", [
    ("truncated", "config.json is not a readable config (JSONDecodeError"),
    ("list", "config.json holds a JSON list, not a config"),
    ("binary", "config.json is not a readable config (UnicodeDecodeError"),
])
def test_damaged_config_json_in_the_workdir_is_one_line_and_touches_nothing(
    damaged_workdirs, kdt_main, damage, needle):
  workdir = damaged_workdirs[damage]
  before = _tree_hashes(workdir)
  code, err = kdt_main("--config", QUICKSTART, "--workdir", workdir, *SMALL)
  assert code == 2, err
  lines = err.splitlines()
  assert len(lines) == 1 and lines[0].startswith("kdt: error: ") and needle in lines[0], err
  assert _tree_hashes(workdir) == before


def test_the_in_process_front_door_still_resumes_a_finished_workdir(finished, kdt_main):
  before = _tree_hashes(finished)
  code, err = kdt_main("--config", QUICKSTART, "--workdir", finished, *SMALL)
  assert code == 0 and "error" not in err, err
  assert _tree_hashes(finished).keys() == before.keys()
