"""Table lookup: NAS-Bench-201 (validation accuracy to search on, test accuracy to report), and the
``table`` evaluator of a run (NB201, or NB101 through ``nao.evaluators.nb101_table``)."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np

from nao.controller import PRESETS
from nao.data.nasbench import NB101_SAMPLE, Nb201Table, load_nb201_table
from nao.evaluators.base import Evaluation, Evaluator, EvaluatorKind, EvaluatorSetup, SearchPreset
from nao.evaluators.nb101_table import nb101_table_space_and_evaluator
from nao.search import SearchSettings
from nao.spaces import get_space
from nao.strategies.nao import NAO_PRESETS

if TYPE_CHECKING:
    from nao.experiment import ExperimentConfig

TABLE_SPACES = ("nb201", "nb101")


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


def table_presets(space: str) -> dict[str, SearchPreset]:
    """Per controller preset (paper, default, smoke): 150 queries and that preset's NAO."""
    if space not in TABLE_SPACES:
        raise ValueError(f"space {space!r} has no tabular evaluator here; use space='nb201' or 'nb101' "
                         "(or evaluator='supernet' for ptb_ws and cifar_ws)")
    return {name: SearchPreset(SearchSettings(queries=150), PRESETS[name], NAO_PRESETS[name])
            for name in ("paper", "default", "smoke")}


def build_table(config: ExperimentConfig) -> EvaluatorSetup:
    """The space, its table evaluator (shared by every search), and facts about the table (the optimum)."""
    if config.space == "nb201":
        table = load_nb201_table(config.benchmark_file, config.valid_key, config.test_key)
        best = int(np.argmax(table.valid))
        facts = {"table": table.path, "cells": len(table.valid), "optimum_valid": float(table.valid.max()),
                 "optimum_test": float(table.test.max()), "test_of_best_valid": float(table.test[best])}
        evaluator = Nb201TableEvaluator(table)
        return EvaluatorSetup(get_space("nb201"), facts, lambda seed: evaluator)
    # Only the shipped 292-cell NB101 sample exists here, so the search runs over those cells.
    if config.benchmark_file is not None:
        raise ValueError("benchmark_file is for NB201 tables; space='nb101' uses the shipped sample")
    space, nb101 = nb101_table_space_and_evaluator()
    facts = {"table": str(NB101_SAMPLE), "cells": len(nb101),
             "optimum_valid": max(nb101.lookup(a)[0] for a in nb101.archs)}
    return EvaluatorSetup(space, facts, lambda seed: nb101)


TABLE = EvaluatorKind(presets=table_presets, default_preset="default", build=build_table)
