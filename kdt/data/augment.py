"""On-device preprocessing: normalisation and CIFAR-style augmentation, pure and jit-able."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from kdt.data import registry

CROP_PADDING = 4


def _random_crop_flip(x: jax.Array, key: jax.Array, *, crop: bool) -> jax.Array:
  """Per-example random crop (zero padding ``CROP_PADDING``) and/or horizontal flip of NHWC floats."""
  n, h, w, c = x.shape
  crop_key, flip_key = jax.random.split(key)
  if crop:
    p = CROP_PADDING
    padded = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    offsets = jax.random.randint(crop_key, (n, 2), 0, 2 * p + 1)

    def window(img, off):
      return jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, c))

    x = jax.vmap(window)(padded, offsets)
  flip = jax.random.bernoulli(flip_key, 0.5, (n,))
  return jnp.where(flip[:, None, None, None], x[:, :, ::-1, :], x)


@functools.partial(jax.jit, static_argnames=("info", "train", "augment"))
def preprocess(
  images: jax.Array, key: jax.Array | None, *, info: registry.DatasetInfo, train: bool, augment: str
) -> jax.Array:
  """uint8 NHWC images -> float32 normalised images, with training augmentation.

  Pure and deterministic given ``key``; ``info``, ``train`` and ``augment`` are static (jit compiles
  once per combination). Computes ``(x / 255 - mean) / std`` per channel, and when ``train``:

  * ``"crop_flip"``: random 32x32 (generally HxW) crop of the image zero-padded by 4 pixels, then a
   horizontal flip with probability 1/2 — torchvision's ``RandomCrop(size, padding=4)`` +
   ``RandomHorizontalFlip`` before ``Normalize``, so padding is black in pixel space. Crop offset and
   flip are drawn independently per example from ``key``.
  * ``"flip"``: the flip only.
  * ``"none"``: nothing.
  * ``"inception_crop_flip"``: nothing here: the random-resized crop and flip need the full-size image
   and are done on the host by :meth:`kdt.data.StreamingDataset.train_batch`.

  Args:
    images: uint8 array ``(N, H, W, C)``.
    key: a JAX PRNG key; only used (and then required) when ``train`` and ``augment`` is
      ``"crop_flip"`` or ``"flip"``, otherwise it may be None. A training loop typically passes
      ``jax.random.fold_in(jax.random.key(augment_seed), step)``.
    info: the dataset's :class:`DatasetInfo` (for mean / std).
    train: whether to apply ``augment``; evaluation passes False.
    augment: one of ``"crop_flip"``, ``"flip"``, ``"none"``, ``"inception_crop_flip"``.

  Returns:
    float32 array ``(N, H, W, C)``.

  Examples:
    >>> import numpy as np
    >>> from kdt.data import dataset_info, preprocess
    >>> info = dataset_info("mnist")
    >>> x = np.zeros((1, 28, 28, 1), np.uint8)
    >>> float(preprocess(x, jax.random.key(0), info=info, train=False, augment="none")[0, 0, 0, 0])
    -0.42421...
  """
  registry.check_augment(augment)
  if images.ndim != 4 or images.shape[-1] != len(info.mean):
    raise ValueError(
      f"preprocess expects NHWC images with {len(info.mean)} channels for {info.name!r}, "
      f"got shape {images.shape}."
    )
  x = images.astype(jnp.float32) / 255.0
  if train and augment in ("crop_flip", "flip"):
    if key is None:
      raise ValueError(f"preprocess(train=True, augment={augment!r}) needs a PRNG key.")
    x = _random_crop_flip(x, key, crop=augment == "crop_flip")
  mean = jnp.asarray(info.mean, jnp.float32)
  std = jnp.asarray(info.std, jnp.float32)
  return (x - mean) / std
