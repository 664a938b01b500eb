"""Table lookup on NAS-Bench-201: validation accuracy to search on, test accuracy to report."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

from nao.data.nasbench import Nb201Table
from nao.evaluators.base import Evaluation, Evaluator


class Nb201TableEvaluator(Evaluator):
    """Looks architectures (NB201 op tuples) up in a loaded table."""

    def __init__(self, table: Nb201Table):
        self.table = table
        self._row = table.index_of()

    def index(self, arch: tuple[int, ...]) -> int:
        return self._row[tuple(arch)]

    def evaluate(self, archs: Sequence[tuple[int, ...]]) -> Iterator[tuple[int, Evaluation]]:
        for position, arch in enumerate(archs):
            start = time.perf_counter()
            row = self._row[tuple(arch)]
            yield position, Evaluation(float(self.table.valid[row]), float(self.table.test[row]),
                                       time.perf_counter() - start)
