"""Regularized evolution (Real et al., 2019): tournament selection, mutation, oldest dies."""

from __future__ import annotations

import collections
import math
from typing import Any

from nao.strategies.base import Pool, Strategy, sample_unseen


class RegularizedEvolution(Strategy):
    """Population of the ``population_size`` most recent members; each child mutates
    the best of ``sample_size`` members drawn at random. A child that was evaluated
    before joins the population at no cost (repeats are free), as in the peers' protocol.
    One child a call: under a bounded pool a member the pool dropped ranks last."""

    name = "evolution"

    def __init__(self, space, seed: int, population_size: int = 10, sample_size: int = 5):
        super().__init__(space, seed)
        self.population_size = population_size
        self.sample_size = sample_size
        self.population: collections.deque = collections.deque(maxlen=population_size)
        self._pending: list = []

    def propose(self, pool: Pool, count: int) -> list:
        self.population.extend(self._pending)  # last call's children, now evaluated
        self._pending = []
        if not self.population:  # a pool the loop started (a bounded one) is the first population
            self.population.extend(pool.archs[-self.population_size:])
        if len(pool) < self.population_size:
            self._pending = sample_unseen(self.space, pool, self.rng, 1)
            return self._pending
        for _ in range(10_000):
            picks = self.rng.choice(len(self.population), min(self.sample_size, len(self.population)),
                                    replace=False)
            parent = max((self.population[i] for i in picks),
                         key=lambda a: pool.score(a) if a in pool else -math.inf)
            child = self.space.mutate(parent, self.rng)
            if child in pool:
                self.population.append(child)
                continue
            self._pending = [child]
            return self._pending
        self._pending = sample_unseen(self.space, pool, self.rng, 1)
        return self._pending

    def save_state(self) -> tuple[Any, dict[str, Any]]:
        arrays, facts = super().save_state()
        return arrays, {**facts, "population": self._to_strings(self.population),
                        "pending": self._to_strings(self._pending)}

    def load_state(self, arrays: Any, facts: dict[str, Any]) -> None:
        super().load_state(arrays, facts)
        self.population.clear()
        self.population.extend(self._from_strings(facts["population"]))
        self._pending = self._from_strings(facts["pending"])
