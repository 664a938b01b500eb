"""Local search: first-improvement hill climbing over one-edit neighbours, random restarts."""

from __future__ import annotations

from typing import Any

from nao.strategies.base import Pool, Strategy, sample_unseen


class LocalSearch(Strategy):
    """Evaluate the current architecture's neighbours one at a time in random order
    and move to the first that improves on it; on a local optimum (no neighbour
    better) restart from a fresh random architecture. Under a bounded pool, a current
    architecture the pool dropped ends the climb as well."""

    name = "local"

    def __init__(self, space, seed: int):
        super().__init__(space, seed)
        self.current = None

    def propose(self, pool: Pool, count: int) -> list:
        while True:
            if self.current is not None and self.current not in pool:
                self.current = None
            if self.current is None:
                start = sample_unseen(self.space, pool, self.rng, 1)
                self.current = start[0] if start else None
                return start
            neighbors = self.space.neighbors(self.current)
            better = [a for a in neighbors if a in pool and pool.score(a) > pool.score(self.current)]
            if better:
                self.current = max(better, key=pool.score)
                continue
            unseen = [a for a in neighbors if a not in pool]
            if unseen:
                return [unseen[self.rng.integers(len(unseen))]]
            self.current = None

    def save_state(self) -> tuple[Any, dict[str, Any]]:
        arrays, facts = super().save_state()
        current = None if self.current is None else self.space.to_string(self.current)
        return arrays, {**facts, "current": current}

    def load_state(self, arrays: Any, facts: dict[str, Any]) -> None:
        super().load_state(arrays, facts)
        self.current = None if facts["current"] is None else self.space.from_string(facts["current"])
