"""The encoder-predictor-decoder (EPD) network of NAO (Luo et al., 2018; NAO_V1's ``encoder.py``,
``decoder.py``).

The encoder embeds a token sequence, runs a 1-layer LSTM, L2-normalises each
step's output (the per-step outputs are what gradient ascent moves), mean-pools
and normalises again to the architecture embedding. The predictor is an MLP
with a sigmoid on the embedding. The decoder is an LSTM started from
(embedding, embedding) with Luong attention over the per-step outputs.

Everything is exposed as pure functions of ``params`` so the train step,
teacher forcing and greedy decoding are each one ``lax.scan`` inside a jit.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from nao.controller.config import ControllerConfig


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
    return x / jnp.sqrt(jnp.maximum(jnp.sum(x * x, axis=axis, keepdims=True), eps))


def pooled_embedding(step_outputs: jax.Array) -> jax.Array:
    """Architecture embedding from the (normalised) per-step encoder outputs."""
    return l2_normalize(jnp.mean(step_outputs, axis=-2))


class EPD(nn.Module):
    """Encoder, predictor and decoder sharing one parameter tree."""

    config: ControllerConfig
    vocab_size: int
    tokens_per_step: int

    def setup(self):
        cfg = self.config
        self.encoder_embed = nn.Embed(self.vocab_size, cfg.emb_size)
        self.encoder_lstm = nn.RNN(nn.OptimizedLSTMCell(cfg.hidden_size))
        self.encoder_dropout = nn.Dropout(cfg.encoder_dropout)
        self.mlp = [nn.Dense(cfg.mlp_hidden) for _ in range(cfg.mlp_layers)]
        self.mlp_dropout = nn.Dropout(cfg.mlp_dropout)
        self.mlp_out = nn.Dense(1)
        self.decoder_embed = nn.Embed(self.vocab_size, cfg.hidden_size)
        self.decoder_cell = nn.OptimizedLSTMCell(cfg.hidden_size)
        self.attention_query = nn.Dense(cfg.hidden_size, use_bias=False)
        self.attention_out = nn.Dense(cfg.hidden_size, use_bias=False)
        self.decoder_logits = nn.Dense(self.vocab_size)

    def encode(self, tokens: jax.Array, train: bool = False) -> jax.Array:
        """(B, L) tokens -> (B, L / tokens_per_step, H) unit-norm step outputs."""
        x = self.encoder_embed(tokens)
        batch, length, width = x.shape
        x = x.reshape(batch, length // self.tokens_per_step, self.tokens_per_step * width)
        x = self.encoder_dropout(x, deterministic=not train)
        return l2_normalize(self.encoder_lstm(x))

    def predict(self, embedding: jax.Array, train: bool = False) -> jax.Array:
        """(B, H) embedding -> (B,) score in (0, 1)."""
        x = embedding
        for layer in self.mlp:
            x = self.mlp_dropout(nn.relu(layer(x)), deterministic=not train)
        return nn.sigmoid(self.mlp_out(x))[..., 0]

    def decoder_lstm(self, carry, token: jax.Array):
        """Feed ``token`` (B,) to the decoder LSTM; returns the new carry and its (B, H) output."""
        return self.decoder_cell(carry, self.decoder_embed(token))

    def decoder_head(self, out: jax.Array, step_outputs: jax.Array) -> jax.Array:
        """Attention over the encoder's (B, T, H) step outputs, then logits: (B, ..., H) -> (B, ..., V)."""
        query = self.attention_query(out)
        weights = nn.softmax(jnp.einsum("b...h,bth->b...t", query, step_outputs), axis=-1)
        context = jnp.einsum("b...t,bth->b...h", weights, step_outputs)
        hidden = jnp.tanh(self.attention_out(jnp.concatenate([context, out], axis=-1)))
        return self.decoder_logits(hidden)

    def decode_step(self, carry, token: jax.Array, step_outputs: jax.Array):
        """One decoder step: feed ``token`` (B,), return the new carry and (B, V) logits."""
        carry, out = self.decoder_lstm(carry, token)
        return carry, self.decoder_head(out, step_outputs)

    def __call__(self, tokens: jax.Array, train: bool = False):
        """Touches every parameter once; used by ``init``."""
        outputs = self.encode(tokens, train)
        embedding = pooled_embedding(outputs)
        _, logits = self.decode_step((embedding, embedding), tokens[:, 0], outputs)
        return self.predict(embedding, train), logits


def teacher_forced_logits(model: EPD, params, tokens: jax.Array, step_outputs: jax.Array,
                          embedding: jax.Array) -> jax.Array:
    """(B, L, V) logits when the decoder is fed <sos> + tokens[:-1].

    Attention reads the LSTM output but does not feed back into it (Luong style), so only the
    LSTM runs step by step; attention and logits are computed for all positions at once.
    """
    inputs = jnp.concatenate([jnp.zeros_like(tokens[:, :1]), tokens[:, :-1]], axis=1)

    def body(carry, token):
        return model.apply(params, carry, token, method=EPD.decoder_lstm)

    _, outputs = jax.lax.scan(body, (embedding, embedding), inputs.T)
    return model.apply(params, jnp.swapaxes(outputs, 0, 1), step_outputs, method=EPD.decoder_head)


def greedy_decode(model: EPD, params, step_outputs: jax.Array, embedding: jax.Array,
                  transition_mask: jax.Array) -> jax.Array:
    """(B, L) argmax tokens, each restricted to ``transition_mask[position, previous token]`` (L, V, V)."""
    batch = embedding.shape[0]

    def body(state, mask):
        carry, token = state
        carry, logits = model.apply(params, carry, token, step_outputs, method=EPD.decode_step)
        allowed = jnp.take(mask, token, axis=0)
        token = jnp.argmax(jnp.where(allowed, logits, -jnp.inf), axis=-1).astype(jnp.int32)
        return (carry, token), token

    start = ((embedding, embedding), jnp.zeros((batch,), jnp.int32))
    _, tokens = jax.lax.scan(body, start, transition_mask)
    return tokens.T
