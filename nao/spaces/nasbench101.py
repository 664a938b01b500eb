"""NAS-Bench-101: a DAG cell of at most 7 vertices and 9 edges, inner vertices one of 3 operations.

An architecture is the *pruned* compact graph, as the NB101 API's ``ModelSpec`` keeps it:
vertices that are not on an input->output path are removed, vertex 0 is the input and the
last vertex the output. Op names are the official ones (``OP_NAMES``).

String form (``to_string`` / ``from_string``)::

    ops=input,conv3x3-bn-relu,maxpool3x3,output;edges=0-1,0-2,1-3,2-3

``ops`` lists every vertex in order; ``edges`` lists ``i-j`` (i < j) for each edge i->j.
``from_string`` also accepts an unpruned graph and prunes it.

Tokens follow SemiNAS (``convert_arch_to_seq``): for each column j = 1..n-1 of the adjacency
matrix, j edge tokens for rows 0..j-1 (1 = no edge, 2 = edge), then one op token for vertex j
(3 conv1x1, 4 conv3x3, 5 maxpool3x3, 6 output); graphs with fewer than 7 vertices are padded
with 0 up to 27 tokens.

The key is the official module hash (``graph_util.hash_module``), so isomorphic cells share it.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from nao.spaces.base import InvalidArchitectureError, SearchSpace, path_encoding

INPUT, OUTPUT = "input", "output"
CONV1X1, CONV3X3, MAXPOOL3X3 = "conv1x1-bn-relu", "conv3x3-bn-relu", "maxpool3x3"
INNER_OPS = (CONV1X1, CONV3X3, MAXPOOL3X3)
# Op ids of the npz tables (data/nasbench/README.md), accepted by ``Nb101Arch.from_graph``.
OP_NAMES = (INPUT, CONV1X1, CONV3X3, MAXPOOL3X3, OUTPUT)
MAX_VERTICES = 7
MAX_EDGES = 9

# Labels of graph_util.hash_module as ModelSpec.hash_spec assigns them.
_HASH_LABEL = {INPUT: -1, OUTPUT: -2, CONV3X3: 0, CONV1X1: 1, MAXPOOL3X3: 2}
_OP_TOKEN = {CONV1X1: 3, CONV3X3: 4, MAXPOOL3X3: 5, OUTPUT: 6}
_TOKEN_OP = {t: op for op, t in _OP_TOKEN.items()}
NO_EDGE, EDGE = 1, 2
SEQ_LEN = (MAX_VERTICES + 2) * (MAX_VERTICES - 1) // 2
# Column j of the matrix occupies tokens [_COL_START[j], _COL_START[j] + j]; the last one is the op.
_COL_START = {j: (j - 1) * (j + 2) // 2 for j in range(1, MAX_VERTICES)}

_FORMAT = ("expected 'ops=input,<op>,...,output;edges=i-j,...' with <op> in "
           + ", ".join(INNER_OPS) + f", at most {MAX_VERTICES} vertices and {MAX_EDGES} edges")
_STRING_RE = re.compile(r"^ops=([^;]*);edges=([^;]*)$")
_EDGE_RE = re.compile(r"^(\d+)-(\d+)$")


@dataclass(frozen=True)
class Nb101Arch:
    """A pruned NB101 cell: ``matrix[i][j] == 1`` for an edge i->j, ``ops`` the official op names.

    Build one with ``from_graph``, which prunes and validates; the plain constructor trusts its input.
    """

    matrix: tuple[tuple[int, ...], ...]
    ops: tuple[str, ...]

    @property
    def num_vertices(self) -> int:
        return len(self.ops)

    @classmethod
    def from_graph(cls, matrix: Sequence[Sequence[int]] | np.ndarray,
                   ops: Sequence[str | int]) -> Nb101Arch:
        """Prune ``matrix``/``ops`` as ModelSpec does and check NB101's limits.

        ``ops`` are official names or the npz op ids (``OP_NAMES``). Raises InvalidArchitectureError.
        """
        try:
            m = np.asarray(matrix)
        except ValueError:
            raise InvalidArchitectureError("adjacency rows have different lengths") from None
        if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] < 2:
            raise InvalidArchitectureError(f"adjacency must be a square matrix of >= 2 vertices, got shape "
                                      f"{m.shape}")
        n = m.shape[0]
        if m.dtype.kind not in "biuf" or not ((m == 0) | (m == 1)).all() or np.tril(m).any():
            raise InvalidArchitectureError("adjacency must be strictly upper triangular with 0/1 entries")
        if len(ops) != n:
            raise InvalidArchitectureError(f"{len(ops)} ops for {n} vertices")
        names = [_op_name(op) for op in ops]
        if names[0] != INPUT or names[-1] != OUTPUT or any(op not in INNER_OPS for op in names[1:-1]):
            raise InvalidArchitectureError(f"ops must be input, then any of {', '.join(INNER_OPS)}, then "
                                      f"output; got {names}")
        # Plain Python from here: for these tiny graphs it is several times faster than numpy,
        # which matters to neighbors(). Upper triangular, so a forward sweep is topological.
        rows = [[int(x) for x in row] for row in m.tolist()]
        from_input = [True] + [False] * (n - 1)
        for v in range(1, n):
            from_input[v] = any(rows[u][v] and from_input[u] for u in range(v))
        to_output = [False] * (n - 1) + [True]
        for v in range(n - 2, -1, -1):
            to_output[v] = any(rows[v][w] and to_output[w] for w in range(v + 1, n))
        if not from_input[-1]:
            raise InvalidArchitectureError("no path from input to output")
        keep = [v for v in range(n) if from_input[v] and to_output[v]]
        pruned = tuple(tuple(rows[u][w] for w in keep) for u in keep)
        edges = sum(map(sum, pruned))
        if len(keep) > MAX_VERTICES or edges > MAX_EDGES:
            raise InvalidArchitectureError(f"pruned graph has {len(keep)} vertices and {edges} "
                                           f"edges; NB101 allows {MAX_VERTICES} and {MAX_EDGES}")
        return cls(pruned, tuple(names[i] for i in keep))


def _op_name(op: str | int) -> str:
    if isinstance(op, (int, np.integer)) and not isinstance(op, bool):
        if 0 <= op < len(OP_NAMES):
            return OP_NAMES[op]
        raise InvalidArchitectureError(f"op id {op} is not in 0..{len(OP_NAMES) - 1}")
    if op in OP_NAMES:
        return str(op)
    raise InvalidArchitectureError(f"unknown op {op!r}: use one of {', '.join(OP_NAMES)}")


def _md5(text: str) -> str:
    return hashlib.md5(text.encode("utf-8")).hexdigest()


@lru_cache(maxsize=1 << 16)
def module_hash(arch: Nb101Arch) -> str:
    """NB101's graph_util.hash_module: Weisfeiler-Lehman over md5 strings of the pruned graph."""
    n = len(arch.ops)
    # Plain lists: indexing a numpy array per entry would dominate the cost of neighbors().
    preds = [[u for u in range(n) if arch.matrix[u][v]] for v in range(n)]
    succs = [[w for w in range(n) if arch.matrix[v][w]] for v in range(n)]
    # The str() of python-int tuples and of the sorted list must match the official byte strings.
    hashes = [_md5(str((len(succs[v]), len(preds[v]), _HASH_LABEL[op]))) for v, op in enumerate(arch.ops)]
    # n rounds exceed the diameter, so the hash sees the whole graph (the official count too).
    for _ in range(n):
        hashes = [_md5("".join(sorted(hashes[u] for u in preds[v])) + "|"
                       + "".join(sorted(hashes[w] for w in succs[v])) + "|" + hashes[v])
                  for v in range(n)]
    return _md5(str(sorted(hashes)))


def from_table(npz_path: str | os.PathLike) -> list[Nb101Arch]:
    """The architectures of an NB101 npz table (``adjacency``, ``ops``, ``num_vertices``, ``op_names``).

    Rows are compact pruned graphs: row i uses ``adjacency[i, :n, :n]`` and ``ops[i, :n]``.
    """
    with np.load(npz_path) as table:
        names = [str(s) for s in table["op_names"]]
        return [Nb101Arch.from_graph(adj[:n, :n], [names[o] for o in ops[:n]])
                for adj, ops, n in zip(table["adjacency"], table["ops"], table["num_vertices"], strict=True)]


class NasBench101Space(SearchSpace):
    """NB101 cells as pruned ``Nb101Arch`` graphs with SemiNAS's 27-token encoding (vocab 7)."""

    name = "nb101"
    vocab_size = 7
    seq_len = SEQ_LEN

    def sample(self, rng: np.random.Generator) -> Nb101Arch:
        """As the NB101 examples do: uniform over 7-vertex specs, pruned, rejected until valid.

        So it is uniform over specs, not over distinct (pruned, non-isomorphic) cells.
        """
        while True:
            matrix = np.triu(rng.integers(0, 2, (MAX_VERTICES, MAX_VERTICES)), k=1)
            inner = rng.integers(0, len(INNER_OPS), MAX_VERTICES - 2)
            ops = [INPUT, *(INNER_OPS[i] for i in inner), OUTPUT]
            try:
                return Nb101Arch.from_graph(matrix, ops)
            except InvalidArchitectureError:
                continue

    def is_valid(self, arch) -> bool:
        if not isinstance(arch, Nb101Arch):
            return False
        try:
            # Valid means already pruned and within limits: re-pruning must change nothing.
            return Nb101Arch.from_graph(arch.matrix, arch.ops) == arch
        except InvalidArchitectureError:
            return False

    def key(self, arch: Nb101Arch) -> str:
        return module_hash(arch)

    def to_string(self, arch: Nb101Arch) -> str:
        n = arch.num_vertices
        edges = [f"{i}-{j}" for i in range(n) for j in range(i + 1, n) if arch.matrix[i][j]]
        return f"ops={','.join(arch.ops)};edges={','.join(edges)}"

    def from_string(self, text: str) -> Nb101Arch:
        match = _STRING_RE.match(text.strip())
        if not match:
            raise InvalidArchitectureError(f"bad NAS-Bench-101 arch {text!r}: {_FORMAT}")
        ops = match.group(1).split(",")
        matrix = np.zeros((len(ops), len(ops)), np.int64)
        for edge in filter(None, match.group(2).split(",")):
            edge_match = _EDGE_RE.match(edge)
            if not edge_match or not int(edge_match.group(1)) < int(edge_match.group(2)) < len(ops):
                raise InvalidArchitectureError(f"bad NAS-Bench-101 edge {edge!r} in {text!r}: {_FORMAT}")
            matrix[int(edge_match.group(1)), int(edge_match.group(2))] = 1
        try:
            return Nb101Arch.from_graph(matrix, ops)
        except InvalidArchitectureError as err:
            raise InvalidArchitectureError(f"bad NAS-Bench-101 arch {text!r}: {err}; {_FORMAT}") from None

    def to_tokens(self, arch: Nb101Arch) -> np.ndarray:
        tokens = np.zeros(self.seq_len, np.int32)
        for j in range(1, arch.num_vertices):
            start = _COL_START[j]
            tokens[start:start + j] = [EDGE if arch.matrix[i][j] else NO_EDGE for i in range(j)]
            tokens[start + j] = _OP_TOKEN[arch.ops[j]]
        return tokens

    def from_tokens(self, tokens: Sequence[int]) -> Nb101Arch | None:
        tokens = np.asarray(tokens)
        if tokens.shape != (self.seq_len,) or not np.issubdtype(tokens.dtype, np.integer):
            return None
        used = int(np.count_nonzero(tokens))
        # Only whole columns may be used, and the zeros (padding) must all trail them.
        if used not in {_COL_START[j] + j + 1 for j in _COL_START} or tokens[used:].any():
            return None
        n = next(j for j in _COL_START if _COL_START[j] + j + 1 == used) + 1
        matrix = np.zeros((n, n), np.int64)
        ops = [INPUT]
        for j in range(1, n):
            start = _COL_START[j]
            edges = tokens[start:start + j]
            if not np.isin(edges, (NO_EDGE, EDGE)).all() or int(tokens[start + j]) not in _TOKEN_OP:
                return None
            matrix[:j, j] = edges == EDGE
            ops.append(_TOKEN_OP[int(tokens[start + j])])
        # from_graph rejects an output op anywhere but at the last used column.
        try:
            return Nb101Arch.from_graph(matrix, ops)
        except InvalidArchitectureError:
            return None

    def token_mask(self) -> np.ndarray:
        # Padding (0) is never allowed, as in SemiNAS's decoder: it always emits 7-vertex graphs,
        # which from_tokens prunes, and 0 is also the decoder's start symbol. A trained model that
        # sees padded targets must therefore not apply this mask to its training loss.
        mask = np.zeros((self.seq_len, self.vocab_size), bool)
        mask[:, [NO_EDGE, EDGE]] = True
        for j, start in _COL_START.items():
            mask[start + j] = False
            mask[start + j, list(_TOKEN_OP)] = True
        return mask

    def graph(self, arch: Nb101Arch) -> tuple[list[str], list[tuple[int, int, str]]]:
        n = arch.num_vertices
        edges = [(i, j, "") for i in range(n) for j in range(i + 1, n) if arch.matrix[i][j]]
        return [op.replace("-bn-relu", "") for op in arch.ops], edges

    def features(self, arch: Nb101Arch) -> np.ndarray:
        """The path encoding (White et al., 2021): 1 + 3 + ... + 3^5 = 364 entries, one per sequence of
        0 to 5 inner operations along an input->output path."""
        n = arch.num_vertices
        paths: list[list[int]] = []
        stack: list[tuple[int, list[int]]] = [(0, [])]
        while stack:
            vertex, ops = stack.pop()
            for nxt in range(vertex + 1, n):
                if not arch.matrix[vertex][nxt]:
                    continue
                if nxt == n - 1:
                    paths.append(ops)
                else:
                    stack.append((nxt, [*ops, INNER_OPS.index(arch.ops[nxt])]))
        return path_encoding(paths, len(INNER_OPS), 0, MAX_VERTICES - 2)

    def neighbors(self, arch: Nb101Arch) -> list[Nb101Arch]:
        """Every valid cell one edit away, pruned, in a fixed order. The edits are:

        * change the op of one inner vertex;
        * flip one edge among the existing vertices (add it or remove it);
        * split an edge i->j into i->v->j through a new inner vertex v carrying any of the 3 ops
          (only while the cell has fewer than 7 vertices and 9 edges);
        * remove an inner vertex, wiring each of its predecessors to each of its successors
          (the inverse of a split; only if at most 9 edges result).

        Neighbours are distinct by key and never share ``arch``'s key. Every valid cell has at
        least one: a cell with an inner vertex can change its op, and the 2-vertex cell
        (input -> output) can split its edge.
        """
        return list(_neighbors(arch))


# Local search asks for the same cell's neighbourhood again on every proposal.
@lru_cache(maxsize=1 << 12)
def _neighbors(arch: Nb101Arch) -> tuple[Nb101Arch, ...]:
    """``NasBench101Space.neighbors``, cached."""
    n = arch.num_vertices
    matrix = np.asarray(arch.matrix)
    candidates: list[tuple[np.ndarray | tuple, tuple[str, ...]]] = []
    for v in range(1, n - 1):
        for op in INNER_OPS:
            if op != arch.ops[v]:
                candidates.append((matrix, arch.ops[:v] + (op,) + arch.ops[v + 1:]))
    for i in range(n):
        for j in range(i + 1, n):
            flipped = matrix.copy()
            flipped[i, j] = 1 - flipped[i, j]
            candidates.append((flipped, arch.ops))
    if n < MAX_VERTICES and matrix.sum() < MAX_EDGES:
        for i, j in zip(*np.nonzero(matrix), strict=True):
            # The new vertex takes index j (old j onwards shift by one), so i < j < j + 1
            # keeps the matrix upper triangular.
            split = np.insert(np.insert(matrix, j, 0, axis=0), j, 0, axis=1)
            split[i, j + 1] = 0
            split[i, j] = split[j, j + 1] = 1
            for op in INNER_OPS:
                candidates.append((split, arch.ops[:j] + (op,) + arch.ops[j:]))
    for v in range(1, n - 1):
        bypassed = matrix.copy()
        # Predecessors have indices below v and successors above it: still upper triangular.
        bypassed[np.ix_(matrix[:, v] == 1, matrix[v] == 1)] = 1
        keep = np.arange(n) != v
        candidates.append((bypassed[np.ix_(keep, keep)], arch.ops[:v] + arch.ops[v + 1:]))
    seen = {module_hash(arch)}
    out = []
    for candidate, ops in candidates:
        try:
            neighbour = Nb101Arch.from_graph(candidate, ops)
        except InvalidArchitectureError:
            continue
        if module_hash(neighbour) not in seen:
            seen.add(module_hash(neighbour))
            out.append(neighbour)
    return tuple(out)
