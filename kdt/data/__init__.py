"""kdt.data: datasets, deterministic batching and preprocessing.

Two kinds of dataset share one batching API (``train_batch(step, global_batch_size, seed)`` and
``eval_batches(split, batch_size)``), both returning only this process's rows of each global batch:

* :class:`Dataset` (digits, MNIST, Fashion-MNIST, CIFAR-10/100): whole splits in host memory as uint8
 NHWC numpy arrays, read from scikit-learn (digits), the raw archives in ``data_dir``, or a prepared
 TFDS dataset (read without TensorFlow). Augmentation runs on device in :func:`preprocess`.
* :class:`StreamingDataset` (ImageNet, Tiny ImageNet): random access by index into a TFDS ArrayRecord
 data source (or Tiny ImageNet's image folder), decoded, resized and (``"inception_crop_flip"``)
 augmented on the host per batch, read through grain (:meth:`StreamingDataset.train_stream`).

The data order is a pure function of the step (:func:`train_batch_indices`), so the iteration state is
the step number alone. Nothing is ever downloaded: missing or corrupt data raises
:class:`DatasetUnavailableError` at once, saying where kdt looked and how to get the data.

Examples:
  >>> import jax
  >>> from kdt import data
  >>> ds = data.load_dataset("digits")
  >>> batch = ds.train_batch(step=0, global_batch_size=32, seed=0)
  >>> x = data.preprocess(batch["image"], jax.random.key(0), info=ds.info, train=True,
  ...                     augment=ds.info.augment)
  >>> x.shape, x.dtype
  ((32, 8, 8, 1), dtype('float32'))
"""

from kdt.data.augment import preprocess as preprocess
from kdt.data.load import load_dataset as load_dataset
from kdt.data.memory import Dataset as Dataset
from kdt.data.memory import Split as Split
from kdt.data.order import train_batch_indices as train_batch_indices
from kdt.data.registry import AUGMENTATIONS as AUGMENTATIONS
from kdt.data.registry import DatasetInfo as DatasetInfo
from kdt.data.registry import DatasetUnavailableError as DatasetUnavailableError
from kdt.data.registry import dataset_info as dataset_info
from kdt.data.registry import dataset_names as dataset_names
from kdt.data.registry import with_normalization as with_normalization
from kdt.data.streaming import StreamingDataset as StreamingDataset
from kdt.data.streaming import StreamSplit as StreamSplit

__all__ = [
  "AUGMENTATIONS",
  "Dataset",
  "DatasetInfo",
  "DatasetUnavailableError",
  "Split",
  "StreamSplit",
  "StreamingDataset",
  "dataset_info",
  "dataset_names",
  "load_dataset",
  "preprocess",
  "train_batch_indices",
  "with_normalization",
]
