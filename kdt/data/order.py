"""Deterministic data order: which examples form the batch of a given step, and per-process rows.

The iteration position of training is just the step number: ``train_batch_indices`` is a pure function
of ``(num_examples, global_batch_size, step, seed)``, so a resumed run continues with exactly the
batches an uninterrupted run would have seen, with nothing to checkpoint.

The epoch's last incomplete batch (``num_examples % global_batch_size`` examples) is dropped or kept
(``config.data.last_batch``, :data:`LAST_BATCH`). Dropping it is TFDS's ``drop_remainder``;
keeping it is PyTorch's ``DataLoader(drop_last=False)``, which open_lth (``datasets/base.py``:
``iterations_per_epoch = ceil(len(dataset) / batch_size)``) and the KD-ticket code use: 60,000 images at batch 128 give 469 steps per epoch instead of 468, so
open_lth's "40 epochs" are 18,760 steps. A kept partial batch keeps the static batch shape: its
rows are padded, cyclically, with the batch's own examples, and :func:`train_batch_weights` gives
the padding weight 0, so a weighted mean over the batch equals PyTorch's mean over the partial
batch (exactly for models without BatchNorm; with BatchNorm the padding rows also enter that one
step's batch statistics).
"""

from __future__ import annotations

import functools

import numpy as np

LAST_BATCH = ("drop", "keep")
"""What becomes of an epoch's last incomplete batch (``config.data.last_batch``)."""


@functools.lru_cache(maxsize=4)
def _epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  perm = np.random.default_rng([seed, epoch]).permutation(num_examples)
  perm.setflags(write=False)  # Cached and shared: never hand out a writable view.
  return perm


def train_batch_indices(
  num_examples: int, global_batch_size: int, step: int, seed: int, last_batch: str = "drop"
) -> np.ndarray:
  """Indices (into the training split) of the global batch of training step ``step``.

  Each epoch is a fresh permutation of ``range(num_examples)`` drawn from
  ``np.random.default_rng([seed, epoch])``; an epoch has :func:`steps_per_epoch` steps and
  ``epoch = step // steps_per_epoch``. With ``last_batch="keep"`` the epoch's last batch holds the
  permutation's remaining examples followed by a cyclic repeat of them (weight 0 in
  :func:`train_batch_weights`).

  Args:
    num_examples: size of the training split.
    global_batch_size: batch size summed over all processes.
    step: training step, >= 0.
    seed: data-order seed, >= 0 (separate from init / augmentation seeds).
    last_batch: ``"drop"`` or ``"keep"`` the epoch's last incomplete batch.

  Returns:
    int64 array of shape ``(global_batch_size,)``; no index repeated within an epoch except the
    padding rows of a kept partial batch.

  Raises:
    ValueError: non-positive sizes, negative step/seed, or a batch larger than the split.

  Examples:
    >>> idx = train_batch_indices(10, 5, step=0, seed=0)
    >>> sorted(idx.tolist() + train_batch_indices(10, 5, step=1, seed=0).tolist())
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    >>> last = train_batch_indices(10, 4, step=2, seed=0, last_batch="keep")
    >>> bool(last[2] == last[0] and last[3] == last[1])
    True
  """
  num_examples, global_batch_size, step, seed = map(
    int, (num_examples, global_batch_size, step, seed)
  )
  if global_batch_size <= 0:
    raise ValueError(f"global_batch_size must be positive, got {global_batch_size}.")
  if global_batch_size > num_examples:
    raise ValueError(
      f"global_batch_size={global_batch_size} is larger than the training split "
      f"({num_examples} examples)."
    )
  if step < 0 or seed < 0:
    raise ValueError(f"step and seed must be >= 0, got step={step}, seed={seed}.")
  epoch, position = divmod(step, steps_per_epoch(num_examples, global_batch_size, last_batch))
  perm = _epoch_permutation(num_examples, seed, epoch)
  rows = perm[position * global_batch_size : (position + 1) * global_batch_size]
  if len(rows) < global_batch_size:  # the kept partial batch, padded with its own examples
    return np.resize(rows, global_batch_size)
  return rows.copy()


def train_batch_weights(
  num_examples: int, global_batch_size: int, step: int, last_batch: str = "drop"
) -> np.ndarray:
  """Per-row weights of the global batch of ``step``: 1, and 0 on a kept partial batch's padding.

  Examples:
    >>> train_batch_weights(10, 4, step=2, last_batch="keep").tolist()
    [1.0, 1.0, 0.0, 0.0]
    >>> train_batch_weights(10, 4, step=3, last_batch="keep").tolist()
    [1.0, 1.0, 1.0, 1.0]
  """
  position = int(step) % steps_per_epoch(num_examples, global_batch_size, last_batch)
  valid = min(global_batch_size, int(num_examples) - position * int(global_batch_size))
  weights = np.zeros(global_batch_size, np.float32)
  weights[:valid] = 1.0
  return weights


def steps_per_epoch(num_examples: int, global_batch_size: int, last_batch: str = "drop") -> int:
  """Optimizer steps in one epoch: ``num_examples // global_batch_size``, plus one when the last
  incomplete batch is kept (``last_batch="keep"``: open_lth and KD-ticket, PyTorch's default).

  Examples:
    >>> steps_per_epoch(60_000, 128), steps_per_epoch(60_000, 128, "keep")
    (468, 469)
    >>> steps_per_epoch(50_000, 128, "keep"), steps_per_epoch(45_000, 128, "keep")
    (391, 352)
  """
  if global_batch_size <= 0 or num_examples < global_batch_size:
    raise ValueError(f"need 0 < global_batch_size <= num_examples, got {global_batch_size} "
             f"and {num_examples}.")
  if last_batch not in LAST_BATCH:
    raise ValueError(f"last_batch={last_batch!r}; allowed: {', '.join(LAST_BATCH)}.")
  full, rest = divmod(int(num_examples), int(global_batch_size))
  return full + int(last_batch == "keep" and rest > 0)


def every_steps(epochs: float, num_examples: int, global_batch_size: int,
                last_batch: str = "drop") -> int:
  """A cadence of ``epochs`` epochs in steps (rounded, at least 1); 0 for ``epochs == 0``.

  Examples:
    >>> every_steps(1, 60_000, 128), every_steps(0.5, 60_000, 128), every_steps(0, 60_000, 128)
    (468, 234, 0)
    >>> every_steps(1, 60_000, 128, "keep")
    469
  """
  if epochs <= 0:
    return 0
  return max(1, int(round(epochs * steps_per_epoch(num_examples, global_batch_size, last_batch))))


def local_rows(global_batch_size: int, process_index: int, process_count: int) -> slice:
  """The rows of a global batch that belong to process ``process_index``.

  Process ``p`` owns rows ``[p * local, (p + 1) * local)`` with
  ``local = global_batch_size // process_count``; the global batch must divide evenly.
  """
  if global_batch_size % process_count:
    raise ValueError(
      f"Batch size {global_batch_size} is not divisible by process_count={process_count}."
    )
  local = global_batch_size // process_count
  return slice(process_index * local, (process_index + 1) * local)


def eval_batch_indices(num_examples: int, batch_size: int):
  """Yields ``(indices, valid)`` per global eval batch: every example once, last batch padded.

  ``indices`` has shape ``(batch_size,)`` (padding rows point at example 0, a valid index, so
  gathers need no special case; callers zero them) and ``valid`` is False on padding.
  """
  if batch_size <= 0:
    raise ValueError(f"batch_size must be positive, got {batch_size}.")
  for start in range(0, num_examples, batch_size):
    idx = np.arange(start, start + batch_size)
    valid = idx < num_examples
    yield np.where(valid, idx, 0), valid


def check_process(process_index: int, process_count: int) -> None:
  """Raises ValueError unless ``0 <= process_index < process_count``."""
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(
      f"Need 0 <= process_index < process_count, got process_index={process_index}, "
      f"process_count={process_count}."
    )
