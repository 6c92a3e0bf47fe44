"""In-memory datasets (digits, MNIST, Fashion-MNIST, CIFAR-10/100): whole splits as numpy arrays."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np

from kdt.data import order
from kdt.data import registry
from kdt.data.registry import DatasetInfo


@dataclasses.dataclass(frozen=True)
class Split:
  """One split held in memory.

  Attributes:
    images: uint8 array ``(N, H, W, C)``.
    labels: int32 array ``(N,)``.
  """

  images: np.ndarray
  labels: np.ndarray

  def __post_init__(self):
    if self.images.dtype != np.uint8 or self.images.ndim != 4:
      raise ValueError(f"images must be uint8 NHWC, got {self.images.dtype} {self.images.shape}.")
    if self.labels.dtype != np.int32 or self.labels.shape != self.images.shape[:1]:
      raise ValueError(
        f"labels must be int32 of shape ({len(self.images)},), got {self.labels.dtype} "
        f"{self.labels.shape}."
      )

  def __len__(self) -> int:
    return len(self.labels)


def split_validation(train: Split, val_size: int) -> tuple[Split, Split | None]:
  """The first ``val_size`` training examples become validation, the rest stay training (§1.6)."""
  if not 0 <= val_size < len(train):
    raise ValueError(
      f"val_size must be in [0, {len(train)}) (the training split has {len(train)} examples), "
      f"got {val_size}."
    )
  if val_size == 0:
    return train, None
  return (
    Split(train.images[val_size:], train.labels[val_size:]),
    Split(train.images[:val_size], train.labels[:val_size]),
  )


class Dataset:
  """A dataset held in host memory, with deterministic per-process batching.

  Every process holds all examples (the in-memory datasets are small) and returns only its own rows
  of each global batch. A training loop that prefers the whole split on device can ``device_put``
  ``train.images`` once and gather with :func:`kdt.data.train_batch_indices` itself; the order is the
  same.

  Attributes:
    info: the :class:`DatasetInfo`.
    train: training :class:`Split` (without the validation hold-out).
    val: validation :class:`Split` (the first ``val_size`` official training examples) or None.
    test: test :class:`Split`.
    process_index: this process's index.
    process_count: number of processes sharing each global batch.
    last_batch: ``"drop"`` or ``"keep"`` each epoch's last incomplete batch (:mod:`kdt.data.order`).
  """

  def __init__(
    self,
    info: DatasetInfo,
    train: Split,
    test: Split,
    *,
    val_size: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    last_batch: str = "drop",
  ):
    order.check_process(process_index, process_count)
    order.steps_per_epoch(1, 1, last_batch)  # checks the name
    self.info = info
    self.train, self.val = split_validation(train, val_size)
    self.test = test
    self.process_index = process_index
    self.process_count = process_count
    self.last_batch = last_batch

  def __repr__(self) -> str:
    val = len(self.val) if self.val is not None else 0
    return (
      f"Dataset({self.info.name!r}, train={len(self.train)}, val={val}, test={len(self.test)}, "
      f"process {self.process_index}/{self.process_count})"
    )

  def split(self, name: str) -> Split:
    """The split called ``name`` ("train", "val" or "test")."""
    return registry.named_split(self, name)

  def train_batch(self, step: int, global_batch_size: int, seed: int) -> dict[str, np.ndarray]:
    """This process's rows of the global training batch of ``step``.

    Args:
      step: training step (the whole iteration state).
      global_batch_size: batch size over all processes; divisible by ``process_count``.
      seed: data-order seed.

    Returns:
      ``{"image": uint8 (local, H, W, C), "label": int32 (local,)}`` with
      ``local = global_batch_size // process_count``; un-augmented (see
      :func:`kdt.data.preprocess`). With ``last_batch="keep"`` also ``"weight"``: float32
      ``(local,)``, 0 on the padding rows of an epoch's last batch.
    """
    rows = order.local_rows(global_batch_size, self.process_index, self.process_count)
    n = len(self.train)
    idx = order.train_batch_indices(n, global_batch_size, step, seed, self.last_batch)[rows]
    batch = {"image": self.train.images[idx], "label": self.train.labels[idx]}
    if self.last_batch == "keep":
      batch["weight"] = order.train_batch_weights(n, global_batch_size, step, self.last_batch)[rows]
    return batch

  def eval_batches(self, split: str, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """This process's rows of each global evaluation batch of ``split``, in order.

    Every example appears exactly once with weight 1; the last global batch is padded to
    ``batch_size`` (padding rows: zero image, label 0, weight 0), so shapes stay static.

    Args:
      split: "train", "val" or "test".
      batch_size: global batch size; divisible by ``process_count``.

    Yields:
      ``{"image": uint8 (local, H, W, C), "label": int32 (local,), "weight": float32 (local,)}``.
    """
    data = self.split(split)
    rows = order.local_rows(batch_size, self.process_index, self.process_count)
    for idx, valid in order.eval_batch_indices(len(data), batch_size):
      idx, valid = idx[rows], valid[rows]
      images, labels = data.images[idx], data.labels[idx]  # Fancy indexing copies.
      images[~valid] = 0
      labels[~valid] = 0
      yield {"image": images, "label": labels, "weight": valid.astype(np.float32)}
