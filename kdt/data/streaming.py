"""Streaming datasets (ImageNet, Tiny ImageNet): random access by index, decoded per batch on the host.

The training order is the same pure function of the step as for in-memory data
(:func:`kdt.data.train_batch_indices`), because the sources support random access: a prepared TFDS
dataset opened with ``as_data_source`` (ArrayRecord, no TensorFlow; TFDS decodes the JPEGs with PIL, or
OpenCV when installed) or, for Tiny ImageNet, the extracted image folder (decoded with PIL). Each process
reads and decodes only its own rows of every global batch.

Reading is grain's: :meth:`StreamingDataset.train_stream` is a ``grain.MapDataset`` whose item ``k``
is this process's ``k``-th training example in step order — a pure function of the seeds and ``k``,
so the batch of step ``s`` is items ``[s * local, (s + 1) * local)`` whatever ran before, and a
resumed run reads exactly the batches an uninterrupted one would. Batches are read from
``stream[s * local:]`` as a grain ``IterDataset`` with ``ReadOptions(num_threads=num_workers)``
(decoding threads that prefetch the next steps; PIL and the ArrayRecord reader release the GIL); a
call for any other step than the next one starts a new read at that step. Evaluation reads its
batches the same way.

Host-side image transforms (PIL, bilinear):

* evaluation, and training with any ``augment`` other than ``"inception_crop_flip"``: resize the shorter
 side to ``EVAL_RESIZE[name]`` (ImageNet 256, Tiny ImageNet 64) and take the centre crop of
 ``input_shape`` (224 / 64). Images already of the target size are left untouched.
* training with ``"inception_crop_flip"``: torchvision's ``RandomResizedCrop(size, scale=(0.1, 1),
 ratio=(0.8, 1.25))`` as in open_lth / KD-ticket (docs/methods.md §1.6), then a horizontal flip with
 probability 1/2. The randomness of global batch row ``r`` of step ``s`` comes from
 ``np.random.default_rng([augment_seed, s, r])``, so it does not depend on the process layout or on
 thread timing, and a resumed run sees the same crops.

``kdt.data.preprocess`` then only normalises for ``"inception_crop_flip"`` (the crop and flip already
happened here); for ``"crop_flip"`` / ``"flip"`` it augments on device as for CIFAR.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Iterator, Sequence
from typing import Any

import grain
import numpy as np
import PIL.Image

from kdt.data import order, registry
from kdt.data.registry import DatasetInfo, DatasetUnavailableError

EVAL_RESIZE = {"imagenet2012": 256, "tiny_imagenet": 64}
INCEPTION_SCALE = (0.1, 1.0)
INCEPTION_RATIO = (0.8, 1.25)
MAX_STEPS = 2**40
"""The training stream's length in steps (it is lazy: only the steps read are decoded)."""


# ------------------------------------------------------------------------------------ sources


class TfdsSource:
  """Adapter: a TFDS data source (records with ``"image"`` and ``"label"``) -> (image, label)."""

  def __init__(self, source: Sequence[Any], where: str):
    self._source = source
    self.where = where

  def __len__(self) -> int:
    return len(self._source)

  def get(self, i: int) -> tuple[Any, int]:
    ex = self._source[int(i)]
    return ex["image"], int(ex["label"])


class FileSource:
  """Adapter: image files on disk + labels -> (PIL image, label)."""

  def __init__(self, files: Sequence[str], labels: np.ndarray, where: str):
    self._files = list(files)
    self._labels = np.asarray(labels, np.int32)
    self.where = where

  def __len__(self) -> int:
    return len(self._files)

  def get(self, i: int) -> tuple[Any, int]:
    path = self._files[int(i)]
    try:
      with PIL.Image.open(path) as img:
        img.load()
        return img.copy(), int(self._labels[int(i)])
    except OSError as err:
      raise DatasetUnavailableError(f"Cannot read image {path}: {err}") from err


class StreamSplit:
  """A contiguous range ``[start, stop)`` of a source (the validation hold-out is ``[0, val_size)``)."""

  def __init__(self, source, start: int = 0, stop: int | None = None):
    self.source = source
    self.start = start
    self.stop = len(source) if stop is None else stop

  def __len__(self) -> int:
    return self.stop - self.start

  def get(self, i: int) -> tuple[Any, int]:
    return self.source.get(self.start + int(i))


# --------------------------------------------------------------------------------- transforms


def _to_pil(image: Any) -> PIL.Image.Image:
  if isinstance(image, PIL.Image.Image):
    return image if image.mode == "RGB" else image.convert("RGB")
  array = np.asarray(image, np.uint8)
  if array.ndim == 3 and array.shape[-1] == 1:
    array = array[..., 0]
  img = PIL.Image.fromarray(array)
  return img if img.mode == "RGB" else img.convert("RGB")


def center_crop(image: Any, resize: int, size: int) -> np.ndarray:
  """Resize the shorter side to ``resize`` (bilinear), then the central ``size x size`` crop."""
  img = _to_pil(image)
  w, h = img.size
  if (w, h) == (size, size):
    return np.asarray(img)
  if min(w, h) != resize:
    scale = resize / min(w, h)
    w, h = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((w, h), PIL.Image.BILINEAR)
  left, top = (w - size) // 2, (h - size) // 2
  return np.asarray(img.crop((left, top, left + size, top + size)))


def random_resized_crop_box(
  height: int, width: int, rng: np.random.Generator, scale=INCEPTION_SCALE, ratio=INCEPTION_RATIO
) -> tuple[int, int, int, int]:
  """torchvision ``RandomResizedCrop.get_params``: ``(top, left, crop_height, crop_width)``."""
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target_area = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return top, left, h, w
  in_ratio = width / height  # Fallback: central crop with the aspect ratio clipped into range.
  if in_ratio < min(ratio):
    w, h = width, int(round(width / min(ratio)))
  elif in_ratio > max(ratio):
    h, w = height, int(round(height * max(ratio)))
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


def inception_crop_flip(image: Any, size: int, rng: np.random.Generator) -> np.ndarray:
  """``RandomResizedCrop(size, scale=(0.1, 1), ratio=(0.8, 1.25))`` + random horizontal flip."""
  img = _to_pil(image)
  w, h = img.size
  top, left, ch, cw = random_resized_crop_box(h, w, rng)
  img = img.resize((size, size), PIL.Image.BILINEAR, box=(left, top, left + cw, top + ch))
  if rng.random() < 0.5:
    img = img.transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT)
  return np.asarray(img)


# ------------------------------------------------------------------------------------ dataset


class StreamingDataset:
  """A dataset decoded per batch on the host; same batching API as :class:`kdt.data.Dataset`.

  Attributes:
    info: the :class:`DatasetInfo`.
    train / val / test: :class:`StreamSplit` views (``val`` is None when ``val_size == 0``);
      ``len()`` gives their sizes.
    process_index / process_count: this process and the number sharing each global batch.
    num_workers: grain's decoding threads.
  """

  def __init__(
    self,
    info: DatasetInfo,
    train_source,
    test_source,
    *,
    val_size: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    num_workers: int = 0,
    last_batch: str = "drop",
  ):
    order.check_process(process_index, process_count)
    order.steps_per_epoch(1, 1, last_batch)  # checks the name
    n = len(train_source)
    if not 0 <= val_size < n:
      raise ValueError(
        f"val_size must be in [0, {n}) (the training split has {n} examples), got {val_size}."
      )
    self.info = info
    self.train = StreamSplit(train_source, val_size, n)
    self.val = StreamSplit(train_source, 0, val_size) if val_size else None
    self.test = StreamSplit(test_source)
    self.process_index = process_index
    self.process_count = process_count
    self.num_workers = num_workers or min(32, os.cpu_count() or 1)
    self.last_batch = last_batch
    self._reading: tuple[tuple, int, Iterator] | None = None  # (stream key, next step, batches)

  def __repr__(self) -> str:
    val = len(self.val) if self.val is not None else 0
    return (
      f"StreamingDataset({self.info.name!r}, train={len(self.train)}, val={val}, "
      f"test={len(self.test)}, process {self.process_index}/{self.process_count})"
    )

  def close(self) -> None:
    """Drops the training read in progress (its prefetching threads end with it)."""
    self._reading = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def split(self, name: str) -> StreamSplit:
    """The split called ``name`` ("train", "val" or "test")."""
    return registry.named_split(self, name)

  def _read(self, dataset: grain.MapDataset, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """``dataset``'s items in order, decoded on grain's threads, stacked ``batch_size`` at a time."""
    options = grain.ReadOptions(num_threads=self.num_workers,
                                prefetch_buffer_size=2 * max(batch_size, 1))
    return iter(dataset.to_iter_dataset(options).batch(batch_size, batch_fn=self._stack))

  def train_stream(
    self,
    global_batch_size: int,
    seed: int,
    *,
    augment: str | None = None,
    augment_seed: int | None = None,
  ) -> grain.MapDataset:
    """This process's training examples in step order, decoded and sized (a ``grain.MapDataset``).

    Item ``k`` is row ``local_rows.start + k % local`` of the global batch of step ``k // local``
    (``local``: this process's rows per batch): ``(uint8 image, label)``, a pure function of the
    seeds and ``k``. Arguments as in :meth:`train_batch`.
    """
    augment = self.info.augment if augment is None else augment
    registry.check_augment(augment)
    augment_seed = seed if augment_seed is None else augment_seed
    rows = order.local_rows(global_batch_size, self.process_index, self.process_count)
    local = rows.stop - rows.start
    size = self.info.input_shape[0]
    resize = EVAL_RESIZE.get(self.info.name, size)
    num_train = len(self.train)

    @functools.lru_cache(maxsize=8)
    def indices(step: int) -> np.ndarray:
      return order.train_batch_indices(num_train, global_batch_size, step, seed, self.last_batch)

    def load(k: int) -> tuple[np.ndarray, int]:
      step, row = divmod(k, local)
      row += rows.start
      image, label = self.train.get(indices(step)[row])
      if augment == "inception_crop_flip":
        rng = np.random.default_rng([augment_seed, step, row])
        return inception_crop_flip(image, size, rng), label
      return center_crop(image, resize, size), label

    return grain.MapDataset.range(MAX_STEPS * local).map(load)

  def train_batch(
    self,
    step: int,
    global_batch_size: int,
    seed: int,
    *,
    augment: str | None = None,
    augment_seed: int | None = None,
  ) -> dict[str, np.ndarray]:
    """This process's rows of the global training batch of ``step``, decoded and sized.

    Items ``[step * local, (step + 1) * local)`` of :meth:`train_stream`; consecutive steps
    continue one grain read (prefetching), any other step starts a new one there.

    Args:
      step: training step (the whole iteration state).
      global_batch_size: batch size over all processes; divisible by ``process_count``.
      seed: data-order seed.
      augment: defaults to ``info.augment``; ``"inception_crop_flip"`` crops and flips here, any
        other value gets the evaluation resize / centre crop here (and its augmentation, if any,
        from :func:`kdt.data.preprocess` on device).
      augment_seed: seed of the host-side crops and flips; defaults to ``seed``.

    Returns:
      ``{"image": uint8 (local, H, W, C), "label": int32 (local,)}``, and ``"weight"`` with
      ``last_batch="keep"`` (as :meth:`kdt.data.Dataset.train_batch`).
    """
    key = (global_batch_size, seed, augment, augment_seed)
    if self._reading is None or self._reading[:2] != (key, step):
      stream = self.train_stream(global_batch_size, seed, augment=augment,
                                 augment_seed=augment_seed)
      local = global_batch_size // self.process_count
      self._reading = (key, step, self._read(stream[step * local:], local))
    batch = next(self._reading[2])
    self._reading = (key, step + 1, self._reading[2])
    if self.last_batch == "keep":
      rows = order.local_rows(global_batch_size, self.process_index, self.process_count)
      batch["weight"] = order.train_batch_weights(len(self.train), global_batch_size, step,
                                                  self.last_batch)[rows]
    return batch

  def eval_batches(self, split: str, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """This process's rows of each global evaluation batch (resize, centre crop), in order.

    Every example appears exactly once with weight 1; the last global batch is padded to
    ``batch_size`` (padding rows: zero image, label 0, weight 0; nothing decoded for them).

    Yields:
      ``{"image": uint8 (local, H, W, C), "label": int32 (local,), "weight": float32 (local,)}``.
    """
    data = self.split(split)
    rows = order.local_rows(batch_size, self.process_index, self.process_count)
    size = self.info.input_shape[0]
    resize = EVAL_RESIZE.get(self.info.name, size)
    blank = np.zeros(self.info.input_shape, np.uint8)

    def load(item: tuple[int, bool]) -> tuple[np.ndarray, int]:
      i, valid = item
      if not valid:
        return blank, 0
      image, label = data.get(i)
      return center_crop(image, resize, size), label

    batches = [(idx[rows], valid[rows]) for idx, valid in
               order.eval_batch_indices(len(data), batch_size)]
    items = [item for idx, valid in batches for item in zip(idx.tolist(), valid.tolist())]
    read = self._read(grain.MapDataset.source(items).map(load), rows.stop - rows.start)
    for (_, valid), batch in zip(batches, read):
      batch["weight"] = valid.astype(np.float32)
      yield batch

  def _stack(self, items: list[tuple[np.ndarray, int]]) -> dict[str, np.ndarray]:
    images = np.stack([x for x, _ in items]) if items else np.zeros((0, *self.info.input_shape))
    if images.shape[1:] != self.info.input_shape:
      raise DatasetUnavailableError(
        f"{self.info.name}: decoded images have shape {images.shape[1:]}, expected "
        f"{self.info.input_shape}."
      )
    return {
      "image": images.astype(np.uint8, copy=False),
      "label": np.asarray([y for _, y in items], np.int32),
    }
