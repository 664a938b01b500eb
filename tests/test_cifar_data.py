"""CIFAR readers, the search split, augmentation and the host input pipeline.

The readers run on files written here in the official layouts (Python 2 pickles as the
official batches are, binary records) and on the shipped real fragments in
tests/fixtures/cifar/ (see its README). Tests marked by ``SHARED`` also compare with the
project's copy of the real files when ../shared (beside the project root) is present.
"""

from __future__ import annotations

import io
import pickle
import pickletools
import socket
import struct
import sys
import threading
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nao.data.cifar import (
    CHANNEL_STATS,
    CIFAR10_CLASSES,
    CIFAR100_CLASSES,
    CIFAR100_COARSE_CLASSES,
    cifar_class_names,
    load_cifar,
    read_binary_batch,
    read_python_batch,
    search_split,
)
from nao.data.errors import DatasetError
from nao.data.image_input import (
    augment,
    batches_per_epoch,
    cutout,
    epoch_batches,
    normalize,
    prefetch,
    random_crop,
    random_flip,
)
from nao.models.parallel import shard

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "cifar"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"  # ../shared beside the project
FIXTURE_COUNT = 16
# First labels of the real batches: frog truck truck deer ... / cat ship ship airplane ... (the known order).
REAL_TRAIN_LABELS = [6, 9, 9, 4, 1, 1, 2, 7, 8, 3, 4, 7, 7, 2, 9, 9]
REAL_TEST_LABELS = [3, 8, 8, 0, 6, 6, 1, 6, 3, 1, 0, 9, 5, 7, 9, 8]


# ---------------------------------------------------------------- writers of the official formats

def py2_pickle(obj) -> bytes:
    """Protocol-2 pickle as Python 2 cPickle with numpy 1 wrote the official batches: str keys
    as byte strings, ndarrays through numpy.core.multiarray._reconstruct."""
    out = bytearray(b"\x80\x02")

    def write(o):
        if isinstance(o, dict):
            out.extend(b"}(")
            for k, v in o.items():
                write(k)
                write(v)
            out.extend(b"u")
        elif isinstance(o, list):
            out.extend(b"](")
            for v in o:
                write(v)
            out.extend(b"e")
        elif isinstance(o, bytes):
            out.extend((b"U" + bytes([len(o)]) if len(o) < 256 else b"T" + struct.pack("<i", len(o))) + o)
        elif isinstance(o, int):
            out.extend(b"K" + bytes([o]) if 0 <= o < 256 else b"J" + struct.pack("<i", o))
        elif isinstance(o, np.ndarray):  # 2-D uint8, the only array in the batches
            assert o.dtype == np.uint8 and o.ndim == 2
            out.extend(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R(K\x01")
            write(o.shape[0])
            write(o.shape[1])
            out.extend(b"\x86cnumpy\ndtype\nU\x02u1K\x00K\x01\x87R(K\x03U\x01|NNNJ\xff\xff\xff\xff"
                       b"J\xff\xff\xff\xffK\x00tb\x89")
            write(o.tobytes())
            out.extend(b"tb")
        else:
            raise TypeError(type(o))

    write(obj)
    out.extend(b".")
    return bytes(out)


def rows(images: np.ndarray) -> np.ndarray:
    """NHWC -> the official (N, 3072) rows: all red, then green, then blue."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), -1)


def write_python_batch(path: Path, images, labels, label_key=b"labels", coarse=None, name=b"batch") -> None:
    batch = {b"batch_label": name, label_key: [int(v) for v in labels]}
    if coarse is not None:
        batch[b"coarse_labels"] = [int(v) for v in coarse]
    batch[b"data"] = rows(images)
    batch[b"filenames"] = [b"img_%d.png" % i for i in range(len(images))]
    path.write_bytes(py2_pickle(batch))


def write_binary_batch(path: Path, images, *label_columns) -> None:
    labels = np.stack(label_columns, axis=1).astype(np.uint8)
    path.write_bytes(np.concatenate([labels, rows(images)], axis=1).tobytes())


def fake_cifar10(root: Path, fmt: str, per_file: int = 3, seed: int = 0) -> dict:
    """A tiny CIFAR-10 in the official folder and file names; returns {split: (images, labels)}."""
    rng = np.random.default_rng(seed)
    folder = root / ("cifar-10-batches-py" if fmt == "py" else "cifar-10-batches-bin")
    folder.mkdir(parents=True)
    expected = {}
    for split, names in (("train", [f"data_batch_{i}" for i in range(1, 6)]), ("test", ["test_batch"])):
        images = rng.integers(0, 256, (per_file * len(names), 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, len(images)).astype(np.int32)
        for i, name in enumerate(names):
            part = slice(i * per_file, (i + 1) * per_file)
            if fmt == "py":
                write_python_batch(folder / name, images[part], labels[part])
            else:
                write_binary_batch(folder / f"{name}.bin", images[part], labels[part])
        expected[split] = (images, labels)
    if fmt == "py":
        (folder / "batches.meta").write_bytes(py2_pickle(
            {b"num_cases_per_batch": per_file, b"label_names": [c.encode() for c in CIFAR10_CLASSES],
             b"num_vis": 3072}))
    else:
        (folder / "batches.meta.txt").write_text("\n".join(CIFAR10_CLASSES) + "\n\n")
    return expected


def fake_cifar100(root: Path, fmt: str, n: int = 5, seed: int = 1) -> dict:
    """{split: (images, fine, coarse)} written as cifar-100-python/ or cifar-100-binary/."""
    rng = np.random.default_rng(seed)
    folder = root / ("cifar-100-python" if fmt == "py" else "cifar-100-binary")
    folder.mkdir(parents=True)
    expected = {}
    for split in ("train", "test"):
        images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        fine, coarse = rng.integers(0, 100, n), rng.integers(0, 20, n)
        if fmt == "py":
            write_python_batch(folder / split, images, fine, b"fine_labels", coarse)
        else:
            write_binary_batch(folder / f"{split}.bin", images, coarse, fine)
        expected[split] = (images, fine, coarse)
    if fmt == "py":
        (folder / "meta").write_bytes(py2_pickle(
            {b"fine_label_names": [c.encode() for c in CIFAR100_CLASSES],
             b"coarse_label_names": [c.encode() for c in CIFAR100_COARSE_CLASSES]}))
    else:
        (folder / "fine_label_names.txt").write_text("\n".join(CIFAR100_CLASSES) + "\n")
        (folder / "coarse_label_names.txt").write_text("\n".join(CIFAR100_COARSE_CLASSES) + "\n")
    return expected


# ---------------------------------------------------------------- readers on the official layouts

@pytest.mark.parametrize("fmt", ["py", "bin"])
def test_cifar10_layout(tmp_path, fmt):
    expected = fake_cifar10(tmp_path, fmt)
    for split in ("train", "test"):
        images, labels = load_cifar("cifar10", tmp_path, split)
        assert images.dtype == np.uint8 and images.shape == (len(expected[split][0]), 32, 32, 3)
        assert labels.dtype == np.int32 and images.flags.c_contiguous
        np.testing.assert_array_equal(images, expected[split][0])  # batch order kept, CHW -> HWC right
        np.testing.assert_array_equal(labels, expected[split][1])
    assert cifar_class_names("cifar10", tmp_path) == CIFAR10_CLASSES
    folder = next(tmp_path.iterdir())  # data_dir may be the batch folder itself
    np.testing.assert_array_equal(load_cifar("cifar10", folder, "test")[0], expected["test"][0])


@pytest.mark.parametrize("fmt", ["py", "bin"])
def test_cifar100_layout_fine_and_coarse(tmp_path, fmt):
    expected = fake_cifar100(tmp_path, fmt)
    images, fine = load_cifar("cifar100", tmp_path, "test")
    _, coarse = load_cifar("cifar100", tmp_path, "test", label_mode="coarse")
    np.testing.assert_array_equal(images, expected["test"][0])
    np.testing.assert_array_equal(fine, expected["test"][1])
    np.testing.assert_array_equal(coarse, expected["test"][2])
    assert len(load_cifar("cifar100", tmp_path, "train")[0]) == 5
    assert cifar_class_names("cifar100", tmp_path) == CIFAR100_CLASSES
    assert cifar_class_names("cifar100", tmp_path, "coarse") == CIFAR100_COARSE_CLASSES


def test_python_batches_come_before_binary(tmp_path):
    from_py = fake_cifar10(tmp_path, "py", seed=0)
    fake_cifar10(tmp_path, "bin", seed=1)
    np.testing.assert_array_equal(load_cifar("cifar10", tmp_path, "test")[1], from_py["test"][1])


def test_class_names_and_stats_without_files(tmp_path):
    assert cifar_class_names("cifar10") == CIFAR10_CLASSES
    assert cifar_class_names("cifar100", tmp_path, "coarse") == CIFAR100_COARSE_CLASSES
    assert len(set(CIFAR100_CLASSES)) == 100 and len(set(CIFAR100_COARSE_CLASSES)) == 20
    for mean, std in CHANNEL_STATS.values():
        assert len(mean) == len(std) == 3
        assert all(0.4 < m < 0.52 for m in mean) and all(0.2 < s < 0.3 for s in std)
    with pytest.raises(ValueError, match="coarse"):
        load_cifar("cifar10", tmp_path, "test", label_mode="coarse")
    with pytest.raises(ValueError, match="valid"):
        load_cifar("cifar10", tmp_path, "valid")


# ---------------------------------------------------------------- the shipped real fragments

def test_real_fragments_python_and_binary_agree():
    py, binary = FIXTURES / "cifar-10-batches-py", FIXTURES / "cifar-10-batches-bin"
    images, labels = load_cifar("cifar10", FIXTURES, "test")  # python batches come first
    assert images.shape == (FIXTURE_COUNT, 32, 32, 3) and labels.tolist() == REAL_TEST_LABELS
    bin_images, bin_labels = load_cifar("cifar10", binary, "test")
    np.testing.assert_array_equal(bin_images, images)
    np.testing.assert_array_equal(bin_labels, labels)
    train, train_labels = read_python_batch(py / "data_batch_1")
    assert train_labels.tolist() == REAL_TRAIN_LABELS
    np.testing.assert_array_equal(read_binary_batch(binary / "data_batch_1.bin")[0], train)
    assert [CIFAR10_CLASSES[i] for i in REAL_TEST_LABELS[:4]] == ["cat", "ship", "ship", "airplane"]
    # Pixel layout: record byte c*1024 + y*32 + x is channel c of pixel (y, x).
    record = np.fromfile(binary / "test_batch.bin", np.uint8, count=3073)[1:]
    assert images[0, 0, :3, 0].tolist() == [158, 159, 165]  # the first bytes of the real test batch
    for y, x, c in [(0, 0, 0), (0, 0, 1), (5, 17, 2), (31, 31, 1)]:
        assert images[0, y, x, c] == record[c * 1024 + y * 32 + x]


def test_real_meta_class_names():
    assert cifar_class_names("cifar10", FIXTURES) == CIFAR10_CLASSES  # the official batches.meta, verbatim
    assert cifar_class_names("cifar10", FIXTURES / "cifar-10-batches-bin") == CIFAR10_CLASSES
    assert CIFAR10_CLASSES[:2] == ("airplane", "automobile")


def real_prefix(path: Path, count: int) -> tuple[bytes, list[int], np.ndarray]:
    """(batch_label, first labels, first images as official rows) of a truncated official batch,
    read opcode by opcode because pickle.load cannot read a cut file."""
    data = path.read_bytes()
    strings, labels, key = [], [], None
    try:
        for op, arg, _ in pickletools.genops(io.BytesIO(data)):
            if op.name == "SHORT_BINSTRING":
                key = arg
                strings.append(arg)
            elif op.name == "BININT1" and key == "labels":
                labels.append(arg)
    except ValueError:  # genops stops at the cut inside the image bytes
        pass
    start = data.index(b"\x89T" + struct.pack("<i", 10000 * 3072)) + 6
    images = np.frombuffer(data, np.uint8, count=count * 3072, offset=start).reshape(count, 3072)
    return strings[1].encode("latin1"), labels, images


def make_fixture(shared: Path, out: Path, count: int = FIXTURE_COUNT) -> None:
    """Write tests/fixtures/cifar from the real truncated batches (see the README there)."""
    py, binary = out / "cifar-10-batches-py", out / "cifar-10-batches-bin"
    py.mkdir(parents=True, exist_ok=True)
    binary.mkdir(parents=True, exist_ok=True)
    for name in ("data_batch_1", "test_batch"):
        batch_label, labels, data = real_prefix(shared / f"{name}.TRUNCATED_first524288bytes", count)
        # The official key order; 'filenames' comes after 'data' in the real file, past the cut.
        batch = {b"batch_label": batch_label, b"labels": labels[:count], b"data": data}
        (py / name).write_bytes(py2_pickle(batch))
        (binary / f"{name}.bin").write_bytes(
            np.concatenate([np.asarray(labels[:count], np.uint8)[:, None], data], axis=1).tobytes())
    (py / "batches.meta").write_bytes((shared / "batches.meta").read_bytes())
    (binary / "batches.meta.txt").write_text("\n".join(CIFAR10_CLASSES) + "\n")


@pytest.mark.skipif(not SHARED.is_dir(), reason="needs the project's copy of the real CIFAR-10 files")
def test_fixture_matches_the_real_files(tmp_path):
    make_fixture(SHARED, tmp_path)
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert path.read_bytes() == (FIXTURES / path.relative_to(tmp_path)).read_bytes(), path
    npz = np.load(SHARED / "cifar10_labels_full_images_first164.npz")
    images, labels = load_cifar("cifar10", FIXTURES, "test")
    np.testing.assert_array_equal(rows(images), npz["test_images_prefix"][:FIXTURE_COUNT])
    np.testing.assert_array_equal(labels, npz["test_labels"][:FIXTURE_COUNT])
    cut = SHARED / "test_batch.TRUNCATED_first524288bytes"
    with pytest.raises(DatasetError, match="truncated") as err:
        read_python_batch(cut)
    assert str(cut) in str(err.value) and "\n" not in str(err.value)


# ---------------------------------------------------------------- missing and broken data

@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("tried to use the network")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_missing_data_is_one_fast_line(tmp_path, no_network, dataset):
    start = time.perf_counter()
    for root in (tmp_path, tmp_path / "absent"):
        with pytest.raises(DatasetError) as err:
            load_cifar(dataset, root, "train")
        message = str(err.value)
        assert "\n" not in message and "https://www.cs.toronto.edu/~kriz/cifar.html" in message
        assert ("cifar-10-batches-py" if dataset == "cifar10" else "cifar-100-python") in message
        assert "download=True" in message
    assert "does not exist" in message
    assert time.perf_counter() - start < 2


def test_missing_data_points_at_an_unextracted_archive(tmp_path, no_network):
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"\x1f\x8b")
    with pytest.raises(DatasetError, match="cifar-10-python.tar.gz is there: extract it"):
        load_cifar("cifar10", tmp_path, "test")


def test_missing_batch_file_is_named(tmp_path):
    fake_cifar10(tmp_path, "py")
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DatasetError, match="lacks data_batch_3"):
        load_cifar("cifar10", tmp_path, "train")
    assert len(load_cifar("cifar10", tmp_path, "test")[0]) == 3  # the test split is still there


def test_truncated_pickle(tmp_path):
    fake_cifar10(tmp_path, "py")
    path = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(DatasetError, match="truncated or corrupt") as err:
        load_cifar("cifar10", tmp_path, "train")
    assert str(path) in str(err.value) and "\n" not in str(err.value)


class Exploit:
    def __reduce__(self):
        return (print, ("this must not run",))


def test_pickle_cannot_run_code(tmp_path):
    path = tmp_path / "test_batch"
    path.write_bytes(pickle.dumps(Exploit(), protocol=2))
    with pytest.raises(DatasetError, match="refusing to load"):
        read_python_batch(path)


@pytest.mark.parametrize("extra", [5, -3072])
def test_binary_of_wrong_size(tmp_path, extra):
    fake_cifar10(tmp_path, "bin")
    path = tmp_path / "cifar-10-batches-bin" / "test_batch.bin"
    data = path.read_bytes()
    path.write_bytes(data + b"\0" * extra if extra > 0 else data[:extra])
    with pytest.raises(DatasetError, match="not a multiple of the 3073-byte") as err:
        load_cifar("cifar10", tmp_path, "test")
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_wrong_shapes_and_labels(tmp_path):
    images = np.zeros((2, 32, 32, 3), np.uint8)
    cases = {
        "shape": {b"labels": [0, 1], b"data": np.zeros((2, 3000), np.uint8)},
        "missing": {b"labels": [0, 1]},
        "count": {b"labels": [0, 1, 2], b"data": rows(images)},
        "range": {b"labels": [0, 10], b"data": rows(images)},
        "list": [1, 2],
    }
    messages = {"shape": "expected uint8 of shape", "missing": "no data entry", "count": "labels of shape",
                "range": "labels range from 0 to 10", "list": "not the dict"}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(py2_pickle(content) if name != "list" else pickle.dumps(content))
        with pytest.raises(DatasetError, match=messages[name]):
            read_python_batch(tmp_path / name)
    write_binary_batch(tmp_path / "coarse.bin", images, np.array([3, 25]), np.array([1, 2]))
    with pytest.raises(DatasetError, match="labels range from 3 to 25, but CIFAR-100 has 20"):
        read_binary_batch(tmp_path / "coarse.bin", "cifar100", "coarse")


# ---------------------------------------------------------------- tensorflow-datasets

def test_tfds_unprepared_never_downloads(tmp_path, no_network, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # importing it would fail the test
    (tmp_path / "cifar10" / "incomplete.ABC_3.0.2").mkdir(parents=True)
    start = time.perf_counter()
    with pytest.raises(DatasetError, match="no CIFAR-10 test data"):
        load_cifar("cifar10", tmp_path, "test")
    version = tmp_path / "cifar10" / "3.0.2"
    version.mkdir()
    (version / "cifar10-test.tfrecord-00000-of-00001").write_bytes(b"")
    with pytest.raises(DatasetError, match="prepared as tfrecord"):
        load_cifar("cifar10", tmp_path, "test")
    assert time.perf_counter() - start < 2


def test_tfds_download_then_read_restores_official_order(tmp_path, no_network, monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    from PIL import Image
    from tensorflow_datasets.image_classification import cifar

    rng = np.random.default_rng(3)
    data = {s: (rng.integers(0, 256, (7, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 7))
            for s in ("train", "test")}

    def png(image):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        return buffer.getvalue()

    def examples(split):
        # What the real builder yields from the downloaded files (images given as PNG bytes,
        # since encoding arrays would need TensorFlow).
        images, labels = data[split]
        for i in range(len(images)):
            yield i, {"id": f"{split}_{i:05d}", "image": png(images[i]), "label": int(labels[i])}

    monkeypatch.setattr(cifar.Cifar10, "_split_generators", lambda self, dl_manager: {
        "train": examples("train"), "test": examples("test")})
    images, labels = load_cifar("cifar10", tmp_path, "test", download=True)
    assert any(tmp_path.glob("cifar10/3.0.2/cifar10-test.array_record-*"))
    np.testing.assert_array_equal(images, data["test"][0])
    np.testing.assert_array_equal(labels, data["test"][1])
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", None)  # reading must not prepare
    images, labels = load_cifar("cifar10", tmp_path, "train")
    np.testing.assert_array_equal(images, data["train"][0])
    assert labels.dtype == np.int32 and labels.tolist() == data["train"][1].tolist()


def test_tfds_prepare_failure_is_one_line(tmp_path, no_network, monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")

    def without_tensorflow(self, **kwargs):
        raise ModuleNotFoundError("No module named 'tensorflow'")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", without_tensorflow)
    with pytest.raises(DatasetError, match="needs network access and TensorFlow") as err:
        load_cifar("cifar100", tmp_path, "train", download=True)
    assert "\n" not in str(err.value) and "cifar-100-python.tar.gz" in str(err.value)


# ---------------------------------------------------------------- the search split

def test_search_split_takes_the_last_images():
    images, labels = np.arange(20).reshape(10, 2), np.arange(10)
    (tx, ty), (vx, vy) = search_split(images, labels, num_valid=3)
    assert ty.tolist() == list(range(7)) and vy.tolist() == [7, 8, 9]
    np.testing.assert_array_equal(vx, images[7:])
    assert np.shares_memory(tx, images)  # views: no copy of the 50k images
    for bad in (0, 10):
        with pytest.raises(ValueError, match="num_valid"):
            search_split(images, labels, num_valid=bad)


# ---------------------------------------------------------------- augmentation

def test_normalize():
    images = np.random.default_rng(0).integers(0, 256, (2, 4, 4, 3), dtype=np.uint8)
    mean, std = CHANNEL_STATS["cifar10"]
    out = normalize(jnp.asarray(images), mean, std)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, (images / 255.0 - np.array(mean)) / np.array(std), rtol=1e-5, atol=1e-5)
    assert normalize(jnp.asarray(images), mean, std, jnp.bfloat16).dtype == jnp.bfloat16


def test_crop_is_a_window_of_the_padded_image():
    n = 64
    images = jnp.asarray(np.random.default_rng(0).integers(1, 256, (n, 32, 32, 3), dtype=np.uint8))
    out = np.asarray(random_crop(jax.random.key(0), images, padding=4))
    padded = np.pad(np.asarray(images), ((0, 0), (4, 4), (4, 4), (0, 0)))
    offsets = set()
    for i in range(n):
        found = [(y, x) for y in range(9) for x in range(9)
                 if np.array_equal(out[i], padded[i, y:y + 32, x:x + 32])]
        assert len(found) == 1
        offsets.add(found[0])
    assert len(offsets) > 20  # offsets drawn per image


def test_flip_mirrors_some_images():
    images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (32, 32, 32, 3), dtype=np.uint8))
    out = np.asarray(random_flip(jax.random.key(1), images))
    flipped = [np.array_equal(o, np.asarray(x)[:, ::-1]) for o, x in zip(out, images)]
    kept = [np.array_equal(o, np.asarray(x)) for o, x in zip(out, images)]
    assert all(f != k for f, k in zip(flipped, kept)) and 0 < sum(flipped) < 32


def test_cutout_zeroes_a_clipped_square():
    n = 200
    out = np.asarray(cutout(jax.random.key(2), jnp.ones((n, 32, 32, 3)), size=16))
    sides = []
    for image in out:
        ys, xs = np.nonzero(image[..., 0] == 0)
        hole = np.zeros((32, 32), bool)
        hole[ys.min():ys.max() + 1, xs.min():xs.max() + 1] = True
        assert np.array_equal(hole, image[..., 0] == 0) and (image == 0).all(-1).sum() == hole.sum()
        sides.append((ys.max() - ys.min() + 1, xs.max() - xs.min() + 1))
    assert max(max(s) for s in sides) == 16 and (16, 16) in sides  # full square when inside
    assert min(min(s) for s in sides) < 16  # clipped at the borders
    assert np.array_equal(cutout(jax.random.key(2), jnp.ones((2, 8, 8, 3)), size=0), np.ones((2, 8, 8, 3)))


def test_augment_pipeline():
    images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8))
    mean, std = CHANNEL_STATS["cifar10"]
    run = jax.jit(augment, static_argnames=("padding", "flip", "cutout_size", "dtype"))
    out = run(jax.random.key(0), images, mean, std)
    assert out.shape == (8, 32, 32, 3) and out.dtype == jnp.float32
    np.testing.assert_array_equal(out, run(jax.random.key(0), images, mean, std))  # same key, same batch
    np.testing.assert_allclose(out, augment(jax.random.key(0), images, mean, std), atol=1e-5)
    assert not np.array_equal(out, run(jax.random.key(1), images, mean, std))
    # Cutout after normalisation: each image has a block of exact zeros (the mean colour).
    assert ((np.asarray(out) == 0).all(-1).sum(axis=(1, 2)) >= 64).all()
    plain = augment(jax.random.key(0), images, mean, std, padding=0, flip=False, cutout_size=0)
    np.testing.assert_allclose(plain, normalize(images, mean, std), atol=1e-6)


# ---------------------------------------------------------------- host pipeline

def test_epoch_batches_order_and_coverage():
    images, labels = np.arange(100) * 10, np.arange(100)
    first = [y.tolist() for _, y in epoch_batches(images, labels, 16, seed=7, epoch=3)]
    assert first == [y.tolist() for _, y in epoch_batches(images, labels, 16, seed=7, epoch=3)]
    assert first != [y.tolist() for _, y in epoch_batches(images, labels, 16, seed=7, epoch=4)]
    assert first != [y.tolist() for _, y in epoch_batches(images, labels, 16, seed=8, epoch=3)]
    assert len(first) == 6 == batches_per_epoch(100, 16) and all(len(b) == 16 for b in first)
    assert len({v for b in first for v in b}) == 96  # no repeats
    for x, y in epoch_batches(images, labels, 16, seed=7, epoch=3):
        np.testing.assert_array_equal(x, y * 10)  # images and labels stay paired
    full = [y for _, y in epoch_batches(images, labels, 16, seed=7, epoch=3, drop_remainder=False)]
    assert len(full) == 7 == batches_per_epoch(100, 16, False) and len(full[-1]) == 4
    assert sorted(np.concatenate(full).tolist()) == list(range(100))
    resumed = [y.tolist() for _, y in epoch_batches(images, labels, 16, seed=7, epoch=3, start_batch=4)]
    assert resumed == first[4:]
    ordered = [y for _, y in epoch_batches(images, labels, 30, 0, 0, False, shuffle=False)]
    assert np.concatenate(ordered).tolist() == list(range(100))
    with pytest.raises(ValueError, match="batch_size=200"):
        next(epoch_batches(images, labels, 200, 0, 0))


def test_prefetch_keeps_order_and_raises_producer_errors():
    assert list(prefetch(iter(range(50)), size=3)) == list(range(50))

    def failing():
        yield from range(3)
        raise OSError("disk gone")

    got = []
    with pytest.raises(OSError, match="disk gone"):
        for item in prefetch(failing()):
            got.append(item)
    assert got == [0, 1, 2]


def test_prefetch_stops_when_the_consumer_leaves():
    produced = []

    def endless():
        while True:
            produced.append(len(produced))
            yield produced[-1]

    items = prefetch(endless(), size=2)
    assert next(items) == 0
    items.close()
    time.sleep(0.3)
    count = len(produced)
    time.sleep(0.3)
    assert len(produced) == count <= 5
    assert not any(t.name == "prefetch" and t.is_alive() for t in threading.enumerate())


def test_shard_lays_a_global_batch_out_for_the_devices():
    batch = (np.zeros((8, 32, 32, 3)), np.arange(8))
    x, y = shard(batch, 4)
    assert x.shape == (4, 2, 32, 32, 3) and y.tolist() == [[0, 1], [2, 3], [4, 5], [6, 7]]
    n = jax.local_device_count()
    assert shard({"y": np.arange(3 * n)})["y"].shape == (n, 3)
    with pytest.raises(ValueError, match="batch of 8 cannot be split evenly over 3 devices"):
        shard(batch, 3)


if __name__ == "__main__":
    # Regenerate the shipped fixture: python tests/test_cifar_data.py ../shared/data/cifar10
    make_fixture(Path(sys.argv[1]), FIXTURES)
