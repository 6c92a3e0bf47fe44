"""Dataset registry: the static facts about every dataset kdt knows (no loading, no I/O)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

AUGMENTATIONS = ("crop_flip", "flip", "none", "inception_crop_flip")


class DatasetUnavailableError(Exception):
  """The data for a dataset cannot be found or read.

  Raised (never after a download attempt: kdt never downloads) when a prepared TFDS dataset or a raw
  archive is missing, unreadable or corrupt. The message names the directories / files looked at and
  how to get the data; the low-level cause, if any, is chained (``raise ... from err``).
  """


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """Static facts about a dataset. Hashable, so it can be a static argument of ``jax.jit``.

  Attributes:
    name: registry name, e.g. ``"cifar10"``.
    input_shape: ``(height, width, channels)`` of the images the model sees.
    num_classes: number of labels.
    num_train: size of the full official training split (before any validation hold-out).
    num_test: size of the evaluation split (ImageNet / Tiny ImageNet: the official validation
      split, since their test labels are not public).
    mean: per-channel mean in [0, 1] pixel units, for ``(x / 255 - mean) / std``.
    std: per-channel standard deviation in [0, 1] pixel units.
    augment: default training augmentation: ``"crop_flip"``, ``"flip"``, ``"none"`` or
      ``"inception_crop_flip"`` (see :func:`kdt.data.preprocess`).
    streaming: True when the dataset is too big to hold in memory and is decoded per batch on the
      host (:class:`kdt.data.StreamingDataset`).
  """

  name: str
  input_shape: tuple[int, int, int]
  num_classes: int
  num_train: int
  num_test: int
  mean: tuple[float, ...]
  std: tuple[float, ...]
  augment: str
  streaming: bool


_CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)  # KD-ticket (kuangliu) normalisation, docs/methods.md §1.6.
_CIFAR10_STD = (0.2023, 0.1994, 0.2010)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision / open_lth ImageNet statistics.
_IMAGENET_STD = (0.229, 0.224, 0.225)

_REGISTRY: dict[str, DatasetInfo] = {
  info.name: info
  for info in [
    # scikit-learn's bundled 8x8 digits (offline), fixed stratified split (kdt.data.raw.load_digits).
    # mean/std computed on the 1437 training images after the round(x * 255 / 16) uint8 conversion:
    # 0.304943 / 0.375689, rounded to 4 digits.
    DatasetInfo("digits", (8, 8, 1), 10, 1437, 360, (0.3049,), (0.3757,), "none", False),
    DatasetInfo("mnist", (28, 28, 1), 10, 60000, 10000, (0.1307,), (0.3081,), "none", False),
    DatasetInfo(
      "fashion_mnist", (28, 28, 1), 10, 60000, 10000, (0.2860,), (0.3530,), "none", False
    ),
    DatasetInfo(
      "cifar10", (32, 32, 3), 10, 50000, 10000, _CIFAR10_MEAN, _CIFAR10_STD, "crop_flip", False
    ),
    DatasetInfo(
      "cifar100",
      (32, 32, 3),
      100,
      50000,
      10000,
      (0.5071, 0.4865, 0.4409),  # CIFAR-100's own standard statistics.
      (0.2673, 0.2564, 0.2762),
      "crop_flip",
      False,
    ),
    # Test split = the official 50,000-image validation split (TFDS's "test" split is unlabelled).
    DatasetInfo(
      "imagenet2012",
      (224, 224, 3),
      1000,
      1281167,
      50000,
      _IMAGENET_MEAN,
      _IMAGENET_STD,
      "inception_crop_flip",
      True,
    ),
    # Test split = the official 10,000-image validation split. Statistics: the commonly quoted Tiny
    # ImageNet training-set values. Default augmentation as for CIFAR (random crop 64 with padding 4
    # + flip, on device); "inception_crop_flip" (on the host) can be chosen instead.
    DatasetInfo(
      "tiny_imagenet",
      (64, 64, 3),
      200,
      100000,
      10000,
      (0.4802, 0.4481, 0.3975),
      (0.2302, 0.2265, 0.2262),
      "crop_flip",
      True,
    ),
  ]
}


def dataset_names() -> list[str]:
  """Names of all registered datasets, in registry order.

  Examples:
    >>> dataset_names()[:3]
    ['digits', 'mnist', 'fashion_mnist']
  """
  return list(_REGISTRY)


def dataset_info(name: str) -> DatasetInfo:
  """Static facts about dataset ``name`` (cheap: nothing is loaded).

  Args:
    name: one of :func:`dataset_names`.

  Returns:
    The :class:`DatasetInfo`.

  Raises:
    ValueError: unknown name; the message lists the allowed names.

  Examples:
    >>> dataset_info("cifar10").input_shape
    (32, 32, 3)
  """
  try:
    return _REGISTRY[name]
  except (KeyError, TypeError):
    raise ValueError(
      f"Unknown dataset {name!r}; allowed names: {', '.join(_REGISTRY)}."
    ) from None


def with_normalization(info: DatasetInfo, mean: tuple[float, ...] = (),
            std: tuple[float, ...] = ()) -> DatasetInfo:
  """``info`` with other input-normalisation statistics (pure; nothing is loaded).

  Images are normalised as :math:`x' = (x / 255 - \\mu_c) / \\sigma_c` per channel :math:`c`
  (:func:`kdt.data.preprocess`). An empty ``mean`` or ``std`` keeps the dataset's own statistics;
  a one-element tuple applies to every channel. open_lth normalises Fashion-MNIST with MNIST's
  statistics (its ``datasets/mnist.py`` ``Normalize(mean=[0.1307], std=[0.3081])``, the reader it
  uses for both), which ``with_normalization(dataset_info("fashion_mnist"), (0.1307,),
  (0.3081,))`` reproduces.

  Args:
    info: the dataset's :class:`DatasetInfo`.
    mean: per-channel means in [0, 1] pixel units, ``()`` for the dataset's own.
    std: per-channel standard deviations (> 0), ``()`` for the dataset's own.

  Returns:
    A :class:`DatasetInfo` equal to ``info`` except for ``mean`` and ``std``.

  Raises:
    ValueError: a tuple of the wrong length (not 1 or the channel count), a non-finite value
      or a standard deviation <= 0.

  Examples:
    >>> with_normalization(dataset_info("fashion_mnist"), (0.1307,), (0.3081,)).mean
    (0.1307,)
    >>> with_normalization(dataset_info("cifar10"), (0.5,)).mean
    (0.5, 0.5, 0.5)
  """
  channels = info.input_shape[-1]

  def resolve(field: str, values, own):
    values = tuple(float(v) for v in values)
    if not values:
      return own
    if len(values) not in (1, channels):
      raise ValueError(f"{field} must have 1 or {channels} values for {info.name!r} "
               f"({channels} channels), got {values}.")
    if not all(math.isfinite(v) for v in values) or (field == "std" and min(values) <= 0):
      raise ValueError(f"{field} must be finite{' and > 0' if field == 'std' else ''}, "
               f"got {values}.")
    return values * channels if len(values) == 1 else values

  return dataclasses.replace(info, mean=resolve("mean", mean, info.mean),
                std=resolve("std", std, info.std))


def check_augment(augment: str) -> None:
  """Raises ValueError unless ``augment`` is one of :data:`AUGMENTATIONS`."""
  if augment not in AUGMENTATIONS:
    raise ValueError(f"Unknown augment {augment!r}; allowed: {', '.join(AUGMENTATIONS)}.")


def named_split(dataset: Any, name: str) -> Any:
  """``dataset.train``, ``.val`` or ``.test`` by name, for every dataset kind.

  Raises:
    ValueError: an unknown name, or ``"val"`` for a dataset loaded without a validation split.
  """
  splits = {"train": dataset.train, "val": dataset.val, "test": dataset.test}
  if name not in splits:
    raise ValueError(f"Unknown split {name!r}; allowed: train, val, test.")
  if splits[name] is None:
    raise ValueError(f"{dataset.info.name!r} has no 'val' split: load it with val_size > 0.")
  return splits[name]
