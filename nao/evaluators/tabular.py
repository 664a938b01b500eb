"""Table lookup: NAS-Bench-201 (validation accuracy to search on, test accuracy to report), and the
``table`` evaluator of a run (NB201, or NB101 through ``nao.evaluators.nb101_table``)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np

from nao.controller import PRESETS
from nao.data.nasbench import NB101_SAMPLE, Nb201Table, load_nb201_table
from nao.evaluators.base import Evaluation, Evaluator, EvaluatorKind, EvaluatorSetup, SearchPreset
from nao.evaluators.nb101_table import DEFAULT_VALID_KEY, nb101_table_space_and_evaluator
from nao.search import SearchSettings
from nao.spaces import SearchSpace, get_space
from nao.strategies.nao import NAO_PRESETS

if TYPE_CHECKING:
    from nao.experiment import ExperimentConfig

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
    if space not in TABLES:
        raise ValueError(f"space {space!r} has no tabular evaluator here; use space='nb201' or 'nb101' "
                         "(or evaluator='supernet' for ptb_ws and cifar_ws)")
    return {name: SearchPreset(SearchSettings(queries=150), PRESETS[name], NAO_PRESETS[name])
            for name in ("paper", "default", "smoke")}


@dataclasses.dataclass(frozen=True)
class Table:
    """A benchmark table as a search sees it: its space (restricted to the table's cells where the
    table does not hold them all), the evaluator that looks cells up, and every cell with its scores."""

    space: SearchSpace
    evaluator: Evaluator
    archs: list[Hashable]
    valid: np.ndarray
    test: np.ndarray | None
    dataset: str  # what the scores were measured on
    path: str
    valid_key: str
    test_key: str | None


def _nb201(path: str | None, valid_key: str | None, test_key: str | None) -> Table:
    table = load_nb201_table(path, valid_key or "cifar10_valid_acc", test_key or "cifar10_test_acc")
    archs = [tuple(int(o) for o in row) for row in table.ops]
    return Table(get_space("nb201"), Nb201TableEvaluator(table), archs, table.valid, table.test,
                 table.valid_key.split("_valid")[0], table.path, table.valid_key, table.test_key)


def _nb101(path: str | None, valid_key: str | None, test_key: str | None) -> Table:
    # Only the shipped 292-cell NB101 sample exists here, so the search runs over those cells.
    valid_key = valid_key or DEFAULT_VALID_KEY
    space, evaluator = nb101_table_space_and_evaluator(path, valid_key, test_key)
    archs = list(evaluator.archs)
    scores = [evaluator.lookup(a) for a in archs]
    test = None if scores[0][1] is None else np.array([s[1] for s in scores])
    return Table(space, evaluator, archs, np.array([s[0] for s in scores]), test, "cifar10",
                 str(path or NB101_SAMPLE), valid_key, test_key)


# The tables by space: (path or None for the shipped one, valid key, test key; None: the table's own).
TABLES: dict[str, Callable[[str | None, str | None, str | None], Table]] = {"nb201": _nb201, "nb101": _nb101}


def load_table(space: str, path: str | None = None, valid_key: str | None = None,
               test_key: str | None = None) -> Table:
    if space not in TABLES:
        raise ValueError(f"space {space!r} has no table here: choose {' or '.join(TABLES)}")
    return TABLES[space](path, valid_key, test_key)


def build_table(config: ExperimentConfig) -> EvaluatorSetup:
    """The space, its table evaluator (shared by every search), and facts about the table (the optimum)."""
    table = load_table(config.space, config.benchmark_file, config.valid_key, config.test_key)
    best = int(np.argmax(table.valid))
    facts = {"table": table.path, "cells": len(table.archs), "optimum_valid": float(table.valid.max())}
    if table.test is not None:
        facts |= {"optimum_test": float(table.test.max()), "test_of_best_valid": float(table.test[best])}
    return EvaluatorSetup(table.space, facts, lambda seed: table.evaluator)


TABLE = EvaluatorKind(presets=table_presets, default_preset="default", build=build_table)
