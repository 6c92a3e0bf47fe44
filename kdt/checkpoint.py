"""Orbax checkpoints: a thin wrapper that pins rewind points and keeps saves atomic and resumable.

One :class:`Checkpointer` per training run directory (``workdir/dense``, ``workdir/round_01/lth``,
...). Each saved step holds two items:

* ``state`` — the :class:`~kdt.train.state.TrainState` (params, BN stats, optimizer state, step);
* ``meta`` — JSON: evaluation history, whether the run finished, anything the caller adds.

Orbax writes each step to a temporary directory and renames it when complete, so a process killed
mid-save leaves the previous steps intact. Steps listed in ``pinned_steps`` (step 0, rewind points,
the final step) are never garbage-collected; of the others the latest ``keep_last`` are kept.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocp_managers


class Checkpointer:
  """Saves and restores ``(state, meta)`` pairs by step in one directory.

  Args:
    directory: where the steps live (local path or ``gs://``).
    pinned_steps: steps never deleted (rewind points, the final step).
    keep_last: how many of the latest other steps to keep.
  """

  def __init__(self, directory: str, *, pinned_steps: Sequence[int] = (), keep_last: int = 2):
    self.directory = os.fspath(directory)
    policies = [ocp_managers.LatestN(keep_last)]
    if pinned_steps:
      policies.append(ocp_managers.CustomSteps(sorted(set(int(s) for s in pinned_steps))))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=ocp_managers.AnyPreservationPolicy(policies),
        create=True,
        enable_async_checkpointing=False,
    )
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=("state", "meta"))

  def steps(self) -> list[int]:
    """All complete saved steps, ascending."""
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    """The newest complete step, or None."""
    steps = self.steps()
    return steps[-1] if steps else None

  def save(self, step: int, state: Any, meta: dict) -> None:
    """Saves ``state`` and ``meta`` at ``step`` (overwriting nothing: a saved step is final)."""
    if step in self._manager.all_steps():
      return
    self._manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
        force=True,
    )
    self._manager.wait_until_finished()

  def restore(self, step: int, like: Any) -> tuple[Any, dict]:
    """Restores step ``step`` into the structure, dtypes and shardings of ``like``.

    Args:
      step: a saved step.
      like: a pytree of arrays or ``jax.ShapeDtypeStruct`` with the target structure.

    Returns:
      ``(state, meta)``.
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    restored = self._manager.restore(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()),
    )
    return restored["state"], restored["meta"]

  def restore_meta(self, step: int) -> dict:
    """Restores only the JSON metadata of ``step``."""
    return self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
