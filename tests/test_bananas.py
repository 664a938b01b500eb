"""BANANAS: the path encoding, mutation, the MLP ensemble, Thompson selection, a short table search,
resuming from saved state, and its configuration's range checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import extending_example
from test_config import _cli, _messages

from nao.config import assemble
from nao.history import History
from nao.search import SearchSettings, search
from nao.spaces import NasBench101Space
from nao.spaces.nasbench101 import Nb101Arch
from nao.spaces.restricted import TableRestrictedSpace
from nao.strategies import BananasOptions, BananasStrategy, Pool, make_strategy
from nao.strategies.bananas import edit_count, mutate, thompson_pick
from nao.strategies.mlp_ensemble import fit_ensemble, predict_ensemble
from nao.validation import ConfigError

# One small predictor for every test, so its jitted training compiles once.
SMALL = BananasOptions(ensemble=3, layers=3, units=16, epochs=60, candidates=40, parents=4)


def scored_pool(space, table, count: int, seed: int) -> Pool:
    """``count`` random NB201 cells with their table validation accuracy."""
    index = table.index_of()
    pool = Pool(space)
    for arch in {space.sample(np.random.default_rng([seed, i])): None for i in range(count)}:
        pool.add(arch, float(table.valid[index[arch]]))
    return pool


# --- features ---------------------------------------------------------------------------------------

def test_the_nb201_path_encoding_marks_each_input_output_path_once(nb201_space):
    # Edges (0,1) (0,2) (1,2) (0,3) (1,3) (2,3): conv3x3, skip, none, avg_pool, conv1x1, conv3x3.
    features = nb201_space.features((3, 1, 0, 4, 2, 3))
    assert features.shape == (4 + 16 + 64,) and features.dtype == np.float32
    # Paths: avg_pool (0->3); conv3x3, conv1x1 (0->1->3); skip, conv3x3 (0->2->3); 0->1->2->3 crosses
    # 'none'. Without 'none' the ops are 0 skip, 1 conv1x1, 2 conv3x3, 3 avg_pool; length-2 paths start
    # at entry 4 and read their two ops in base 4.
    assert np.flatnonzero(features).tolist() == [3, 4 + 0 * 4 + 2, 4 + 2 * 4 + 1]
    # All conv3x3: both 2-edge routes are the same path; one path of each length 1, 2, 3.
    all_conv = nb201_space.features((3,) * 6)
    assert np.flatnonzero(all_conv).tolist() == [2, 4 + 2 * 4 + 2, 20 + 2 * 16 + 2 * 4 + 2]
    assert not nb201_space.features((0,) * 6).any()  # no path from input to output


def test_nb101_path_encoding_and_the_default_one_hot():
    space = NasBench101Space()
    # input -> conv3x3 -> output and input -> output: the empty path and the path (conv3x3).
    arch = Nb101Arch.from_graph([[0, 1, 1], [0, 0, 1], [0, 0, 0]], ["input", "conv3x3-bn-relu", "output"])
    features = space.features(arch)
    assert features.shape == (1 + 3 + 9 + 27 + 81 + 243,)
    assert np.flatnonzero(features).tolist() == [0, 1 + 1]
    assert np.array_equal(TableRestrictedSpace(space, [arch]).features(arch), features)  # delegated
    bits = extending_example("bit_space").BitSpace()
    one_hot = bits.features((1, 0, 1, 1, 0, 0, 0, 1))
    assert one_hot.shape == (8 * 3,) and one_hot.sum() == 8 and one_hot[2] == 1 and one_hot[3 + 1] == 1


# --- mutation and selection -------------------------------------------------------------------------

def test_mutation_stays_valid_differs_and_changes_about_the_authors_share_of_edges(nb201_space):
    rng = np.random.default_rng(0)
    parent = (3, 1, 0, 4, 2, 3)
    changed = []
    for _ in range(400):
        child = mutate(nb201_space, parent, 0.25, rng)
        assert nb201_space.is_valid(child) and nb201_space.key(child) != nb201_space.key(parent)
        changed.append(sum(a != b for a, b in zip(child, parent, strict=True)))
    # Binomial(6, 0.25) given >= 1 has mean 1.5 / (1 - 0.75 ** 6) = 1.82 edits; repeats lower it a bit.
    assert 1.5 < np.mean(changed) < 1.9 and max(changed) >= 3
    assert edit_count(6, 0.0, rng) == 1
    bits = extending_example("bit_space").BitSpace()
    child = mutate(bits, (0,) * 8, 0.25, rng)
    assert bits.is_valid(child) and child != (0,) * 8


def test_thompson_sampling_follows_the_mean_where_the_ensemble_agrees():
    rng = np.random.default_rng(0)
    agreed = np.tile(np.array([0.1, 0.9, 0.5, 0.7]), (5, 1))
    assert thompson_pick(agreed, 3, rng).tolist() == [1, 3, 2]
    unsure = rng.normal(size=(5, 50))
    picks = thompson_pick(unsure, 10, rng)
    assert len(set(picks.tolist())) == 10


# --- the predictor ----------------------------------------------------------------------------------

def test_the_ensemble_fits_a_function_of_the_paths_better_than_a_constant(nb201_space):
    rng = np.random.default_rng(1)
    archs = [nb201_space.sample(rng) for _ in range(300)]
    features = np.stack([nb201_space.features(a) for a in archs])
    targets = features @ rng.normal(size=features.shape[1])
    targets = (targets - targets.mean()) / targets.std()
    params = fit_ensemble(SMALL.predictor(), np.random.default_rng(0), features[:200], targets[:200])
    predictions = predict_ensemble(params, features[200:])
    assert predictions.shape == (SMALL.ensemble, 100)
    error = np.abs(predictions.mean(0) - targets[200:]).mean()
    constant = np.abs(np.median(targets[:200]) - targets[200:]).mean()
    assert error < 0.5 * constant
    assert predictions.std(0).mean() > 0  # members differ: the spread Thompson sampling draws from


# --- the strategy -----------------------------------------------------------------------------------

def test_proposals_are_distinct_unseen_and_the_first_ones_random(nb201_space, nb201_table):
    strategy = BananasStrategy(nb201_space, 0, SMALL)
    first = strategy.propose(Pool(nb201_space), 150)
    assert len(first) == SMALL.init_size  # the initial random architectures, however many are asked
    pool = scored_pool(nb201_space, nb201_table, 20, 0)
    chosen = strategy.propose(pool, 150)
    assert len(chosen) == SMALL.per_iteration
    assert len({nb201_space.key(a) for a in chosen}) == len(chosen)
    assert not any(a in pool for a in chosen)


def test_a_short_table_search_beats_its_random_start(nb201_space, nb201_evaluator, nb201_table):
    init = SMALL.init_size
    rows = search(nb201_space, make_strategy("bananas", nb201_space, 3, bananas_options=SMALL),
                  nb201_evaluator, SearchSettings(queries=60), History(None))
    random_start, guided = [r["valid"] for r in rows[:init]], [r["valid"] for r in rows[init:]]
    assert len(rows) == 60
    assert max(guided) > max(random_start)
    # Proposals are far better than uniformly random cells (the table mean, about 83.7).
    assert np.mean(guided) > nb201_table.valid.mean() + 4


def test_saved_state_continues_with_the_same_proposals(nb201_space, nb201_table):
    pool = scored_pool(nb201_space, nb201_table, 14, 1)
    for warm in (0, 1):  # saved while drawing the first random cells, and after a fit
        original = BananasStrategy(nb201_space, 5, SMALL)
        start = Pool(nb201_space)
        for arch, score in list(zip(pool.archs, pool.scores, strict=True))[:6]:
            start.add(arch, score)
        original.propose(start, 4)
        if warm:
            original.propose(pool, 10)
        arrays, facts = original.save_state()
        facts = json.loads(json.dumps(facts))  # what a checkpoint stores
        restored = BananasStrategy(nb201_space, 5, SMALL)
        restored.load_state(arrays, facts)
        assert original.propose(pool, 10) == restored.propose(pool, 10)
        assert original.propose(pool, 10) == restored.propose(pool, 10)


# --- configuration ----------------------------------------------------------------------------------

def test_options_reach_the_run_config_and_bad_ones_are_one_line():
    job = assemble({"strategies": ["bananas"]}, ("bananas.ensemble=3", "bananas.edit_probability=0.5")).job
    assert job.bananas == BananasOptions(ensemble=3, edit_probability=0.5)
    assert assemble({}).job.bananas == BananasOptions()
    for override, message in [
        ("bananas.ensemble=0",
         r"^bananas\.ensemble=0 is out of range: .* >= 1 \(--set=bananas\.ensemble=\.\.\.\)$"),
        ("bananas.nope=1", r"^--set=bananas\.nope=\.\.\.: BananasOptions has no field 'nope'"),
        ("bananas.edit_probability=1.5", r"^bananas\.edit_probability=1\.5 .* in \[0\.0, 1\.0\]"),
        ("bananas.learning_rate=0", r"^bananas\.learning_rate=0\.0 .* > 0\.0"),
        ("bananas.epochs=many", r"^--set=bananas\.epochs=many: expected an integer$"),
    ]:
        with pytest.raises(ConfigError, match=message) as raised:
            assemble({"strategies": ["bananas"]}, (override,))
        assert "\n" not in str(raised.value)


def test_the_cli_refuses_a_bad_bananas_option_with_exit_2(tmp_path):
    out = tmp_path / "run"
    done = _cli("--strategies=bananas", "--set=bananas.ensemble=0", f"--output_dir={out}", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    lines = _messages(done.stderr)
    assert len(lines) == 1 and "bananas.ensemble=0" in lines[0], done.stderr
    assert not out.exists()
