"""Command line: ``python -m kdt.main --config configs/<x>.py --workdir DIR [--config.a.b=v ...]``.

A tiny shell over :func:`kdt.experiments.run`; Colab calls that function directly. Every failure,
flag parsing and config loading included, ends in one ``kdt: error: ...`` line on stderr and exit
status 2. ``--help`` and ``--list_fields`` answer without importing JAX (the registries' names
come from :mod:`kdt.names`).
"""

from __future__ import annotations

import ast
import difflib
import glob
import os
import sys
from typing import NoReturn, Sequence

from absl import app
from absl import flags
import ml_collections
from ml_collections import config_flags

from kdt import config_lib
from kdt import names
from kdt import schema

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file in configs/.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, results and plots.")
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    "allow_config_change", False,
    "Continue a workdir whose stored config differs from --config (logged and recorded in "
    "config_changes.json). Without it such a rerun is refused with the list of differing fields.")
_LIST_FIELDS = flags.DEFINE_bool(
    "list_fields", False, "Print every field of --config with its value and allowed values, then "
                          "exit (no --workdir needed).")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(REPO, "configs")
_HELP_ARGS = ("-h", "-help", "--help", "--helpshort", "-?")
_RENAMED_FIELDS = {"imp.scope": "imp.allocation"}  # old name -> new name
_GROUP_OF_EXPERIMENT = {group: name  # the first experiment with each group
                        for name, groups in reversed(config_lib.EXPERIMENT_GROUPS.items())
                        for group in groups}


def fail(message: str) -> NoReturn:
  """Prints ``kdt: error: <message>`` as one line on stderr and exits with status 2."""
  line = " ".join(str(message).split())
  print(f"kdt: error: {line}", file=sys.stderr, flush=True)
  sys.exit(2)


# ---------------------------------------------------------------------------------------------
# Help, config listing and field listing (no JAX).


def config_files() -> list[str]:
  """The config files shipped in ``configs/`` (paths relative to the repository)."""
  return sorted(os.path.relpath(p, REPO) for p in glob.glob(os.path.join(CONFIG_DIR, "*.py")))


def _first_docstring_line(path: str) -> str:
  try:
    with open(path, encoding="utf-8") as f:
      doc = ast.get_docstring(ast.parse(f.read())) or ""
  except (OSError, SyntaxError, ValueError):
    return ""
  return doc.strip().split("\n")[0]


def help_text() -> str:
  """``python -m kdt.main --help``: usage, flags, configs, experiments, recipes, models, datasets."""
  configs = config_files()
  width = max((len(c) for c in configs), default=0)
  recipe_width = max(len(r) for r in names.RECIPES)
  lines = [
      "kdt: lottery tickets (IMP, weight/LR rewinding, KD tickets) in JAX.",
      "",
      "usage:",
      "  python -m kdt.main --config configs/<file>.py --workdir DIR [--config.<group>.<field>=VALUE ...]",
      "  python -m kdt.main --config configs/<file>.py --list_fields   # every field, default, allowed",
      "  python -m kdt.summary WORKDIR [WORKDIR ...]                  # results table of finished runs",
      "",
      "flags:",
      "  --config FILE           a config file (below); re-running the same command resumes the run",
      "  --workdir DIR           checkpoints, results.json, plots/, tensorboard/",
      "  --allow_config_change   continue a workdir whose stored config differs (recorded)",
      "  --list_fields           print every config field with its value and allowed values",
      "",
      "overriding config fields:",
      "  --config.optimizer.learning_rate=0.05",
      "  --config.imp.recipes=\"('lth','rewind')\"      tuple fields: a quoted Python tuple",
      "  --config.imp.recipes=\"('lth',)\"              one element needs the trailing comma",
      "  --config.data.dir=/data/mnist                 strings need no quotes",
      "",
      f"configs ({os.path.relpath(CONFIG_DIR)}/):",
      *(f"  {c:<{width}}  {_first_docstring_line(os.path.join(REPO, c))}" for c in configs),
      "",
      f"experiments (config.experiment): {', '.join(names.EXPERIMENTS)}",
      "recipes (config.imp.recipes):",
      *(f"  {r:<{recipe_width}}  {d}" for r, d in names.RECIPES.items()),
      f"models (config.model.name): {', '.join(names.MODELS)}, wide_resnet_<depth>_<width>",
      f"datasets (config.data.name): {', '.join(names.DATASETS)}",
      "",
      "Methods and papers behind the recipes and configs: docs/methods.md.",
  ]
  return "\n".join(lines)


def list_fields(config) -> str:
  """Every field of ``config``: value here, the schema default, allowed values and its help."""
  flat = config_lib._flatten(config_lib.to_dict(config))  # pylint: disable=protected-access
  experiment = flat.get("experiment", "train")
  try:
    defaults = config_lib._flatten(config_lib.to_dict(config_lib.base_config(experiment)))  # pylint: disable=protected-access
  except Exception:  # pylint: disable=broad-except
    defaults = {}
  helps = schema.help_texts()
  width = max(len(k) for k in flat) + len("--config.")
  lines = [f"Fields of this config (experiment {experiment!r}); override any with "
           "--config.<field>=VALUE:", ""]
  for key, value in flat.items():
    shown = tuple(value) if isinstance(value, list) else value
    parts = [f"{'--config.' + key:<{width}}  = {shown!r}"]
    default = defaults.get(key, "<absent>")
    default = tuple(default) if isinstance(default, list) else default
    if default != shown:
      parts.append(f"(default {default!r})")
    if key in names.CHOICES:
      parts.append(f"allowed: {', '.join(repr(c) for c in names.CHOICES[key])}")
    if key in helps:
      parts.append(f"# {helps[key]}")
    lines.append("  ".join(parts))
  return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Flag parsing: every failure is one line.


def _config_arg(argv: Sequence[str]) -> str | None:
  for i, arg in enumerate(argv):
    if arg in ("--config", "-config") and i + 1 < len(argv):
      return argv[i + 1]
    if arg.startswith(("--config=", "-config=")):
      return arg.split("=", 1)[1]
  return None


def _nearest_configs(path: str) -> list[str]:
  files = config_files()
  by_name = {os.path.basename(f): f for f in files}
  close = difflib.get_close_matches(os.path.basename(path), list(by_name), n=3, cutoff=0.4)
  return [by_name[c] for c in close]


def _check_config_path(argv: Sequence[str]) -> None:
  path = _config_arg(argv)
  if path is None:
    fail("--config is required: a config file such as configs/quickstart.py (python -m kdt.main "
         "--help lists them all)")
  file_path = path.split(":", 1)[0]
  if os.path.isdir(file_path):
    fail(f"--config {path} is a directory; give a file, e.g. configs/quickstart.py (python -m "
         "kdt.main --help lists them)")
  if not os.path.isfile(file_path):
    near = _nearest_configs(file_path)
    hint = (f"; nearest in configs/: {', '.join(near)}" if near else
            f"; the configs are in {os.path.relpath(CONFIG_DIR)}/ (python -m kdt.main --help lists them)")
    fail(f"--config {path}: no such file{hint}")


def _override_of(key: str, argv: Sequence[str]) -> str | None:
  """The ``--config.a.b=v`` argument whose path contains ``key``."""
  for arg in argv:
    if arg.startswith("--config."):
      path = arg[len("--config."):].split("=", 1)[0]
      if key in path.split("."):
        return arg
  return None


def _clean(text: str) -> str:
  return " ".join(str(text).replace("\\n", " ").replace("\\'", "'").strip("'\" ").split())


def _explain_parse_error(e: BaseException, argv: Sequence[str]) -> str:
  """One line for an exception raised while absl / ml_collections parse the flags."""
  path = _config_arg(argv)
  if isinstance(e, SyntaxError):
    return (f"--config {path}: syntax error in {e.filename or path}, line {e.lineno}: {e.msg}")
  if isinstance(e, AttributeError) and "get_config" in str(e):
    return f"--config {path}: the file defines no get_config() function"
  if isinstance(e, (AttributeError, KeyError)):  # an override naming a field the config lacks
    text = _clean(e.args[0] if e.args else e)
    key = text.split()[0].strip("'\"") if text else ""
    arg = _override_of(key, argv)
    rest = text[len(key):].strip(" '\"") if text.startswith(key) or text.startswith(f"'{key}") else ""
    hint = f" ({rest})" if rest else ""
    if key in _GROUP_OF_EXPERIMENT and not hint:
      experiment = _GROUP_OF_EXPERIMENT[key]
      hint = (f"; the group config.{key} exists only in configs of experiment {experiment!r}: start "
              f"from one of those, or from config_lib.base_config({experiment!r})")
    where = arg.split("=", 1)[0] if arg else f"--config {path}"
    renamed = _RENAMED_FIELDS.get(where[len("--config."):]) if where.startswith("--config.") else None
    if renamed:
      hint = f" (renamed: use --config.{renamed})"
    return f"{where}: no such config field {key!r}{hint}"
  message = str(e)
  if "Traceback (most recent call last)" in message:  # a config file whose get_config raised
    head = message.split("Traceback", 1)[0].strip().rstrip(":")
    last = [l for l in message.strip().splitlines() if l.strip()][-1].strip()
    return f"{head}: {last}"
  if isinstance(e, flags.Error):
    return message
  return f"--config {path}: {type(e).__name__}: {message}"


def parse_flags(argv: Sequence[str]) -> list[str]:
  """absl's flag parsing, with ``--help`` answered at once and every error as one line."""
  if any(a in _HELP_ARGS for a in argv[1:]):
    print(help_text())
    sys.exit(0)
  _check_config_path(argv)
  try:
    rest = flags.FLAGS(list(argv))
    config = _CONFIG.value
  except SystemExit:
    raise
  except Exception as e:  # pylint: disable=broad-except
    fail(_explain_parse_error(e, argv))
  if not isinstance(config, ml_collections.ConfigDict):
    fail(f"--config {_config_arg(argv)}: get_config() returned {type(config).__name__}, not a "
         "ConfigDict")
  if len(rest) > 1:
    fail(f"unexpected arguments {rest[1:]} (flags are --name=value; see --help)")
  return rest


def main(argv):
  del argv  # checked by parse_flags
  config = _CONFIG.value
  if _LIST_FIELDS.value:
    print(list_fields(config))
    return
  if not _WORKDIR.value:
    fail("--workdir is required: the directory for the run's checkpoints and results")
  # JAX and the drivers load only now, so --help and bad flags answer at once.
  from kdt import checkpoint
  from kdt import experiments
  from kdt import host_devices
  from kdt import workdir as workdir_lib
  from kdt.data import DatasetUnavailableError
  from kdt.train import loop

  loop.install_stop_handlers()
  host_devices.configure_for(config)  # before JAX starts: CPU split for conv nets
  try:
    experiments.run(config, _WORKDIR.value, allow_config_change=_ALLOW_CONFIG_CHANGE.value,
                    config_file=config_flags.get_config_filename(flags.FLAGS["config"]))
  except workdir_lib.WorkdirConfigMismatchError as e:
    print(f"kdt: error: {e}", file=sys.stderr)  # it lists the differing fields, one a line
    sys.exit(2)
  except (config_lib.ConfigError, workdir_lib.WorkdirConfigUnreadableError,
          DatasetUnavailableError, checkpoint.CheckpointError, loop.NonFiniteLossError,
          experiments.InvariantError) as e:
    fail(e)
  except loop.PreemptedError as e:
    print(f"kdt: {e}", file=sys.stderr)
    sys.exit(e.exit_code)
  except KeyboardInterrupt:  # a second Ctrl-C: stopped at once, the last checkpoint is kept
    print("kdt: interrupted — rerun the same command to continue.", file=sys.stderr)
    sys.exit(130)


def run_cli() -> None:
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run_cli()
