"""A toy search space: strings of bits (what "Extending nao" in the README adds)."""

import numpy as np

from nao.spaces.base import InvalidArchitectureError, SearchSpace


class BitSpace(SearchSpace):
    name, vocab_size = "bits", 3  # tokens 1 and 2 are the bits 0 and 1; 0 starts decoding

    def __init__(self, bits: int = 8):
        self.seq_len = bits

    def sample(self, rng):
        return tuple(int(b) for b in rng.integers(0, 2, self.seq_len))

    def is_valid(self, arch):
        return isinstance(arch, tuple) and len(arch) == self.seq_len and set(arch) <= {0, 1}

    def key(self, arch):
        return self.to_string(arch)

    def to_string(self, arch):
        return "".join(map(str, arch))

    def from_string(self, text):
        if len(text) != self.seq_len or set(text) - {"0", "1"}:
            raise InvalidArchitectureError(f"bad bit string {text!r}: expected {self.seq_len} 0s and 1s")
        return tuple(int(c) for c in text)

    def to_tokens(self, arch):
        return np.asarray(arch, np.int32) + 1

    def from_tokens(self, tokens):
        arch = tuple(int(t) - 1 for t in tokens)
        return arch if self.is_valid(arch) else None

    def token_mask(self):
        mask = np.ones((self.seq_len, self.vocab_size), bool)
        mask[:, 0] = False
        return mask

    def neighbors(self, arch):
        return [arch[:i] + (1 - arch[i],) + arch[i + 1:] for i in range(self.seq_len)]
