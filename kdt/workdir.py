"""A run's directory: the stored config, results and the rules for resuming into it.

The workdir holds the whole state of a run (``config.json``, Orbax checkpoints, results, plots).
:func:`prepare_workdir` stores the resolved config on the first start and, on every later start,
refuses a different one (naming the fields) unless the change is asked for. The readers
(:func:`load_config`, :func:`load_results`) import no JAX, so summaries and comparisons are fast.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import ml_collections

from kdt import config_lib
from kdt import fileio

log = logging.getLogger(__name__)


class WorkdirConfigUnreadableError(ValueError):
  """``workdir/config.json`` exists but is not a config (truncated, edited, not JSON)."""


class WorkdirConfigMismatchError(ValueError):
  """The workdir belongs to a run with a different config."""


def _process_index() -> int:
  import jax  # pylint: disable=import-outside-toplevel
  return jax.process_index()


def prepare_workdir(config: ml_collections.ConfigDict, workdir: str, *,
                    allow_config_change: bool = False) -> None:
  """Creates ``workdir`` and stores the config, or checks it against the stored one.

  Args:
    config: the resolved config.
    workdir: the run's directory.
    allow_config_change: accept a config that differs from the stored one (e.g. more IMP rounds
      for a finished run). The differences are logged and appended to ``config_changes.json``;
      finished runs are kept as they are, and checkpoints that no longer fit are refused by name.

  Raises:
    WorkdirConfigMismatchError: ``workdir/config.json`` holds a different config and
      ``allow_config_change`` is False; nothing is touched.
    WorkdirConfigUnreadableError: ``workdir/config.json`` is not a config; nothing is touched.
  """
  path = os.path.join(workdir, "config.json")
  resolved = config_lib.to_dict(config)
  if fileio.exists(path):
    with fileio.open(path, encoding="utf-8") as f:
      try:
        stored = json.load(f)
      except ValueError as e:  # also UnicodeDecodeError
        raise WorkdirConfigUnreadableError(
            f"{path} is not a readable config ({type(e).__name__}: {e}); nothing was touched. "
            "Restore it (e.g. from a copy of the workdir) or use a new --workdir.") from e
    if not isinstance(stored, dict):
      raise WorkdirConfigUnreadableError(
          f"{path} holds a JSON {type(stored).__name__}, not a config; nothing was touched. "
          "Restore it (e.g. from a copy of the workdir) or use a new --workdir.")
    # A field a newer kdt added is absent from an older workdir's config: it ran with the field's
    # default, so only a non-default value is a difference.
    defaults = config_lib.to_dict(config_lib.base_config(resolved["experiment"]))
    differences = config_lib.diff(_with_defaults(stored, defaults), resolved,
                                  ignore=config_lib.LOCATION_FIELDS)
    if not differences:
      return
    if not allow_config_change:
      raise WorkdirConfigMismatchError(
          f"{workdir} holds a run with a different config; refusing to mix them. Differing fields "
          f"(stored -> requested):\n  " + "\n  ".join(differences) +
          "\nUse a new --workdir, or pass --allow_config_change to continue this run with the new "
          "config (the change is recorded in config_changes.json).")
    log.warning("WARNING: continuing %s with a changed config (--allow_config_change):\n  %s",
                workdir, "\n  ".join(differences))
    if _process_index() == 0:
      changes_path = os.path.join(workdir, "config_changes.json")
      history = []
      if fileio.exists(changes_path):
        with fileio.open(changes_path, encoding="utf-8") as f:
          history = json.load(f)
      history.append({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "changes": differences,
                      "previous": stored})
      fileio.write_json(changes_path, history)
      fileio.write_json(path, resolved)
    return
  fileio.makedirs(workdir)
  if _process_index() == 0:
    fileio.write_json(path, resolved)


def _with_defaults(stored: dict, defaults: dict) -> dict:
  """``stored`` with every field it lacks taken from ``defaults`` (recursively)."""
  out = dict(stored)
  for key, value in defaults.items():
    if key not in out:
      out[key] = value
    elif isinstance(value, dict) and isinstance(out[key], dict):
      out[key] = _with_defaults(out[key], value)
  return out


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The resolved config a workdir was run with (``workdir/config.json``)."""
  with fileio.open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
    stored = json.load(f)
  return ml_collections.ConfigDict(_tuples(stored))


def _tuples(tree):
  """JSON lists back to the tuples configs use."""
  if isinstance(tree, dict):
    return {k: _tuples(v) for k, v in tree.items()}
  if isinstance(tree, list):
    return tuple(_tuples(v) for v in tree)
  return tree


def load_results(workdir: str) -> Any:
  """A workdir's ``results.json`` (IMP: one row per (round, recipe))."""
  with fileio.open(os.path.join(workdir, "results.json"), encoding="utf-8") as f:
    return json.load(f)
