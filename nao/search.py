"""The one search loop: propose, evaluate, record, until the budget is spent.

Every strategy runs under the same budget: one query is one architecture
evaluated for the first time. Each result is written to the history before
the next proposal, and a resumed run replays the history: the strategy is
re-run from its seed, and every architecture it proposes that the history
already holds is taken from there instead of being evaluated again.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

from nao.evaluators.base import Evaluator
from nao.history import History
from nao.spaces.base import SearchSpace
from nao.strategies.base import Pool, Strategy


class SearchError(RuntimeError):
    """The search cannot go on (e.g. the strategy stopped proposing new architectures)."""


@dataclasses.dataclass(frozen=True)
class Progress:
    queries: int
    budget: int
    best_valid: float
    best_test: float | None
    elapsed: float  # seconds of this process (replayed rows cost nothing)
    replayed: int

    @property
    def eta(self) -> float:
        done = self.queries - self.replayed
        left = self.budget - self.queries
        return self.elapsed / done * left if done > 0 else float("nan")


def best_so_far(rows: list[dict[str, Any]]) -> tuple[list[float], list[float | None]]:
    """Per query: the best validation score so far and the test score of that architecture."""
    valid_curve, test_curve = [], []
    best = None
    for row in rows:
        if best is None or row["valid"] > best["valid"]:
            best = row
        valid_curve.append(best["valid"])
        test_curve.append(best["test"])
    return valid_curve, test_curve


def search(space: SearchSpace, strategy: Strategy, evaluator: Evaluator, queries: int,
           history: History, on_progress: Callable[[Progress], None] | None = None) -> list[dict[str, Any]]:
    """Run ``strategy`` until ``queries`` architectures are evaluated; returns the rows in order."""
    pool = Pool(space)
    recorded = {row["key"]: row for row in history.rows}
    rows: list[dict[str, Any]] = []
    replayed = 0
    start = time.perf_counter()
    while len(pool) < queries:
        batch, keys = [], set()
        for arch in strategy.propose(pool, queries - len(pool)):
            key = space.key(arch)
            if space.is_valid(arch) and arch not in pool and key not in keys:
                batch.append(arch)
                keys.add(key)
        batch = batch[:queries - len(pool)]
        if not batch:
            raise SearchError(f"strategy {strategy.name!r} proposed no new architecture after "
                              f"{len(pool)} queries: the space may be exhausted; lower --queries")
        # Rows are written as results arrive (in any order) but join the pool in proposal
        # order, so the strategy sees the same pool whatever order a parallel evaluator answers in.
        results: dict[int, dict[str, Any]] = {}
        fresh, fresh_slots = [], []
        for slot, arch in enumerate(batch):
            row = recorded.pop(space.key(arch), None)
            if row is None:
                fresh.append(arch)
                fresh_slots.append(slot)
            else:
                replayed += 1
                results[slot] = row
        for position, result in evaluator.evaluate(fresh):
            arch, slot = fresh[position], fresh_slots[position]
            row = {"query": len(pool) + slot + 1, "arch": space.to_string(arch), "key": space.key(arch),
                   "valid": result.valid, "test": result.test, "cost": result.cost,
                   "elapsed": time.perf_counter() - start}
            history.append(row)
            results[slot] = row
        for slot, arch in enumerate(batch):
            pool.add(arch, results[slot]["valid"])
            rows.append(results[slot])
        if on_progress is not None:
            valid_curve, test_curve = best_so_far(rows)
            on_progress(Progress(len(pool), queries, valid_curve[-1], test_curve[-1],
                                 time.perf_counter() - start, replayed))
    return rows
