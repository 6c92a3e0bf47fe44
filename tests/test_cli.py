"""The command line's front door: one-line errors before kdt's validation, fast help, field lists."""

import json
import os
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(REPO, "configs", "quickstart.py")


def _kdt(*args, timeout=120):
  return subprocess.run([sys.executable, "-m", "kdt.main", *args], capture_output=True, text=True,
                        cwd=REPO, timeout=timeout)


def _one_error_line(result):
  assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
  lines = [l for l in result.stderr.splitlines() if l.strip()]
  assert len(lines) == 1, result.stderr
  assert lines[0].startswith("kdt: error: ")
  assert "Traceback" not in result.stderr
  return lines[0]


def _snapshot(workdir):
  out = {}
  for root, _, files in os.walk(workdir):
    for name in files:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, workdir)] = f.read()
  return out


def test_misspelt_override_is_one_line_with_did_you_mean(tmp_path):
  line = _one_error_line(_kdt("--config", QUICKSTART, "--workdir", str(tmp_path / "w"),
                              "--config.optimizer.lerning_rate=0.1"))
  assert "--config.optimizer.lerning_rate" in line
  assert 'Did you mean "learning_rate"' in line
  assert not os.path.exists(tmp_path / "w")


def test_renamed_field_names_its_new_name(tmp_path):
  line = _one_error_line(_kdt("--config", QUICKSTART, "--workdir", str(tmp_path / "w"),
                              "--config.imp.scope=global"))
  assert "use --config.imp.allocation" in line


def test_missing_config_file_lists_nearest_configs(tmp_path):
  line = _one_error_line(_kdt("--config", "configs/quickstrat.py", "--workdir", str(tmp_path)))
  assert "configs/quickstrat.py: no such file" in line
  assert "configs/quickstart.py" in line


def test_config_file_with_syntax_error_is_one_line(tmp_path):
  bad = tmp_path / "bad.py"
  bad.write_text("def get_config(:\n  pass\n")
  line = _one_error_line(_kdt("--config", str(bad), "--workdir", str(tmp_path / "w")))
  assert "syntax error" in line and "line 1" in line


@pytest.mark.parametrize("args,needle", [
    (("--config.train.num_steps=abc",), "--config.train.num_steps=abc"),
    (("--config.train=3",), "--config.train=3"),
    (("--workdri=x",), "Did you mean: workdir"),
    (("extra",), "unexpected arguments"),
])
def test_other_flag_errors_are_one_line(tmp_path, args, needle):
  line = _one_error_line(_kdt("--config", QUICKSTART, "--workdir", str(tmp_path / "w"), *args))
  assert needle in line


def test_missing_flags_are_one_line(tmp_path):
  assert "--config is required" in _one_error_line(_kdt("--workdir", str(tmp_path)))
  assert "--workdir is required" in _one_error_line(_kdt("--config", QUICKSTART))


def test_group_of_another_experiment_is_one_line(tmp_path):
  config = os.path.join(REPO, "configs", "mnist_lenet_300_100.py")   # experiment "train"
  line = _one_error_line(_kdt("--config", config, "--workdir", str(tmp_path / "w"),
                              "--config.experiment=imp"))
  assert "config.imp" in line and "config_lib.base_config('imp')" in line
  line = _one_error_line(_kdt("--config", config, "--workdir", str(tmp_path / "w"),
                              "--config.imp.num_rounds=2"))
  assert "'imp'" in line and "config_lib.base_config('imp')" in line
  assert not os.path.exists(tmp_path / "w")


def test_help_is_fast_lists_registries_and_imports_no_jax():
  code = ("import sys, runpy; sys.argv = ['kdt.main', '--help']\n"
          "try:\n  runpy.run_module('kdt.main', run_name='__main__')\n"
          "except SystemExit as e:\n  assert not e.code, e.code\n"
          "assert 'jax' not in sys.modules, 'jax imported'\n"
          "assert 'flax' not in sys.modules, 'flax imported'\n")
  start = time.time()
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          timeout=60)
  elapsed = time.time() - start
  assert result.returncode == 0, result.stderr
  out = result.stdout
  assert "configs/quickstart.py" in out and "configs/cifar10_resnet20.py" in out
  for name in ("lth", "kd_rewind", "random_reinit", "resnet20", "lenet_300_100", "cifar10",
               "imagenet2012", "lmc", "correlation"):
    assert name in out, name
  assert "--config.imp.recipes=\"('lth','rewind')\"" in out
  assert elapsed < 5, elapsed


def test_list_fields_shows_defaults_and_allowed_values():
  result = _kdt("--config", QUICKSTART, "--list_fields")
  assert result.returncode == 0, result.stderr
  lines = {l.split()[0]: l for l in result.stdout.splitlines() if l.startswith("--config.")}
  assert "(default 1000)" in lines["--config.train.num_steps"]
  assert "'kd_rewind'" in lines["--config.imp.recipes"]
  assert "'resnet20'" in lines["--config.model.name"]
  assert "'sgd', 'adam', 'adamw'" in lines["--config.optimizer.name"]
  assert "#" in lines["--config.imp.pruning_rate"]   # the schema's comment


def test_light_names_match_the_registries():
  from kdt import config_lib, data, models, names
  from kdt.pruning import selectors
  from kdt.tickets import recipes
  from kdt.train import losses, optim
  assert names.MODELS == tuple(models.model_names())
  assert names.DATASETS == tuple(data.dataset_names())
  assert list(names.RECIPES) == list(recipes.RECIPES)
  assert set(names.CONTROL_RECIPES) == {n for n, r in recipes.RECIPES.items() if r.is_control}
  assert names.ACTIVATIONS == tuple(sorted(models.ACTIVATIONS))
  assert names.OPTIMIZERS == tuple(optim.OPTIMIZERS)
  assert names.SCHEDULES == tuple(optim.SCHEDULES)
  assert names.SELECTORS == tuple(selectors.PRESETS)
  assert names.KD_REDUCTIONS == tuple(losses.KD_REDUCTIONS)
  assert names.LAST_BATCH == data.order.LAST_BATCH
  assert names.LABEL_SMOOTHING_CONVENTIONS == tuple(losses.LABEL_SMOOTHING_CONVENTIONS)
  assert names.EXPERIMENTS == tuple(config_lib.EXPERIMENTS)
  from kdt.tickets import batch
  assert names.CHOICES["tickets.strategy"] == batch.STRATEGIES
  from kdt import evaluation
  assert names.CHOICES["train.report_metric"] == evaluation.REPORT_METRICS


def test_failed_start_writes_nothing_and_location_is_not_config(tmp_path):
  workdir = str(tmp_path / "w")
  result = _kdt("--config", QUICKSTART, "--workdir", workdir, "--config.data.name=mnist",
                f"--config.data.dir={tmp_path / 'nowhere'}")
  assert result.returncode == 2
  assert not os.path.exists(os.path.join(workdir, "config.json"))

  from kdt import config_lib
  from kdt import workdir as workdir_lib
  config = config_lib.base_config("imp")
  workdir_lib.prepare_workdir(config, workdir)
  with open(os.path.join(workdir, "config.json")) as f:
    stored = f.read()
  config.data.dir = "/moved/data"
  config.data.tfds_dir = "/moved/tfds"
  workdir_lib.prepare_workdir(config, workdir)          # same run, data elsewhere: accepted
  with open(os.path.join(workdir, "config.json")) as f:
    assert f.read() == stored
  config.seeds.init = 3
  with pytest.raises(workdir_lib.WorkdirConfigMismatchError, match="seeds.init"):
    workdir_lib.prepare_workdir(config, workdir)
  assert json.loads(stored)["data"]["dir"] == ""


def test_an_older_workdir_without_a_new_field_resumes_unless_the_field_is_set(tmp_path):
  """A field added by a newer kdt is absent from an older workdir's config.json: the run used its
  default, so resuming with the default is the same config, and another value is a difference."""
  from kdt import config_lib
  from kdt import workdir as workdir_lib
  workdir = str(tmp_path / "old")
  config = config_lib.base_config("imp")
  workdir_lib.prepare_workdir(config, workdir)
  path = os.path.join(workdir, "config.json")
  with open(path) as f:
    stored = json.load(f)
  del stored["replicates"], stored["train"]["report_metric"], stored["tickets"]
  with open(path, "w") as f:
    json.dump(stored, f)
  workdir_lib.prepare_workdir(config, workdir)          # the defaults: accepted
  config.replicates = 3
  with pytest.raises(workdir_lib.WorkdirConfigMismatchError, match="replicates"):
    workdir_lib.prepare_workdir(config, workdir)


def _config_file(tmp_path, name, text):
  path = tmp_path / name
  path.write_text(text)
  return str(path)


@pytest.mark.parametrize("make_args,needle", [
    (lambda t: ["--config.train.batch_size="], "--config.train.batch_size="),
    (lambda t: ["--config.seeds.init=1.5"], "--config.seeds.init=1.5"),
    (lambda t: ["--config.train.num_steps=1e3"], "--config.train.num_steps=1e3"),
    (lambda t: ["--config.optimizer=sgd"], "--config.optimizer=sgd"),
    (lambda t: ["--allow_config_change=maybe"], "--allow_config_change=maybe"),
    (lambda t: ["--config.imp.recipse=('lth',)"], "'recipse'"),
    (lambda t: ["--config.optimiser.learning_rate=0.1"], "'optimiser'"),
    (lambda t: ["--config", _config_file(t, "noget.py", "x = 1\n")], "no get_config()"),
    (lambda t: ["--config", _config_file(t, "raises.py", "def get_config():\n  raise ValueError('boom')\n")],
     "ValueError: boom"),
    (lambda t: ["--config", _config_file(t, "dict.py", "def get_config():\n  return {'a': 1}\n")],
     "not a ConfigDict"),
    (lambda t: ["--config", _config_file(t, "indent.py", "def get_config():\nreturn 1\n")],
     "syntax error"),
    (lambda t: ["--config", os.path.join(REPO, "configs")], "is a directory"),
    (lambda t: ["--config", QUICKSTART + ":smoke"], "get_config()"),
])
def test_malformed_inputs_leave_an_existing_workdir_untouched(tmp_path, make_args, needle):
  workdir = tmp_path / "existing"
  workdir.mkdir()
  (workdir / "config.json").write_text('{"experiment": "imp"}\n')
  (workdir / "results.json").write_text("[]\n")
  before = _snapshot(str(workdir))
  args = make_args(tmp_path)
  if "--config" not in args:
    args = ["--config", QUICKSTART, *args]
  line = _one_error_line(_kdt(*args, "--workdir", str(workdir)))
  assert needle in line, line
  assert _snapshot(str(workdir)) == before
