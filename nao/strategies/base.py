"""What a strategy sees (the pool of evaluated architectures) and must do (propose)."""

from __future__ import annotations

import abc
from collections.abc import Hashable

import numpy as np

from nao.spaces.base import SearchSpace


class Pool:
    """Evaluated architectures in query order, with their search signal (higher is better)."""

    def __init__(self, space: SearchSpace):
        self.space = space
        self.archs: list[Hashable] = []
        self.scores: list[float] = []
        self._index: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.archs)

    def __contains__(self, arch: Hashable) -> bool:
        return self.space.key(arch) in self._index

    def add(self, arch: Hashable, score: float) -> None:
        self._index[self.space.key(arch)] = len(self.archs)
        self.archs.append(arch)
        self.scores.append(score)

    def score(self, arch: Hashable) -> float:
        return self.scores[self._index[self.space.key(arch)]]

    def top(self, k: int) -> list[Hashable]:
        """The k best architectures, best first (ties keep query order)."""
        order = np.argsort(-np.asarray(self.scores), kind="stable")[:k]
        return [self.archs[i] for i in order]


def sample_unseen(space: SearchSpace, pool: Pool, rng: np.random.Generator, count: int,
                  max_tries: int = 10_000) -> list[Hashable]:
    """Up to ``count`` distinct random architectures not in the pool."""
    out, keys = [], set()
    for _ in range(max_tries):
        if len(out) == count:
            break
        arch = space.sample(rng)
        key = space.key(arch)
        if key not in keys and arch not in pool:
            out.append(arch)
            keys.add(key)
    return out


class Strategy(abc.ABC):
    """Proposes architectures from the pool; the loop evaluates and records them.

    ``propose`` returns at most ``count`` distinct architectures that are not
    in the pool yet; every one of them is then evaluated and added to the
    pool before the next call. All randomness comes from ``seed``, so a run is
    a deterministic function of (seed, evaluations), which is what lets a
    killed search resume by replaying its history.
    """

    name: str

    def __init__(self, space: SearchSpace, seed: int):
        self.space = space
        self.seed = seed
        self.rng = np.random.default_rng(seed)

    @abc.abstractmethod
    def propose(self, pool: Pool, count: int) -> list[Hashable]:
        """At most ``count`` new architectures to evaluate next."""
