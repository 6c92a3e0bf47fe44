"""``load_dataset``: pick the source (bundled, raw archives, TFDS) and build the dataset object."""

from __future__ import annotations

from kdt.data import raw, tfds_source
from kdt.data.memory import Dataset, Split
from kdt.data.registry import dataset_info, with_normalization
from kdt.data.streaming import FileSource, StreamingDataset, TfdsSource


def load_dataset(
  name: str,
  *,
  data_dir: str = "",
  tfds_data_dir: str = "",
  val_size: int = 0,
  process_index: int = 0,
  process_count: int = 1,
  num_workers: int = 0,
  mean: tuple[float, ...] = (),
  std: tuple[float, ...] = (),
  last_batch: str = "drop",
) -> Dataset | StreamingDataset:
  """Loads dataset ``name`` (never downloads).

  Sources, by dataset:

  * ``digits``: scikit-learn's bundled copy (``data_dir`` / ``tfds_data_dir`` ignored).
  * ``mnist``, ``fashion_mnist``, ``cifar10``, ``cifar100``: with ``data_dir``, the raw archives in it
   (see :mod:`kdt.data.raw` for the exact file names); otherwise the prepared TFDS dataset in
   ``tfds_data_dir`` (default ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``), read fully into memory.
  * ``imagenet2012``: the prepared TFDS dataset (ArrayRecord) only.
  * ``tiny_imagenet``: with ``data_dir``, the extracted ``tiny-imagenet-200/`` folder; otherwise a
   prepared TFDS dataset named ``tiny_imagenet`` (TFDS has no built-in builder for it).

  Args:
    name: one of :func:`kdt.data.dataset_names`.
    data_dir: folder with the raw archives (config.data.dir); empty for TFDS.
    tfds_data_dir: TFDS data root (config.data.tfds_dir); empty for TFDS's default.
    val_size: the first ``val_size`` official training examples become the "val" split and are
      removed from "train" (docs/methods.md §1.6: 5000 for the CIFAR-10 KD-ticket recipe). With TFDS,
      CIFAR keeps the original archive order (records are sorted by their id); MNIST-like TFDS
      data has no ids and keeps TFDS's own fixed order, so its first images differ from the IDX
      files' first images.
    process_index: this process (``jax.process_index()`` in multi-host runs).
    process_count: processes sharing each global batch (``jax.process_count()``).
    num_workers: decoding threads for streaming datasets (0: ``min(32, cpu_count)``).
    mean: input-normalisation means per channel (config.data.mean); ``()``: the dataset's own.
    std: input-normalisation standard deviations (config.data.std); ``()``: the dataset's own.
      The returned dataset's ``info`` carries them (see :func:`kdt.data.with_normalization`).
    last_batch: ``"drop"`` or ``"keep"`` each epoch's last incomplete training batch
      (config.data.last_batch; :mod:`kdt.data.order`).

  Returns:
    :class:`Dataset` (in memory) or, for ``info.streaming`` datasets, :class:`StreamingDataset`.

  Raises:
    ValueError: unknown name, bad ``val_size``, ``mean``/``std`` or process arguments,
      ``data_dir`` for imagenet2012.
    DatasetUnavailableError: data missing, unprepared, unreadable or corrupt (fails fast, names the
      directories / files and how to get the data).

  Examples:
    >>> ds = load_dataset("digits", val_size=100)
    >>> len(ds.train), len(ds.val), len(ds.test)
    (1337, 100, 360)
  """
  info = dataset_info(name)
  if not 0 <= val_size < info.num_train:  # Checked again against the loaded split; this is early.
    raise ValueError(
      f"val_size must be in [0, {info.num_train}) for {name!r}, got {val_size}."
    )
  normalized = with_normalization(info, mean, std)
  kwargs = dict(val_size=val_size, process_index=process_index, process_count=process_count,
                last_batch=last_batch)
  if info.streaming:
    if name == "imagenet2012" and data_dir:
      raise ValueError(
        "imagenet2012 is read from a prepared TFDS dataset only; leave data_dir "
        "(config.data.dir) empty and set tfds_data_dir."
      )
    if data_dir:
      files = raw.tiny_imagenet_files(data_dir)
      train = FileSource(*files["train"], where=data_dir)
      test = FileSource(*files["test"], where=data_dir)
    else:
      sources = tfds_source.open_splits(name, tfds_data_dir)
      train = TfdsSource(sources["train"], where=f"TFDS {name} train")
      test = TfdsSource(sources["test"], where=f"TFDS {name} test")
    return StreamingDataset(normalized, train, test, num_workers=num_workers, **kwargs)

  if name == "digits":
    arrays = raw.load_digits()
  elif data_dir and name in raw.CIFAR_FILES:
    arrays = raw.load_cifar(name, data_dir)
  elif data_dir:
    arrays = raw.load_idx_dataset(name, data_dir)
  else:
    sources = tfds_source.open_splits(name, tfds_data_dir)
    arrays = {
      split: tfds_source.read_arrays(source, info, f"TFDS {name} {split}")
      for split, source in sources.items()
    }
  return Dataset(normalized, Split(*arrays["train"]), Split(*arrays["test"]), **kwargs)
