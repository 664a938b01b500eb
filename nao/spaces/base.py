"""The one interface every search space implements.

The controller sees only ``vocab_size``, ``seq_len``, ``token_mask`` and token
arrays; the search loop and the strategies see only the methods below. An
architecture is an opaque, hashable value owned by its space.
"""

from __future__ import annotations

import abc
from collections.abc import Hashable, Iterable, Sequence

import numpy as np

# What ``SearchSpace.graph`` draws: node labels, and (source, target, label) edges between node indices.
Edge = tuple[int, int, str]
CellGraph = tuple[list[str], list[Edge]]
TitledCellGraph = tuple[str, list[str], list[Edge]]


def path_encoding(paths: Iterable[Sequence[int]], num_ops: int, min_length: int,
                  max_length: int) -> np.ndarray:
    """The path encoding of White et al. (2021, BANANAS): a float32 vector with one entry per
    sequence of ``min_length``..``max_length`` operations (ids in [0, num_ops)), shorter sequences
    first and each length in lexicographic order, set to 1 for every sequence in ``paths`` (a
    cell's input->output paths, written as the operations along each)."""
    sizes = [num_ops ** length for length in range(min_length, max_length + 1)]
    offsets = np.cumsum([0, *sizes])
    out = np.zeros(offsets[-1], np.float32)
    for path in paths:
        index = 0
        for op in path:
            index = index * num_ops + op
        out[offsets[len(path) - min_length] + index] = 1.0
    return out


class InvalidArchitectureError(ValueError):
    """An architecture string or token sequence that the space cannot accept."""


class SearchSpace(abc.ABC):
    """A finite or combinatorial set of architectures with a token encoding.

    Token 0 is the decoder's start symbol. A space whose architectures vary in
    size may also use 0 as trailing padding (NAS-Bench-101 does, as SemiNAS);
    every other token id names something of the architecture.
    """

    name: str
    vocab_size: int
    seq_len: int
    # Consecutive tokens concatenated into one encoder step (2 for NAO's CNN cells).
    tokens_per_step: int = 1

    @abc.abstractmethod
    def sample(self, rng: np.random.Generator) -> Hashable:
        """A uniformly random valid architecture."""

    @abc.abstractmethod
    def is_valid(self, arch: Hashable) -> bool:
        """Whether ``arch`` is a well-formed architecture of this space."""

    @abc.abstractmethod
    def key(self, arch: Hashable) -> str:
        """Canonical key: equal for architectures that compute the same network."""

    @abc.abstractmethod
    def to_string(self, arch: Hashable) -> str:
        """Human-readable (official, where one exists) string."""

    @abc.abstractmethod
    def from_string(self, text: str) -> Hashable:
        """Parse ``to_string``'s output; raises InvalidArchitectureError with the fix."""

    @abc.abstractmethod
    def to_tokens(self, arch: Hashable) -> np.ndarray:
        """Fixed-length int32 token sequence of shape (seq_len,), values in [0, vocab)."""

    @abc.abstractmethod
    def from_tokens(self, tokens: Sequence[int]) -> Hashable | None:
        """The architecture a token sequence encodes, or None if it encodes none."""

    @abc.abstractmethod
    def token_mask(self) -> np.ndarray:
        """(seq_len, vocab_size) bool: tokens the decoder may emit at each position."""

    def transition_mask(self) -> np.ndarray:
        """(seq_len, vocab, vocab) bool: token b may follow token a at position t iff [t, a, b].

        Position 0 follows the start symbol 0. Spaces whose valid tokens depend on the
        previous one (an op type then the kernels it allows) override this; by default it
        is ``token_mask`` whatever came before.
        """
        mask = self.token_mask()
        return np.broadcast_to(mask[:, None, :], (self.seq_len, self.vocab_size, self.vocab_size)).copy()

    @abc.abstractmethod
    def neighbors(self, arch: Hashable) -> list[Hashable]:
        """All valid architectures one edit away (used by local search and mutation)."""

    def mutate(self, arch: Hashable, rng: np.random.Generator) -> Hashable:
        """One random valid one-edit neighbour."""
        options = self.neighbors(arch)
        return options[rng.integers(len(options))]

    def symmetry_permutations(self) -> np.ndarray:
        """(P, seq_len) int: token-position permutations that keep the network the same.

        Controller training rewrites each sample with one of these, drawn at
        random, inside its jitted step. The identity alone means no symmetry.
        """
        return np.arange(self.seq_len)[None, :]

    def graph(self, arch: Hashable) -> CellGraph | list[TitledCellGraph] | None:
        """Node labels and (source, target, label) DAG edges for drawing; None if not drawable.

        A network of several cells returns one (title, labels, edges) per cell, each drawn apart.
        """
        del arch
        return None

    def features(self, arch: Hashable) -> np.ndarray:
        """A fixed-length float32 vector describing ``arch``, for predictors that are not sequence
        models (BANANAS' MLPs).

        By default the one-hot encoding of ``to_tokens``, flattened to (seq_len * vocab_size,). Cell
        spaces whose operations lie on input->output paths override it with the path encoding of
        White et al. (2021): one entry per possible sequence of operations along such a path, 1 where
        the cell has that path.
        """
        return np.eye(self.vocab_size, dtype=np.float32)[self.to_tokens(arch)].ravel()

    def tokens_batch(self, archs: Sequence[Hashable]) -> np.ndarray:
        """(len(archs), seq_len) int32 token matrix."""
        if not archs:
            return np.zeros((0, self.seq_len), np.int32)
        return np.stack([self.to_tokens(a) for a in archs]).astype(np.int32)
