"""The NAO recurrent cell for language modelling (Luo et al., 2018, NAO; NAO-WS RNN ``model.py``).

State s0 mixes the input and the previous hidden state; each of the 11 nodes
i = 1..11 reads one earlier state s_p (p < i) and applies an activation in
highway form; the cell output is the mean of s1..s11. An architecture is a
tuple of 22 ints ``(p1, a1, ..., p11, a11)``, the official integer format.

Every node feeds the output mean, so a cell is a rooted tree over s0 with an
activation on each node, and two cells compute the same function exactly when
their trees are isomorphic: the canonical key is the tree's canonical form.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from nao.models.rnn import ACTIVATIONS, NUM_NODES
from nao.spaces.base import InvalidArchitectureError, SearchSpace

_NODE_TOKEN0 = 1  # predecessor p is token p + 1 (1..11)
_ACT_TOKEN0 = NUM_NODES + 1  # activation a is token a + 12 (12..15)

# The published cells, in the official integer format (NAO's ``rnn/train_ptb_final.sh``, NAO-WS RNN
# ``train_final.sh``).
PUBLISHED = {
    "naonet": "0 1 0 1 1 1 3 0 4 1 4 1 5 1 1 1 7 1 1 1 1 2",
    "naonet_ws": "0 1 1 1 2 2 1 2 4 1 4 1 4 1 7 1 8 2 1 0 4 1",
}
_READABLE = re.compile(r"^s(\d+)=([a-z]+)\(s(\d+)\)$")

Arch = tuple[int, ...]


class PtbSpace(SearchSpace):
    """Recurrent cells of 11 nodes: tokens ``p+1`` then ``a+12`` per node; 22 tokens, vocab 16."""

    name = "ptb"
    vocab_size = _ACT_TOKEN0 + len(ACTIVATIONS)
    seq_len = 2 * NUM_NODES

    def sample(self, rng: np.random.Generator) -> Arch:
        arch = []
        for node in range(1, NUM_NODES + 1):
            arch += [int(rng.integers(node)), int(rng.integers(len(ACTIVATIONS)))]
        return tuple(arch)

    def is_valid(self, arch) -> bool:
        if not isinstance(arch, tuple) or len(arch) != self.seq_len:
            return False
        if not all(isinstance(v, (int, np.integer)) for v in arch):
            return False
        return all(0 <= arch[2 * i] < i + 1 and 0 <= arch[2 * i + 1] < len(ACTIVATIONS)
                   for i in range(NUM_NODES))

    def key(self, arch: Arch) -> str:
        children: list[list[int]] = [[] for _ in range(NUM_NODES + 1)]
        for node in range(1, NUM_NODES + 1):
            children[arch[2 * node - 2]].append(node)

        def form(node: int) -> str:
            label = "x" if node == 0 else ACTIVATIONS[arch[2 * node - 1]][0]
            return label + "(" + ",".join(sorted(form(c) for c in children[node])) + ")"

        return form(0)

    def to_string(self, arch: Arch) -> str:
        return " ".join(f"s{i + 1}={ACTIVATIONS[arch[2 * i + 1]]}(s{arch[2 * i]})" for i in range(NUM_NODES))

    def from_string(self, text: str) -> Arch:
        text = PUBLISHED.get(text.strip(), text).strip()
        if not text:
            raise InvalidArchitectureError(f"empty {self.name} architecture: {self._hint()}")
        if re.fullmatch(r"[\d\s]+", text):
            arch = tuple(int(v) for v in text.split())
        else:
            arch = self._parse_readable(text)
        if len(arch) != self.seq_len:
            raise InvalidArchitectureError(f"{self.name} architecture {text!r} has {len(arch)} numbers, "
                                           f"needs {self.seq_len}: {self._hint()}")
        for i in range(NUM_NODES):
            pred, act = arch[2 * i], arch[2 * i + 1]
            if not 0 <= pred <= i:
                raise InvalidArchitectureError(f"{self.name} architecture {text!r}: node s{i + 1} reads "
                                               f"s{pred}, but it may only read s0..s{i}")
            if not 0 <= act < len(ACTIVATIONS):
                raise InvalidArchitectureError(f"{self.name} architecture {text!r}: node s{i + 1} has "
                                               f"activation id {act}; ids are 0..3 = {'/'.join(ACTIVATIONS)}")
        return arch

    def _hint(self) -> str:
        return (f"give 22 integers 'p1 a1 ... p11 a11' (node i reads s_p, p < i; activation a in "
                f"0..3 = {', '.join(ACTIVATIONS)}), the form 's1=relu(s0) s2=tanh(s1) ...', "
                f"or a published name: {', '.join(PUBLISHED)}")

    def _parse_readable(self, text: str) -> Arch:
        arch = []
        for index, part in enumerate(text.split(), start=1):
            match = _READABLE.match(part)
            if not match or int(match.group(1)) != index or match.group(2) not in ACTIVATIONS:
                raise InvalidArchitectureError(f"bad node {part!r} in {self.name} architecture {text!r}: "
                                               f"expected s{index}=ACT(sP); {self._hint()}")
            arch += [int(match.group(3)), ACTIVATIONS.index(match.group(2))]
        return tuple(arch)

    def to_tokens(self, arch: Arch) -> np.ndarray:
        tokens = np.asarray(arch, np.int32).copy()
        tokens[0::2] += _NODE_TOKEN0
        tokens[1::2] += _ACT_TOKEN0
        return tokens

    def from_tokens(self, tokens: Sequence[int]) -> Arch | None:
        tokens = np.asarray(tokens)
        if tokens.shape != (self.seq_len,) or not self.token_mask()[np.arange(self.seq_len), tokens].all():
            return None
        arch = tokens.copy()
        arch[0::2] -= _NODE_TOKEN0
        arch[1::2] -= _ACT_TOKEN0
        return tuple(int(v) for v in arch)

    def token_mask(self) -> np.ndarray:
        mask = np.zeros((self.seq_len, self.vocab_size), bool)
        for i in range(NUM_NODES):
            mask[2 * i, _NODE_TOKEN0:_NODE_TOKEN0 + i + 1] = True
            mask[2 * i + 1, _ACT_TOKEN0:] = True
        return mask

    def neighbors(self, arch: Arch) -> list[Arch]:
        out = []
        for position, value in enumerate(arch):
            choices = (position // 2 + 1) if position % 2 == 0 else len(ACTIVATIONS)
            out += [arch[:position] + (v,) + arch[position + 1:] for v in range(choices) if v != value]
        return out

    def graph(self, arch: Arch) -> tuple[list[str], list[tuple[int, int, str]]]:
        labels = ["x, h(t-1)"] + [f"s{i + 1}" for i in range(NUM_NODES)] + ["h(t) = mean"]
        edges = [(arch[2 * i], i + 1, ACTIVATIONS[arch[2 * i + 1]]) for i in range(NUM_NODES)]
        edges += [(i + 1, NUM_NODES + 1, "") for i in range(NUM_NODES)]
        return labels, edges


class PtbWsSpace(PtbSpace):
    """The same cells, named for the weight-sharing search (``--space=ptb_ws --evaluator=supernet``)."""

    name = "ptb_ws"
