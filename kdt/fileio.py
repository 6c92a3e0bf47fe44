"""Workdir files that are local paths or Cloud Storage URLs (``gs://bucket/run``) alike.

Orbax (through tensorstore) reads and writes checkpoint arrays in ``gs://`` itself. Everything else
kdt keeps in a workdir — ``config.json``, ``results.json``/``.csv``, plots, TensorBoard events,
directory checks — goes through these few functions, which use the local file system for paths and
``etils.epath`` (gcsfs, no TensorFlow; ``pip install kdt[gcs]``) for URLs. A multi-host run on a TPU
pod therefore needs nothing but a ``gs://`` workdir that every worker can reach.

Atomicity: local files are written to a temporary name and renamed; a Cloud Storage object only
becomes visible once its upload completes, so URLs are written directly.
"""

from __future__ import annotations

import builtins
import json
import os
from typing import IO, Any


def is_url(path: Any) -> bool:
  """Whether ``path`` is a URL (``gs://...``) rather than a local path."""
  return "://" in os.fspath(path)


def _remote(path: Any):
  from etils import epath  # pylint: disable=import-outside-toplevel
  return epath.Path(os.fspath(path))


def absolute(path: Any) -> str:
  """An absolute local path, or the URL unchanged (``os.path.abspath`` would mangle ``gs://``)."""
  path = os.fspath(path)
  return path if is_url(path) else os.path.abspath(path)


def exists(path: Any) -> bool:
  return _remote(path).exists() if is_url(path) else os.path.exists(path)


def isdir(path: Any) -> bool:
  return _remote(path).is_dir() if is_url(path) else os.path.isdir(path)


def makedirs(path: Any) -> None:
  """Creates a directory and its parents; an existing one is fine."""
  if is_url(path):
    _remote(path).mkdir(parents=True, exist_ok=True)
  else:
    os.makedirs(path, exist_ok=True)


def open(path: Any, mode: str = "r", encoding: str | None = None) -> IO:  # pylint: disable=redefined-builtin
  """Opens a local file or a Cloud Storage object.

  Objects cannot be appended to: ``"a"`` modes open a new object (and refuse an existing one).
  """
  if not is_url(path):
    return builtins.open(path, mode, encoding=encoding)
  remote = _remote(path)
  if "a" in mode:
    if remote.exists():
      raise OSError(f"{path}: Cloud Storage objects cannot be appended to.")
    mode = mode.replace("a", "w")
  return remote.open(mode, encoding=encoding)


def replace(source: Any, target: Any) -> None:
  """Renames ``source`` to ``target``, replacing it (atomic for local files)."""
  if is_url(source) or is_url(target):
    _remote(source).replace(_remote(target))
  else:
    os.replace(source, target)


def write_atomic(path: Any, data: str | bytes) -> None:
  """Writes a whole file: locally via a temporary file and a rename, so a kill never leaves half
  a file; in Cloud Storage as one object upload (visible only once complete)."""
  mode = "wb" if isinstance(data, bytes) else "w"
  encoding = None if isinstance(data, bytes) else "utf-8"
  if is_url(path):
    with open(path, mode, encoding=encoding) as f:
      f.write(data)
    return
  tmp = f"{path}.tmp.{os.getpid()}"
  with builtins.open(tmp, mode, encoding=encoding) as f:
    f.write(data)
  os.replace(tmp, path)


def write_json(path: Any, payload: Any) -> None:
  """Writes ``payload`` as indented, key-sorted JSON, atomically (see :func:`write_atomic`)."""
  write_atomic(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def write_csv(path: Any, rows: list, columns) -> None:
  """Writes ``rows`` (dicts) as CSV with those of ``columns`` some row has, atomically."""
  columns = [c for c in columns if any(c in r for r in rows)]
  lines = [",".join(columns)]
  for row in rows:
    lines.append(",".join("" if row.get(c) is None else str(row[c]) for c in columns))
  write_atomic(path, "\n".join(lines) + "\n")
