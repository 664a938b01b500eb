"""The NAO recurrent-cell language model and its weight-sharing supernet (NAO-WS RNN ``model.py``,
``model_search.py``).

The module takes the cell's architecture, an int array ``(p1, a1, ..., p11, a11)``, and one
matrix per node (param ``cell``, (11, H, 2H)):

* as a NumPy constant closed over by the jitted function it is a fixed cell: indices are
  static and XLA folds them away;
* traced (a jit argument) it serves every cell with one compilation: the supernet. Its weights
  are a bank with one matrix per (node, predecessor, activation), as NAO-WS has; a step gathers
  the 11 matrices of its cell (``gather_cell``), runs the same module, and writes back only
  those rows (``nao.models.lm_train``), so a step costs what a fixed cell's step costs.

Either way the cell output is the mean of s1..s11 (the original supernet, NAO-WS RNN
``model_search.py``, averaged s0..s11 while its final cell averaged s1..s11; here search and final
training agree).
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

NUM_NODES = 11  # nodes of NAO's recurrent cell; the PTB search space encodes the same cell
ACTIVATIONS = ("tanh", "relu", "sigmoid", "identity")  # the activation ids of the cell array, in order
_INIT_RANGE = 0.04  # DARTS/NAO recurrent weights: uniform(-0.04, 0.04)
_EMBED_RANGE = 0.1
# Weight-bank row of (node i = 1..11, predecessor p < i, activation a): 4 rows per predecessor.
_BANK_OFFSET = np.array([2 * i * (i - 1) for i in range(1, NUM_NODES + 1)], np.int32)
BANK_ROWS = 2 * NUM_NODES * (NUM_NODES + 1)


@dataclasses.dataclass(frozen=True)
class LmConfig:
    """Sizes and dropouts; defaults are the PTB final model's (NAO's ``rnn/train.py`` and
    ``rnn/train_ptb_final.sh``)."""

    vocab_size: int = 10000
    emb_size: int = 850
    hidden_size: int = 850
    dropout: float = 0.75  # cell output, before the softmax
    dropout_h: float = 0.25  # hidden state entering each node
    dropout_x: float = 0.75  # cell input x
    dropout_i: float = 0.2  # embedding output
    dropout_e: float = 0.0  # whole words (rows of the embedding)

    def __post_init__(self):
        if self.emb_size != self.hidden_size:
            raise ValueError(f"the softmax is tied to the embedding, so emb_size ({self.emb_size}) must "
                             f"equal hidden_size ({self.hidden_size})")
        for name in ("dropout", "dropout_h", "dropout_x", "dropout_i", "dropout_e"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name}={getattr(self, name)} must be in [0, 1)")


_ACTIVATIONS = (jnp.tanh, jax.nn.relu, jax.nn.sigmoid, lambda v: v)


def _activate(h: jax.Array, act) -> jax.Array:
    """``act`` an int (fixed cell) or a traced int (supernet)."""
    if isinstance(act, (int, np.integer)):
        return _ACTIVATIONS[act](h)
    return jax.lax.switch(act, _ACTIVATIONS, h)


def _select(states: list[jax.Array], pred) -> jax.Array:
    """``pred`` an int (fixed cell) or a traced int (supernet)."""
    if isinstance(pred, (int, np.integer)):
        return states[pred]
    # A branch per state so far (switch clamps the index): only the chosen one runs, forward and back.
    return jax.lax.switch(pred, [lambda state=state: state for state in states])


def _uniform(scale: float):
    init = nn.initializers.uniform(2 * scale)
    return lambda rng, shape, dtype=jnp.float32: init(rng, shape, dtype) - scale


def bank_rows(arch) -> jax.Array:
    """(11,) rows of the supernet's weight bank that the cell ``arch`` uses."""
    arch = jnp.asarray(arch, jnp.int32)
    return _BANK_OFFSET + 4 * arch[0::2] + arch[1::2]


def init_bank(key: jax.Array, hidden_size: int) -> jax.Array:
    """The supernet's (BANK_ROWS, H, 2H) matrices, initialised as a cell's are."""
    return _uniform(_INIT_RANGE)(key, (BANK_ROWS, hidden_size, 2 * hidden_size))


def gather_cell(params: dict, arch) -> dict:
    """Supernet params {..., cell_bank} -> the params of the cell ``arch`` {..., cell}."""
    out = {k: v for k, v in params.items() if k != "cell_bank"}
    out["cell"] = params["cell_bank"][bank_rows(arch)]
    return out


def _locked_mask(rng: jax.Array, rate: float, shape: tuple[int, ...]) -> jax.Array:
    """Inverted-dropout mask, drawn once per sequence and reused at every time step."""
    keep = 1.0 - rate
    return jax.random.bernoulli(rng, keep, shape).astype(jnp.float32) / keep


class RecurrentLM(nn.Module):
    """Tokens (B, L) + hidden (B, H) -> logits (B, L, V), raw cell outputs (B, L, H), new hidden."""

    config: LmConfig

    @nn.compact
    def __call__(self, tokens: jax.Array, hidden: jax.Array, arch, length: jax.Array | int | None = None,
                 train: bool = False):
        cfg = self.config
        batch, steps = tokens.shape
        embedding = self.param("embedding", _uniform(_EMBED_RANGE), (cfg.vocab_size, cfg.emb_size))
        w_input = self.param("w_input", _uniform(_INIT_RANGE), (cfg.emb_size + cfg.hidden_size,
                                                                2 * cfg.hidden_size))
        weights = self.param("cell", _uniform(_INIT_RANGE), (NUM_NODES, cfg.hidden_size, 2 * cfg.hidden_size))
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

        if isinstance(arch, np.ndarray):
            preds, acts = list(arch[0::2]), list(arch[1::2])
        else:
            preds = jnp.asarray(arch, jnp.int32)[0::2]
            acts = jnp.asarray(arch, jnp.int32)[1::2]

        def step(h_prev, inputs):
            x_t, valid_t = inputs
            states = [highway(h_prev, x_t + (h_prev * h_mask) @ w_hidden, 0)]
            for node in range(NUM_NODES):
                prev = _select(states, preds[node])
                states.append(highway(prev, (prev * h_mask) @ weights[node], acts[node]))
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
