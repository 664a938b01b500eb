"""A search space limited to a finite set of its architectures (e.g. the cells a table covers)."""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence

import numpy as np

from nao.spaces.base import InvalidArchitectureError, SearchSpace


class TableRestrictedSpace(SearchSpace):
    """``space`` limited to ``allowed_archs`` (compared by key); everything else is delegated.

    ``sample`` is uniform over the distinct allowed cells; ``is_valid``, ``from_tokens`` and
    ``neighbors`` drop cells outside the set; ``mutate`` falls back to a uniformly random other
    allowed cell when a cell has no allowed neighbour. ``from_string`` still parses any cell of
    the wrapped space (histories and user input), and the token encoding is unchanged.
    """

    def __init__(self, space: SearchSpace, allowed_archs: Iterable[Hashable]):
        self.space = space
        self.name = space.name
        self.vocab_size = space.vocab_size
        self.seq_len = space.seq_len
        self.tokens_per_step = space.tokens_per_step
        self._allowed: dict[str, Hashable] = {}
        for arch in allowed_archs:
            if not space.is_valid(arch):
                raise InvalidArchitectureError(f"allowed architecture {arch!r} is not valid in space "
                                               f"{space.name}")
            self._allowed.setdefault(space.key(arch), arch)
        if not self._allowed:
            raise ValueError("TableRestrictedSpace needs at least one allowed architecture")
        self.archs: list[Hashable] = list(self._allowed.values())

    def __len__(self) -> int:
        return len(self.archs)

    def __getattr__(self, name: str):
        # Space-specific extras of the wrapped space; "space" itself is guarded against recursion
        # (copy and pickle look attributes up before __init__ has run).
        if name == "space":
            raise AttributeError(name)
        return getattr(self.space, name)

    def sample(self, rng: np.random.Generator) -> Hashable:
        return self.archs[rng.integers(len(self.archs))]

    def is_valid(self, arch: Hashable) -> bool:
        return self.space.is_valid(arch) and self.space.key(arch) in self._allowed

    def key(self, arch: Hashable) -> str:
        return self.space.key(arch)

    def to_string(self, arch: Hashable) -> str:
        return self.space.to_string(arch)

    def from_string(self, text: str) -> Hashable:
        return self.space.from_string(text)

    def to_tokens(self, arch: Hashable) -> np.ndarray:
        return self.space.to_tokens(arch)

    def from_tokens(self, tokens: Sequence[int]) -> Hashable | None:
        arch = self.space.from_tokens(tokens)
        return arch if arch is not None and self.space.key(arch) in self._allowed else None

    def token_mask(self) -> np.ndarray:
        return self.space.token_mask()

    def transition_mask(self) -> np.ndarray:
        return self.space.transition_mask()

    def neighbors(self, arch: Hashable) -> list[Hashable]:
        return [a for a in self.space.neighbors(arch) if self.space.key(a) in self._allowed]

    def mutate(self, arch: Hashable, rng: np.random.Generator) -> Hashable:
        """A random allowed neighbour, else a uniformly random other allowed cell (``arch`` itself
        only if it is the one allowed cell)."""
        options = self.neighbors(arch)
        if not options:
            key = self.space.key(arch)
            options = [a for k, a in self._allowed.items() if k != key] or [arch]
        return options[rng.integers(len(options))]

    def features(self, arch: Hashable) -> np.ndarray:
        return self.space.features(arch)

    def symmetry_permutations(self) -> np.ndarray:
        return self.space.symmetry_permutations()

    def graph(self, arch: Hashable):
        return self.space.graph(arch)

    def tokens_batch(self, archs: Sequence[Hashable]) -> np.ndarray:
        return self.space.tokens_batch(archs)
