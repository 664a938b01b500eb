"""The NAO controller: it overfits a small pool, ascends its predictor, decodes under the mask."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nao.controller import Controller, generation, member_groups, training
from nao.controller.model import EPD, pooled_embedding
from nao.spaces import NasBench201Space

POOL_SIZE = 32
FIT_EPOCHS = 800  # one minibatch per epoch at batch 32: 800 steps


def distinct_archs(space, count: int, seed: int) -> list:
    """Random distinct archs whose edges 0 and 5 differ (so SWAP changes each of them)."""
    rng = np.random.default_rng(seed)
    archs, seen = [], set()
    while len(archs) < count:
        arch = space.sample(rng)
        if arch not in seen and arch[0] != arch[5]:
            seen.add(arch)
            archs.append(arch)
    return archs


def member(params, index: int):
    return jax.tree.map(lambda leaf: leaf[index], params)


def tree_equal(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


SWAP = [5, 1, 2, 3, 4, 0]


class SwapSpace(NasBench201Space):
    """NB201 with a made-up symmetry: edges 0 and 5 are interchangeable."""

    def symmetry_permutations(self) -> np.ndarray:
        return np.array([[0, 1, 2, 3, 4, 5], SWAP])


@pytest.fixture(scope="module")
def pool(nb201_space):
    archs = distinct_archs(nb201_space, POOL_SIZE, seed=0)
    targets = np.random.default_rng(1).uniform(size=POOL_SIZE)
    return nb201_space.tokens_batch(archs), targets


@pytest.fixture(scope="module")
def fitted(nb201_space, pool, small_controller):
    tokens, targets = pool
    controller = Controller(nb201_space, small_controller, jax.random.key(0))
    before = controller.predict(tokens)
    metrics = controller.fit(tokens, targets, jax.random.key(1), epochs=FIT_EPOCHS)
    return controller, before, metrics


def test_ensemble_members_start_different(nb201_space, small_controller):
    controller = Controller(nb201_space, small_controller, jax.random.key(0))
    first, second = member(controller.params, 0), member(controller.params, 1)
    assert not tree_equal(first, second)


def test_fit_reconstructs_every_sequence_for_every_member(fitted, pool, small_controller):
    controller, _, _ = fitted
    tokens, _ = pool
    rebuilt = controller.reconstruct(tokens)
    assert rebuilt.shape == (small_controller.ensemble, POOL_SIZE, 6)
    np.testing.assert_array_equal(rebuilt, np.broadcast_to(tokens, rebuilt.shape))


def test_fit_lowers_predictor_mse(fitted, pool, small_controller):
    controller, before, metrics = fitted
    tokens, targets = pool
    after = controller.predict(tokens)
    assert before.shape == after.shape == (small_controller.ensemble, POOL_SIZE)
    mse_before = ((before - targets) ** 2).mean(axis=1)
    mse_after = ((after - targets) ** 2).mean(axis=1)
    assert np.all(mse_after < 0.25 * mse_before), (mse_before, mse_after)
    assert np.all(mse_after < 0.02)
    assert set(metrics) == {"steps", "mse", "nll"} and metrics["steps"] == FIT_EPOCHS
    assert 0 <= metrics["mse"] < 0.05 and 0 <= metrics["nll"] < 0.1


def test_gradient_step_raises_predicted_score(fitted, pool, small_controller):
    controller, _, _ = fitted
    tokens, _ = pool
    model = controller.model

    @jax.jit  # one compilation instead of many eager dispatches
    def ascend(params):
        outputs = model.apply(params, jnp.asarray(tokens), method=EPD.encode)
        score = model.apply(params, pooled_embedding(outputs), method=EPD.predict)
        moved = generation.gradient_ascent(model, params, outputs, jnp.asarray([0.0, 0.05]))
        moved_score = model.apply(params, pooled_embedding(moved[1]), method=EPD.predict)
        return outputs, score, moved, moved_score

    for index in range(small_controller.ensemble):
        outputs, score, moved, moved_score = ascend(member(controller.params, index))
        assert moved.shape == (2,) + outputs.shape
        np.testing.assert_allclose(jnp.linalg.norm(moved, axis=-1), 1.0, rtol=1e-5)
        np.testing.assert_allclose(moved[0], outputs, atol=1e-6)  # eta 0 stays put
        raised = np.asarray(moved_score > score)
        assert raised.mean() >= 0.9, (index, np.asarray(score), np.asarray(moved_score))


def test_generate_shape_and_real_mask(fitted, nb201_space, pool, small_controller):
    controller, _, _ = fitted
    tokens, _ = pool
    etas = np.array([0.0, 4.0, 64.0])  # three step sizes, as NAO_PRESETS["smoke"]: one compilation
    generated = controller.generate(tokens[:5], etas)
    assert generated.shape == (small_controller.ensemble, 3, 5, 6)
    mask = nb201_space.token_mask()
    assert mask[np.arange(6), generated].all()
    assert all(nb201_space.from_tokens(t) is not None for t in generated.reshape(-1, 6))


def test_generate_obeys_a_restricted_mask(fitted, pool, monkeypatch, small_controller):
    controller, _, _ = fitted
    tokens, _ = pool
    seeds = tokens[(tokens == 5).any(axis=1)][:8]
    assert len(seeds) == 8
    etas = np.array([0.0, 4.0, 16.0])
    # Under the space's own mask the fitted controller reconstructs token 5 at eta 0.
    assert (controller.generate(seeds, etas)[:, 0] == 5).any()
    mask = np.zeros((6, 6), bool)
    mask[:, 1:5] = True  # token 5 forbidden everywhere
    mask[2, 1] = False  # and a few more at single positions
    mask[4, 3] = False
    transitions = np.broadcast_to(mask[:, None, :], (6, 6, 6)).copy()
    monkeypatch.setattr(controller, "transition_mask", jnp.asarray(transitions))
    generated = controller.generate(seeds, etas)
    assert generated.shape == (small_controller.ensemble, 3, 8, 6)
    assert not (generated == 5).any()
    assert mask[np.arange(6), generated].all()


def test_generate_obeys_a_mask_that_depends_on_the_previous_token(fitted, pool, monkeypatch):
    controller, _, _ = fitted
    tokens, _ = pool
    # After token 1 only token 2 may follow, and after 2 only 1: decoded rows alternate after a 1 or 2.
    transitions = np.zeros((6, 6, 6), bool)
    transitions[:, :, 1:] = True
    transitions[:, 1, :] = False
    transitions[:, 1, 2] = True
    transitions[:, 2, :] = False
    transitions[:, 2, 1] = True
    monkeypatch.setattr(controller, "transition_mask", jnp.asarray(transitions))
    generated = controller.generate(tokens[:16], np.array([0.0, 8.0])).reshape(-1, 6)
    previous = np.concatenate([np.zeros((len(generated), 1), int), generated[:, :-1]], axis=1)
    assert transitions[np.arange(6), previous, generated].all()
    assert (generated[:, 0] == 1).any() or (generated[:, 0] == 2).any()


@pytest.mark.parametrize("trade_off, weights", [(0.8, np.ones(8)), (0.3, np.ones(8)),
                                                (0.8, np.linspace(0.0, 1.0, 8))])
def test_joint_loss_is_weighted_mse_plus_nll(fitted, pool, trade_off, weights, small_controller):
    """Each row's squared error counts with its weight (0: a row without a score, as in pre-training)."""
    controller, _, _ = fitted
    tokens, targets = pool
    tokens, targets = jnp.asarray(tokens[:8]), jnp.asarray(targets[:8], jnp.float32)
    weights = jnp.asarray(weights, jnp.float32)
    # Without dropout the loss's terms can be recomputed from the eval-mode network.
    config = dataclasses.replace(small_controller, trade_off=trade_off, mlp_dropout=0.0)
    model = EPD(config, controller.space.vocab_size, controller.space.tokens_per_step)
    params = member(controller.params, 1)

    @jax.jit  # one compilation instead of many eager dispatches
    def loss_and_reference(params):
        loss = training.joint_loss(model, params, tokens, targets, weights, jax.random.key(3))
        outputs = model.apply(params, tokens, method=EPD.encode)
        embedding = pooled_embedding(outputs)
        predicted = model.apply(params, embedding, method=EPD.predict)
        # Teacher forcing by hand: the start symbol, then the true previous token.
        carry, previous, log_likelihood = (embedding, embedding), jnp.zeros(8, jnp.int32), 0.0
        for position in range(tokens.shape[1]):
            carry, logits = model.apply(params, carry, previous, outputs, method=EPD.decode_step)
            log_probs = jax.nn.log_softmax(logits)
            log_likelihood += jnp.sum(log_probs[jnp.arange(8), tokens[:, position]])
            previous = tokens[:, position]
        return loss, jnp.mean(weights * (predicted - targets) ** 2), -log_likelihood / tokens.size

    (total, (mse, nll)), reference_mse, reference_nll = loss_and_reference(params)
    np.testing.assert_allclose(total, trade_off * mse + (1 - trade_off) * nll, rtol=1e-6)
    np.testing.assert_allclose(mse, reference_mse, rtol=1e-5)
    np.testing.assert_allclose(nll, reference_nll, rtol=1e-5)
    assert float(mse) > 0 and float(nll) > 0


def test_fit_does_not_recompile_when_pool_grows(nb201_space, small_controller):
    controller = Controller(nb201_space, small_controller, jax.random.key(4))
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


def test_member_groups_split_the_ensemble_into_equal_groups():
    assert member_groups(5, 1).tolist() == [[0, 1, 2, 3, 4]]
    assert member_groups(5, 2).tolist() == [[0, 1, 2], [3, 4, 4]]
    assert member_groups(5, 4).tolist() == [[0, 1], [2, 3], [4, 4]]
    assert member_groups(5, 16).tolist() == [[0], [1], [2], [3], [4]]
    assert member_groups(1, 2).tolist() == [[0]]


def test_fit_in_groups_trains_each_member_as_the_whole_ensemble_does(nb201_space, pool, small_controller):
    """A member draws the same minibatches, permutations and dropout in whichever group (and thread)
    it is fitted: one call, a thread per member and a padded last group agree up to float rounding,
    and the padding's copy is dropped."""
    tokens, targets = pool

    def trained(groups):
        controller = Controller(nb201_space, small_controller, jax.random.key(5))
        controller.groups = np.asarray(groups, np.int32)
        metrics = controller.fit(tokens, targets, jax.random.key(6), epochs=20)
        return jax.tree.leaves((controller.params, controller.opt_state)), metrics

    whole, whole_metrics = trained([[0, 1]])
    for groups in ([[0], [1]], [[0], [1], [1]]):
        leaves, metrics = trained(groups)
        assert [leaf.shape for leaf in leaves] == [leaf.shape for leaf in whole]
        for leaf, reference in zip(leaves, whole):
            np.testing.assert_allclose(leaf, reference, rtol=1e-4, atol=1e-5)
        assert metrics["mse"] == pytest.approx(whole_metrics["mse"], rel=1e-4)


def test_same_seed_gives_identical_params(nb201_space, pool, small_controller):
    tokens, targets = pool

    def trained(init_seed: int, fit_seed: int):
        controller = Controller(nb201_space, small_controller, jax.random.key(init_seed))
        controller.fit(tokens, targets, jax.random.key(fit_seed), epochs=20)
        return controller.params

    reference = trained(11, 12)
    assert tree_equal(trained(11, 12), reference)
    assert not tree_equal(trained(11, 13), reference)
    assert not tree_equal(trained(14, 12), reference)


def test_symmetry_permutations_teach_the_swapped_sequences(fitted, pool, small_controller):
    """Trained with edges 0 and 5 declared symmetric, the controller predicts each swapped
    sequence's target and reconstructs it, though the pool never held it; the same
    controller trained without the symmetry (``fitted``) does neither."""
    tokens, targets = pool
    swapped = tokens[:, SWAP]
    assert not {tuple(s) for s in swapped} & {tuple(t) for t in tokens}
    symmetric = Controller(SwapSpace(), small_controller, jax.random.key(0))
    assert np.asarray(symmetric.permutations).shape == (2, 6)
    symmetric.fit(tokens, targets, jax.random.key(1), epochs=FIT_EPOCHS)
    plain, _, _ = fitted

    symmetric_mse = ((symmetric.predict(swapped) - targets) ** 2).mean(axis=1)
    plain_mse = ((plain.predict(swapped) - targets) ** 2).mean(axis=1)
    assert np.all(symmetric_mse < 0.02), symmetric_mse
    assert np.all(symmetric_mse < 0.25 * plain_mse), (symmetric_mse, plain_mse)
    rebuilt = symmetric.reconstruct(swapped)
    np.testing.assert_array_equal(rebuilt, np.broadcast_to(swapped, rebuilt.shape))
    plain_exact = (plain.reconstruct(swapped) == swapped).all(axis=2).mean(axis=1)
    assert np.all(plain_exact < 0.5), plain_exact


def test_a_long_fit_runs_in_pieces_that_equal_one_call_and_logs_its_progress(nb201_space, pool,
                                                                              small_controller, monkeypatch,
                                                                              caplog):
    import functools
    import logging

    import nao.controller as controller_module

    tokens, targets = pool
    fitted = {}
    for chunk in (1000, 7):
        monkeypatch.setattr(controller_module, "CHUNK_STEPS", chunk)
        monkeypatch.setattr(controller_module, "Ticker", functools.partial(controller_module.Ticker, every=0))
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="nao"):
            controller = Controller(nb201_space, small_controller, jax.random.key(0))
            metrics = controller.fit(tokens, targets, jax.random.key(1), steps=20)
        fitted[chunk] = (controller.params, metrics)
        lines = [r.getMessage() for r in caplog.records if "controller fit on" in r.getMessage()]
        # A line after each piece but the last: none for one call, steps 7 and 14 of 20 in pieces.
        expected = [] if chunk == 1000 else ["step 7/20", "step 14/20"]
        assert [line.split("  ")[1] for line in lines] == expected
    assert tree_equal(fitted[1000][0], fitted[7][0]) and fitted[1000][1] == fitted[7][1]
