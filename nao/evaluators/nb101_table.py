"""Table lookup on NAS-Bench-101, and a space restricted to the cells a table covers.

A table is an npz in the layout of ``data/nasbench/README.md``: pruned compact graphs
(``adjacency`` (N, 7, 7), ``ops`` (N, 7), ``num_vertices`` (N,), ``op_names``) plus float
arrays of per-row results. Cells are looked up by the official module hash (``space.key``),
so isomorphic graphs share an entry; a cell that occurs in several rows (NASLib's sample
holds duplicates, each with its own single-seed accuracy) scores the mean of its rows.

The shipped table (``NB101_SAMPLE``) covers only 292 of NB101's 423,624 cells and has no
test accuracy. A search over the whole space would mostly propose cells it lacks, so
``TableRestrictedSpace`` limits a space to the table's cells, and
``nb101_table_space_and_evaluator`` builds the pair that searches it.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Hashable, Iterator, Sequence
from pathlib import Path

import numpy as np

from nao.data.nasbench import NB101_SAMPLE, BenchmarkFileError, pick_metrics, read_npz
from nao.evaluators.base import Evaluation, Evaluator
from nao.spaces.base import InvalidArchitectureError
from nao.spaces.nasbench101 import NasBench101Space, Nb101Arch
from nao.spaces.restricted import TableRestrictedSpace

DEFAULT_VALID_KEY = "valid_acc_108ep_single_seed"
_GRAPH_ARRAYS = ("adjacency", "ops", "num_vertices", "op_names")
_LAYOUT = ("adjacency (N, 7, 7), ops (N, 7) and num_vertices (N,) integers and op_names strings, "
           "as in data/nasbench/README.md")


class NotInTableError(LookupError):
    """An architecture the table has no row for."""


@dataclasses.dataclass(frozen=True)
class Nb101Table:
    """Per-row results; ``archs[i]`` is row i's pruned cell."""

    path: str
    archs: tuple[Nb101Arch, ...]
    valid: np.ndarray  # (N,) float64, search signal, higher is better
    test: np.ndarray | None  # (N,) float64, reported only; None without a test key
    valid_key: str
    test_key: str | None


def load_nb101_table(path: str | os.PathLike | None = None, valid_key: str = DEFAULT_VALID_KEY,
                     test_key: str | None = None) -> Nb101Table:
    """Load and check an NB101 table; BenchmarkFileError says what is wrong and how to fix it."""
    path = NB101_SAMPLE if path is None else Path(path)
    arrays = read_npz(path, "NB101 table", NB101_SAMPLE)
    missing = [k for k in _GRAPH_ARRAYS if k not in arrays]
    if missing:
        raise BenchmarkFileError(f"NB101 table {path} has no {', '.join(missing)}: it needs {_LAYOUT}")
    adjacency, ops, num_vertices, op_names = (arrays[k] for k in _GRAPH_ARRAYS)
    rows = len(num_vertices) if num_vertices.ndim == 1 else -1
    if (rows < 1 or adjacency.ndim != 3 or adjacency.shape[0] != rows
            or adjacency.shape[1] != adjacency.shape[2] or ops.shape != adjacency.shape[:2]
            or any(a.dtype.kind not in "iu" for a in (adjacency, ops, num_vertices))
            or op_names.ndim != 1 or op_names.dtype.kind != "U"):
        raise BenchmarkFileError(
            f"NB101 table {path}: adjacency {adjacency.shape} {adjacency.dtype}, ops {ops.shape} "
            f"{ops.dtype}, num_vertices {num_vertices.shape} {num_vertices.dtype}, op_names "
            f"{op_names.shape} {op_names.dtype} do not fit: it needs {_LAYOUT}")
    names = [str(s) for s in op_names]
    archs = []
    for i in range(rows):
        n = int(num_vertices[i])
        try:
            if not 2 <= n <= adjacency.shape[1]:
                raise InvalidArchitectureError(f"num_vertices {n} is not in 2..{adjacency.shape[1]}")
            bad = [int(o) for o in ops[i, :n] if not 0 <= o < len(names)]
            if bad:
                raise InvalidArchitectureError(f"op id {bad[0]} does not index op_names {names}")
            archs.append(Nb101Arch.from_graph(adjacency[i, :n, :n], [names[o] for o in ops[i, :n]]))
        except InvalidArchitectureError as err:
            raise BenchmarkFileError(f"NB101 table {path}: row {i} is not a valid NB101 cell ({err}); "
                                     "fix or re-create the table") from None
    picked = pick_metrics("NB101 table", path, arrays, rows,
                          {"--valid_key": valid_key, "--test_key": test_key})
    return Nb101Table(str(path), tuple(archs), picked[valid_key],
                      None if test_key is None else picked[test_key], valid_key, test_key)


class Nb101TableEvaluator(Evaluator):
    """Looks NB101 cells up in an npz table by module hash; duplicate cells score their mean.

    ``archs`` holds one cell per distinct key, in the order of first appearance in the table.
    Evaluating a cell the table lacks raises NotInTableError.
    """

    def __init__(self, path: str | os.PathLike | None = NB101_SAMPLE, valid_key: str = DEFAULT_VALID_KEY,
                 test_key: str | None = None):
        self.table = load_nb101_table(path, valid_key, test_key)
        self.space = NasBench101Space()
        rows: dict[str, list[int]] = {}
        for i, arch in enumerate(self.table.archs):
            rows.setdefault(self.space.key(arch), []).append(i)
        self.archs: list[Nb101Arch] = [self.table.archs[group[0]] for group in rows.values()]
        test = self.table.test
        self._scores: dict[str, tuple[float, float | None]] = {
            key: (float(self.table.valid[group].mean()),
                  None if test is None else float(test[group].mean()))
            for key, group in rows.items()}

    def __len__(self) -> int:
        return len(self._scores)

    def __contains__(self, arch: Hashable) -> bool:
        return self.space.is_valid(arch) and self.space.key(arch) in self._scores

    def lookup(self, arch: Nb101Arch) -> tuple[float, float | None]:
        """(valid, test) of ``arch``, each the mean over its rows; test is None without a test key."""
        key = self.space.key(arch) if isinstance(arch, Nb101Arch) else None
        if key not in self._scores:
            text = self.space.to_string(arch) if isinstance(arch, Nb101Arch) else repr(arch)
            raise NotInTableError(f"cell {text} is not in NB101 table {self.table.path}: search a space "
                                  "restricted to the table (nb101_table_space_and_evaluator)")
        return self._scores[key]

    def evaluate(self, archs: Sequence[Nb101Arch]) -> Iterator[tuple[int, Evaluation]]:
        for position, arch in enumerate(archs):
            start = time.perf_counter()
            valid, test = self.lookup(arch)
            yield position, Evaluation(valid, test, time.perf_counter() - start)


def nb101_table_space_and_evaluator(path: str | os.PathLike | None = None,
                                    valid_key: str = DEFAULT_VALID_KEY, test_key: str | None = None,
                                    ) -> tuple[TableRestrictedSpace, Nb101TableEvaluator]:
    """NB101 restricted to a table's cells, and the evaluator that looks them up (``path`` None:
    the shipped ``NB101_SAMPLE``)."""
    evaluator = Nb101TableEvaluator(path, valid_key, test_key)
    return TableRestrictedSpace(evaluator.space, evaluator.archs), evaluator
