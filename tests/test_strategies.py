"""Every strategy through the search loop on the NB201 table: a growing pool replayed on resume, a
bounded pool, and scores that change between rounds with checkpoints (a stand-in for a supernet);
history; strategy details."""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Sequence

import numpy as np
import pytest
from conftest import extending_example

from nao.evaluators import Evaluation, Evaluator
from nao.history import History, HistoryError
from nao.models.checkpoint import CheckpointStore
from nao.search import SearchError, SearchSettings, best_so_far, search
from nao.strategies import NAO_PRESETS, STRATEGIES, Pool, make_strategy
from nao.strategies.evolution import RegularizedEvolution
from nao.strategies.local_search import LocalSearch
from nao.strategies.nao import normalize_targets

BitSpace = extending_example("bit_space").BitSpace  # 4 bits: 16 architectures, for exhaustive runs

BUDGET = 30


def budget(queries: int) -> SearchSettings:
    """A table search's settings: only a query budget."""
    return SearchSettings(queries=queries)


@pytest.fixture(scope="session")
def make(small_controller):
    """make(name, space, seed): a strategy; NAO with the shared small controller and smoke options."""

    def make(name: str, space, seed: int):
        return make_strategy(name, space, seed, controller=small_controller,
                             nao_options=NAO_PRESETS["smoke"])

    return make


class CountingEvaluator(Evaluator):
    """Delegates, remembering every architecture it was asked for; ``reverse`` yields
    each batch's results last first (evaluators may answer in any order)."""

    def __init__(self, inner: Evaluator, reverse: bool = False):
        self.inner = inner
        self.reverse = reverse
        self.asked: list = []

    def evaluate(self, archs: Sequence):
        self.asked.extend(archs)
        results = list(self.inner.evaluate(archs))
        return iter(results[::-1] if self.reverse else results)


@pytest.fixture(scope="module")
def run(tmp_path_factory, make, nb201_space, nb201_evaluator):
    """run(name, seed, tag) -> (rows, history path); each distinct call searches once."""
    done: dict = {}

    def run(name: str, seed: int, tag: str = "") -> tuple[list[dict], object]:
        if (name, seed, tag) not in done:
            path = tmp_path_factory.mktemp(f"{name}-{seed}{tag}") / "history.jsonl"
            strategy = make(name, nb201_space, seed)
            rows = search(nb201_space, strategy, nb201_evaluator, budget(BUDGET), History(path))
            done[name, seed, tag] = rows, path
        return done[name, seed, tag]

    return run


def arch_sequence(rows) -> list[str]:
    return [row["arch"] for row in rows]


# --- the search loop, every strategy --------------------------------------------------------------

@pytest.mark.parametrize("name", STRATEGIES)
def test_search_spends_the_budget_on_distinct_table_rows(run, name, nb201_space, nb201_table):
    rows, path = run(name, 0)
    assert len(rows) == BUDGET
    assert [row["query"] for row in rows] == list(range(1, BUDGET + 1))
    keys = [row["key"] for row in rows]
    assert len(set(keys)) == BUDGET
    assert History(path).rows == rows
    assert len(path.read_text().splitlines()) == BUDGET
    index = nb201_table.index_of()
    for row in rows:
        arch = nb201_space.from_string(row["arch"])
        assert row["key"] == nb201_space.key(arch)
        assert row["valid"] == float(nb201_table.valid[index[arch]])
        assert row["test"] == float(nb201_table.test[index[arch]])


@pytest.mark.parametrize("name", STRATEGIES)
def test_same_seed_same_sequence_other_seed_other_sequence(run, name):
    first = arch_sequence(run(name, 0)[0])
    assert arch_sequence(run(name, 0, "again")[0]) == first
    assert arch_sequence(run(name, 1)[0]) != first


@pytest.mark.parametrize("name", STRATEGIES)
def test_best_so_far_is_monotone_and_reports_the_best_valid_test(run, name):
    rows, _ = run(name, 0)
    valid_curve, test_curve = best_so_far(rows)
    assert len(valid_curve) == len(test_curve) == BUDGET
    assert all(b >= a for a, b in itertools.pairwise(valid_curve))
    for i in range(BUDGET):
        best = max(rows[:i + 1], key=lambda row: row["valid"])  # first of equals, as the curve keeps
        assert valid_curve[i] == best["valid"]
        assert test_curve[i] == best["test"]


def test_best_so_far_keeps_the_first_of_equal_valid_scores():
    rows = [{"valid": 1.0, "test": 5.0}, {"valid": 1.0, "test": 9.0}, {"valid": 0.5, "test": 9.0},
            {"valid": 2.0, "test": 3.0}]
    assert best_so_far(rows) == ([1.0, 1.0, 1.0, 2.0], [5.0, 5.0, 5.0, 3.0])
    assert best_so_far([]) == ([], [])


@pytest.mark.parametrize("cut", [12, 13])
@pytest.mark.parametrize("name", STRATEGIES)
def test_resume_replays_the_history_and_evaluates_only_the_rest(run, make, name, cut, tmp_path, nb201_space,
                                                               nb201_evaluator):
    full_rows, full_path = run(name, 0)
    lines = full_path.read_text().splitlines(keepends=True)
    path = tmp_path / "history.jsonl"
    path.write_text("".join(lines[:cut]))
    history = History(path)
    assert len(history.rows) == cut
    evaluator = CountingEvaluator(nb201_evaluator)
    rows = search(nb201_space, make(name, nb201_space, 0), evaluator, budget(BUDGET), history)
    assert arch_sequence(rows) == arch_sequence(full_rows)
    assert [(r["valid"], r["test"]) for r in rows] == [(r["valid"], r["test"]) for r in full_rows]
    assert [nb201_space.to_string(a) for a in evaluator.asked] == arch_sequence(full_rows)[cut:]
    assert path.read_text().splitlines(keepends=True)[:cut] == lines[:cut]
    assert arch_sequence(History(path).rows) == arch_sequence(full_rows)


def test_resume_with_an_out_of_order_evaluator_matches_the_uninterrupted_run(make, tmp_path, nb201_space,
                                                                            nb201_evaluator):
    """Evaluators may yield a batch's results in any order. A resumed NAO run must still
    propose what the uninterrupted run proposed, so it replays instead of re-evaluating."""
    full = search(nb201_space, make("nao", nb201_space, 0), CountingEvaluator(nb201_evaluator, reverse=True),
                  budget(BUDGET), History(tmp_path / "full.jsonl"))
    cut = 12
    lines = (tmp_path / "full.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "resumed.jsonl").write_text("".join(lines[:cut]))
    evaluator = CountingEvaluator(nb201_evaluator, reverse=True)
    resumed = search(nb201_space, make("nao", nb201_space, 0), evaluator, budget(BUDGET),
                     History(tmp_path / "resumed.jsonl"))
    assert sorted(arch_sequence(resumed)) == sorted(arch_sequence(full))
    assert len(evaluator.asked) == BUDGET - cut


# --- a bounded pool, and scores that change between rounds ---------------------------------------

@pytest.mark.parametrize("name", STRATEGIES)
def test_a_bounded_pool_keeps_its_size_and_spends_the_budget_once(make, name, tmp_path, nb201_space,
                                                                 nb201_evaluator):
    settings = SearchSettings(queries=25, pool_size=8, per_round=3, random_per_round=1)
    evaluator = CountingEvaluator(nb201_evaluator)
    rows = search(nb201_space, make(name, nb201_space, 0), evaluator, settings, History(tmp_path / "h.jsonl"))
    keys = [r["key"] for r in rows]
    assert len(keys) == len(set(keys)) == 25  # fixed scores: a cell dropped and proposed again is reused
    assert len(evaluator.asked) == 25 and [r["query"] for r in rows] == list(range(1, 26))
    assert [r["round"] for r in rows[:8]] == [0] * 8  # the first pool: 8 random cells


class DriftingEvaluator(Evaluator):
    """A stand-in for a supernet: the table's scores plus the epochs trained, so every round scores
    the pool anew; its state is the epoch count. ``die`` = ("epoch", e) kills it when training epoch
    e, ("scores", n) after n scores."""

    rescores = True

    def __init__(self, inner: Evaluator, die: tuple[str, int] | None = None):
        self.inner, self.die, self.epoch, self.scored = inner, die, 0, []

    def train_round(self, archs, until_epoch):
        while self.epoch < until_epoch:
            if self.die == ("epoch", self.epoch + 1):
                raise KeyboardInterrupt
            self.epoch += 1
            yield {"epoch": self.epoch, "train_loss": 1.0 / self.epoch, "seconds": 0.0}

    def evaluate(self, archs):
        for position, result in self.inner.evaluate(archs):
            if self.die == ("scores", len(self.scored)):
                raise KeyboardInterrupt
            self.scored.append(archs[position])
            yield position, Evaluation(result.valid + self.epoch, result.test, 0.0, {"epoch": self.epoch})

    def save_state(self):
        return {"epoch": np.asarray(self.epoch)}, {}

    def load_state(self, arrays, facts):
        self.epoch = int(arrays["epoch"])


ROUNDS = SearchSettings(queries=0, epochs=6, round_epochs=2, pool_size=10, per_round=3, random_per_round=1)


def drifting_search(make, name, space, evaluator, folder):
    return search(space, make(name, space, 0), evaluator, ROUNDS, History(folder / "history.jsonl"),
                  CheckpointStore(folder / "checkpoints"))


@pytest.mark.parametrize("die", [("epoch", 4), ("scores", 25)], ids=["in_training", "while_scoring"])
@pytest.mark.parametrize("name", STRATEGIES)
def test_a_killed_rescoring_search_resumes_from_its_checkpoint(make, name, die, tmp_path, nb201_space,
                                                              nb201_evaluator):
    full = drifting_search(make, name, nb201_space, DriftingEvaluator(nb201_evaluator), tmp_path / "full")
    assert [r["round"] for r in full] == [0] * 10 + [1] * 10 + [2] * 10  # the whole pool, every round
    assert [r["epoch"] for r in full] == [2] * 10 + [4] * 10 + [6] * 10  # scored after each round's training
    killed = DriftingEvaluator(nb201_evaluator, die)
    with pytest.raises(KeyboardInterrupt):
        drifting_search(make, name, nb201_space, killed, tmp_path / "killed")
    store = CheckpointStore(tmp_path / "killed" / "checkpoints")
    # Killed in epoch 4 (round 1): epoch 3 was saved. Killed scoring round 2: the epochs up to 5 were.
    assert store.latest_step() == (3 if die[0] == "epoch" else 5)
    resumed = DriftingEvaluator(nb201_evaluator)
    rows = drifting_search(make, name, nb201_space, resumed, tmp_path / "killed")
    scores = [(r["round"], r["key"], r["valid"]) for r in full]
    assert [(r["round"], r["key"], r["valid"]) for r in rows] == scores
    assert len(killed.scored) + len(resumed.scored) == 30  # nothing scored twice
    assert History(tmp_path / "killed" / "history.jsonl").rows == rows
    again = DriftingEvaluator(nb201_evaluator)  # a finished search resumed: read back, nothing redone
    assert drifting_search(make, name, nb201_space, again, tmp_path / "killed") == rows
    assert again.scored == [] and again.epoch == 6


# --- history --------------------------------------------------------------------------------------

def history_rows(count: int) -> list[dict]:
    return [{"round": 0, "query": i + 1, "arch": f"a{i}", "key": f"a{i}", "valid": 0.5 + i, "test": None,
             "cost": 0.0, "elapsed": 0.1} for i in range(count)]


def test_history_drops_a_torn_last_line(tmp_path):
    path = tmp_path / "history.jsonl"
    good = history_rows(3)
    path.write_text("".join(json.dumps(r) + "\n" for r in good) + '{"query": 4, "arch": "a3", "ke')
    history = History(path)
    assert history.rows == good
    assert path.read_text() == "".join(json.dumps(r) + "\n" for r in good)  # the torn bytes are gone
    extra = history_rows(4)[3]
    history.append(extra)
    assert History(path).rows == good + [extra]


def test_history_row_missing_only_its_newline_survives_the_next_append(tmp_path):
    """A write torn between a row's JSON and its newline leaves a parsable last row;
    the next append must not glue its row onto that line."""
    path = tmp_path / "history.jsonl"
    rows = history_rows(4)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows[:3]) + json.dumps(rows[3]))
    history = History(path)
    assert len(history.rows) in (3, 4)
    history.append(history_rows(5)[4])
    reloaded = History(path).rows
    assert reloaded == history.rows
    assert reloaded[-1] == history_rows(5)[4]


@pytest.mark.parametrize("bad_line", [2, 3])
def test_history_corrupt_line_raises(tmp_path, bad_line):
    """Damage in the middle, or a complete (newline-terminated) last line that is not JSON."""
    path = tmp_path / "history.jsonl"
    lines = [json.dumps(r) + "\n" for r in history_rows(3)]
    lines[bad_line - 1] = '{"query": 2, "arch": \n'
    path.write_text("".join(lines))
    before = path.read_bytes()
    with pytest.raises(HistoryError) as info:
        History(path)
    message = str(info.value)
    assert f"{path}:{bad_line}" in message and "\n" not in message
    assert path.read_bytes() == before  # never rewritten on an error


@pytest.mark.parametrize("damage, needle", [
    (b"\x8f\xff\x00 garbage\n\xfe\x01\n", "is not a JSON row (UnicodeDecodeError)"),
    (b'{"x": 1}\n', "is not a history row (lacks round, query, key, arch, valid)"),
    (b"[1, 2]\n", "is not a history row (lacks all)"),
])
def test_history_with_foreign_lines_names_the_file_and_the_fix(tmp_path, damage, needle):
    path = tmp_path / "history.jsonl"
    path.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in history_rows(2)) + damage)
    with pytest.raises(HistoryError) as info:
        History(path)
    message = str(info.value)
    assert message.startswith(f"{path}:3 ") and needle in message and "start the run in a new" in message
    assert "\n" not in message


def test_history_missing_file_starts_empty_and_creates_on_append(tmp_path):
    path = tmp_path / "sub" / "history.jsonl"
    history = History(path)
    assert history.rows == [] and not path.exists()
    history.append(history_rows(1)[0])
    assert History(path).rows == history_rows(1)


# --- strategy details -----------------------------------------------------------------------------

class BitEvaluator(Evaluator):
    def __init__(self, seed: int = 0):
        self.scores = dict(zip(itertools.product((0, 1), repeat=4),
                               np.random.default_rng(seed).permutation(16).tolist(), strict=True))

    def evaluate(self, archs):
        for position, arch in enumerate(archs):
            yield position, Evaluation(float(self.scores[arch]), None, 0.0)


class RecordingLocalSearch(LocalSearch):
    def __init__(self, space, seed):
        super().__init__(space, seed)
        self.log: list = []

    def propose(self, pool, count):
        before = self.current
        proposed = super().propose(pool, count)
        self.log.append((before, self.current, list(proposed), dict(zip(pool.archs, pool.scores))))
        return proposed


def climb(space, arch, scores):
    """Follow the best evaluated better neighbour until there is none."""
    while True:
        better = [n for n in space.neighbors(arch) if n in scores and scores[n] > scores[arch]]
        if not better:
            return arch
        arch = max(better, key=scores.get)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_local_search_proposes_neighbours_of_the_current_arch_until_a_restart(tmp_path, seed):
    space = BitSpace(4)
    strategy = RecordingLocalSearch(space, seed)
    rows = search(space, strategy, BitEvaluator(seed), budget(16), History(tmp_path / "h.jsonl"))
    assert sorted(r["key"] for r in rows) == sorted(space.to_string(a) for a in BitEvaluator().scores)
    restarts = 0
    for before, after, proposed, scores in strategy.log:
        assert len(proposed) == 1
        arch = proposed[0]
        assert arch not in scores
        if arch == after:  # a (re)start from a fresh random architecture
            restarts += 1
            if before is not None:  # only once the climb from ``before`` ends on a local optimum
                top = climb(space, before, scores)
                assert all(n in scores and scores[n] <= scores[top] for n in space.neighbors(top))
        else:
            assert arch in space.neighbors(after)
            if after != before:  # moved uphill through evaluated neighbours first
                assert after == climb(space, before, scores) and scores[after] > scores[before]
    assert strategy.log[0][0] is None and strategy.log[0][2][0] == strategy.log[0][1]
    assert 1 <= restarts < 16


@pytest.mark.parametrize("name", ["random", "evolution", "local"])
def test_exhausted_space_raises_search_error(make, tmp_path, name):
    space = BitSpace(4)
    rows = search(space, make(name, space, 0), BitEvaluator(), budget(16), History(tmp_path / "all.jsonl"))
    assert len({r["key"] for r in rows}) == 16
    with pytest.raises(SearchError, match="proposed no new architecture after 16 queries"):
        search(space, make(name, space, 0), BitEvaluator(), budget(17), History(tmp_path / "more.jsonl"))


class RecordingEvolution(RegularizedEvolution):
    def __init__(self, space, seed, **kwargs):
        super().__init__(space, seed, **kwargs)
        self.sizes: list[int] = []
        self.children: list = []

    def propose(self, pool, count):
        proposed = super().propose(pool, count)
        self.sizes.append(len(self.population))
        assert all(member in pool for member in self.population)
        if len(pool) >= self.population_size:
            self.children.append((proposed[0], list(pool.archs)))
        return proposed


def test_regularized_evolution_population_never_exceeds_its_size(tmp_path, nb201_space, nb201_evaluator):
    strategy = RecordingEvolution(nb201_space, 0, population_size=6, sample_size=3)
    rows = search(nb201_space, strategy, nb201_evaluator, budget(40), History(tmp_path / "h.jsonl"))
    assert len(rows) == 40
    assert max(strategy.sizes) == 6 and all(size <= 6 for size in strategy.sizes)
    assert strategy.population.maxlen == 6
    # Every child after the random start is one edit away from an evaluated architecture.
    assert len(strategy.children) == 40 - 6
    for child, evaluated in strategy.children:
        assert any(child in nb201_space.neighbors(arch) for arch in evaluated)


def test_make_strategy_rejects_unknown_names(make, nb201_space):
    with pytest.raises(ValueError, match="choose from nao, random, evolution, local"):
        make_strategy("bayes", nb201_space, 0)
    assert {make(name, nb201_space, 0).name for name in STRATEGIES} == set(STRATEGIES)


# --- NAO target normalisation ---------------------------------------------------------------------

def test_rank_targets_spread_zero_to_one_in_score_order():
    scores = np.array([3.0, 1.0, 2.0, 5.0, 4.0])
    np.testing.assert_allclose(normalize_targets(scores, "rank"), [0.5, 0.0, 0.25, 1.0, 0.75])
    np.testing.assert_allclose(normalize_targets(np.array([7.0]), "rank"), [0.0])
    targets = normalize_targets(np.random.default_rng(0).normal(size=50), "rank")
    np.testing.assert_allclose(np.sort(targets), np.linspace(0, 1, 50))


def test_minmax_targets_map_min_to_zero_and_max_to_one():
    scores = np.array([3.0, 1.0, 2.0, 5.0])
    np.testing.assert_allclose(normalize_targets(scores, "minmax"), [0.5, 0.0, 0.25, 1.0])
    np.testing.assert_allclose(normalize_targets(np.array([2.0, 2.0]), "minmax"), [0.5, 0.5])


# --- NAO local slots --------------------------------------------------------------------------------

def test_nao_local_slots_go_to_unseen_neighbours_of_the_best(small_controller, nb201_space, nb201_evaluator):
    """With the choice among candidates rigged to prefer the last ones (neighbours of the worst pool
    architecture), only ``local_slots`` brings the best architecture's neighbours into the batch."""
    firsts = []
    for local_slots in (0, 3):
        options = dataclasses.replace(NAO_PRESETS["smoke"], init_size=6, per_iteration=6, neighbor_seeds=6,
                                      local_slots=local_slots)
        strategy = make_strategy("nao", nb201_space, 0, controller=small_controller, nao_options=options)
        strategy._select = lambda candidates, count: candidates[::-1][:count]
        pool = Pool(nb201_space)
        batch = strategy.propose(pool, options.init_size)
        for slot, result in sorted(nb201_evaluator.evaluate(batch)):
            pool.add(batch[slot], result.valid)
        best_neighbours = {nb201_space.key(a) for a in nb201_space.neighbors(pool.top(1)[0])}
        proposed = strategy.propose(pool, 6)
        assert len({nb201_space.key(a) for a in proposed}) == 6 and not any(a in pool for a in proposed)
        firsts.append([nb201_space.key(a) in best_neighbours for a in proposed[:3]])
    assert not all(firsts[0]) and all(firsts[1])
