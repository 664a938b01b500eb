"""The joint loss and the jitted training loop of the controller.

``fit`` runs all of an iteration's steps inside one jit (a ``fori_loop`` whose
length is a traced value), over a pool padded to a fixed capacity, so growing
the pool from 10 to 200 architectures does not recompile. Ensemble members are
trained side by side with ``vmap``; each draws its own minibatches.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from nao.controller.config import ControllerConfig
from nao.controller.model import EPD, pooled_embedding, teacher_forced_logits


def make_optimizer(config: ControllerConfig) -> optax.GradientTransformation:
    # PyTorch's Adam(weight_decay=wd) adds wd * w to the (already clipped) gradient.
    return optax.chain(
        optax.clip_by_global_norm(config.grad_clip),
        optax.add_decayed_weights(config.weight_decay),
        optax.adam(config.learning_rate),
    )


def joint_loss(model: EPD, params, tokens: jax.Array, targets: jax.Array, weights: jax.Array, key: jax.Array):
    """lambda * MSE(predictor) + (1 - lambda) * NLL(decoder, teacher forcing).

    ``weights`` scales each row's squared error: 0 for a row without a score (reconstruction only),
    below 1 for a pseudo-label."""
    encoder_key, mlp_key = jax.random.split(key)
    outputs = model.apply(params, tokens, True, method=EPD.encode, rngs={"dropout": encoder_key})
    embedding = pooled_embedding(outputs)
    predicted = model.apply(params, embedding, True, method=EPD.predict, rngs={"dropout": mlp_key})
    logits = teacher_forced_logits(model, params, tokens, outputs, embedding)
    log_probs = jax.nn.log_softmax(logits)
    nll = -jnp.mean(jnp.take_along_axis(log_probs, tokens[..., None], axis=-1))
    mse = jnp.mean(weights * (predicted - targets) ** 2)
    trade_off = model.config.trade_off
    return trade_off * mse + (1.0 - trade_off) * nll, (mse, nll)


def _init_members(model: EPD, seq_len: int, key: jax.Array):
    dummy = jnp.ones((1, seq_len), jnp.int32)
    keys = jax.random.split(key, model.config.ensemble)
    params = jax.vmap(lambda k: model.init({"params": k, "dropout": k}, dummy))(keys)
    return params, jax.vmap(make_optimizer(model.config).init)(params)


@functools.cache
def _compiled_init(model: EPD, seq_len: int):
    # Run eagerly, the vmapped init dispatches op by op (seconds); it runs once per controller,
    # so XLA's optimisation passes cost more compile time than they would ever save.
    return (jax.jit(functools.partial(_init_members, model, seq_len)).lower(jax.random.key(0))
            .compile(compiler_options={"xla_backend_optimization_level": 0}))


def init_ensemble(model: EPD, seq_len: int, key: jax.Array):
    """Parameters and optimizer states of ``config.ensemble`` independently initialised members."""
    return _compiled_init(model, seq_len)(key)


@functools.partial(jax.jit, static_argnames=("model",))
def fit(model: EPD, params, opt_state, tokens: jax.Array, targets: jax.Array, weights: jax.Array,
        count: jax.Array, permutations: jax.Array, members: jax.Array, first_step: jax.Array,
        num_steps: jax.Array, key: jax.Array):
    """Train ensemble members for minibatch steps ``first_step .. first_step + num_steps - 1`` (a
    long fit runs in pieces, each step drawing from ``key`` and its index as one call would).

    ``params`` and ``opt_state`` hold the members whose indices are ``members`` (m,): each draws what
    it draws in a fit of the whole ensemble, so the ensemble may be fitted in groups, one per thread.

    tokens (C, L), targets (C,) and their MSE weights (C,) hold ``count`` real rows followed by padding;
    minibatches are drawn with replacement from the real rows, and each sample
    is rewritten with a random symmetry permutation (P, L) of its space.
    Returns the new params, optimizer states and the members' last (mse, nll).
    """
    config = model.config
    optimizer = make_optimizer(config)
    grad_fn = jax.grad(functools.partial(joint_loss, model), has_aux=True)

    def member_step(params, opt_state, key):
        row_key, perm_key, loss_key = jax.random.split(key, 3)
        rows = jax.random.randint(row_key, (config.batch_size,), 0, count)
        perms = permutations[jax.random.randint(perm_key, (config.batch_size,), 0,
                                                permutations.shape[0])]
        batch = jnp.take_along_axis(tokens[rows], perms, axis=1)
        grads, metrics = grad_fn(params, batch, targets[rows], weights[rows], loss_key)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, jnp.stack(metrics)

    def body(step, state):
        params, opt_state, _ = state
        keys = jax.random.split(jax.random.fold_in(key, step), config.ensemble)[members]
        return jax.vmap(member_step)(params, opt_state, keys)

    metrics = jnp.zeros((members.shape[0], 2))
    return jax.lax.fori_loop(first_step, first_step + num_steps, body, (params, opt_state, metrics))
