"""NAO's small-budget options: growing batches, pre-training on unlabelled architectures, refits from
the start, pseudo-labels. Each test shows the option does what it says, not how well it searches."""

from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np
import pytest

from nao.config import ConfigError, assemble
from nao.strategies.base import Pool
from nao.strategies.nao import NAO_PRESETS, NaoOptions, NaoStrategy, stalled

SMALL = dataclasses.replace(NAO_PRESETS["smoke"], etas=(1.0, 4.0))


def scored_pool(space, evaluator, count: int, seed: int = 0) -> Pool:
    pool = Pool(space)
    rng = np.random.default_rng(seed)
    while len(pool) < count:
        arch = space.sample(rng)
        if arch not in pool:
            pool.add(arch, next(iter(evaluator.evaluate([arch])))[1].valid)
    return pool


class FitSpy:
    """Wraps ``controller.fit``: records each call's rows, targets, weights, the params it started from
    and the ensemble's mean prediction of its rows just before it."""

    def __init__(self, controller):
        self.controller, self.fit, self.calls = controller, controller.fit, []
        controller.fit = self

    def __call__(self, tokens, targets, key, **kwargs):
        self.calls.append({"tokens": tokens, "targets": np.asarray(targets), "weights": kwargs.get("weights"),
                           "start": self.controller.params,
                           "predicted": self.controller.predict(tokens).mean(0)})
        return self.fit(tokens, targets, key, **kwargs)


def reconstruction_accuracy(strategy: NaoStrategy, archs: list) -> float:
    tokens = strategy.space.tokens_batch(archs)
    return float((strategy.controller.reconstruct(tokens) == tokens).mean())


def tree_equal(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.fixture(scope="module")
def pool(nb201_space, nb201_evaluator) -> Pool:
    return scored_pool(nb201_space, nb201_evaluator, 8)


@pytest.mark.parametrize("fraction, expected", [(0.0, 4), (0.25, 2), (0.5, 4)])
def test_batch_fraction_caps_a_batch_at_a_share_of_the_pool(nb201_space, pool, small_controller, fraction,
                                                            expected):
    options = dataclasses.replace(SMALL, batch_fraction=fraction)
    strategy = NaoStrategy(nb201_space, 0, small_controller, options)
    proposed = strategy.propose(pool, 10)
    assert len(proposed) == expected == min(options.per_iteration, math.ceil(fraction * len(pool)) or 10)
    assert not any(arch in pool for arch in proposed)


def test_pretraining_teaches_reconstruction_of_unseen_architectures(nb201_space, pool, small_controller):
    """Reconstruction-only steps on random unlabelled architectures (no evaluations) make the decoder
    rebuild architectures it never saw, far better than the same first fit without them."""
    unseen = [nb201_space.sample(np.random.default_rng([7, i])) for i in range(64)]
    accuracy = {}
    for steps in (0, 300):
        options = dataclasses.replace(SMALL, unlabelled=256, pretrain_steps=steps)
        strategy = NaoStrategy(nb201_space, 0, small_controller, options)
        strategy.propose(pool, 4)
        accuracy[steps] = reconstruction_accuracy(strategy, unseen)
        if steps:  # every later refit starts from the pre-trained controller
            assert not tree_equal(strategy.initial[0], NaoStrategy(nb201_space, 0, small_controller,
                                                                   options).initial[0])
    assert accuracy[300] > accuracy[0] + 0.2, accuracy


@pytest.mark.parametrize("refit_from, until, restarts", [("previous", 0, False), ("initial", 0, True),
                                                         ("initial", 13, True), ("initial", 12, False)])
def test_refit_from_initial_starts_every_fit_from_the_first_fits_start(nb201_space, nb201_evaluator,
                                                                       small_controller, refit_from, until,
                                                                       restarts):
    """The second fit sees a pool of 12: it restarts unless warm starts are asked for or 12 >= refit_until."""
    options = dataclasses.replace(SMALL, refit_from=refit_from, refit_until=until)
    strategy = NaoStrategy(nb201_space, 0, small_controller, options)
    spy = FitSpy(strategy.controller)
    pool = scored_pool(nb201_space, nb201_evaluator, 8)
    for _ in range(2):
        for arch in strategy.propose(pool, 4):
            pool.add(arch, next(iter(nb201_evaluator.evaluate([arch])))[1].valid)
    first, second = spy.calls[0]["start"], spy.calls[1]["start"]
    assert len(spy.calls[1]["tokens"]) == 12
    assert tree_equal(first, second) == restarts


def test_stalled_means_no_new_best_among_the_last_window_scores():
    assert stalled([5, 1, 2], 2) and stalled([5, 1, 5], 2)  # a tie is not a new best
    assert not stalled([1, 2, 5], 1) and not stalled([1, 5, 2], 2)
    assert not stalled([5, 1, 2], 0) and not stalled([5, 1, 2], 3)  # off, or nothing before the window


@pytest.mark.parametrize("last_score, restarted", [(0.0, [True, False]), (100.0, [False, False])])
def test_refit_stall_restarts_one_member_after_queries_without_a_new_best(
        nb201_space, pool, small_controller, last_score, restarted):
    """refit_stall=4 with warm starts: when none of the 4 architectures queried since the first fit beat
    the pool's best, the second fit (iteration 2) starts with member 2 % 2 = 0 where the first fit
    started and member 1 where it ended; after a new best both members go on from where they ended."""
    strategy = NaoStrategy(nb201_space, 0, small_controller, dataclasses.replace(SMALL, refit_stall=4))
    spy = FitSpy(strategy.controller)
    grown = Pool(nb201_space)
    for arch, score in zip(pool.archs, pool.scores):
        grown.add(arch, score)
    for arch, score in zip(strategy.propose(grown, 4), [min(pool.scores)] * 3 + [last_score]):
        grown.add(arch, score)
    strategy.propose(grown, 4)
    first, second = spy.calls[0]["start"], spy.calls[1]["start"]
    member = [jax.tree.map(lambda leaf, i=i: np.asarray(leaf)[i], (first, second)) for i in range(2)]
    assert [tree_equal(*pair) for pair in member] == restarted
    assert "initial" in strategy.save_state()[0]  # a strategy restored from its state restarts from it too


def test_pseudo_labels_add_unlabelled_rows_with_the_ensembles_mean_prediction(nb201_space, pool,
                                                                               small_controller):
    options = dataclasses.replace(SMALL, unlabelled=40, pseudo_labels=30, pseudo_weight=0.25)
    strategy = NaoStrategy(nb201_space, 0, small_controller, options)
    spy = FitSpy(strategy.controller)
    strategy.propose(pool, 4)
    labelled, semi = spy.calls
    assert len(labelled["tokens"]) == len(pool)
    assert len(semi["tokens"]) == len(pool) + 30
    np.testing.assert_array_equal(semi["tokens"][:len(pool)], labelled["tokens"])
    np.testing.assert_array_equal(semi["targets"][:len(pool)], labelled["targets"])
    # The extra rows: unlabelled architectures, scored by the ensemble fitted on the pool just before.
    extra = [nb201_space.from_tokens(t) for t in semi["tokens"][len(pool):]]
    assert not any(arch in pool for arch in extra)
    np.testing.assert_allclose(semi["targets"][len(pool):], semi["predicted"][len(pool):], rtol=1e-6)
    np.testing.assert_array_equal(semi["weights"], [1.0] * len(pool) + [0.25] * 30)


def test_pseudo_labels_stop_once_the_pool_reaches_pseudo_until(nb201_space, pool, small_controller):
    for until, fits in ((len(pool) + 1, 2), (len(pool), 1)):
        options = dataclasses.replace(SMALL, unlabelled=20, pseudo_labels=20, pseudo_until=until)
        strategy = NaoStrategy(nb201_space, 0, small_controller, options)
        spy = FitSpy(strategy.controller)
        strategy.propose(pool, 4)
        assert len(spy.calls) == fits


@pytest.mark.parametrize("item, needle", [
    ("nao.refit_from=never", "refit_from"), ("nao.batch_fraction=1.5", "batch_fraction"),
    ("nao.pseudo_weight=-1", "pseudo_weight"), ("nao.unlabelled=-3", "unlabelled"),
    ("nao.refit_stall=-10", "refit_stall"),
])
def test_bad_small_budget_settings_are_one_line_config_errors(item, needle):
    with pytest.raises(ConfigError, match=needle) as error:
        assemble({"strategies": ["nao"]}, (f"--set={item}"[6:],))
    assert "\n" not in str(error.value)


def test_refit_stall_is_refused_where_the_loop_reorders_the_pool():
    """A supernet search keeps its working pool best first, so "the last queries" would be the worst."""
    with pytest.raises(ConfigError, match="refit_stall") as error:
        assemble({"strategies": ["nao"], "space": "ptb_ws", "evaluator": "supernet", "data_dir": "ptb"},
                 ("nao.refit_stall=20",))
    assert "\n" not in str(error.value)


def test_pseudo_labels_or_pretraining_without_unlabelled_architectures_are_refused(nb201_space,
                                                                                    small_controller):
    for options in (NaoOptions(pseudo_labels=5), NaoOptions(pretrain_steps=5)):
        with pytest.raises(ValueError, match="raise nao.unlabelled"):
            NaoStrategy(nb201_space, 0, small_controller, options)


def test_a_diverged_controller_stops_the_search_in_one_line(nb201_space, pool, small_controller, monkeypatch):
    strategy = NaoStrategy(nb201_space, 0, small_controller, NAO_PRESETS["smoke"])
    monkeypatch.setattr(strategy.controller, "fit", lambda *args, **kwargs: {"steps": 1, "mse": math.nan,
                                                                             "nll": 2.0})
    with pytest.raises(ValueError, match=r"^NAO's controller diverged in iteration 1 \(mse nan, nll 2\.0\): "
                                         r"lower controller\.learning_rate=.* in a new output_dir$"):
        strategy.propose(pool, 4)
