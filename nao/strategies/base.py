"""What a strategy sees (the pool of evaluated architectures) and must do (propose)."""

from __future__ import annotations

import abc
from collections.abc import Hashable
from typing import Any

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

    def add(self, arch: Hashable, score: float, key: str | None = None) -> None:
        """Add ``arch``; ``key``, when the caller has it, saves computing ``space.key`` again."""
        self._index[self.space.key(arch) if key is None else key] = len(self.archs)
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
    in the pool yet; the loop scores them and adds them to the pool before the
    next call (a bounded pool also drops its worst members, so an architecture
    proposed earlier may be gone from it). All randomness comes from ``seed``,
    so a run is a deterministic function of (seed, evaluations): a killed table
    search resumes by replaying its history. A search that checkpoints (a
    supernet's) saves ``save_state`` instead and continues from ``load_state``.
    """

    name: str

    def __init__(self, space: SearchSpace, seed: int):
        self.space = space
        self.seed = seed
        self.rng = np.random.default_rng(seed)

    @abc.abstractmethod
    def propose(self, pool: Pool, count: int) -> list[Hashable]:
        """At most ``count`` new architectures to evaluate next."""

    def save_state(self) -> tuple[Any, dict[str, Any]]:
        """(arrays, facts): a pytree of arrays (None: none) and JSON values from which a strategy of
        the same space and seed continues exactly where this one is."""
        return None, {"rng": self.rng.bit_generator.state}

    def load_state(self, arrays: Any, facts: dict[str, Any]) -> None:
        """Continue from what ``save_state`` returned."""
        self.rng.bit_generator.state = facts["rng"]

    def _to_strings(self, archs) -> list[str]:
        return [self.space.to_string(a) for a in archs]

    def _from_strings(self, strings: list[str]) -> list[Hashable]:
        return [self.space.from_string(s) for s in strings]
