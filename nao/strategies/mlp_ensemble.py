"""An ensemble of small MLP regressors, all members trained at once in one jitted call.

BANANAS' predictor (White, Neiswanger and Savani, 2021): fully connected ReLU layers, a linear
output, mean absolute error, Adam, minibatches drawn by shuffling the training set every epoch.
Members differ only in their initialisation and shuffling (``vmap`` over both, drawn on the host).

The training set is padded to a fixed capacity (``capacity``) and the real rows counted by a traced
value, so a pool that grows by a few architectures per iteration reuses one compilation per power
of two (at least ``MIN_CAPACITY``). Each epoch runs exactly ``ceil(count / batch_size)`` steps (a
loop whose length is traced), the last one on the remaining rows, so the padding never costs an
optimizer step.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax


@dataclasses.dataclass(frozen=True)
class MlpEnsembleConfig:
    members: int = 5
    layers: int = 10  # hidden layers
    units: int = 20  # units per hidden layer
    learning_rate: float = 0.01
    epochs: int = 150
    batch_size: int = 32


# Training sets are padded to at least this many rows: one compilation serves every pool of up to
# 512 architectures (compiling takes seconds; the padding costs no training step).
MIN_CAPACITY = 512


def capacity(count: int, batch_size: int, least: int = MIN_CAPACITY) -> int:
    """Rows a set of ``count`` is padded to: the next power of two (at least ``least``), rounded up to
    a whole number of batches."""
    size = max(2 ** math.ceil(math.log2(max(count, 1))), least, batch_size)
    return -(-size // batch_size) * batch_size


Params = dict[str, jax.Array]


def init_members(config: MlpEnsembleConfig, in_dim: int, rng: np.random.Generator) -> Params:
    """Every member's Glorot-uniform weights and zero biases (the Keras defaults of the authors' MLPs),
    stacked on a leading member axis. The hidden layers after the first share a shape and are
    stacked too, so one ``scan`` runs them. Drawn on the host: the jitted training then holds no
    random number generator, which makes it markedly quicker to compile."""

    def glorot(*shape: int) -> np.ndarray:
        limit = math.sqrt(6.0 / (shape[-2] + shape[-1]))
        return rng.uniform(-limit, limit, (config.members, *shape)).astype(np.float32)

    units, inner, members = config.units, config.layers - 1, config.members
    return {"w_in": glorot(in_dim, units), "b_in": np.zeros((members, units), np.float32),
            "w_hidden": glorot(inner, units, units),
            "b_hidden": np.zeros((members, inner, units), np.float32),
            "w_out": glorot(units, 1), "b_out": np.zeros((members, 1), np.float32)}


def shuffles(config: MlpEnsembleConfig, count: int, rows: int, rng: np.random.Generator) -> np.ndarray:
    """(members, epochs, rows) int32: per member and epoch the ``count`` real rows in a fresh random
    order, then the padding rows."""
    noise = rng.random((config.members, config.epochs, rows))
    noise[..., count:] = 2.0
    return np.argsort(noise, axis=-1).astype(np.int32)


def _apply(params: Params, features: jax.Array) -> jax.Array:
    def layer(hidden, weights):
        weight, bias = weights
        return jax.nn.relu(hidden @ weight + bias), None

    hidden = jax.nn.relu(features @ params["w_in"] + params["b_in"])
    hidden, _ = jax.lax.scan(layer, hidden, (params["w_hidden"], params["b_hidden"]))
    return (hidden @ params["w_out"] + params["b_out"])[..., 0]


@functools.partial(jax.jit, static_argnames=("config",))
def _fit(config: MlpEnsembleConfig, params: Params, features: jax.Array, targets: jax.Array,
         orders: jax.Array, count: jax.Array) -> Params:
    optimizer = optax.adam(config.learning_rate)
    num_batches = (count + config.batch_size - 1) // config.batch_size
    offsets = jnp.arange(config.batch_size)

    def loss(params, rows, weights):
        error = jnp.abs(_apply(params, features[rows]) - targets[rows])
        return jnp.sum(error * weights) / jnp.maximum(jnp.sum(weights), 1.0)

    def member(params, orders):
        def epoch(index, state):
            order = orders[index]

            def step(batch, state):
                params, opt_state = state
                start = batch * config.batch_size
                rows = jax.lax.dynamic_slice(order, (start,), (config.batch_size,))
                weights = (start + offsets < count).astype(jnp.float32)
                grads = jax.grad(loss)(params, rows, weights)
                updates, opt_state = optimizer.update(grads, opt_state, params)
                return optax.apply_updates(params, updates), opt_state

            return jax.lax.fori_loop(0, num_batches, step, state)

        params, _ = jax.lax.fori_loop(0, config.epochs, epoch, (params, optimizer.init(params)))
        return params

    return jax.vmap(member)(params, orders)


@jax.jit
def _predict(params: Params, features: jax.Array) -> jax.Array:
    return jax.vmap(_apply, in_axes=(0, None))(params, features)


def fit_ensemble(config: MlpEnsembleConfig, rng: np.random.Generator, features: np.ndarray,
                 targets: np.ndarray) -> Params:
    """The members' parameters (each array with a leading member axis) after fitting ``targets``
    (n,) from ``features`` (n, F), every member from its own initialisation and shuffling drawn
    from ``rng``."""
    count = len(features)
    rows = capacity(count, config.batch_size)
    padded = np.zeros((rows, features.shape[1]), np.float32)
    padded[:count] = features
    padded_targets = np.zeros(rows, np.float32)
    padded_targets[:count] = targets
    params = init_members(config, features.shape[1], rng)
    return _fit(config, params, padded, padded_targets, shuffles(config, count, rows, rng), np.int32(count))


def predict_ensemble(params: Params, features: np.ndarray) -> np.ndarray:
    """(members, n) predictions for ``features`` (n, F); padded to a power of two (at least 128, the
    candidates of a default iteration) to bound compilations."""
    count = len(features)
    padded = np.zeros((capacity(count, 1, least=128), features.shape[1]), np.float32)
    padded[:count] = features
    return np.asarray(_predict(params, jnp.asarray(padded)))[:, :count]
