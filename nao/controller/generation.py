"""New architectures from gradient ascent in embedding space (Luo et al., 2018; NAO_V1's ``encoder.py``
``infer``).

For every seed the gradient of the predicted score is taken with respect to
the per-step encoder outputs; each output moves by ``eta`` times it, is
re-normalised, and the moved outputs are decoded greedily under the space's
valid-token (transition) mask. All members x step sizes x seeds are one vectorised call.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from nao.controller.model import EPD, greedy_decode, l2_normalize, pooled_embedding


def _member_predict(model: EPD, params, tokens: jax.Array) -> jax.Array:
    outputs = model.apply(params, tokens, method=EPD.encode)
    return model.apply(params, pooled_embedding(outputs), method=EPD.predict)


@functools.partial(jax.jit, static_argnames=("model",))
def predict(model: EPD, params, tokens: jax.Array) -> jax.Array:
    """(N, L) tokens -> (members, N) predicted normalised scores."""
    return jax.vmap(lambda p: _member_predict(model, p, tokens))(params)


def gradient_ascent(model: EPD, params, step_outputs: jax.Array, etas: jax.Array) -> jax.Array:
    """One step of size eta on the per-step outputs: (S, T, H) -> (E, S, T, H), re-normalised."""

    def total_score(outputs):
        return jnp.sum(model.apply(params, pooled_embedding(outputs), method=EPD.predict))

    grads = jax.grad(total_score)(step_outputs)
    moved = step_outputs[None] + etas[:, None, None, None] * grads[None]
    return l2_normalize(moved)


@functools.partial(jax.jit, static_argnames=("model",))
def generate(model: EPD, params, seed_tokens: jax.Array, etas: jax.Array,
             transition_mask: jax.Array) -> jax.Array:
    """Decoded tokens (members, E, S, L) after one ascent step of each eta from each seed."""

    def member(params):
        outputs = model.apply(params, seed_tokens, method=EPD.encode)
        moved = gradient_ascent(model, params, outputs, etas)
        flat = moved.reshape((-1,) + moved.shape[2:])
        tokens = greedy_decode(model, params, flat, pooled_embedding(flat), transition_mask)
        return tokens.reshape(etas.shape[0], seed_tokens.shape[0], -1)

    return jax.vmap(member)(params)
