"""Where the wall time goes: categories the loop and the experiments record themselves.

``with timing.timed("checkpoints"): ...`` adds the block's wall time to a process-wide total for
its category. Time is *exclusive*: while a nested block runs, its parent's clock is paused, so the
categories of one run add up to at most its wall time (no double counting). The benchmark
(``python -m kdt.bench --sections pipeline``) resets the totals, runs the quickstart and reads
:func:`snapshot`; nothing in kdt depends on the totals, and recording costs two
``time.perf_counter`` calls per block.

Categories used: ``setup``, ``data``, ``compile``, ``train_steps``, ``eval``, ``checkpoints``,
``pruning``, ``results_and_plots``.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from typing import Iterator

_SECONDS: dict[str, float] = collections.defaultdict(float)
_CALLS: dict[str, int] = collections.defaultdict(int)
_LOCAL = threading.local()


def _stack() -> list:
  if not hasattr(_LOCAL, "stack"):
    _LOCAL.stack = []
  return _LOCAL.stack


@contextlib.contextmanager
def timed(category: str) -> Iterator[None]:
  """Adds the block's exclusive wall time to ``category``."""
  stack, now = _stack(), time.perf_counter()
  if stack:  # pause the enclosing block
    parent = stack[-1]
    _SECONDS[parent[0]] += now - parent[1]
  frame = [category, now]
  stack.append(frame)
  try:
    yield
  finally:
    end = time.perf_counter()
    _SECONDS[category] += end - frame[1]
    _CALLS[category] += 1
    stack.pop()
    if stack:  # resume the enclosing block
      stack[-1][1] = end


def reset() -> None:
  """Clears every total (the benchmark calls this before a measured run)."""
  _SECONDS.clear()
  _CALLS.clear()


def snapshot() -> dict[str, dict[str, float]]:
  """``{"seconds": {category: s}, "calls": {category: n}}`` recorded since :func:`reset`."""
  return {"seconds": dict(_SECONDS), "calls": dict(_CALLS)}
