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


def _load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    path = Path(path)
    if not path.is_file():
        raise BenchmarkFileError(f"benchmark file {path} does not exist: pass --benchmark_file=PATH "
                                 f"to an npz table, or leave it unset for the shipped {NB201_CIFAR10.name}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise BenchmarkFileError(f"benchmark file {path} is not a readable npz ({err}): "
                                 "re-create or re-download it") from err


def load_nb201_table(path: str | os.PathLike | None = None, valid_key: str = "cifar10_valid_acc",
                     test_key: str = "cifar10_test_acc") -> Nb201Table:
    """Load and check an NB201 table; BenchmarkFileError says what is wrong and how to fix it."""
    path = NB201_CIFAR10 if path is None else Path(path)
    arrays = _load_npz(path)
    if "ops" not in arrays:
        raise BenchmarkFileError(f"{path} has no 'ops' array: an NB201 table needs ops (15625, 6) uint8")
    ops = arrays["ops"]
    if ops.shape != (NB201_SIZE, 6) or ops.dtype.kind not in "iu":
        raise BenchmarkFileError(f"{path}: 'ops' has shape {ops.shape} and dtype {ops.dtype}, "
                                 f"expected ({NB201_SIZE}, 6) op ids in 0..4")
    if ops.min() < 0 or ops.max() > 4:
        raise BenchmarkFileError(f"{path}: 'ops' holds op ids from {ops.min()} to {ops.max()}, "
                                 f"expected ({NB201_SIZE}, 6) op ids in 0..4")
    floats = sorted(k for k, v in arrays.items() if v.shape == (NB201_SIZE,) and v.dtype.kind == "f")
    picked = {}
    for flag, key in (("--valid_key", valid_key), ("--test_key", test_key)):
        if key not in arrays:
            raise BenchmarkFileError(f"{path} has no array {key!r}: set {flag} to one of {', '.join(floats)}")
        if key not in floats:
            raise BenchmarkFileError(f"{path}: {key!r} has shape {arrays[key].shape} and dtype "
                                     f"{arrays[key].dtype}, expected ({NB201_SIZE},) floats")
        values = arrays[key].astype(np.float64)
        if not np.isfinite(values).all():
            raise BenchmarkFileError(f"{path}: {key!r} holds NaN or inf values; fix the table")
        picked[key] = values
    return Nb201Table(str(path), ops.astype(np.int64), picked[valid_key], picked[test_key],
                      valid_key, test_key)
