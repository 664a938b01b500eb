"""NAO's CIFAR convolutional cells: the 5-op NAO-WS space ("cifar_ws"), the 11-op NAONet space ("cifar").

An architecture is a tuple of 40 ints in the official order: the normal cell, then the reduction
cell, each 5 nodes ``[in1, op1, in2, op2]``. Nodes are numbered as in the official code: 0 and 1
are the cell inputs (outputs of cells k-2 and k-1), 2..6 the computed nodes; node k applies one op
to each of two of the nodes 0..k-1 and sums the results. Op ids are 0..4 for ``WS_OPS`` (the NAO-WS
ids) and 0..10 for ``FULL_OPS`` (the PyTorch ids 5..15, minus 5).

String form (``to_string`` / ``from_string``), one bracket per node 2..6::

    normal: [0 sep_conv_3x3, 1 identity] [2 avg_pool_3x3, 0 identity] ... | reduce: [...] ...

``from_string`` also takes the official integer strings (40 ints, optionally '|' between the
cells; "cifar" writes its ops as the PyTorch ids 5..15) and the names of the ``PUBLISHED`` cells.

Tokens: "cifar_ws" as NAO-WS, ``[in+1, op+7]`` per branch (vocab 12); "cifar" as the TF full NAO,
``[in+1, op type, kernel size]`` per branch with the ``VOCAB2`` ids (vocab 21). Either way one
branch is one encoder step. Both spaces mask node tokens to the earlier nodes; "cifar" also lets a
kernel token follow only an op type that has that kernel (``transition_mask``).

The key sorts the two branches of each node: ``op1(in1) + op2(in2)`` is the same network either way.

Published cells: "naonet_ws" is the NAO-WS TF result (``NAO-WS/cnn/train_final.sh``), "naonet_b"
the PyTorch NAO_V1 NAONet-B. "naonet" is the PyTorch NAONet-A string, the one its published
PyTorch runs trained; the TF description ``dag.NAONet.json`` swaps the two inputs of reduction
node 4 (its ``node_5``): conv 1x7+7x1 reads input 1 and max pool 2x2 input 0. That version is
"naonet_json".
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from nao.spaces.base import InvalidArchitectureError, SearchSpace

WS_OPS = ("sep_conv_3x3", "sep_conv_5x5", "avg_pool_3x3", "max_pool_3x3", "identity")
FULL_OPS = ("identity", "conv_1x1", "conv_3x3", "conv_1x3_3x1", "conv_1x7_7x1", "max_pool_2x2",
            "max_pool_3x3", "max_pool_5x5", "avg_pool_2x2", "avg_pool_3x3", "avg_pool_5x5")
CELLS = ("normal", "reduce")
NUM_NODES = 5  # computed nodes per cell
NUM_BRANCHES = len(CELLS) * NUM_NODES * 2
ARCH_LEN = 2 * NUM_BRANCHES  # an input and an op per branch

# TF VOCAB2 ids (NAO/cnn/epd/vocab.py) of the op types and kernel sizes FULL_OPS use.
_IDENTITY, _CONV, _AVG_POOL, _MAX_POOL = 7, 9, 11, 12
_K1X1, _K2X2, _K3X3, _K5X5, _K1X3_3X1, _K1X7_7X1 = 14, 15, 16, 17, 19, 20

PUBLISHED: dict[str, dict[str, str]] = {
    "cifar_ws": {
        "naonet_ws": "0 1 0 4 2 2 1 3 1 0 2 0 2 3 1 3 1 2 0 4 | 1 1 0 3 2 3 2 3 1 0 0 1 0 4 2 4 2 3 2 3",
        "naonet_b": "0 1 0 2 0 1 2 2 1 3 0 2 4 0 1 3 2 1 0 3 | 1 1 1 0 2 1 2 4 1 0 2 3 3 1 2 2 0 2 0 2",
    },
    "cifar": {
        "naonet": "0 7 1 15 2 8 1 7 0 6 1 7 0 8 4 7 1 5 0 7 | 0 7 1 13 0 6 0 14 0 9 1 10 0 14 2 6 1 11 0 7",
        "naonet_json":
            "0 7 1 15 2 8 1 7 0 6 1 7 0 8 4 7 1 5 0 7 | 0 7 1 13 0 6 0 14 1 9 0 10 0 14 2 6 1 11 0 7",
    },
}

_INT_RE = re.compile(r"-?\d+")
_NAMED_RE = re.compile(r"normal:(.*)\|\s*reduce:(.*)", re.DOTALL)
_BRANCH = r"\s*(-?\d+)\s+(\w+)\s*"
_NODE_RE = re.compile(rf"\[{_BRANCH},{_BRANCH}\]")

Arch = tuple[int, ...]


def _node(branch: int) -> int:
    """Cell node index (2..6) of global branch ``branch`` (0..19)."""
    return branch // 2 % NUM_NODES + 2


def _where(branch: int) -> str:
    return f"{CELLS[branch // (2 * NUM_NODES)]} node {_node(branch)} branch {branch % 2 + 1}"


class _CellSpace(SearchSpace):
    """Everything the two spaces share; a subclass names its ops, their tokens and its string ids."""

    ops: tuple[str, ...]
    # The tokens after the input token of a branch, per op id; their length is tokens_per_step - 1.
    op_tokens: tuple[tuple[int, ...], ...]
    # Official integer strings write op id + string_op_offset.
    string_op_offset: int
    # Op ids of the other space that a pasted string may contain, and what to do instead.
    foreign_ops: tuple[range, str]

    def __init__(self) -> None:
        self._op_of_tokens = {tokens: op for op, tokens in enumerate(self.op_tokens)}
        # Exclusive upper bound of each arch entry: node k reads nodes 0..k-1.
        self._limits = tuple(_node(i // 2) if i % 2 == 0 else len(self.ops) for i in range(ARCH_LEN))

    def sample(self, rng: np.random.Generator) -> Arch:
        """Every input and op uniform and independent, as NAO's ``generate_arch``."""
        return tuple(int(v) for v in rng.integers(0, self._limits))

    def _problem(self, values: Sequence[int]) -> str | None:
        """What is wrong with an arch's 40 values, or None."""
        for i, (value, limit) in enumerate(zip(values, self._limits, strict=True)):
            if 0 <= value < limit:
                continue
            if i % 2:
                return f"{_where(i // 2)} has op {value}, outside 0..{limit - 1}"
            why = "does not exist yet" if value >= limit else "is not a node"
            return (f"{_where(i // 2)} reads node {value}, which {why}; "
                    f"node {limit} may read nodes 0..{limit - 1}")
        return None

    def is_valid(self, arch: object) -> bool:
        return (isinstance(arch, tuple) and len(arch) == ARCH_LEN
                and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in arch)
                and self._problem(arch) is None)

    def canonical(self, arch: Arch) -> Arch:
        """``arch`` with the two branches of every node in sorted order: the same network."""
        out: list[int] = []
        for start in range(0, ARCH_LEN, 4):
            first, second = sorted((arch[start:start + 2], arch[start + 2:start + 4]))
            out += first + second
        return tuple(out)

    def key(self, arch: Arch) -> str:
        return self.to_string(self.canonical(arch))

    def to_string(self, arch: Arch) -> str:
        cells = []
        for cell_index, cell in enumerate(CELLS):
            start = cell_index * 4 * NUM_NODES
            nodes = [f"[{arch[n]} {self.ops[arch[n + 1]]}, {arch[n + 2]} {self.ops[arch[n + 3]]}]"
                     for n in range(start, start + 4 * NUM_NODES, 4)]
            cells.append(f"{cell}: {' '.join(nodes)}")
        return " | ".join(cells)

    def to_official_string(self, arch: Arch) -> str:
        """The official integer string (as the published training scripts take it)."""
        values = [str(v + self.string_op_offset if i % 2 else v) for i, v in enumerate(arch)]
        half = ARCH_LEN // 2
        return f"{' '.join(values[:half])} | {' '.join(values[half:])}"

    def _format(self) -> str:
        low = self.string_op_offset
        return (f"expected a published cell ({', '.join(PUBLISHED[self.name])}), "
                f"'normal: [in op, in op] x{NUM_NODES} | reduce: [in op, in op] x{NUM_NODES}' "
                f"with op in {', '.join(self.ops)}, or the official {ARCH_LEN} integers "
                f"'in1 op1 in2 op2' per node (op ids {low}..{low + len(self.ops) - 1}), "
                "optionally with '|' between the cells")

    def from_string(self, text: str) -> Arch:
        stripped = text.strip()
        if stripped in PUBLISHED[self.name]:
            return self._parse_ints(PUBLISHED[self.name][stripped])
        parts = stripped.replace("|", " | ").split()
        try:
            if all(p == "|" or _INT_RE.fullmatch(p) for p in parts):
                return self._parse_ints(stripped)
            if stripped.startswith("normal"):
                return self._parse_named(stripped)
            elsewhere = [space for space, cells in PUBLISHED.items() if stripped in cells]
            if elsewhere:
                raise InvalidArchitectureError(f"that is a published cell of space {elsewhere[0]!r}: "
                                               "parse it with that space")
            raise InvalidArchitectureError(self._format())
        except InvalidArchitectureError as err:
            raise InvalidArchitectureError(f"bad {self.name} arch {text!r}: {err}") from None

    def _parse_ints(self, text: str) -> Arch:
        parts = text.replace("|", " | ").split()
        bars = [i for i, p in enumerate(parts) if p == "|"]
        if bars not in ([], [ARCH_LEN // 2]):
            raise InvalidArchitectureError(f"'|' may only separate the two cells, after the first "
                                           f"{ARCH_LEN // 2} integers")
        values = [int(p) for p in parts if p != "|"]
        if len(values) != ARCH_LEN:
            raise InvalidArchitectureError(f"{len(values)} integers, expected {ARCH_LEN}: 'in1 op1 in2 op2' "
                                           f"for each of {NUM_NODES} nodes, normal cell then reduction cell")
        low, high = self.string_op_offset, self.string_op_offset + len(self.ops) - 1
        for i in range(1, ARCH_LEN, 2):
            if not low <= values[i] <= high:
                foreign, hint = self.foreign_ops
                fix = hint if values[i] in foreign else f"use op ids {low}..{high}"
                raise InvalidArchitectureError(f"{_where(i // 2)} has op id {values[i]}, outside "
                                               f"{low}..{high}; {fix}")
            values[i] -= low
        return self._checked(values)

    def _parse_named(self, text: str) -> Arch:
        match = _NAMED_RE.fullmatch(text)
        if not match:
            raise InvalidArchitectureError("expected 'normal: [in op, in op] ... | "
                                           "reduce: [in op, in op] ...'")
        values: list[int] = []
        for cell, body in zip(CELLS, match.groups(), strict=True):
            nodes = _NODE_RE.findall(body)
            if len(nodes) != NUM_NODES or _NODE_RE.sub("", body).strip():
                raise InvalidArchitectureError(f"the {cell} cell needs exactly {NUM_NODES} nodes, each "
                                               "written '[in op, in op]'")
            for node, fields in enumerate(nodes, start=2):
                for source, op in zip(fields[::2], fields[1::2], strict=True):
                    if op not in self.ops:
                        raise InvalidArchitectureError(f"unknown op {op!r} in {cell} node {node}; use one of "
                                                       f"{', '.join(self.ops)}")
                    values += [int(source), self.ops.index(op)]
        return self._checked(values)

    def _checked(self, values: list[int]) -> Arch:
        problem = self._problem(values)
        if problem:
            raise InvalidArchitectureError(problem)
        return tuple(values)

    def to_tokens(self, arch: Arch) -> np.ndarray:
        tokens: list[int] = []
        for i in range(0, ARCH_LEN, 2):
            tokens += [arch[i] + 1, *self.op_tokens[arch[i + 1]]]
        return np.asarray(tokens, np.int32)

    def from_tokens(self, tokens: Sequence[int]) -> Arch | None:
        tokens = np.asarray(tokens)
        if tokens.shape != (self.seq_len,) or not np.issubdtype(tokens.dtype, np.integer):
            return None
        values: list[int] = []
        for block in tokens.reshape(NUM_BRANCHES, self.tokens_per_step).tolist():
            op = self._op_of_tokens.get(tuple(block[1:]))
            if op is None:
                return None
            values += [block[0] - 1, op]
        return tuple(values) if self._problem(values) is None else None

    def token_mask(self) -> np.ndarray:
        mask = np.zeros((NUM_BRANCHES, self.tokens_per_step, self.vocab_size), bool)
        for branch in range(NUM_BRANCHES):
            mask[branch, 0, 1:_node(branch) + 1] = True  # node k reads nodes 0..k-1: tokens 1..k
        for tokens in self.op_tokens:
            mask[:, np.arange(1, self.tokens_per_step), list(tokens)] = True
        return mask.reshape(self.seq_len, self.vocab_size)

    def transition_mask(self) -> np.ndarray:
        """``token_mask``, except that an op's later tokens must agree with the one just emitted.

        Only the previous token is seen, which pins the op exactly when it has at most two
        tokens (type and kernel), as here. Rows of previous tokens that cannot occur are empty.
        """
        width, vocab = self.tokens_per_step, self.vocab_size
        mask = super().transition_mask().reshape(NUM_BRANCHES, width, vocab, vocab)
        for position in range(2, width):
            mask[:, position] = False
            for tokens in self.op_tokens:
                mask[:, position, tokens[position - 2], tokens[position - 1]] = True
        return mask.reshape(self.seq_len, vocab, vocab)

    def neighbors(self, arch: Arch) -> list[Arch]:
        """Every change of one input or one op of one branch, in a fixed order, one per key.

        Two edits give the same network only when a node's two branches are equal; the first is kept.
        """
        seen = {self.canonical(arch)}
        out = []
        for i, limit in enumerate(self._limits):
            for value in range(limit):
                candidate = arch[:i] + (value,) + arch[i + 1:]
                canonical = self.canonical(candidate)
                if canonical not in seen:
                    seen.add(canonical)
                    out.append(candidate)
        return out

    def symmetry_permutations(self) -> np.ndarray:
        """All 2^10 sets of nodes (of both cells) with their branches swapped, identity first.

        The official code swaps one random node per cell; any set keeps the network the same.
        """
        nodes = len(CELLS) * NUM_NODES
        positions = np.arange(self.seq_len)
        swapped = positions.reshape(nodes, 2, self.tokens_per_step)[:, ::-1].reshape(-1)
        subsets = (np.arange(2 ** nodes)[:, None] >> np.arange(nodes)) & 1
        chosen = np.repeat(subsets, 2 * self.tokens_per_step, axis=1).astype(bool)
        return np.where(chosen, swapped, positions)

    def graph(self, arch: Arch) -> list[tuple[str, list[str], list[tuple[int, int, str]]]]:
        """One drawing per cell: its inputs, nodes 2..6 and the output node they are concatenated into."""
        labels = ["in 0", "in 1"] + [f"node {k}" for k in range(2, NUM_NODES + 2)] + ["out = concat"]
        cells = []
        for cell_index, title in enumerate(("normal cell", "reduction cell")):
            edges: list[tuple[int, int, str]] = []
            read = set()
            start = cell_index * 4 * NUM_NODES
            for node in range(NUM_NODES):
                for i in (start + 4 * node, start + 4 * node + 2):
                    edges.append((arch[i], node + 2, self.ops[arch[i + 1]]))
                    read.add(arch[i])
            # As NAO_V1's Cell: every node nothing reads, cell inputs included, is concatenated.
            edges += [(k, NUM_NODES + 2, "") for k in range(NUM_NODES + 2) if k not in read]
            cells.append((title, list(labels), edges))
        return cells


class CifarWsSpace(_CellSpace):
    """NAO-WS's 5-op cells (the ENAS micro space): tokens ``[in+1, op+7]`` per branch, vocab 12."""

    name = "cifar_ws"
    ops = WS_OPS
    op_tokens = tuple((op + 7,) for op in range(len(WS_OPS)))
    vocab_size = 12
    seq_len = 2 * NUM_BRANCHES
    tokens_per_step = 2
    string_op_offset = 0
    foreign_ops = (range(5, 16), "ids 5..15 are ops of the 11-op NAONet space: parse it with space 'cifar'")


class CifarSpace(_CellSpace):
    """Full NAO's 11-op cells: TF tokens ``[in+1, op type, kernel size]`` per branch, vocab 21."""

    name = "cifar"
    ops = FULL_OPS
    op_tokens = ((_IDENTITY, _K1X1), (_CONV, _K1X1), (_CONV, _K3X3), (_CONV, _K1X3_3X1), (_CONV, _K1X7_7X1),
                 (_MAX_POOL, _K2X2), (_MAX_POOL, _K3X3), (_MAX_POOL, _K5X5),
                 (_AVG_POOL, _K2X2), (_AVG_POOL, _K3X3), (_AVG_POOL, _K5X5))
    vocab_size = 21
    seq_len = 3 * NUM_BRANCHES
    tokens_per_step = 3
    string_op_offset = 5
    foreign_ops = (range(0, 5), "ids 0..4 are the 5-op NAO-WS ops: parse it with space 'cifar_ws' "
                                "(this space writes ops as the PyTorch ids 5..15)")
