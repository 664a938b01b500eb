"""The NAO recurrent-cell language model and its weight-sharing supernet (reference §1.5, §4.5, §5.4).

One module serves both. The cell's architecture is an int array ``(p1, a1, ..., p11, a11)``:

* traced (a jit argument), it is the supernet: node i takes its weight matrix from a bank
  holding one per (node, predecessor, activation), as NAO-WS does, so one compilation serves
  every cell;
* a NumPy constant closed over by the jitted function, it is a fixed cell: indices are
  static, XLA folds them away, and only the 11 matrices of that cell exist.

Either way the cell output is the mean of s1..s11 (the original supernet averaged s0..s11
while its final cell averaged s1..s11, reference §7.2.7; here search and final training agree).
Dropouts follow AWD-LSTM/DARTS: word dropout on the embedding matrix, locked (per-sequence)
masks on the embedding output, on the cell input x and on the hidden state at every node, and
on the cell output; the softmax is tied to the embedding.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from nao.spaces.ptb import NUM_NODES

_INIT_RANGE = 0.04  # DARTS/NAO recurrent weights: uniform(-0.04, 0.04)
_EMBED_RANGE = 0.1
# Weight-bank row of (node i = 1..11, predecessor p < i, activation a): 4 rows per predecessor.
_BANK_OFFSET = np.array([2 * i * (i - 1) for i in range(1, NUM_NODES + 1)], np.int32)
BANK_ROWS = 2 * NUM_NODES * (NUM_NODES + 1)


@dataclasses.dataclass(frozen=True)
class LmConfig:
    """Sizes and dropouts; defaults are the PTB final model's (reference §5.4)."""

    vocab_size: int = 10000
    emb_size: int = 850
    hidden_size: int = 850
    dropout: float = 0.75  # cell output, before the softmax
    dropout_h: float = 0.25  # hidden state entering each node
    dropout_x: float = 0.75  # cell input x
    dropout_i: float = 0.2  # embedding output
    dropout_e: float = 0.0  # whole words (rows of the embedding)
    shared: bool = False  # True: the supernet's weight bank

    def __post_init__(self):
        if self.emb_size != self.hidden_size:
            raise ValueError(f"the softmax is tied to the embedding, so emb_size ({self.emb_size}) must "
                             f"equal hidden_size ({self.hidden_size})")
        for name in ("dropout", "dropout_h", "dropout_x", "dropout_i", "dropout_e"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name}={getattr(self, name)} must be in [0, 1)")


def _activate(h: jax.Array, act) -> jax.Array:
    functions = (jnp.tanh, jax.nn.relu, jax.nn.sigmoid, lambda v: v)
    if isinstance(act, (int, np.integer)):
        return functions[act](h)
    return jnp.select([act == k for k in range(len(functions))], [f(h) for f in functions])


def _locked_mask(rng: jax.Array, rate: float, shape: tuple[int, ...]) -> jax.Array:
    """Inverted-dropout mask, drawn once per sequence and reused at every time step."""
    keep = 1.0 - rate
    return jax.random.bernoulli(rng, keep, shape).astype(jnp.float32) / keep


class RecurrentLM(nn.Module):
    """Tokens (B, L) + hidden (B, H) -> logits (B, L, V), raw cell outputs (B, L, H), new hidden."""

    config: LmConfig

    def cell_weights(self, arch) -> jax.Array:
        """(11, H, 2H): the matrix of every node of ``arch``."""
        cfg = self.config
        init = nn.initializers.uniform(2 * _INIT_RANGE)
        shift = lambda rng, shape: init(rng, shape) - _INIT_RANGE  # noqa: E731
        if not cfg.shared:
            return self.param("cell", shift, (NUM_NODES, cfg.hidden_size, 2 * cfg.hidden_size))
        bank = self.param("cell_bank", shift, (BANK_ROWS, cfg.hidden_size, 2 * cfg.hidden_size))
        arch = jnp.asarray(arch, jnp.int32)
        return bank[_BANK_OFFSET + 4 * arch[0::2] + arch[1::2]]

    @nn.compact
    def __call__(self, tokens: jax.Array, hidden: jax.Array, arch, length: jax.Array | int | None = None,
                 train: bool = False):
        cfg = self.config
        batch, steps = tokens.shape
        uniform = nn.initializers.uniform(2 * _EMBED_RANGE)
        embedding = self.param("embedding", lambda r, s: uniform(r, s) - _EMBED_RANGE,
                               (cfg.vocab_size, cfg.emb_size))
        init = nn.initializers.uniform(2 * _INIT_RANGE)
        w_input = self.param("w_input", lambda r, s: init(r, s) - _INIT_RANGE,
                             (cfg.emb_size + cfg.hidden_size, 2 * cfg.hidden_size))
        weights = self.cell_weights(arch)
        bias = self.param("softmax_bias", nn.initializers.zeros, (cfg.vocab_size,))

        def mask(rate: float, shape: tuple[int, ...]):
            if not train or rate == 0.0:
                return 1.0
            return _locked_mask(self.make_rng("dropout"), rate, shape)

        table = embedding * mask(cfg.dropout_e, (cfg.vocab_size, 1))
        x = table[tokens] * mask(cfg.dropout_i, (batch, 1, cfg.emb_size))
        x = x * mask(cfg.dropout_x, (batch, 1, cfg.emb_size))
        h_mask = mask(cfg.dropout_h, (batch, cfg.hidden_size))
        # The input half of s0's matmul does not depend on the recurrence: one big matmul up front.
        x_proj = jnp.einsum("ble,ef->lbf", x, w_input[:cfg.emb_size])
        w_hidden = w_input[cfg.emb_size:]
        valid = jnp.arange(steps) < (steps if length is None else length)

        def highway(prev, projected, act):
            gate, value = jnp.split(projected, 2, axis=-1)
            return prev + jax.nn.sigmoid(gate) * (_activate(value, act) - prev)

        def step(h_prev, inputs):
            x_t, valid_t = inputs
            states = [highway(h_prev, x_t + (h_prev * h_mask) @ w_hidden, 0)]
            for node in range(NUM_NODES):
                pred, act = arch[2 * node], arch[2 * node + 1]
                prev = states[pred] if isinstance(pred, (int, np.integer)) else jnp.stack(states)[pred]
                states.append(highway(prev, (prev * h_mask) @ weights[node], act))
            h_t = jnp.mean(jnp.stack(states[1:]), axis=0)
            return jnp.where(valid_t, h_t, h_prev), h_t

        hidden, outputs = jax.lax.scan(step, hidden, (x_proj, valid))
        outputs = jnp.swapaxes(outputs, 0, 1)
        dropped = outputs * mask(cfg.dropout, (batch, 1, cfg.hidden_size))
        logits = dropped @ embedding.T + bias
        return logits, outputs, hidden

    def initial_hidden(self, batch: int) -> jax.Array:
        return jnp.zeros((batch, self.config.hidden_size), jnp.float32)


def static_arch(arch) -> np.ndarray:
    """A cell as a NumPy constant: jitted code that closes over it compiles a fixed network."""
    return np.asarray(arch, np.int64)
