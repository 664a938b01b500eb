"""CIFAR-10 and CIFAR-100 as numpy arrays: uint8 NHWC images, int32 labels, class names.

``load_cifar`` looks under ``data_dir`` for these formats, in this order, and uses the
first one present (a present but broken copy raises instead of falling through, so a
bad file is never silently replaced by another copy):

1. the official python batches (``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz``
   extracted): ``DIR/cifar-10-batches-py/`` or ``DIR/cifar-100-python/``;
2. the official binary batches (``cifar-10-binary.tar.gz`` / ``cifar-100-binary.tar.gz``):
   ``DIR/cifar-10-batches-bin/`` or ``DIR/cifar-100-binary/``;
3. a tensorflow-datasets copy prepared in array_record format (DIR is then the tfds
   data_dir: ``DIR/cifar10/3.0.2/cifar10-train.array_record-*``), read without downloading.

``data_dir`` may also be the batch folder itself. With ``data_dir=None`` it is the tfds
default (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``). Only ``download=True`` lets
tfds download and prepare the data when none of the three is there; otherwise nothing
touches the network, and the error says which files to put where.

All formats give the images in the official order (tfds shuffles its records; they are
put back in order by their ids), so ``search_split`` selects the same images whatever
the source.
"""

from __future__ import annotations

import codecs
import dataclasses
import os
import pickle
import re
from pathlib import Path

import numpy as np

from nao.data.errors import DatasetError

URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
SPLITS = ("train", "test")
LABEL_MODES = ("fine", "coarse")
IMAGE_SHAPE = (32, 32, 3)
_PIXELS = 32 * 32 * 3
Pair = tuple[np.ndarray, np.ndarray]  # (images, labels)

# Per-channel mean and standard deviation of the training images, pixels scaled to [0, 1]
# (the values DARTS and NAO_V1 normalise with; the std is over all pixels, not per image).
CIFAR10_MEAN = (0.49139968, 0.48215827, 0.44653124)
CIFAR10_STD = (0.24703233, 0.24348505, 0.26158768)
CIFAR100_MEAN = (0.50707516, 0.48654887, 0.44091784)
CIFAR100_STD = (0.26733429, 0.25643846, 0.27615047)
CHANNEL_STATS = {"cifar10": (CIFAR10_MEAN, CIFAR10_STD), "cifar100": (CIFAR100_MEAN, CIFAR100_STD)}

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
    "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
    "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle",
    "mountain", "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear",
    "pickup_truck", "pine_tree", "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon",
    "ray", "road", "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail",
    "snake", "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone",
    "television", "tiger", "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale",
    "willow_tree", "wolf", "woman", "worm",
)
CIFAR100_COARSE_CLASSES = (
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
    "household_electrical_devices", "household_furniture", "insects", "large_carnivores",
    "large_man-made_outdoor_things", "large_natural_outdoor_scenes", "large_omnivores_and_herbivores",
    "medium_mammals", "non-insect_invertebrates", "people", "reptiles", "small_mammals", "trees",
    "vehicles_1", "vehicles_2",
)


@dataclasses.dataclass(frozen=True)
class _Layout:
    """Where one dataset's files live in each official format, and what they hold."""

    title: str
    py_dir: str
    py_files: dict[str, tuple[str, ...]]
    py_meta: str
    py_archive: str
    bin_dir: str
    bin_files: dict[str, tuple[str, ...]]
    bin_archive: str
    label_keys: dict[str, str]  # label mode -> key in the python batch
    label_byte: dict[str, int]  # label mode -> byte of the binary record holding it
    label_bytes: int  # label bytes in front of each binary record
    names_key: dict[str, str]  # label mode -> key of the python meta file
    names_file: dict[str, str]  # label mode -> text file of the binary folder
    tfds_label: dict[str, str]  # label mode -> tfds feature
    classes: dict[str, tuple[str, ...]]


LAYOUTS = {
    "cifar10": _Layout(
        title="CIFAR-10", py_dir="cifar-10-batches-py",
        py_files={"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
        py_meta="batches.meta", py_archive="cifar-10-python.tar.gz",
        bin_dir="cifar-10-batches-bin",
        bin_files={"train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)), "test": ("test_batch.bin",)},
        bin_archive="cifar-10-binary.tar.gz",
        label_keys={"fine": "labels"}, label_byte={"fine": 0}, label_bytes=1,
        names_key={"fine": "label_names"}, names_file={"fine": "batches.meta.txt"},
        tfds_label={"fine": "label"}, classes={"fine": CIFAR10_CLASSES}),
    "cifar100": _Layout(
        title="CIFAR-100", py_dir="cifar-100-python",
        py_files={"train": ("train",), "test": ("test",)},
        py_meta="meta", py_archive="cifar-100-python.tar.gz",
        bin_dir="cifar-100-binary",
        bin_files={"train": ("train.bin",), "test": ("test.bin",)},
        bin_archive="cifar-100-binary.tar.gz",
        label_keys={"fine": "fine_labels", "coarse": "coarse_labels"},
        label_byte={"fine": 1, "coarse": 0}, label_bytes=2,
        names_key={"fine": "fine_label_names", "coarse": "coarse_label_names"},
        names_file={"fine": "fine_label_names.txt", "coarse": "coarse_label_names.txt"},
        tfds_label={"fine": "label", "coarse": "coarse_label"},
        classes={"fine": CIFAR100_CLASSES, "coarse": CIFAR100_COARSE_CLASSES}),
}


def _reconstructors() -> dict[tuple[str, str], object]:
    # The installed numpy's own array rebuilders, under the module names that numpy 1
    # (numpy.core, the official Python 2 files) and numpy 2 (numpy._core) write.
    rebuild = np.empty(0, np.uint8).__reduce__()[0]
    frombuffer = np.empty(0, np.uint8).__reduce_ex__(5)[0]
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
               ("_codecs", "encode"): codecs.encode}  # how Python 3 writes bytes at protocol 2
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = rebuild
        allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
    return allowed


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: a pickle cannot run code on load."""

    allowed = _reconstructors()

    def find_class(self, module: str, name: str):
        if (module, name) not in self.allowed:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} (not part of a CIFAR batch)")
        return self.allowed[(module, name)]


def _one_line(err: BaseException) -> str:
    return " ".join(f"{type(err).__name__}: {err}".split())


def _read_pickle(path: Path, layout: _Layout) -> dict[str, object]:
    """A python batch or meta file as a dict with str keys (the official files have bytes keys)."""
    try:
        with open(path, "rb") as f:
            loaded = _ArrayUnpickler(f, encoding="bytes").load()
    except Exception as err:  # any failure to unpickle means a truncated or foreign file
        raise DatasetError(f"{path} is not a readable {layout.title} python batch ({_one_line(err)}): "
                           f"truncated or corrupt; re-download {layout.py_archive} from {URL}") from err
    if not isinstance(loaded, dict):
        raise DatasetError(f"{path} holds a {type(loaded).__name__}, not the dict of a {layout.title} python "
                           f"batch; re-download {layout.py_archive} from {URL}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in loaded.items()}


def _check_labels(path: Path, labels: np.ndarray, count: int, classes: int, title: str) -> np.ndarray:
    if labels.shape != (count,):
        raise DatasetError(f"{path}: labels of shape {labels.shape} for {count} images")
    if count and (labels.min() < 0 or labels.max() >= classes):
        raise DatasetError(f"{path}: labels range from {labels.min()} to {labels.max()}, but {title} has "
                           f"{classes} classes (0..{classes - 1}): the file is corrupt or not {title}")
    return labels.astype(np.int32)


def _to_nhwc(rows: np.ndarray) -> np.ndarray:
    # Each official row is the red plane, then green, then blue, each 32x32 row-major.
    return np.ascontiguousarray(rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


def read_python_batch(path: str | os.PathLike, dataset: str = "cifar10",
                      label_mode: str = "fine") -> Pair:
    """Images (N, 32, 32, 3) uint8 and labels (N,) int32 of one official python batch file."""
    layout, path = _layout(dataset, label_mode), Path(path)
    batch = _read_pickle(path, layout)
    key = layout.label_keys[label_mode]
    missing = [k for k in ("data", key) if k not in batch]
    if missing:
        raise DatasetError(f"{path} has no {' or '.join(missing)} entry (keys: "
                           f"{', '.join(map(str, batch))}): not a {layout.title} python batch")
    data = batch["data"]
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == _PIXELS):
        shape = (f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray)
                 else type(data).__name__)
        raise DatasetError(f"{path}: 'data' is a {shape}, expected uint8 of shape (N, {_PIXELS})")
    try:
        labels = np.asarray(batch[key], dtype=np.int64)
    except (TypeError, ValueError) as err:
        raise DatasetError(f"{path}: {key!r} is not a list of integers ({_one_line(err)})") from err
    labels = _check_labels(path, labels, len(data), len(layout.classes[label_mode]), layout.title)
    return _to_nhwc(data), labels


def read_binary_batch(path: str | os.PathLike, dataset: str = "cifar10",
                      label_mode: str = "fine") -> Pair:
    """Images (N, 32, 32, 3) uint8 and labels (N,) int32 of one official binary batch file."""
    layout, path = _layout(dataset, label_mode), Path(path)
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except OSError as err:
        raise DatasetError(f"cannot read {path} ({_one_line(err)})") from err
    record = layout.label_bytes + _PIXELS
    if raw.size == 0 or raw.size % record:
        what = "label byte" if layout.label_bytes == 1 else "coarse and fine label bytes"
        raise DatasetError(f"{path} has {raw.size} bytes, not a multiple of the {record}-byte "
                           f"{layout.title} record ({what} + {_PIXELS} pixels): the file is truncated or not "
                           f"a {layout.title} binary batch; re-download {layout.bin_archive} from {URL}")
    rows = raw.reshape(-1, record)
    labels = _check_labels(path, rows[:, layout.label_byte[label_mode]], len(rows),
                           len(layout.classes[label_mode]), layout.title)
    return _to_nhwc(rows[:, layout.label_bytes:]), labels


def _layout(dataset: str, label_mode: str) -> _Layout:
    if dataset not in LAYOUTS:
        raise ValueError(f"unknown dataset {dataset!r}: use one of {', '.join(LAYOUTS)}")
    layout = LAYOUTS[dataset]
    if label_mode not in layout.label_keys:
        raise ValueError(f"label_mode {label_mode!r} does not exist for {layout.title}: "
                         f"use one of {', '.join(layout.label_keys)}")
    return layout


def _default_root() -> Path:
    # The same default tfds uses, computed here so that the no-data path never imports tfds.
    return Path(os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")).expanduser()


def _batch_folder(root: Path, subdir: str, files: dict[str, tuple[str, ...]]) -> Path | None:
    """root/subdir, or root itself when it holds batch files of this format."""
    if (root / subdir).is_dir():
        return root / subdir
    if any((root / name).is_file() for names in files.values() for name in names):
        return root
    return None


def _split_files(folder: Path, names: tuple[str, ...], archive: str) -> list[Path]:
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise DatasetError(f"{folder} lacks {', '.join(missing)}: extract {archive} from {URL} again")
    return [folder / n for n in names]


_VERSION = re.compile(r"\d+\.\d+\.\d+")


def _tfds_version(root: Path, dataset: str, split: str, layout: _Layout) -> str | None:
    """The newest version prepared under the tfds data_dir root with array_record files for split."""
    versions = sorted((d for d in (root / dataset).glob("*") if d.is_dir() and _VERSION.fullmatch(d.name)),
                      key=lambda d: tuple(int(p) for p in d.name.split(".")), reverse=True)
    for d in versions:
        if any(d.glob(f"{dataset}-{split}.array_record-*")):
            return d.name
    for d in versions:
        if any(d.glob(f"{dataset}-{split}.tfrecord-*")):
            raise DatasetError(f"{d} holds {layout.title} prepared as tfrecord, which tfds can only read "
                               f"with TensorFlow: prepare it again with file_format='array_record' or put "
                               f"the python batches in {root / layout.py_dir} ({URL})")
    return None


def _read_tfds(root: Path, dataset: str, version: str, split: str, label_mode: str,
               layout: _Layout) -> Pair:
    import tensorflow_datasets as tfds  # ~1 s to import: only this path pays it

    where = root / dataset / version
    try:
        source = tfds.data_source(f"{dataset}:{version}", split=split, data_dir=os.fspath(root),
                                  download=False)
        records = source.__getitems__(list(range(len(source))))
        ids = [int(r["id"].rsplit(b"_", 1)[1]) for r in records]
        images = np.stack([r["image"] for r in records]) if records else np.zeros((0, *IMAGE_SHAPE), np.uint8)
        labels = np.asarray([r[layout.tfds_label[label_mode]] for r in records], dtype=np.int64)
    except Exception as err:  # tfds raises many types; all mean this copy cannot be read
        raise DatasetError(f"cannot read the tfds {layout.title} copy in {where} ({_one_line(err)}): prepare "
                           f"it again or put the python batches in {root / layout.py_dir} ({URL})") from err
    if images.shape[1:] != IMAGE_SHAPE or images.dtype != np.uint8:
        raise DatasetError(f"{where}: images are {images.dtype} {images.shape[1:]}, "
                           f"expected uint8 {IMAGE_SHAPE}")
    order = np.argsort(ids, kind="stable")  # ids count up in the official order; records are shuffled
    labels = _check_labels(where, labels[order], len(order), len(layout.classes[label_mode]), layout.title)
    return np.ascontiguousarray(images[order]), labels


def _prepare_tfds(root: Path, dataset: str, layout: _Layout) -> None:
    import tensorflow_datasets as tfds

    try:
        tfds.builder(dataset, data_dir=os.fspath(root)).download_and_prepare(file_format="array_record")
    except Exception as err:  # network, TensorFlow missing (its CIFAR extractor needs it), disk
        raise DatasetError(f"tfds could not download and prepare {layout.title} in {root} "
                           f"({_one_line(err)}); tfds needs network access and TensorFlow to prepare "
                           f"CIFAR: otherwise extract {layout.py_archive} from {URL} into {root}") from err


def _not_found(root: Path, split: str, layout: _Layout) -> DatasetError:
    py = ", ".join(layout.py_files["train"] + layout.py_files["test"] + (layout.py_meta,))
    bins = ", ".join(layout.bin_files["train"] + layout.bin_files["test"])
    hint = "" if root.is_dir() else " (the folder does not exist)"
    for archive in (layout.py_archive, layout.bin_archive):
        if (root / archive).is_file():
            hint = f" ({archive} is there: extract it with tar xzf {root / archive} -C {root})"
    return DatasetError(f"no {layout.title} {split} data in {root}{hint}: put {py} in {root / layout.py_dir} "
                        f"(extract {layout.py_archive} from {URL}), or {bins} in {root / layout.bin_dir} "
                        f"({layout.bin_archive}), or pass download=True to let tensorflow-datasets fetch it")


def load_cifar(dataset: str, data_dir: str | os.PathLike | None, split: str, *, label_mode: str = "fine",
               download: bool = False) -> Pair:
    """Images (N, 32, 32, 3) uint8 and labels (N,) int32 of ``split`` ('train' or 'test').

    ``dataset`` is 'cifar10' or 'cifar100'; ``label_mode`` 'fine' (the 100 classes) or
    'coarse' (the 20 superclasses) for CIFAR-100. The formats are tried in the order of
    the module docstring. DatasetError (one line) when no copy is found or a file is bad.
    """
    layout = _layout(dataset, label_mode)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: use 'train' or 'test' (search_split makes 'valid')")
    root = _default_root() if data_dir is None else Path(data_dir).expanduser()
    formats = ((layout.py_dir, layout.py_files, layout.py_archive, read_python_batch),
               (layout.bin_dir, layout.bin_files, layout.bin_archive, read_binary_batch))
    for subdir, files, archive, read in formats:
        folder = _batch_folder(root, subdir, files)
        if folder is not None:
            parts = [read(p, dataset, label_mode) for p in _split_files(folder, files[split], archive)]
            return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    version = _tfds_version(root, dataset, split, layout)
    if version is None and download:
        _prepare_tfds(root, dataset, layout)
        version = _tfds_version(root, dataset, split, layout)
    if version is None:
        raise _not_found(root, split, layout)
    return _read_tfds(root, dataset, version, split, label_mode, layout)


def _names(values: object, where: Path, count: int) -> tuple[str, ...]:
    if not isinstance(values, list | tuple) or len(values) != count:
        raise DatasetError(f"{where}: expected a list of {count} class names, found {values!r:.80}")
    return tuple(v.decode("latin1") if isinstance(v, bytes) else str(v) for v in values)


def cifar_class_names(dataset: str, data_dir: str | os.PathLike | None = None,
                      label_mode: str = "fine") -> tuple[str, ...]:
    """Class names in label order: from the meta file of the python or binary folder under
    ``data_dir`` when there is one, else the published lists (tfds copies keep no meta file)."""
    layout = _layout(dataset, label_mode)
    count = len(layout.classes[label_mode])
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        folder = _batch_folder(root, layout.py_dir, layout.py_files)
        if folder is not None and (folder / layout.py_meta).is_file():
            meta = _read_pickle(folder / layout.py_meta, layout)
            return _names(meta.get(layout.names_key[label_mode]), folder / layout.py_meta, count)
        folder = _batch_folder(root, layout.bin_dir, layout.bin_files)
        if folder is not None and (folder / layout.names_file[label_mode]).is_file():
            path = folder / layout.names_file[label_mode]
            lines = [s.strip() for s in path.read_text(encoding="latin1").splitlines()]
            return _names([s for s in lines if s], path, count)
    return layout.classes[label_mode]


def search_split(images: np.ndarray, labels: np.ndarray, num_valid: int = 5000) -> tuple[Pair, Pair]:
    """((train images, labels), (valid images, labels)): the last ``num_valid`` training images
    are the validation set, as NAO-WS (TF) ``read_data(num_valids=5000)`` does. Views, no copy."""
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    if not 0 < num_valid < len(images):
        raise ValueError(f"num_valid={num_valid} must be between 1 and {len(images) - 1} "
                         f"(there are {len(images)} training images)")
    cut = len(images) - num_valid
    return (images[:cut], labels[:cut]), (images[cut:], labels[cut:])
