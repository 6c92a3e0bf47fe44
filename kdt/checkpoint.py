"""Orbax checkpoints: a thin wrapper that pins rewind points and keeps saves atomic and verified.

One :class:`Checkpointer` per training run directory (``workdir/dense``,
``workdir/round_01/lth/train``, ...). Each saved step holds two items:

* ``state`` — the :class:`~kdt.train.state.TrainState` (params, BN stats, optimizer state, step);
* ``meta`` — JSON: evaluation history, whether the run finished, a fingerprint of ``state``.

Orbax writes each step to a temporary directory and renames it when complete, so a process killed
mid-save leaves the previous steps intact. Steps listed in ``pinned_steps`` (step 0, rewind points,
the final step) are never garbage-collected; of the others the latest ``keep_last`` are kept.

Every restore is checked: the stored tree must have the expected structure and shapes (a
checkpoint of another model is refused by name), and the restored arrays must match the
fingerprint saved with them (a truncated or corrupted file is detected, not trained on).
:meth:`Checkpointer.restore_latest` falls back to the newest good step, moving bad newer steps
aside (renamed ``<step>.corrupt``, never deleted); if no step is good it stops and touches nothing.
"""

from __future__ import annotations

import logging
import os
import time
import zlib
from typing import Any, Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocp_managers

from kdt import faults
from kdt import fileio

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
  """A checkpoint cannot be used; the message names the directory, the step and why."""


class CheckpointMismatchError(CheckpointError):
  """The checkpoint holds a different model / state structure than the run expects."""


class CheckpointCorruptError(CheckpointError):
  """The checkpoint's files are missing, truncated or do not match their fingerprint."""


def _key_name(key) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def path_shapes(tree: Any) -> dict[str, tuple]:
  """``{"params/stem/kernel": shape, ...}`` for every array leaf of ``tree``."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {"/".join(_key_name(k) for k in path): tuple(leaf.shape) for path, leaf in flat}


def fingerprint(tree: Any) -> str:
  """A CRC32 over every leaf's bytes (this host's copy of replicated arrays), as hex."""
  crc = 0
  for leaf in jax.tree.leaves(tree):
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
      leaf = leaf.addressable_data(0)
    crc = zlib.crc32(np.ascontiguousarray(np.asarray(leaf)).tobytes(), crc)
  return f"{crc:08x}"


class Checkpointer:
  """Saves and restores ``(state, meta)`` pairs by step in one directory.

  Args:
    directory: where the steps live (local path or ``gs://``).
    pinned_steps: steps never deleted (rewind points, the final step).
    keep_last: how many of the latest other steps to keep.
    name: the run's name, for messages (default: the directory's name).
  """

  def __init__(self, directory: str, *, pinned_steps: Sequence[int] = (), keep_last: int = 2,
               name: str = ""):
    self.directory = os.fspath(directory)
    self.name = name or os.path.basename(self.directory)
    policies = [ocp_managers.LatestN(keep_last)]
    if pinned_steps:
      policies.append(ocp_managers.CustomSteps(sorted(set(int(s) for s in pinned_steps))))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=ocp_managers.AnyPreservationPolicy(policies),
        create=True,
        enable_async_checkpointing=False,
        # A process killed mid-save (SIGKILL, a second Ctrl-C) leaves `<step>.orbax-checkpoint-tmp`;
        # the next start removes it (a finished step is only ever a renamed, complete folder).
        cleanup_tmp_directories=True,
    )
    self._manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "meta": ocp.JsonCheckpointHandler()})

  def steps(self) -> list[int]:
    """All complete saved steps, ascending."""
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    """The newest complete step, or None."""
    steps = self.steps()
    return steps[-1] if steps else None

  def save(self, step: int, state: Any, meta: dict) -> None:
    """Saves ``state`` and ``meta`` (plus the state's fingerprint) at ``step``; a saved step is final."""
    if step in self._manager.all_steps():
      return
    faults.maybe_kill("checkpoint_save", self.name)
    meta = dict(meta, fingerprint=fingerprint(state))
    self._manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
        force=True,
    )
    self._manager.wait_until_finished()

  def _check_structure(self, step: int, like: Any) -> None:
    try:
      stored = self._manager.item_metadata(step)["state"]
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointCorruptError(
          f"{self.directory} step {step}: cannot read its metadata ({type(e).__name__}: {e})") from e
    if stored is None:
      raise CheckpointCorruptError(f"{self.directory} step {step}: the state item is missing")
    tree = stored.tree if hasattr(stored, "tree") else stored
    want, have = path_shapes(like), path_shapes(tree)
    if want != have:
      missing = sorted(set(want) - set(have))[:3]
      extra = sorted(set(have) - set(want))[:3]
      shape = [f"{k}: stored {have[k]} vs expected {want[k]}" for k in sorted(set(want) & set(have))
               if want[k] != have[k]][:3]
      raise CheckpointMismatchError(
          f"{self.directory} step {step} holds a different model or state than this run expects "
          f"(was it written by another config?). Missing: {missing}; unexpected: {extra}; "
          f"shape differences: {shape}.")

  def restore(self, step: int, like: Any) -> tuple[Any, dict]:
    """Restores and verifies step ``step`` into the structure, dtypes and shardings of ``like``.

    Args:
      step: a saved step.
      like: a pytree of arrays or ``jax.ShapeDtypeStruct`` with the target structure.

    Returns:
      ``(state, meta)``.

    Raises:
      CheckpointMismatchError: the stored state has another structure or shapes.
      CheckpointCorruptError: files missing/truncated, or the fingerprint does not match.
    """
    self._check_structure(step, like)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    try:
      restored = self._manager.restore(
          step,
          args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                  meta=ocp.args.JsonRestore()),
      )
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointCorruptError(
          f"{self.directory} step {step}: cannot be read ({type(e).__name__}: {str(e)[:300]})") from e
    state, meta = restored["state"], restored["meta"]
    expected = (meta or {}).get("fingerprint")
    if expected is None or fingerprint(state) != expected:
      raise CheckpointCorruptError(
          f"{self.directory} step {step}: restored arrays do not match the fingerprint saved with "
          f"them ({expected} vs {fingerprint(state)}): the files are corrupted")
    return state, meta

  def restore_latest(self, like: Any) -> tuple[int, Any, dict] | None:
    """The newest step that restores and verifies, falling back past corrupted ones.

    Bad steps newer than the good one are renamed ``<step>.corrupt.<time>`` (never deleted) with a
    warning naming what was wrong, so training continues from the good step.

    Returns:
      ``(step, state, meta)``, or None when the directory has no steps.

    Raises:
      CheckpointMismatchError: the newest checkpoint belongs to another model (no fallback).
      CheckpointCorruptError: no step is good; nothing was moved or deleted.
    """
    problems = []
    for step in reversed(self.steps()):
      try:
        state, meta = self.restore(step, like)
      except CheckpointMismatchError:
        raise
      except CheckpointCorruptError as e:
        log.warning("WARNING: %s — trying the previous checkpoint.", e)
        problems.append((step, str(e)))
        continue
      for bad_step, _ in problems:
        self.quarantine(bad_step)
      return step, state, meta
    if problems:
      raise CheckpointCorruptError(
          f"no good checkpoint in {self.directory}; every step failed verification:\n  " +
          "\n  ".join(reason for _, reason in problems) +
          "\nNothing was deleted. Move the directory aside to start this run over.")
    return None

  def quarantine(self, step: int) -> None:
    """Moves step ``step`` aside to ``<step>.corrupt.<time>`` (never deleted) and forgets it."""
    source = os.path.join(self.directory, str(step))
    target = f"{source}.corrupt.{int(time.time())}"
    if jax.process_index() == 0 and os.path.exists(source):
      os.rename(source, target)
      log.warning("WARNING: moved the corrupted checkpoint %s aside to %s.", source, target)
    self._manager.reload()

  def restore_meta(self, step: int) -> dict:
    """Restores only the JSON metadata of ``step``."""
    return self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


class MaskStore:
  """Masks on disk (Orbax, atomic): saved once, then always loaded."""

  def __init__(self):
    self._checkpointer = ocp.StandardCheckpointer()

  def load_or_compute(self, directory: str, like: Any, compute) -> Any:
    """The saved mask of ``directory``, or ``compute()`` saved there first.

    A saved mask that cannot be read is moved aside (``mask.corrupt.<time>``) and recomputed —
    masks are pure functions of earlier, verified results, so recomputing is exact.

    Args:
      directory: the mask's directory (the mask lives in ``directory/mask``).
      like: a pytree with the mask's structure and shapes.
      compute: ``() -> mask``, or None to only load (a missing or unreadable mask then raises).

    Raises:
      CheckpointCorruptError: the mask cannot be read and there is no ``compute``.
    """
    path = os.path.join(directory, "mask")
    if fileio.isdir(path):
      abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, np.bool_), like)
      try:
        return self._checkpointer.restore(path, abstract)
      except Exception as e:  # pylint: disable=broad-except
        if compute is None:
          raise CheckpointCorruptError(f"mask {path} cannot be read: {e}") from e
        target = f"{path}.corrupt.{int(time.time())}"
        log.warning("WARNING: mask %s cannot be read (%s: %s); moved to %s and recomputing.",
                    path, type(e).__name__, str(e)[:200], target)
        if jax.process_index() == 0:
          os.rename(path, target)
    mask = compute()
    fileio.makedirs(directory)
    self._checkpointer.save(path, mask)
    self._checkpointer.wait_until_finished()
    return mask
