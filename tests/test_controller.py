"""The NAO controller: it overfits a small pool, ascends its predictor, decodes under the mask."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import SMALL_CONTROLLER

from nao.controller import Controller, generation, training
from nao.controller.model import EPD, pooled_embedding
from nao.spaces import NasBench201Space

POOL_SIZE = 32
FIT_EPOCHS = 800  # one minibatch per epoch at batch 32: 800 steps


def distinct_archs(space, count: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    archs, seen = [], set()
    while len(archs) < count:
        arch = space.sample(rng)
        if arch not in seen:
            seen.add(arch)
            archs.append(arch)
    return archs


def member(params, index: int):
    return jax.tree.map(lambda leaf: leaf[index], params)


def tree_equal(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


class SwapSpace(NasBench201Space):
    """NB201 with a made-up symmetry: edges 0 and 1 are interchangeable."""

    def symmetry_permutations(self) -> np.ndarray:
        return np.array([[0, 1, 2, 3, 4, 5], [1, 0, 2, 3, 4, 5]])


@pytest.fixture(scope="module")
def pool(nb201_space):
    archs = distinct_archs(nb201_space, POOL_SIZE, seed=0)
    targets = np.random.default_rng(1).uniform(size=POOL_SIZE)
    return nb201_space.tokens_batch(archs), targets


@pytest.fixture(scope="module")
def fitted(nb201_space, pool):
    tokens, targets = pool
    controller = Controller(nb201_space, SMALL_CONTROLLER, jax.random.key(0))
    before = controller.predict(tokens)
    metrics = controller.fit(tokens, targets, jax.random.key(1), epochs=FIT_EPOCHS)
    return controller, before, metrics


def test_ensemble_members_start_different(nb201_space):
    controller = Controller(nb201_space, SMALL_CONTROLLER, jax.random.key(0))
    first, second = member(controller.params, 0), member(controller.params, 1)
    assert not tree_equal(first, second)


def test_fit_reconstructs_every_sequence_for_every_member(fitted, pool):
    controller, _, _ = fitted
    tokens, _ = pool
    rebuilt = controller.reconstruct(tokens)
    assert rebuilt.shape == (SMALL_CONTROLLER.ensemble, POOL_SIZE, 6)
    np.testing.assert_array_equal(rebuilt, np.broadcast_to(tokens, rebuilt.shape))


def test_fit_lowers_predictor_mse(fitted, pool):
    controller, before, metrics = fitted
    tokens, targets = pool
    after = controller.predict(tokens)
    assert before.shape == after.shape == (SMALL_CONTROLLER.ensemble, POOL_SIZE)
    mse_before = ((before - targets) ** 2).mean(axis=1)
    mse_after = ((after - targets) ** 2).mean(axis=1)
    assert np.all(mse_after < 0.25 * mse_before), (mse_before, mse_after)
    assert np.all(mse_after < 0.02)
    assert set(metrics) == {"mse", "nll"}
    assert 0 <= metrics["mse"] < 0.05 and 0 <= metrics["nll"] < 0.1


def test_gradient_step_raises_predicted_score(fitted, pool):
    controller, _, _ = fitted
    tokens, _ = pool
    model = controller.model
    for index in range(SMALL_CONTROLLER.ensemble):
        params = member(controller.params, index)
        outputs = model.apply(params, jnp.asarray(tokens), method=EPD.encode)
        score = model.apply(params, pooled_embedding(outputs), method=EPD.predict)
        moved = generation.gradient_ascent(model, params, outputs, jnp.asarray([0.0, 0.05]))
        assert moved.shape == (2,) + outputs.shape
        np.testing.assert_allclose(jnp.linalg.norm(moved, axis=-1), 1.0, rtol=1e-5)
        np.testing.assert_allclose(moved[0], outputs, atol=1e-6)  # eta 0 stays put
        moved_score = model.apply(params, pooled_embedding(moved[1]), method=EPD.predict)
        raised = np.asarray(moved_score > score)
        assert raised.mean() >= 0.9, (index, np.asarray(score), np.asarray(moved_score))


def test_generate_shape_and_real_mask(fitted, nb201_space, pool):
    controller, _, _ = fitted
    tokens, _ = pool
    etas = np.array([0.0, 1.0, 4.0, 16.0, 64.0])
    generated = controller.generate(tokens[:5], etas)
    assert generated.shape == (SMALL_CONTROLLER.ensemble, 5, 5, 6)
    mask = nb201_space.token_mask()
    assert mask[np.arange(6), generated].all()
    assert all(nb201_space.from_tokens(t) is not None for t in generated.reshape(-1, 6))


def test_generate_obeys_a_restricted_mask(fitted, pool, monkeypatch):
    controller, _, _ = fitted
    tokens, _ = pool
    seeds = tokens[(tokens == 5).any(axis=1)][:8]
    assert len(seeds) == 8
    etas = np.array([0.0, 1.0, 4.0, 16.0])
    # Under the space's own mask the fitted controller reconstructs token 5 at eta 0.
    assert (controller.generate(seeds, etas)[:, 0] == 5).any()
    mask = np.zeros((6, 6), bool)
    mask[:, 1:5] = True  # token 5 forbidden everywhere
    mask[2, 1] = False  # and a few more at single positions
    mask[4, 3] = False
    monkeypatch.setattr(controller, "token_mask", jnp.asarray(mask))
    generated = controller.generate(seeds, etas)
    assert generated.shape == (SMALL_CONTROLLER.ensemble, 4, 8, 6)
    assert not (generated == 5).any()
    assert mask[np.arange(6), generated].all()


@pytest.mark.parametrize("trade_off", [0.8, 0.3])
def test_joint_loss_is_weighted_mse_plus_nll(fitted, pool, trade_off):
    controller, _, _ = fitted
    tokens, targets = pool
    tokens, targets = jnp.asarray(tokens[:8]), jnp.asarray(targets[:8], jnp.float32)
    # Without dropout the loss's terms can be recomputed from the eval-mode network.
    config = dataclasses.replace(SMALL_CONTROLLER, trade_off=trade_off, mlp_dropout=0.0)
    model = EPD(config, controller.space.vocab_size, controller.space.tokens_per_step)
    params = member(controller.params, 1)
    total, (mse, nll) = training.joint_loss(model, params, tokens, targets, jax.random.key(3))
    np.testing.assert_allclose(total, trade_off * mse + (1 - trade_off) * nll, rtol=1e-6)

    outputs = model.apply(params, tokens, method=EPD.encode)
    embedding = pooled_embedding(outputs)
    predicted = model.apply(params, embedding, method=EPD.predict)
    np.testing.assert_allclose(mse, jnp.mean((predicted - targets) ** 2), rtol=1e-5)
    # Teacher forcing by hand: start symbol, then the true previous token.
    carry, previous, log_likelihood = (embedding, embedding), jnp.zeros(8, jnp.int32), 0.0
    for position in range(tokens.shape[1]):
        carry, logits = model.apply(params, carry, previous, outputs, method=EPD.decode_step)
        log_probs = jax.nn.log_softmax(logits)
        log_likelihood += jnp.sum(log_probs[jnp.arange(8), tokens[:, position]])
        previous = tokens[:, position]
    np.testing.assert_allclose(nll, -log_likelihood / tokens.size, rtol=1e-5)


def test_fit_does_not_recompile_when_pool_grows(nb201_space):
    controller = Controller(nb201_space, SMALL_CONTROLLER, jax.random.key(4))
    archs = distinct_archs(nb201_space, 100, seed=4)
    tokens = nb201_space.tokens_batch(archs)
    targets = np.linspace(0, 1, 100)
    controller.fit(tokens[:10], targets[:10], jax.random.key(0))
    compiled = training.fit._cache_size()
    controller.fit(tokens, targets, jax.random.key(1))
    assert training.fit._cache_size() == compiled
    predicted = generation.predict._cache_size()
    controller.predict(tokens[:10])
    controller.predict(tokens)
    assert generation.predict._cache_size() <= predicted + 1


def test_same_seed_gives_identical_params(nb201_space, pool):
    tokens, targets = pool

    def trained(init_seed: int, fit_seed: int):
        controller = Controller(nb201_space, SMALL_CONTROLLER, jax.random.key(init_seed))
        controller.fit(tokens, targets, jax.random.key(fit_seed), epochs=20)
        return controller.params

    reference = trained(11, 12)
    assert tree_equal(trained(11, 12), reference)
    assert not tree_equal(trained(11, 13), reference)
    assert not tree_equal(trained(14, 12), reference)


def test_symmetry_permutations_teach_the_swapped_sequences(fitted, nb201_space):
    """Trained on a pool with positions 0 and 1 declared symmetric, the controller
    predicts each swapped sequence's target and reconstructs it, though it never saw it."""
    space = SwapSpace()
    archs = [a for a in distinct_archs(nb201_space, 200, seed=5) if a[0] != a[1]][:POOL_SIZE]
    tokens = space.tokens_batch(archs)
    swapped = tokens[:, [1, 0, 2, 3, 4, 5]]
    assert not {tuple(s) for s in swapped} & {tuple(t) for t in tokens}
    targets = np.random.default_rng(6).uniform(size=POOL_SIZE)

    def trained(space):
        controller = Controller(space, SMALL_CONTROLLER, jax.random.key(0))
        controller.fit(tokens, targets, jax.random.key(1), epochs=FIT_EPOCHS)
        return controller

    symmetric, plain = trained(space), trained(nb201_space)
    assert np.asarray(symmetric.permutations).shape == (2, 6)
    symmetric_mse = ((symmetric.predict(swapped) - targets) ** 2).mean()
    plain_mse = ((plain.predict(swapped) - targets) ** 2).mean()
    assert symmetric_mse < 0.02 and symmetric_mse < 0.25 * plain_mse, (symmetric_mse, plain_mse)
    rebuilt = symmetric.reconstruct(swapped)
    np.testing.assert_array_equal(rebuilt, np.broadcast_to(swapped, rebuilt.shape))
    assert not (plain.reconstruct(swapped) == swapped).all()
