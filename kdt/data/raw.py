"""Readers for the standard raw dataset archives (no TFDS, no TensorFlow, no network).

* digits: scikit-learn's bundled ``load_digits`` (always offline).
* MNIST / Fashion-MNIST: the four IDX files ``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``,
 ``t10k-images-idx3-ubyte.gz``, ``t10k-labels-idx1-ubyte.gz`` (also accepted un-gzipped).
* CIFAR-10 / CIFAR-100: the python-pickle tarballs ``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz``
 or their extracted folders ``cifar-10-batches-py/`` / ``cifar-100-python/`` (CIFAR-100: fine labels).
 The pickles are read with a restricted unpickler that only rebuilds numpy arrays, so a hostile file
 cannot run code.
* Tiny ImageNet: the extracted ``tiny-imagenet-200/`` folder (file lists only; decoding is per batch).

Each reader looks in ``data_dir/<name>``, ``data_dir/<name with '-'>`` and ``data_dir`` itself, in that
order, so ``data_dir`` may be the dataset's own folder or a shared root. Missing, truncated or corrupt
files raise :class:`DatasetUnavailableError` naming the file and what was wrong.
"""

from __future__ import annotations

import codecs
import gzip
import io
import os
import pickle
import posixpath
import struct
import tarfile
import zlib

import numpy as np

try:  # numpy >= 2; the names CIFAR pickles (and numpy's own pickles) refer to.
  from numpy._core.multiarray import _reconstruct, scalar as _scalar
  from numpy._core.numeric import _frombuffer
except ImportError:  # pragma: no cover - numpy 1.x
  from numpy.core.multiarray import _reconstruct, scalar as _scalar
  from numpy.core.numeric import _frombuffer

from kdt.data.registry import DatasetUnavailableError, dataset_info

Arrays = tuple[np.ndarray, np.ndarray]  # (uint8 NHWC images, int32 labels)

DIGITS_NUM_TEST = 360
DIGITS_SEED = 0

IDX_FILES = {
  "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
  "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_URLS = {
  "mnist": "https://storage.googleapis.com/cvdf-datasets/mnist/",
  "fashion_mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
}

CIFAR_FILES = {
  "cifar10": dict(
    archive="cifar-10-python.tar.gz",
    folder="cifar-10-batches-py",
    train=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test=("test_batch",),
    label_key="labels",
    url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
  ),
  "cifar100": dict(
    archive="cifar-100-python.tar.gz",
    folder="cifar-100-python",
    train=("train",),
    test=("test",),
    label_key="fine_labels",
    url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
  ),
}

TINY_IMAGENET_FOLDER = "tiny-imagenet-200"
TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"


def candidate_dirs(data_dir: str, name: str) -> list[str]:
  """Directories searched for ``name``'s raw files, in order (deduplicated)."""
  dirs = [
    os.path.join(data_dir, name),
    os.path.join(data_dir, name.replace("_", "-")),
    data_dir,
  ]
  return list(dict.fromkeys(os.path.normpath(os.path.expanduser(d)) for d in dirs))


# ----------------------------------------------------------------------------------------- digits


def load_digits() -> dict[str, Arrays]:
  """scikit-learn's 8x8 digits as uint8 images with a fixed, stratified 1437 / 360 split.

  Pixel values 0..16 become ``round(v * 255 / 16)`` (0..255). The split: shuffle all 1797 indices
  with ``np.random.default_rng(0).permutation``; class ``c`` sends its first ``k_c`` examples (in
  shuffled order) to test, where ``k_c`` is ``360 * n_c / 1797`` rounded by the largest-remainder
  method (ties to the lower class) so the test split has exactly 360 examples
  (36 37 35 37 36 36 36 36 35 36 per class). Both splits keep the original dataset order.
  """
  from sklearn import datasets  # Local import: scikit-learn is slow to import.

  digits = datasets.load_digits()
  images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  labels = digits.target.astype(np.int32)
  n = len(labels)
  counts = np.bincount(labels, minlength=10)
  quota = DIGITS_NUM_TEST * counts / n
  k = np.floor(quota).astype(int)
  remainder = DIGITS_NUM_TEST - int(k.sum())
  k[np.lexsort((np.arange(10), -(quota - k)))[:remainder]] += 1
  perm = np.random.default_rng(DIGITS_SEED).permutation(n)
  test = np.sort(np.concatenate([perm[labels[perm] == c][: k[c]] for c in range(10)]))
  train = np.setdiff1d(np.arange(n), test)
  return {"train": (images[train], labels[train]), "test": (images[test], labels[test])}


# ---------------------------------------------------------------------------------------- IDX


def _read_bytes(path: str) -> bytes:
  opener = gzip.open if path.endswith(".gz") else open
  try:
    with opener(path, "rb") as f:
      return f.read()
  except (OSError, EOFError, zlib.error) as err:  # gzip.BadGzipFile is an OSError.
    raise DatasetUnavailableError(
      f"Cannot read {path}: {type(err).__name__}: {err}. The file is truncated or corrupt; "
      "download it again."
    ) from err


def read_idx(path: str, ndim: int) -> np.ndarray:
  """Reads an IDX file of unsigned bytes (``.gz`` or plain) with ``ndim`` dimensions.

  Raises:
    DatasetUnavailableError: unreadable file, wrong magic number, or a size that does not match
      the header.
  """
  data = _read_bytes(path)
  expected_magic = 0x0800 + ndim
  magic = struct.unpack(">I", data[:4])[0] if len(data) >= 4 else None
  if magic != expected_magic:
    found = "a file shorter than 4 bytes" if magic is None else f"{magic} (0x{magic:08x})"
    raise DatasetUnavailableError(
      f"{path} is not an IDX file of {ndim}-d unsigned bytes: expected magic number "
      f"{expected_magic} (0x{expected_magic:08x}), found {found}."
    )
  header = 4 + 4 * ndim
  if len(data) < header:
    raise DatasetUnavailableError(f"{path} is truncated: the IDX header is incomplete.")
  dims = struct.unpack(f">{ndim}I", data[4:header])
  size = int(np.prod(dims))
  if len(data) - header != size:
    raise DatasetUnavailableError(
      f"{path} is truncated or corrupt: the header announces shape {dims} ({size} bytes of "
      f"data) but the file holds {len(data) - header}."
    )
  return np.frombuffer(data, np.uint8, offset=header).reshape(dims).copy()


def _find_idx(dirs: list[str], stem: str) -> str | None:
  for d in dirs:
    for fname in (stem + ".gz", stem):
      path = os.path.join(d, fname)
      if os.path.isfile(path):
        return path
  return None


def load_idx_dataset(name: str, data_dir: str) -> dict[str, Arrays]:
  """MNIST or Fashion-MNIST from the four standard IDX files under ``data_dir``."""
  info = dataset_info(name)
  dirs = candidate_dirs(data_dir, name)
  stems = [stem for pair in IDX_FILES.values() for stem in pair]
  paths = {stem: _find_idx(dirs, stem) for stem in stems}
  missing = [stem + ".gz" for stem, path in paths.items() if path is None]
  if missing:
    raise DatasetUnavailableError(
      f"{name}: missing {', '.join(missing)} (looked in {', '.join(dirs)}). Expected the four "
      f"IDX files {', '.join(s + '.gz' for s in stems)} (from {_IDX_URLS[name]}) in "
      f"data_dir (config.data.dir); or leave data_dir empty to read a prepared TFDS {name!r}."
    )
  out = {}
  for split, (image_stem, label_stem) in IDX_FILES.items():
    images = read_idx(paths[image_stem], 3)
    labels = read_idx(paths[label_stem], 1).astype(np.int32)
    if images.shape[1:] != info.input_shape[:2]:
      raise DatasetUnavailableError(
        f"{paths[image_stem]}: images have shape {images.shape[1:]}, expected "
        f"{info.input_shape[:2]} for {name}."
      )
    if len(images) != len(labels):
      raise DatasetUnavailableError(
        f"{name} {split}: {len(images)} images in {paths[image_stem]} but {len(labels)} "
        f"labels in {paths[label_stem]}."
      )
    _check_labels(labels, info.num_classes, paths[label_stem])
    out[split] = (images[..., None], labels)
  return out


def _check_labels(labels: np.ndarray, num_classes: int, where: str) -> None:
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise DatasetUnavailableError(
      f"{where}: labels span [{labels.min()}, {labels.max()}], expected [0, {num_classes})."
    )


# -------------------------------------------------------------------------------------- CIFAR


class _NumpyOnlyUnpickler(pickle.Unpickler):
  """Unpickler that can only rebuild numpy arrays (CIFAR batches are dicts of arrays and lists)."""

  def find_class(self, module, name):
    allowed = {
      ("numpy", "ndarray"): np.ndarray,
      ("numpy", "dtype"): np.dtype,
      ("_codecs", "encode"): codecs.encode,  # How Python 3 writes bytes in protocol 2.
    }
    for core in ("numpy.core", "numpy._core"):
      allowed[(core + ".multiarray", "_reconstruct")] = _reconstruct
      allowed[(core + ".multiarray", "scalar")] = _scalar
      allowed[(core + ".numeric", "_frombuffer")] = _frombuffer
    try:
      return allowed[(module, name)]
    except KeyError:
      raise pickle.UnpicklingError(
        f"refusing to load {module}.{name}: a CIFAR batch holds only numpy arrays"
      ) from None


def _load_cifar_batch(data: bytes, where: str, label_key: str, num_classes: int) -> Arrays:
  try:
    batch = _NumpyOnlyUnpickler(io.BytesIO(data), encoding="bytes").load()
  except Exception as err:  # Any unpickling failure means a corrupt / foreign file.
    raise DatasetUnavailableError(
      f"{where} is not a readable CIFAR python batch: {type(err).__name__}: {err}."
    ) from err
  if not isinstance(batch, dict):
    raise DatasetUnavailableError(f"{where}: expected a pickled dict, got {type(batch).__name__}.")
  batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
  if "data" not in batch or label_key not in batch:
    raise DatasetUnavailableError(
      f"{where}: missing key 'data' or {label_key!r} (keys: {sorted(batch)})."
    )
  images = np.asarray(batch["data"], np.uint8)
  labels = np.asarray(batch[label_key], np.int32)
  if images.ndim != 2 or images.shape[1] != 3 * 32 * 32 or len(images) != len(labels):
    raise DatasetUnavailableError(
      f"{where}: 'data' has shape {images.shape} and {len(labels)} labels; expected (N, 3072) "
      "and N labels."
    )
  _check_labels(labels, num_classes, where)
  # Rows are channel-major 3x32x32 (R plane, G plane, B plane) -> NHWC.
  return np.ascontiguousarray(images.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)), labels


def _read_cifar_members(source: str, members: list[str]) -> dict[str, bytes]:
  """Raw bytes of the named batch files, from an extracted folder or a ``.tar.gz``."""
  if os.path.isdir(source):
    out = {}
    for m in members:
      path = os.path.join(source, m)
      if not os.path.isfile(path):
        raise DatasetUnavailableError(f"{source}: missing batch file {m!r}.")
      with open(path, "rb") as f:
        out[m] = f.read()
    return out
  try:
    with tarfile.open(source, "r:*") as tar:
      files = {posixpath.basename(t.name): t for t in tar.getmembers() if t.isfile()}
      missing = [m for m in members if m not in files]
      if missing:
        raise DatasetUnavailableError(
          f"{source}: the archive has no member(s) {', '.join(missing)}; is it the python "
          "version of the CIFAR archive?"
        )
      return {m: tar.extractfile(files[m]).read() for m in members}
  except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
    raise DatasetUnavailableError(
      f"Cannot read {source}: {type(err).__name__}: {err}. The archive is truncated or corrupt; "
      "download it again."
    ) from err


def load_cifar(name: str, data_dir: str) -> dict[str, Arrays]:
  """CIFAR-10 / CIFAR-100 from the python tarball or its extracted folder under ``data_dir``."""
  info = dataset_info(name)
  spec = CIFAR_FILES[name]
  dirs = candidate_dirs(data_dir, name)
  source = None
  for d in dirs:
    folder, archive = os.path.join(d, spec["folder"]), os.path.join(d, spec["archive"])
    if os.path.isdir(folder):
      source = folder
      break
    if os.path.isfile(archive):
      source = archive
      break
  if source is None:
    raise DatasetUnavailableError(
      f"{name}: found neither {spec['archive']} nor the folder {spec['folder']}/ in "
      f"{', '.join(dirs)}. Put {spec['archive']} (from {spec['url']}) in data_dir "
      f"(config.data.dir); or leave data_dir empty to read a prepared TFDS {name!r}."
    )
  members = list(spec["train"]) + list(spec["test"])
  raw = _read_cifar_members(source, members)
  out = {}
  for split in ("train", "test"):
    parts = [
      _load_cifar_batch(raw[m], f"{source}:{m}", spec["label_key"], info.num_classes)
      for m in spec[split]
    ]
    out[split] = (
      np.concatenate([p[0] for p in parts]),
      np.concatenate([p[1] for p in parts]),
    )
  return out


# ------------------------------------------------------------------------------ Tiny ImageNet


def tiny_imagenet_files(data_dir: str) -> dict[str, tuple[list[str], np.ndarray]]:
  """File lists and labels of the extracted ``tiny-imagenet-200/`` folder.

  Labels index the sorted WordNet ids of ``wnids.txt`` (torchvision ``ImageFolder`` order). "train"
  is ``train/<wnid>/images/*.JPEG`` sorted by (wnid, file name); "test" is the official validation
  split ``val/images/*`` labelled by ``val/val_annotations.txt``, sorted by file name.
  """
  dirs = [os.path.join(d, TINY_IMAGENET_FOLDER) for d in candidate_dirs(data_dir, "tiny_imagenet")]
  dirs += candidate_dirs(data_dir, "tiny_imagenet")
  root = next((d for d in dirs if os.path.isfile(os.path.join(d, "wnids.txt"))), None)
  if root is None:
    raise DatasetUnavailableError(
      f"tiny_imagenet: no {TINY_IMAGENET_FOLDER}/wnids.txt in {', '.join(dirs)}. Download "
      f"{TINY_IMAGENET_URL}, unzip it into data_dir (config.data.dir) so that "
      f"data_dir/{TINY_IMAGENET_FOLDER}/wnids.txt exists."
    )
  try:
    with open(os.path.join(root, "wnids.txt")) as f:
      wnids = sorted(line.strip() for line in f if line.strip())
    class_of = {w: i for i, w in enumerate(wnids)}
    train_files, train_labels = [], []
    for w in wnids:
      folder = os.path.join(root, "train", w, "images")
      for fname in sorted(os.listdir(folder)):
        train_files.append(os.path.join(folder, fname))
        train_labels.append(class_of[w])
    val = []
    with open(os.path.join(root, "val", "val_annotations.txt")) as f:
      for line in f:
        fields = line.split("\t")
        if len(fields) >= 2:
          val.append((fields[0], class_of[fields[1]]))
    val.sort()
  except (OSError, KeyError) as err:
    raise DatasetUnavailableError(
      f"tiny_imagenet: {root} is incomplete ({type(err).__name__}: {err}); unzip "
      f"{TINY_IMAGENET_URL} again."
    ) from err
  return {
    "train": (train_files, np.asarray(train_labels, np.int32)),
    "test": (
      [os.path.join(root, "val", "images", v[0]) for v in val],
      np.asarray([v[1] for v in val], np.int32),
    ),
  }
