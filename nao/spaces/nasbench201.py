"""NAS-Bench-201: a cell of 4 nodes, 6 edges, each edge one of 5 operations."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from nao.spaces.base import InvalidArchitectureError, SearchSpace, path_encoding

OP_NAMES = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
# Edge k goes from EDGES[k][0] to EDGES[k][1], in the order the official string lists them.
EDGES = ((0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3))
# Every input->output route through the cell, as the edges (indices into EDGES) it follows.
ROUTES = ((3,), (0, 4), (1, 5), (0, 2, 5))
_EDGE_RE = re.compile(r"^([a-z_0-9]+)~(\d)$")

Arch = tuple[int, ...]


class NasBench201Space(SearchSpace):
    """Architectures are 6-tuples of op ids, one per edge, in the official edge order.

    Tokens are op id + 1 (0 is the decoder's start symbol). The key is the
    official arch string: NB201 trained every cell separately, so cells that are
    functionally equal still have their own table rows and count as distinct queries.
    """

    name = "nb201"
    num_edges = len(EDGES)
    num_ops = len(OP_NAMES)
    vocab_size = num_ops + 1
    seq_len = num_edges

    def sample(self, rng: np.random.Generator) -> Arch:
        return tuple(int(x) for x in rng.integers(0, self.num_ops, self.num_edges))

    def is_valid(self, arch) -> bool:
        return (
            isinstance(arch, tuple)
            and len(arch) == self.num_edges
            and all(isinstance(o, (int, np.integer)) and 0 <= o < self.num_ops for o in arch)
        )

    def key(self, arch: Arch) -> str:
        return self.to_string(arch)

    def to_string(self, arch: Arch) -> str:
        names = [OP_NAMES[o] for o in arch]
        return "|{}~0|+|{}~0|{}~1|+|{}~0|{}~1|{}~2|".format(*names)

    def from_string(self, text: str) -> Arch:
        hint = (
            "expected the official NAS-Bench-201 form "
            "'|op~0|+|op~0|op~1|+|op~0|op~1|op~2|' with op in " + ", ".join(OP_NAMES)
        )
        nodes = text.strip().split("+")
        if len(nodes) != 3:
            raise InvalidArchitectureError(f"bad NAS-Bench-201 arch {text!r}: {hint}")
        ops = []
        for node_index, node in enumerate(nodes, start=1):
            parts = [p for p in node.split("|") if p]
            if len(parts) != node_index:
                raise InvalidArchitectureError(f"bad NAS-Bench-201 arch {text!r}: node {node_index} "
                                          f"needs {node_index} edge(s); {hint}")
            for source, part in enumerate(parts):
                match = _EDGE_RE.match(part)
                if not match or match.group(1) not in OP_NAMES or int(match.group(2)) != source:
                    raise InvalidArchitectureError(f"bad NAS-Bench-201 edge {part!r} in {text!r}: {hint}")
                ops.append(OP_NAMES.index(match.group(1)))
        return tuple(ops)

    def to_tokens(self, arch: Arch) -> np.ndarray:
        return np.asarray(arch, np.int32) + 1

    def from_tokens(self, tokens: Sequence[int]) -> Arch | None:
        tokens = np.asarray(tokens)
        if tokens.shape != (self.seq_len,) or tokens.min() < 1 or tokens.max() > self.num_ops:
            return None
        return tuple(int(t) - 1 for t in tokens)

    def token_mask(self) -> np.ndarray:
        mask = np.zeros((self.seq_len, self.vocab_size), bool)
        mask[:, 1:] = True
        return mask

    def features(self, arch: Arch) -> np.ndarray:
        """The path encoding (White et al., 2021): 4 + 16 + 64 = 84 entries, one per sequence of 1 to 3
        of the four operations other than 'none'; a route through a 'none' edge is no path. The two
        2-edge routes share their entry when they carry the same operations."""
        paths = [[arch[e] - 1 for e in route] for route in ROUTES if all(arch[e] != 0 for e in route)]
        return path_encoding(paths, self.num_ops - 1, 1, 3)

    def graph(self, arch: Arch) -> tuple[list[str], list[tuple[int, int, str]]]:
        # 'none' edges carry nothing, so they are left out of the drawing.
        edges = [(src, dst, OP_NAMES[op]) for (src, dst), op in zip(EDGES, arch) if op != 0]
        return ["input", "node 1", "node 2", "output"], edges

    def neighbors(self, arch: Arch) -> list[Arch]:
        out = []
        for edge in range(self.num_edges):
            for op in range(self.num_ops):
                if op != arch[edge]:
                    out.append(arch[:edge] + (op,) + arch[edge + 1:])
        return out
