"""Random search: uniform samples of the space, never repeating an architecture."""

from __future__ import annotations

from nao.strategies.base import Pool, Strategy, sample_unseen


class RandomSearch(Strategy):
    name = "random"

    def propose(self, pool: Pool, count: int) -> list:
        return sample_unseen(self.space, pool, self.rng, count)
