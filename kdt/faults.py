"""Fault injection for crash-safety tests: kill the process at named points.

Set ``KDT_FAULT`` to a comma-separated list of ``point[:tag]@count[+delay][=SIGNAL]``. The
``count``-th time this process reaches ``point`` (with that ``tag`` or a tag below it, ``round_02``
matching ``round_02/kd``, when given), it sends itself SIGKILL (or ``SIGNAL``: ``INT`` is a Ctrl-C,
``TERM`` a preemption) — at once,
or ``delay`` seconds later from a timer thread, which lands the kill in the middle of whatever runs
next (an Orbax write, say). Nothing happens when ``KDT_FAULT`` is unset, which is always the case
outside kdt's own tests. Points:

* ``step`` (tag: run name) — after a train step was dispatched;
* ``checkpoint_save`` (tag: checkpoint directory's run name) — as a checkpoint write starts;
* ``after_prune`` (tag: run name) — right after a round's mask was saved;
* ``results_write`` — between writing ``results.json``'s temporary file and renaming it;
* ``plots_write`` — before the plots are drawn.
"""

from __future__ import annotations

import collections
import os
import signal
import threading

_counts: collections.Counter = collections.Counter()


def _specs() -> list[tuple[str, str, int, float, int]]:
  spec = os.environ.get("KDT_FAULT", "")
  out = []
  for item in filter(None, (s.strip() for s in spec.split(","))):
    where, _, when = item.partition("@")
    point, _, tag = where.partition(":")
    when, _, name = when.partition("=")
    count, _, delay = when.partition("+")
    signum = getattr(signal, f"SIG{name}") if name else signal.SIGKILL
    out.append((point, tag, int(count), float(delay or 0.0), signum))
  return out


def _kill(signum: int = signal.SIGKILL) -> None:
  os.kill(os.getpid(), signum)


def maybe_kill(point: str, tag: str = "") -> None:
  """Kills the process here if ``KDT_FAULT`` asks for it (see module docstring)."""
  if "KDT_FAULT" not in os.environ:
    return
  for spec_point, spec_tag, count, delay, signum in _specs():
    if spec_point != point or (spec_tag and tag != spec_tag and not tag.startswith(spec_tag + "/")):
      continue
    key = (spec_point, spec_tag)
    _counts[key] += 1
    if _counts[key] == count:
      if delay:
        threading.Timer(delay, _kill, args=(signum,)).start()
      else:
        _kill(signum)
