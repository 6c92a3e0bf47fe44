"""Tests for kdt.data: registry, digits, preprocessing, data order, raw readers, TFDS and streaming.

Nothing here needs the network or real datasets: raw archives are written to tmp_path, TFDS is either
``tfds.testing.mock_data`` or a tiny ArrayRecord dataset prepared in tmp_path (without TensorFlow).
"""

import gzip
import io
import os
import pickle
import struct
import tarfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image
import pytest

from kdt import data
from kdt.data import order, streaming

CIFAR = data.dataset_info("cifar10")


# ----------------------------------------------------------------------------------- registry


def test_registry_names_and_info():
    assert data.dataset_names() == [
        "digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "imagenet2012", "tiny_imagenet"
    ]
    for name in data.dataset_names():
        info = data.dataset_info(name)
        assert info.name == name
        assert len(info.mean) == len(info.std) == info.input_shape[-1]
        assert info.augment in data.AUGMENTATIONS
        hash(info)  # Static jit argument.
    assert CIFAR.mean == (0.4914, 0.4822, 0.4465) and CIFAR.std == (0.2023, 0.1994, 0.2010)
    assert data.dataset_info("imagenet2012").streaming and not CIFAR.streaming


def test_unknown_dataset_lists_allowed_names():
    with pytest.raises(ValueError, match="'cifar11'.*cifar10, cifar100"):
        data.dataset_info("cifar11")
    with pytest.raises(ValueError, match="cifar11"):
        data.load_dataset("cifar11")


# ------------------------------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits():
    return data.load_dataset("digits")


def test_digits_shapes_split_and_determinism(digits):
    info = digits.info
    assert digits.train.images.shape == (1437, 8, 8, 1) == (info.num_train, *info.input_shape)
    assert digits.test.images.shape == (360, 8, 8, 1)
    assert digits.train.images.dtype == np.uint8 and digits.train.labels.dtype == np.int32
    assert digits.val is None
    assert digits.train.images.max() == 255 and digits.train.images.min() == 0
    # Stratified: each class holds 360 * n_c / 1797 test examples (largest remainder).
    np.testing.assert_array_equal(
        np.bincount(digits.test.labels), [36, 37, 35, 37, 36, 36, 36, 36, 35, 36]
    )
    # Fixed split: fingerprints of the documented split (seed 0) and a reload.
    assert int(digits.test.images.sum()) == 1802336 and int(digits.test.labels.sum()) == 1614
    again = data.load_dataset("digits")
    np.testing.assert_array_equal(again.test.images, digits.test.images)
    np.testing.assert_array_equal(again.train.labels, digits.train.labels)
    # The hard-coded statistics are the training split's.
    x = digits.train.images / 255.0
    assert abs(x.mean() - info.mean[0]) < 1e-4 and abs(x.std() - info.std[0]) < 1e-4


def test_val_split_takes_first_images(digits):
    ds = data.load_dataset("digits", val_size=100)
    np.testing.assert_array_equal(ds.val.images, digits.train.images[:100])
    np.testing.assert_array_equal(ds.train.labels, digits.train.labels[100:])
    assert len(ds.val) == 100 and len(ds.train) == 1337
    for bad in (-1, 1437, 10**6):
        with pytest.raises(ValueError, match="val_size"):
            data.load_dataset("digits", val_size=bad)


# --------------------------------------------------------------------------------- preprocess


def _images(n, h=32, w=32, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, c), dtype=np.uint8)


def test_preprocess_normalisation_exact():
    x = _images(4)
    want = (x.astype(np.float32) / 255 - np.float32(CIFAR.mean)) / np.float32(CIFAR.std)
    for train, augment in [(False, "crop_flip"), (True, "none"), (True, "inception_crop_flip")]:
        got = data.preprocess(x, jax.random.key(0), info=CIFAR, train=train, augment=augment)
        assert got.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-6)
    mnist = data.dataset_info("mnist")
    got = data.preprocess(np.full((1, 28, 28, 1), 255, np.uint8), jax.random.key(0), info=mnist,
                          train=False, augment="none")
    np.testing.assert_allclose(np.asarray(got), (1 - 0.1307) / 0.3081, rtol=1e-6)


def _unnormalise(y):
    return np.asarray(y) * np.float32(CIFAR.std) + np.float32(CIFAR.mean)


def test_crop_flip_is_shifted_window_of_zero_padded_image():
    x = _images(16)
    y = _unnormalise(data.preprocess(x, jax.random.key(3), info=CIFAR, train=True, augment="crop_flip"))
    padded = np.pad(x / 255.0, ((0, 0), (4, 4), (4, 4), (0, 0)))  # Black padding in pixel space.
    seen = set()
    for i in range(len(x)):
        matches = [
            (dy, dx, flip)
            for dy in range(9)
            for dx in range(9)
            for flip in (False, True)
            if np.allclose(
                y[i],
                padded[i, dy:dy + 32, dx:dx + 32][:, ::-1] if flip else padded[i, dy:dy + 32, dx:dx + 32],
                atol=1e-5,
            )
        ]
        assert len(matches) == 1, (i, matches)
        seen.add(matches[0])
    assert len({m[:2] for m in seen}) > 4 and {m[2] for m in seen} == {False, True}  # Per example.


def test_flip_only_reverses_width():
    x = _images(16)
    y = _unnormalise(data.preprocess(x, jax.random.key(1), info=CIFAR, train=True, augment="flip"))
    flipped = [np.allclose(y[i], x[i, :, ::-1] / 255.0, atol=1e-5) for i in range(16)]
    same = [np.allclose(y[i], x[i] / 255.0, atol=1e-5) for i in range(16)]
    assert all(f != s for f, s in zip(flipped, same)) and any(flipped) and any(same)


def test_preprocess_deterministic_per_key_and_jittable():
    x = _images(8)
    kwargs = dict(info=CIFAR, train=True, augment="crop_flip")
    a = data.preprocess(x, jax.random.key(0), **kwargs)
    np.testing.assert_array_equal(a, data.preprocess(x, jax.random.key(0), **kwargs))
    assert not np.array_equal(a, data.preprocess(x, jax.random.key(1), **kwargs))
    inner = jax.jit(lambda images, key: data.preprocess(images, key, **kwargs))
    np.testing.assert_allclose(inner(x, jax.random.key(0)), a, atol=1e-6)
    with pytest.raises(ValueError, match="augment"):
        data.preprocess(x, jax.random.key(0), info=CIFAR, train=True, augment="mixup")
    with pytest.raises(ValueError, match="needs a PRNG key"):
        data.preprocess(x, None, **kwargs)
    evaluated = data.preprocess(x, None, info=CIFAR, train=False, augment="crop_flip")
    np.testing.assert_array_equal(
        evaluated, data.preprocess(x, jax.random.key(5), info=CIFAR, train=False, augment="crop_flip"))
    # Legacy uint32 keys work too.
    np.testing.assert_array_equal(
        data.preprocess(x, jax.random.PRNGKey(0), **kwargs),
        data.preprocess(x, jax.random.PRNGKey(0), **kwargs))


# -------------------------------------------------------------------------------- data order


def test_train_batch_indices_permutation_per_epoch():
    n, b = 100, 10
    epochs = [np.concatenate([data.train_batch_indices(n, b, e * 10 + s, seed=7) for s in range(10)])
              for e in range(3)]
    for perm in epochs:
        np.testing.assert_array_equal(np.sort(perm), np.arange(n))
    assert not np.array_equal(epochs[0], epochs[1])
    # Remainder dropped: 103 examples, 10 steps per epoch, no index twice within an epoch.
    epoch = np.concatenate([data.train_batch_indices(103, b, s, seed=0) for s in range(10, 20)])
    assert len(np.unique(epoch)) == 100


def test_kept_last_batch_is_pytorchs_epoch(digits):
    """``last_batch="keep"``: open_lth's / KD-ticket's epoch length (PyTorch ``drop_last=False``);
    the partial batch's rows are the permutation's tail, padded with weight 0."""
    assert [order.steps_per_epoch(n, 128, "keep") for n in (60_000, 50_000, 45_000)] == [469, 391, 352]
    assert order.steps_per_epoch(60_000, 128) == 468 and order.steps_per_epoch(1280, 128, "keep") == 10
    n, b = 103, 10                                       # 11 steps per epoch, the last has 3 images
    epoch = [data.train_batch_indices(n, b, s, seed=4, last_batch="keep") for s in range(11, 22)]
    weights = [order.train_batch_weights(n, b, s, "keep") for s in range(11, 22)]
    real = np.concatenate([i[w > 0] for i, w in zip(epoch, weights)])
    np.testing.assert_array_equal(np.sort(real), np.arange(n))    # every example once per epoch
    assert weights[-1].tolist() == [1.0] * 3 + [0.0] * 7 and all(w.all() for w in weights[:-1])
    np.testing.assert_array_equal(epoch[-1][3:], np.resize(epoch[-1][:3], 7))  # padded cyclically
    assert order.every_steps(1, 60_000, 128, "keep") == 469
    kept = data.load_dataset("digits", last_batch="keep")            # 1437 digits: 23 steps of 64
    last = kept.train_batch(22, 64, seed=0)
    assert last["weight"].sum() == 1437 - 22 * 64 and "weight" not in digits.train_batch(22, 64, 0)
    np.testing.assert_array_equal(last["label"][:29], kept.train.labels[
        data.train_batch_indices(1437, 64, 22, 0, "keep")[:29]])
    with pytest.raises(ValueError, match="last_batch='all'; allowed: drop, keep"):
        data.load_dataset("digits", last_batch="all")


def test_train_batch_indices_seeds_and_purity():
    a = data.train_batch_indices(1000, 32, 57, seed=0)
    assert not np.array_equal(a, data.train_batch_indices(1000, 32, 57, seed=1))
    order._epoch_permutation.cache_clear()
    np.testing.assert_array_equal(a, data.train_batch_indices(1000, 32, 57, seed=0))
    a[:] = -1  # Returned arrays are copies; the cache is not affected.
    assert data.train_batch_indices(1000, 32, 57, seed=0).min() >= 0
    with pytest.raises(ValueError, match="larger than the training split"):
        data.train_batch_indices(10, 11, 0, 0)


def test_process_slices_concatenate_to_global_batch(digits):
    ds = [data.load_dataset("digits", process_index=p, process_count=2) for p in range(2)]
    for step in (0, 5, 44):  # 44 steps per epoch at batch 32: step 44 is in epoch 1.
        parts = [d.train_batch(step, 32, seed=3) for d in ds]
        whole = digits.train_batch(step, 32, seed=3)
        assert parts[0]["image"].shape == (16, 8, 8, 1)
        for key in ("image", "label"):
            np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key])
    with pytest.raises(ValueError, match="divisible"):
        ds[0].train_batch(0, 33, seed=0)
    with pytest.raises(ValueError, match="process_index"):
        data.load_dataset("digits", process_index=2, process_count=2)


def test_eval_batches_cover_every_example_once(digits):
    ds = [data.load_dataset("digits", process_index=p, process_count=2) for p in range(2)]
    batches = [list(d.eval_batches("test", 64)) for d in ds]
    assert len(batches[0]) == 6  # ceil(360 / 64)
    labels, images = [], []
    for b0, b1 in zip(*batches):
        for key in ("image", "label", "weight"):
            assert b0[key].shape == b1[key].shape and b0[key].shape[0] == 32
        weight = np.concatenate([b0["weight"], b1["weight"]])
        assert weight.dtype == np.float32
        keep = weight == 1
        labels.append(np.concatenate([b0["label"], b1["label"]])[keep])
        images.append(np.concatenate([b0["image"], b1["image"]])[keep])
        assert not np.concatenate([b0["image"], b1["image"]])[~keep].any()  # Zero padding.
    assert sum(b["weight"].sum() for bs in batches for b in bs) == 360
    np.testing.assert_array_equal(np.concatenate(labels), digits.test.labels)
    np.testing.assert_array_equal(np.concatenate(images), digits.test.images)
    with pytest.raises(ValueError, match="val_size"):
        next(digits.eval_batches("val", 64))


# ------------------------------------------------------------------------------- raw archives


def _idx_bytes(array):
    magic = 0x0800 + array.ndim
    return struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()


def _write_idx_dataset(folder, n_train=7, n_test=3, seed=0):
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for stem, array in arrays.items():
        with gzip.open(os.path.join(folder, stem + ".gz"), "wb") as f:
            f.write(_idx_bytes(array))
    return arrays


def test_idx_reader(tmp_path):
    arrays = _write_idx_dataset(tmp_path / "fashion_mnist")  # Found in data_dir/<name>.
    ds = data.load_dataset("fashion_mnist", data_dir=str(tmp_path), val_size=2)
    np.testing.assert_array_equal(ds.val.images[..., 0], arrays["train-images-idx3-ubyte"][:2])
    np.testing.assert_array_equal(ds.train.images[..., 0], arrays["train-images-idx3-ubyte"][2:])
    np.testing.assert_array_equal(ds.train.labels, arrays["train-labels-idx1-ubyte"][2:])
    np.testing.assert_array_equal(ds.test.images[..., 0], arrays["t10k-images-idx3-ubyte"])
    assert ds.test.images.shape == (3, 28, 28, 1) and ds.test.labels.dtype == np.int32
    with pytest.raises(ValueError, match="val_size"):
        data.load_dataset("fashion_mnist", data_dir=str(tmp_path), val_size=7)


def test_normalization_statistics_are_data(tmp_path):
    """data.mean / data.std: Fashion-MNIST normalised with MNIST's statistics, as open_lth does."""
    _write_idx_dataset(tmp_path / "fashion_mnist")
    own = data.load_dataset("fashion_mnist", data_dir=str(tmp_path))
    assert (own.info.mean, own.info.std) == ((0.2860,), (0.3530,))
    ds = data.load_dataset("fashion_mnist", data_dir=str(tmp_path), mean=(0.1307,), std=(0.3081,))
    assert (ds.info.mean, ds.info.std) == ((0.1307,), (0.3081,))
    assert ds.info.name == "fashion_mnist" and ds.info.input_shape == own.info.input_shape
    x = ds.test.images[:2]
    got = data.preprocess(x, None, info=ds.info, train=False, augment="none")
    want = (x.astype(np.float32) / 255 - np.float32(0.1307)) / np.float32(0.3081)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-6)
    # Only the mean: the dataset's own std stays; one value covers every channel.
    half = data.with_normalization(data.dataset_info("fashion_mnist"), mean=(0.5,))
    assert (half.mean, half.std) == ((0.5,), (0.3530,))
    assert data.with_normalization(CIFAR, std=(0.25,)).std == (0.25, 0.25, 0.25)
    for bad in [dict(mean=(0.1, 0.2)), dict(std=(0.0,)), dict(std=(float("nan"),))]:
        with pytest.raises(ValueError, match="mean|std"):
            data.with_normalization(data.dataset_info("fashion_mnist"), **bad)


def test_idx_missing_truncated_and_bad_magic(tmp_path):
    with pytest.raises(data.DatasetUnavailableError, match="train-images-idx3-ubyte.gz") as err:
        data.load_dataset("mnist", data_dir=str(tmp_path))
    assert str(tmp_path) in str(err.value)

    _write_idx_dataset(tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:40])  # Truncated gzip stream.
    with pytest.raises(data.DatasetUnavailableError, match="t10k-images-idx3-ubyte.gz.*truncated"):
        data.load_dataset("mnist", data_dir=str(tmp_path))

    with gzip.open(path, "wb") as f:  # Labels file under the images name: wrong magic number.
        f.write(_idx_bytes(np.zeros(3, np.uint8)))
    with pytest.raises(data.DatasetUnavailableError, match="t10k-images.*magic number 2051"):
        data.load_dataset("mnist", data_dir=str(tmp_path))

    with gzip.open(path, "wb") as f:  # Header promises more data than there is.
        f.write(_idx_bytes(np.zeros((3, 28, 28), np.uint8))[:-5])
    with pytest.raises(data.DatasetUnavailableError, match="t10k-images.*truncated"):
        data.load_dataset("mnist", data_dir=str(tmp_path))


def _cifar_batch(n, label_key, seed):
    rng = np.random.default_rng(seed)
    batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
             label_key.encode(): rng.integers(0, 10, n).tolist()}
    if label_key == "fine_labels":
        batch[b"coarse_labels"] = [0] * n
    return batch


def _write_cifar(folder, name="cifar10", as_tar=True):
    spec = {"cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)],
                        ["test_batch"], "labels", "cifar-10-python.tar.gz"),
            "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels",
                         "cifar-100-python.tar.gz")}[name]
    inner, train, test, label_key, archive = spec
    per_file = 2 if name == "cifar10" else 5
    batches = {m: _cifar_batch(per_file, label_key, i) for i, m in enumerate(train + test)}
    os.makedirs(folder, exist_ok=True)
    if as_tar:
        with tarfile.open(os.path.join(folder, archive), "w:gz") as tar:
            for member, batch in batches.items():
                blob = pickle.dumps(batch, protocol=2)
                info = tarfile.TarInfo(f"{inner}/{member}")
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
    else:
        os.makedirs(os.path.join(folder, inner))
        for member, batch in batches.items():
            with open(os.path.join(folder, inner, member), "wb") as f:
                pickle.dump(batch, f, protocol=2)
    cat = lambda ms, k: np.concatenate([np.asarray(batches[m][k]) for m in ms])  # noqa: E731
    return (cat(train, b"data"), cat(train, label_key.encode()),
            cat(test, b"data"), cat(test, label_key.encode()))


@pytest.mark.parametrize("name,as_tar", [("cifar10", True), ("cifar10", False), ("cifar100", True)])
def test_cifar_reader(tmp_path, name, as_tar):
    train_x, train_y, test_x, test_y = _write_cifar(tmp_path, name, as_tar)
    ds = data.load_dataset(name, data_dir=str(tmp_path), val_size=1)
    n = len(train_y)
    assert ds.train.images.shape == (n - 1, 32, 32, 3) and ds.val.images.shape == (1, 32, 32, 3)
    images = np.concatenate([ds.val.images, ds.train.images])
    # Channel-major rows: pixel (h, w) of channel c is data[c * 1024 + h * 32 + w].
    for i, (h, w, c) in [(0, (0, 0, 0)), (3, (5, 17, 2)), (n - 1, (31, 1, 1))]:
        assert images[i, h, w, c] == train_x[i, c * 1024 + h * 32 + w]
    np.testing.assert_array_equal(np.concatenate([ds.val.labels, ds.train.labels]), train_y)
    np.testing.assert_array_equal(ds.test.labels, test_y)
    assert ds.test.images[1, 2, 3, 1] == test_x[1, 1024 + 2 * 32 + 3]


def test_cifar_corrupt_archives(tmp_path):
    archive = tmp_path / "cifar-10-python.tar.gz"
    archive.write_bytes(b"this is not a tarball" * 10)
    with pytest.raises(data.DatasetUnavailableError, match="cifar-10-python.tar.gz"):
        data.load_dataset("cifar10", data_dir=str(tmp_path))

    _write_cifar(tmp_path)
    blob = archive.read_bytes()
    archive.write_bytes(blob[: len(blob) // 2])  # Truncated download.
    with pytest.raises(data.DatasetUnavailableError, match="cifar-10-python.tar.gz.*(truncated|corrupt)"):
        data.load_dataset("cifar10", data_dir=str(tmp_path))

    class Evil:  # A pickle that would run code: refused, never executed.
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    folder = tmp_path / "x" / "cifar-10-batches-py"
    os.makedirs(folder)
    for m in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / m).write_bytes(pickle.dumps(Evil()))
    with pytest.raises(data.DatasetUnavailableError, match="data_batch_1.*refusing"):
        data.load_dataset("cifar10", data_dir=str(tmp_path / "x"))


def test_missing_raw_archive_names_files_and_dirs(tmp_path):
    with pytest.raises(data.DatasetUnavailableError) as err:
        data.load_dataset("cifar100", data_dir=str(tmp_path))
    message = str(err.value)
    assert "cifar-100-python.tar.gz" in message and str(tmp_path) in message
    with pytest.raises(ValueError, match="imagenet2012"):
        data.load_dataset("imagenet2012", data_dir=str(tmp_path))


# ------------------------------------------------------------------------------------- TFDS


def test_tfds_unavailable_fails_fast(tmp_path):
    import tensorflow_datasets as tfds  # noqa: F401  (import time is not what is measured)

    start = time.perf_counter()
    with pytest.raises(data.DatasetUnavailableError) as err:
        data.load_dataset("cifar10", tfds_data_dir=str(tmp_path))
    assert time.perf_counter() - start < 5
    message = str(err.value)
    assert str(tmp_path) in message and "array_record" in message and "cifar-10-python.tar.gz" in message
    with pytest.raises(data.DatasetUnavailableError, match="tiny-imagenet-200.zip"):
        data.load_dataset("tiny_imagenet", tfds_data_dir=str(tmp_path))


def _png(image):
    buffer = io.BytesIO()
    PIL.Image.fromarray(image).save(buffer, format="PNG")
    buffer.seek(0)
    return buffer


def test_tfds_prepared_array_record_restores_archive_order(tmp_path):
    """A real (not mocked) ArrayRecord TFDS dataset, prepared here without TensorFlow."""
    import tensorflow_datasets as tfds
    from tensorflow_datasets.image_classification import cifar

    x = _images(12)
    y = np.arange(12) % 10

    class TinyCifar10(cifar.Cifar10, skip_registration=True):
        name = "cifar10"

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples("train_", 12),
                    "test": self._generate_examples("test_", 5)}

        def _generate_examples(self, prefix, n):
            for i in range(n):  # Encoded bytes: encoding a numpy image would need TensorFlow.
                yield i, {"image": _png(x[i]), "label": int(y[i]), "id": f"{prefix}{i:05d}"}

    TinyCifar10(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
    source = tfds.builder("cifar10", data_dir=str(tmp_path)).as_data_source(split="train")
    assert [int(source[i]["label"]) for i in range(12)] != y.tolist()  # TFDS shuffled the records.

    ds = data.load_dataset("cifar10", tfds_data_dir=str(tmp_path), val_size=2)
    np.testing.assert_array_equal(ds.val.images, x[:2])  # First val_size of the original order.
    np.testing.assert_array_equal(ds.train.images, x[2:])
    np.testing.assert_array_equal(ds.train.labels, y[2:])
    np.testing.assert_array_equal(ds.test.images, x[:5])


@pytest.fixture
def mock_tfds(monkeypatch):
    """tfds.testing.mock_data, plus ``is_prepared`` -> True (mock_data leaves it False)."""
    import tensorflow_datasets as tfds

    monkeypatch.setattr(tfds.core.DatasetBuilder, "is_prepared", lambda self: True)
    with tfds.testing.mock_data(num_examples=20):
        yield


def test_tfds_in_memory_on_mock_data(mock_tfds):
    ds = data.load_dataset("cifar10", val_size=4)
    assert ds.train.images.shape == (16, 32, 32, 3) and ds.val.images.shape == (4, 32, 32, 3)
    assert ds.test.images.shape == (20, 32, 32, 3) and ds.train.labels.dtype == np.int32
    again = data.load_dataset("cifar10", val_size=4)
    np.testing.assert_array_equal(again.train.images, ds.train.images)
    batch = ds.train_batch(3, 8, seed=0)
    assert batch["image"].shape == (8, 32, 32, 3)


def test_streaming_on_mock_imagenet(mock_tfds):
    ds = data.load_dataset("imagenet2012", val_size=4, num_workers=4)
    assert isinstance(ds, data.StreamingDataset)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (16, 4, 20)
    batch = ds.train_batch(5, 8, seed=1)
    assert batch["image"].shape == (8, 224, 224, 3) and batch["image"].dtype == np.uint8
    np.testing.assert_array_equal(batch["image"], ds.train_batch(5, 8, seed=1)["image"])
    assert not np.array_equal(batch["image"], ds.train_batch(5, 8, seed=1, augment_seed=9)["image"])
    parts = [data.load_dataset("imagenet2012", val_size=4, process_index=p, process_count=2)
             .train_batch(5, 8, seed=1) for p in range(2)]
    for key in ("image", "label"):
        np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), batch[key])
    eval_batches = list(ds.eval_batches("test", 8))
    assert [b["weight"].sum() for b in eval_batches] == [8, 8, 4]
    assert all(b["image"].shape == (8, 224, 224, 3) for b in eval_batches)
    x = data.preprocess(batch["image"], jax.random.key(0), info=ds.info, train=True,
                        augment=ds.info.augment)
    assert x.shape == (8, 224, 224, 3)
    ds.close()


def test_streaming_reads_through_grain_and_resumes_at_any_step(mock_tfds, monkeypatch):
    import grain

    reads = []
    real_read = data.StreamingDataset._read
    monkeypatch.setattr(data.StreamingDataset, "_read",
                        lambda self, ds, n: reads.append(ds) or real_read(self, ds, n))
    ds = data.load_dataset("imagenet2012", val_size=4, num_workers=3)
    stream = ds.train_stream(8, 1, augment_seed=5)
    assert isinstance(stream, grain.MapDataset)
    uninterrupted = [ds.train_batch(s, 8, 1, augment_seed=5) for s in range(4)]
    assert len(reads) == 1 and isinstance(reads[0], grain.MapDataset)  # one read, steps 0..3
    # Step s is items [8 s, 8 s + 8) of the stream: kdt's data order, crops keyed by (seed, s, row).
    for s in (0, 3):
        np.testing.assert_array_equal(np.stack([stream[8 * s + r][0] for r in range(8)]),
                                      uninterrupted[s]["image"])
    idx = data.train_batch_indices(len(ds.train), 8, 3, 1)
    want = [streaming.inception_crop_flip(ds.train.get(i)[0], 224, np.random.default_rng([5, 3, r]))
            for r, i in enumerate(idx)]
    np.testing.assert_array_equal(np.stack(want), uninterrupted[3]["image"])
    # A resumed run (a new process) asks for step 2 first: the same batches as without the break.
    resumed = data.load_dataset("imagenet2012", val_size=4, num_workers=2)
    for s in (2, 3):
        batch = resumed.train_batch(s, 8, 1, augment_seed=5)
        for key in ("image", "label"):
            np.testing.assert_array_equal(batch[key], uninterrupted[s][key])
    assert len(reads) == 2   # the resumed dataset's one read, from step 2
    ds.train_batch(1, 8, 1, augment_seed=5)   # another step than the next: a new read there
    assert len(reads) == 3
    ds.close()
    resumed.close()


def test_tiny_imagenet_folder(tmp_path):
    root = tmp_path / "tiny-imagenet-200"
    wnids = ["n02", "n01"]  # Labels follow the sorted ids: n01 -> 0, n02 -> 1.
    rng = np.random.default_rng(0)
    for w in wnids:
        os.makedirs(root / "train" / w / "images")
        for i in range(3):
            PIL.Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
                root / "train" / w / "images" / f"{w}_{i}.JPEG")
    os.makedirs(root / "val" / "images")
    PIL.Image.fromarray(np.full((64, 64), 7, np.uint8)).save(root / "val" / "images" / "val_0.JPEG")
    PIL.Image.fromarray(np.zeros((80, 96, 3), np.uint8)).save(root / "val" / "images" / "val_1.JPEG")
    (root / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn02\t0\t0\t1\t1\n"
                                                      "val_1.JPEG\tn01\t0\t0\t1\t1\n")
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    ds = data.load_dataset("tiny_imagenet", data_dir=str(tmp_path), num_workers=2)
    assert (len(ds.train), len(ds.test)) == (6, 2)
    batch = ds.train_batch(0, 4, seed=0)
    assert batch["image"].shape == (4, 64, 64, 3)
    assert [ds.train.get(i)[1] for i in range(6)] == [0, 0, 0, 1, 1, 1]
    assert set(batch["label"].tolist()) <= {0, 1}
    (test_batch,) = list(ds.eval_batches("test", 4))
    np.testing.assert_array_equal(test_batch["label"], [1, 0, 0, 0])
    np.testing.assert_array_equal(test_batch["weight"], [1, 1, 0, 0])
    assert test_batch["image"].shape == (4, 64, 64, 3)  # Grayscale -> RGB; 80x96 -> resize + crop.
    assert abs(int(test_batch["image"][0].mean()) - 7) <= 1
    ds.close()


def test_host_transforms():
    rng = np.random.default_rng(0)
    for _ in range(200):
        top, left, h, w = streaming.random_resized_crop_box(300, 400, rng)
        assert 0 <= top and top + h <= 300 and 0 <= left and left + w <= 400
        assert 0.8 * 0.99 <= w / h <= 1.25 * 1.01 or (h, w) in [(300, 375), (320, 400)]
    image = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    assert streaming.center_crop(image, 256, 224).shape == (224, 224, 3)
    out = streaming.inception_crop_flip(image, 224, np.random.default_rng(1))
    np.testing.assert_array_equal(out, streaming.inception_crop_flip(image, 224, np.random.default_rng(1)))
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
