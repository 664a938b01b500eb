"""Regularized evolution (Real et al., 2019): tournament selection, mutation, oldest dies."""

from __future__ import annotations

import collections

from nao.strategies.base import Pool, Strategy, sample_unseen


class RegularizedEvolution(Strategy):
    """Population of the ``population_size`` most recent members; each child mutates
    the best of ``sample_size`` members drawn at random. A child that was evaluated
    before joins the population at no cost (repeats are free), as in the peers' protocol."""

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
        if len(pool) < self.population_size:
            self._pending = sample_unseen(self.space, pool, self.rng, 1)
            return self._pending
        for _ in range(10_000):
            picks = self.rng.choice(len(self.population), self.sample_size, replace=False)
            parent = max((self.population[i] for i in picks), key=pool.score)
            child = self.space.mutate(parent, self.rng)
            if child in pool:
                self.population.append(child)
                continue
            self._pending = [child]
            return self._pending
        self._pending = sample_unseen(self.space, pool, self.rng, 1)
        return self._pending
