"""A toy strategy: flip one bit of the best architecture so far (what "Extending nao" adds)."""

from nao.strategies.base import Pool, Strategy, sample_unseen


class HillClimb(Strategy):
    name = "climb"

    def propose(self, pool: Pool, count: int) -> list:
        if not pool.archs:
            return sample_unseen(self.space, pool, self.rng, count)
        fresh = [a for a in self.space.neighbors(pool.top(1)[0]) if a not in pool]
        return fresh[:count] or sample_unseen(self.space, pool, self.rng, count)
