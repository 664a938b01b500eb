"""Readers for the tabular NAS benchmarks in the npz layout of ``data/nasbench/``.

The shipped NAS-Bench-201 table (CIFAR-10, 200 epochs) is the default, so a
search runs offline. Any other NB201 table in the same layout can be passed:
``ops`` (15625, 6) uint8 in the official edge order, plus float arrays named by
the caller for the search signal and the reported metric.
"""

from __future__ import annotations

import dataclasses
import os
import zipfile
from pathlib import Path

import numpy as np

NASBENCH_DIR = Path(__file__).resolve().parent / "nasbench"
NB201_CIFAR10 = NASBENCH_DIR / "nb201_cifar10_200ep.npz"
NB101_SAMPLE = NASBENCH_DIR / "nb101_naslib_zc500.npz"
NB201_SIZE = 15625


class BenchmarkFileError(ValueError):
    """A benchmark table that is missing, unreadable or of the wrong layout."""


@dataclasses.dataclass(frozen=True)
class Nb201Table:
    """Per-architecture results; row i is NAS-Bench-201 index i."""

    path: str
    ops: np.ndarray  # (15625, 6) op ids in the official edge order
    valid: np.ndarray  # search signal, higher is better
    test: np.ndarray  # reported only
    valid_key: str
    test_key: str

    def index_of(self) -> dict[tuple[int, ...], int]:
        return {tuple(int(o) for o in row): i for i, row in enumerate(self.ops)}


def read_npz(path: str | os.PathLike, label: str, shipped: Path) -> dict[str, np.ndarray]:
    """All arrays of an npz table; BenchmarkFileError (one line, with the fix) if it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise BenchmarkFileError(f"{label} {path} does not exist: pass --benchmark_file=PATH to an npz "
                                 f"table, or leave it unset for the shipped {shipped.name}")
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise BenchmarkFileError(f"{label} {path} is a single .npy array, not an npz: save the table "
                                     "with numpy.savez (see data/nasbench/README.md)")
        with loaded:
            return {k: loaded[k] for k in loaded.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        if isinstance(err, BenchmarkFileError):
            raise
        reason = " ".join(str(err).split())  # one line
        raise BenchmarkFileError(f"{label} {path} is not a readable npz ({reason}): "
                                 "re-create or re-download it") from err


def pick_metrics(label: str, path: str | os.PathLike, arrays: dict[str, np.ndarray], rows: int,
                 keys: dict[str, str | None]) -> dict[str, np.ndarray]:
    """The float arrays named by ``keys`` ({flag: array name or None}), checked for shape and NaN."""
    floats = sorted(k for k, v in arrays.items() if v.shape == (rows,) and v.dtype.kind == "f")
    picked = {}
    for flag, key in keys.items():
        if key is None:
            continue
        if key not in floats:
            found = (f"has shape {arrays[key].shape} and dtype {arrays[key].dtype}, not ({rows},) floats"
                     if key in arrays else "does not exist")
            raise BenchmarkFileError(f"{label} {path}: array {key!r} {found}; set {flag} to one of "
                                     f"{', '.join(floats) or '(none: the table has no float arrays)'}")
        values = arrays[key].astype(np.float64)
        if not np.isfinite(values).all():
            raise BenchmarkFileError(f"{label} {path}: {key!r} holds NaN or inf values; fix the table")
        picked[key] = values
    return picked


def load_nb201_table(path: str | os.PathLike | None = None, valid_key: str = "cifar10_valid_acc",
                     test_key: str = "cifar10_test_acc") -> Nb201Table:
    """Load and check an NB201 table; BenchmarkFileError says what is wrong and how to fix it."""
    path = NB201_CIFAR10 if path is None else Path(path)
    arrays = read_npz(path, "NB201 table", NB201_CIFAR10)
    if "ops" not in arrays:
        raise BenchmarkFileError(f"{path} has no 'ops' array: an NB201 table needs ops (15625, 6) uint8")
    ops = arrays["ops"]
    if ops.shape != (NB201_SIZE, 6) or ops.dtype.kind not in "iu":
        raise BenchmarkFileError(f"{path}: 'ops' has shape {ops.shape} and dtype {ops.dtype}, "
                                 f"expected ({NB201_SIZE}, 6) op ids in 0..4")
    if ops.min() < 0 or ops.max() > 4:
        raise BenchmarkFileError(f"{path}: 'ops' holds op ids from {ops.min()} to {ops.max()}, "
                                 f"expected ({NB201_SIZE}, 6) op ids in 0..4")
    codes = ops.astype(np.int64) @ (5 ** np.arange(6))  # each cell's number in base 5: all distinct
    if len(np.unique(codes)) != NB201_SIZE:
        first = np.flatnonzero(np.bincount(codes, minlength=NB201_SIZE) > 1)[0]
        rows = np.flatnonzero(codes == first)
        raise BenchmarkFileError(f"{path}: 'ops' rows {rows[0]} and {rows[1]} are the same cell, so "
                                 f"another is missing; each of the {NB201_SIZE} cells must be there once: "
                                 "fix the table")
    picked = pick_metrics("NB201 table", path, arrays, NB201_SIZE,
                          {"--valid_key": valid_key, "--test_key": test_key})
    return Nb201Table(str(path), ops.astype(np.int64), picked[valid_key], picked[test_key],
                      valid_key, test_key)
