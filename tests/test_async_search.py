"""The asynchronous schedule: a proposal whenever an evaluation ends, on simulated workers; a kill
with evaluations in flight and its resume; and the simulated executor's clock."""

from __future__ import annotations

import pytest

from nao.evaluators.delayed import DelayedEvaluator
from nao.executors.simulated import SimulatedExecutor
from nao.history import History, proposals_of
from nao.search import SearchSettings, search
from nao.strategies import NAO_PRESETS, make_strategy

ASYNC = SearchSettings(queries=24, schedule="async")


class Echo:
    def setup(self) -> None:
        return None

    def __call__(self, payload):
        return payload


def test_the_simulated_clock_runs_jobs_on_free_workers_and_returns_them_as_they_end():
    seconds = {0: 5.0, 1: 1.0, 2: 1.0, 3: 2.0}
    executor = SimulatedExecutor(Echo(), workers=2, duration=lambda job_id, payload: seconds[job_id])
    for job_id in seconds:
        executor.submit(job_id, f"job {job_id}")
    order = [(o.job_id, executor.clock) for o in executor.results()]
    # Worker A: job 0 (0-5); worker B: job 1 (0-1), job 2 (1-2), job 3 (2-4).
    assert order == [(1, 1.0), (2, 2.0), (3, 4.0), (0, 5.0)]
    assert executor.utilisation() == pytest.approx(9.0 / 10.0)
    assert executor.last_start() == 2.0 and executor.utilisation(2.0) == pytest.approx(4.0 / 4.0)


def run(evaluator, space, strategy_name, history, small_controller, seed=0):
    strategy = make_strategy(strategy_name, space, seed, controller=small_controller,
                             nao_options=NAO_PRESETS["smoke"])
    return search(space, strategy, evaluator, ASYNC, history)


@pytest.mark.parametrize("strategy", ["random", "nao"])
def test_async_keeps_every_worker_busy_and_spends_the_budget_once(nb201_space, nb201_evaluator,
                                                                  small_controller, strategy):
    delayed = DelayedEvaluator(nb201_evaluator, workers=4, durations=[1.0, 2.0, 7.0], seed=0)
    history = History(None)
    rows = run(delayed, nb201_space, strategy, history, small_controller)
    assert len(rows) == 24 and len({r["key"] for r in rows}) == 24
    assert sorted(r["query"] for r in rows) == list(range(1, 25))
    clocks = [r["clock"] for r in rows]
    assert clocks == sorted(clocks)  # rows are written as results arrive
    # Rows arrive out of proposal order (a long evaluation finishes after later short ones).
    assert [r["query"] for r in rows] != sorted(r["query"] for r in rows)
    # A worker idles only at the end, when the budget leaves nothing to start.
    assert delayed.facts()["utilisation"] > 0.8


def test_sync_rounds_wait_for_their_slowest_evaluation(nb201_space, nb201_evaluator, small_controller):
    utilisation = {}
    for schedule in ("sync", "async"):
        delayed = DelayedEvaluator(nb201_evaluator, workers=4, durations=[1.0, 2.0, 7.0], seed=0)
        strategy = make_strategy("random", nb201_space, 0)
        settings = SearchSettings(queries=24, per_round=4, schedule=schedule) if schedule == "sync" else ASYNC
        search(nb201_space, strategy, delayed, settings, History(None))
        utilisation[schedule] = delayed.facts()["utilisation"]
    assert utilisation["async"] > utilisation["sync"] + 0.1


def test_an_async_batch_asks_the_strategy_once_for_several_workers(nb201_space, nb201_evaluator):
    calls = {}
    for batch in (1, 4):
        strategy = make_strategy("random", nb201_space, 0)
        propose = strategy.propose
        counts = []
        strategy.propose = lambda pool, count, counts=counts, propose=propose: (
            counts.append(count), propose(pool, count))[1]
        delayed = DelayedEvaluator(nb201_evaluator, workers=4, durations=[1.0, 2.0, 7.0], seed=0)
        rows = search(nb201_space, strategy, delayed, SearchSettings(queries=24, schedule="async",
                                                                     async_batch=batch), History(None))
        assert len({r["key"] for r in rows}) == 24
        calls[batch] = len(counts)
    assert calls == {1: 24, 4: 6}


def test_a_killed_async_search_resumes_with_nothing_lost_or_evaluated_twice(nb201_space, nb201_evaluator,
                                                                            small_controller, tmp_path):
    path = tmp_path / "seed_0.jsonl"
    delayed = DelayedEvaluator(nb201_evaluator, workers=4, durations=[1.0, 2.0, 7.0], seed=0)
    real = delayed.completed

    def dies_after_ten():
        for count, item in enumerate(real()):
            if count == 10:
                raise KeyboardInterrupt  # killed with four evaluations in flight
            yield item

    delayed.completed = dies_after_ten
    with pytest.raises(KeyboardInterrupt):
        run(delayed, nb201_space, "nao", History(path), small_controller)
    history = History(path)
    proposed = proposals_of(history).rows
    assert len(history.rows) == 10 and len(proposed) == 14  # four proposed, never scored
    pending = {p["key"] for p in proposed} - {r["key"] for r in history.rows}
    asked = []
    resumed = DelayedEvaluator(nb201_evaluator, workers=4, durations=[1.0, 2.0, 7.0], seed=1)
    submit = resumed.submit
    resumed.submit = lambda ticket, arch: (asked.append(nb201_space.key(arch)), submit(ticket, arch))[1]
    rows = run(resumed, nb201_space, "nao", History(path), small_controller)
    assert set(asked[:4]) == pending  # the cut-short evaluations first
    keys = [r["key"] for r in History(path).rows]
    assert len(keys) == 24 and len(set(keys)) == 24 and len(rows) == 24
    assert not set(asked) & {r["key"] for r in history.rows}  # nothing scored before is evaluated again


def test_async_is_refused_with_supernet_rounds():
    with pytest.raises(ValueError, match="schedule=async .* needs search.queries and no supernet rounds"):
        SearchSettings(queries=0, epochs=4, round_epochs=1, pool_size=8, per_round=2,
                       schedule="async").validate()
    with pytest.raises(ValueError, match="search.schedule='later' is unknown: choose one of sync, async"):
        SearchSettings(schedule="later").validate()
