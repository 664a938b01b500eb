"""Scheduling at scale without GPUs: synchronous rounds against asynchronous proposals.

The real search loop and scheduler run NAO and random search on the NAS-Bench-201 table, each
evaluation occupying one of W simulated workers (``nao.executors.simulated``) for a time drawn from
``--durations`` (seconds of real candidate trainings), for W in ``--workers``. Printed per W:

* the workers' utilisation (job time over worker time) until the budget's last candidate starts
  (what the scheduler controls; after it workers only wait for the last ones) and until the search
  ends, and the simulated
  wall time of the search (the strategy's real seconds of proposing count on the simulated clock:
  a freed worker waits for its next candidate), synchronous (rounds of W proposals, each waiting
  for its slowest evaluation, as the paper ran) against asynchronous (a proposal whenever a worker
  frees up);
  (``--async_batch`` proposals asked of the strategy at once, handed out as workers free up);
* the scheduler's overhead per candidate: real seconds the loop spends outside the strategy and the
  evaluations (dispatch, bookkeeping, history rows), and beside it the strategy's own seconds per
  proposal (NAO fits its controller for every proposal under the asynchronous schedule);
* the test accuracy of the best-by-validation cell against simulated wall time.

    python benchmarks/scheduling.py                                  # W = 8, 64, 256
    python benchmarks/scheduling.py --workers=8 --seeds=3 --durations=100,130,160
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
from absl import app, flags

from nao.controller import get_preset
from nao.data.nasbench import load_nb201_table
from nao.evaluators import Nb201TableEvaluator
from nao.evaluators.delayed import DelayedEvaluator
from nao.history import History
from nao.search import SearchSettings, search
from nao.spaces import NasBench201Space
from nao.strategies import NAO_PRESETS, make_strategy

# Seconds per candidate of the train evaluator's `cpu` preset, PTB and CIFAR cells, a worker's first
# and later candidates, on the 2-core development machine at two levels of load: every figure
# benchmarks/trained_candidate.py measured there (the README's "Full NAO on many workers").
MEASURED = [130.0, 98.0, 234.8, 155.5, 110.9, 166.3, 166.9, 249.9]

FLAGS = flags.FLAGS
flags.DEFINE_list("workers", ["8", "64", "256"], "Simulated worker counts.")
flags.DEFINE_list("durations", [str(s) for s in MEASURED], "Seconds per evaluation, drawn uniformly.")
flags.DEFINE_integer("seeds", 3, "Searches per strategy and schedule.")
flags.DEFINE_integer("rounds", 4, "Budget: this many times the worker count (at least 150 queries).")
flags.DEFINE_list("strategies", ["nao", "random"], "Strategies to schedule.")
flags.DEFINE_integer("async_batch", 0, "Proposals asked at once under the asynchronous schedule (0: one per "
                     "16 workers, at least 1).")


@dataclasses.dataclass
class Measured:
    utilisation: list[float] = dataclasses.field(default_factory=list)
    steady: list[float] = dataclasses.field(default_factory=list)  # until the last candidate starts
    clock: list[float] = dataclasses.field(default_factory=list)
    overhead: list[float] = dataclasses.field(default_factory=list)  # s per candidate
    strategy: list[float] = dataclasses.field(default_factory=list)  # s per proposal
    curves: list[tuple[np.ndarray, np.ndarray]] = dataclasses.field(default_factory=list)


class Timed:
    """A callable's total seconds (the strategy's proposals, the evaluations); ``charge`` gets each
    call's seconds too."""

    def __init__(self, fn, charge=None):
        self.fn, self.charge, self.seconds, self.calls = fn, charge, 0.0, 0

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            seconds = time.perf_counter() - start
            self.seconds += seconds
            self.calls += 1
            if self.charge is not None:
                self.charge(seconds)


def one_search(space, table_evaluator, name: str, seed: int, workers: int, schedule: str,
               queries: int, durations: list[float]) -> tuple[Measured, int]:
    nao = dataclasses.replace(NAO_PRESETS["default"], per_iteration=workers, local_slots=min(5, workers // 2))
    strategy = make_strategy(name, space, seed, get_preset("default"), nao)
    delayed = DelayedEvaluator(table_evaluator, workers, durations, seed=seed)
    # The driver proposes while the freed worker waits: its time runs on the simulated clock.
    strategy.propose = Timed(strategy.propose, delayed.executor.advance)
    lookups = delayed.executor.task = Timed(delayed.executor.task)  # the evaluations themselves
    batch = FLAGS.async_batch or max(1, workers // 16)
    settings = (SearchSettings(queries=queries, per_round=workers) if schedule == "sync"
                else SearchSettings(queries=queries, schedule="async", async_batch=batch))
    start = time.perf_counter()
    rows = search(space, strategy, delayed, settings, History(None))
    wall = time.perf_counter() - start
    measured = Measured()
    facts = delayed.facts()
    measured.utilisation.append(facts["utilisation"])
    measured.steady.append(facts["utilisation_while_proposing"])
    measured.clock.append(facts["clock"])
    measured.overhead.append((wall - strategy.propose.seconds - lookups.seconds) / len(rows))
    measured.strategy.append(strategy.propose.seconds / max(strategy.propose.calls, 1))
    order = np.argsort([r["clock"] for r in rows], kind="stable")
    clocks = np.asarray([rows[i]["clock"] for i in order])
    best, tests = -np.inf, []
    for i in order:
        if rows[i]["valid"] > best:
            best, test = rows[i]["valid"], rows[i]["test"]
        tests.append(test)
    measured.curves.append((clocks, np.asarray(tests)))
    return measured, len(rows)


def at(curves: list[tuple[np.ndarray, np.ndarray]], moment: float) -> float:
    """Mean over seeds of the best-so-far test accuracy at simulated time ``moment``."""
    values = []
    for clocks, tests in curves:
        index = np.searchsorted(clocks, moment, side="right") - 1
        values.append(tests[index] if index >= 0 else np.nan)
    return float(np.nanmean(values))


def main(argv: list[str]) -> None:
    del argv
    durations = [float(s) for s in FLAGS.durations]
    table = load_nb201_table(None)
    space, evaluator = NasBench201Space(), Nb201TableEvaluator(table)
    mean = float(np.mean(durations))
    print(f"NAS-Bench-201 CIFAR-10 table; evaluation times drawn from {len(durations)} measured ones "
          f"(mean {mean:.0f} s); {FLAGS.seeds} seeds")
    print("| workers | queries | strategy | schedule | utilisation until the last start (overall) | "
          "simulated wall (h) | scheduler ms / candidate | strategy ms / call | test acc at 25% / 50% / 100% "
          "of sync's wall |")
    print("|---|---|---|---|---|---|---|---|---|")
    for workers in (int(w) for w in FLAGS.workers):
        queries = max(150, FLAGS.rounds * workers)
        for name in FLAGS.strategies:
            results = {}
            for schedule in ("sync", "async"):
                total = Measured()
                for seed in range(FLAGS.seeds):
                    measured, _ = one_search(space, evaluator, name, seed, workers, schedule, queries,
                                             durations)
                    for field in dataclasses.fields(Measured):
                        getattr(total, field.name).extend(getattr(measured, field.name))
                results[schedule] = total
            horizon = float(np.mean(results["sync"].clock))
            for schedule, total in results.items():
                accuracy = " / ".join(f"{at(total.curves, f * horizon):.2f}" for f in (0.25, 0.5, 1.0))
                print(f"| {workers} | {queries} | {name} | {schedule} | {np.mean(total.steady):.1%} "
                      f"({np.mean(total.utilisation):.1%}) | "
                      f"{np.mean(total.clock) / 3600:.2f} | {1e3 * np.mean(total.overhead):.2f} | "
                      f"{1e3 * np.mean(total.strategy):.1f} | {accuracy} |", flush=True)


if __name__ == "__main__":
    app.run(main)
