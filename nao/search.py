"""The one search loop, for every strategy under every evaluator: rounds of train, score, propose.

A round:

1. the evaluator trains on the working pool up to the round's epoch (a weight-sharing supernet;
   a table trains nothing);
2. the working pool is scored: every architecture of it when the evaluator's scores change between
   rounds (``Evaluator.rescores``), else only those not scored yet; each score is written to the
   history before the loop moves on;
3. unless the budget is spent, the strategy proposes new architectures from the scored pool
   (``per_round`` of them, or as many as it likes up to the query budget), ``random_per_round``
   uniformly random ones join them, and with a bounded pool (``pool_size``) the worst are dropped
   to keep its size. NAO-WS (Luo et al., 2018) is the NAO strategy under a supernet evaluator
   with a pool of 1000 cells, 300 new and 50 random ones a round (NAO-WS RNN ``train_search.py``).

Budget: ``queries`` distinct architectures scored for the first time, and/or ``epochs`` of training
in rounds of ``round_epochs``; the search ends after the round that spends either.

Resume, with nothing scored twice: a search with a ``CheckpointStore`` (needed by an evaluator with
state, such as a supernet) saves the evaluator, the strategy and the working pool after every
training epoch and every round, and restarts from the newest of those; it loses at most one epoch of
training (the one in flight, or a round's last while the round's pool is scored). Without one
(tables) the strategy is re-run from its seed and every architecture it proposes that the history
already holds is taken from there instead of being evaluated again. In both cases a score the
history holds for the same round (or, for scores that do not change, any round) is reused. The
loop's own draws (the first pool of a bounded search, the random cells of each round) come from
``(strategy.seed, round)``, so they too are the same after a resume.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Hashable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from nao.history import History, proposals_of
from nao.models.checkpoint import CheckpointStore
from nao.models.training import check_finite
from nao.spaces.base import SearchSpace
from nao.strategies.base import Pool, Strategy, sample_unseen

if TYPE_CHECKING:
    from nao.evaluators.base import Evaluator

CHECKPOINT_KIND = "ws_search"  # what nao.pretrained.load_checkpoint reads as a WsSearchCheckpoint
SCHEDULES = ("sync", "async")


class SearchError(RuntimeError):
    """The search cannot go on (e.g. the strategy stopped proposing new architectures)."""


@dataclasses.dataclass(frozen=True)
class SearchSettings:
    """The loop's budget and schedule (0 turns a limit off)."""

    queries: int = 150  # stop once this many distinct architectures are scored; 0: no limit
    epochs: int = 0  # evaluator training epochs in all (supernets); 0: the evaluator does not train
    round_epochs: int = 0  # training epochs between two rounds
    pool_size: int = 0  # the working pool trained on and scored each round; 0: every architecture scored
    per_round: int = 0  # new architectures asked of the strategy a round; 0: as many as the budget leaves
    random_per_round: int = 0  # uniformly random new architectures added each round besides
    top: int = 10  # architectures of the final ranking each search reports (summary.json)
    # sync: rounds, each waiting for its slowest evaluation (as the paper ran); async: a new proposal
    # whenever an evaluation ends, from the results so far, so no worker waits for another
    schedule: str = "sync"
    # async: proposals asked of the strategy at once, handed out as workers free up (1: every proposal
    # sees every result so far; more: the strategy's time spread over many candidates, for many workers)
    async_batch: int = 1

    def validate(self) -> None:
        if self.async_batch < 1:
            raise ValueError(f"search.async_batch={self.async_batch}: propose at least 1 at a time")
        for name in ("queries", "epochs", "round_epochs", "pool_size", "per_round", "random_per_round"):
            if getattr(self, name) < 0:
                raise ValueError(f"search.{name}={getattr(self, name)} is negative: use 0 or more")
        if not self.queries and not self.epochs:
            raise ValueError("search.queries=0 and search.epochs=0 leave the search without an end: set one")
        if self.epochs and not 1 <= self.round_epochs <= self.epochs:
            raise ValueError(f"search.epochs={self.epochs} and search.round_epochs={self.round_epochs}: need "
                             "1 <= round_epochs <= epochs")
        if not self.epochs and self.round_epochs:
            raise ValueError(f"search.round_epochs={self.round_epochs} without search.epochs: set epochs "
                             "too, or round_epochs=0")
        if not self.per_round and not self.queries:
            raise ValueError("search.per_round=0 asks the strategy for what the query budget leaves, but "
                             "search.queries=0: set per_round")
        if self.pool_size and not 1 <= self.per_round < self.pool_size - self.random_per_round:
            raise ValueError(f"search.per_round={self.per_round} and search.random_per_round="
                             f"{self.random_per_round} must leave room in search.pool_size={self.pool_size}: "
                             "need 1 <= per_round and per_round + random_per_round < pool_size")
        if self.top < 1:
            raise ValueError(f"search.top={self.top}: report at least 1 architecture")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"search.schedule={self.schedule!r} is unknown: choose one of "
                             f"{', '.join(SCHEDULES)}")
        if self.schedule == "async" and (self.epochs or self.pool_size or not self.queries):
            raise ValueError("search.schedule=async proposes one architecture as each evaluation ends: it "
                             "needs search.queries and no supernet rounds (epochs=0, pool_size=0); use "
                             "schedule=sync")

    def round_end(self, round_index: int) -> int:
        """The epoch the evaluator has trained to when round ``round_index`` scores (0 without training)."""
        return min((round_index + 1) * self.round_epochs, self.epochs) if self.epochs else 0


@dataclasses.dataclass(frozen=True)
class Progress:
    round: int  # rounds scored
    queries: int  # distinct architectures scored
    budget: int  # settings.queries (0: none)
    best: dict[str, Any]  # the history row of the pool's best architecture
    elapsed: float  # seconds of this process (replayed rows cost nothing)
    replayed: int  # scores taken from the history

    @property
    def eta(self) -> float:
        """Seconds left until the query budget is spent (nan without one)."""
        done = self.queries - self.replayed
        left = self.budget - self.queries
        return self.elapsed / done * left if done > 0 and self.budget else float("nan")


def best_so_far(rows: list[dict[str, Any]]) -> tuple[list[float], list[float | None]]:
    """Per query: the best validation score so far and the test score of that architecture."""
    valid_curve, test_curve = [], []
    best = None
    for row in rows:
        if best is None or row["valid"] > best["valid"]:
            best = row
        valid_curve.append(best["valid"])
        test_curve.append(best["test"])
    return valid_curve, test_curve


def final_rows(rows: list[dict[str, Any]], rescored: bool) -> list[dict[str, Any]]:
    """The rows a search ends with: the last round's (scores that change between rounds) or all."""
    return [r for r in rows if r["round"] == rows[-1]["round"]] if rescored else rows


def round_records(rows: list[dict[str, Any]], score_name: str,
                  settings: SearchSettings) -> list[dict[str, Any]]:
    """Per round: its epoch, the best and mean ``score_name`` of the rows it scored, and the best arch."""
    records = []
    for index in sorted({r["round"] for r in rows}):
        scored = [r for r in rows if r["round"] == index]
        best = max(scored, key=lambda r: r["valid"])  # first of equals
        records.append({"round": index, "epoch": settings.round_end(index),
                        f"best_{score_name}": best[score_name],
                        f"mean_{score_name}": float(np.mean([r[score_name] for r in scored])),
                        "best": best["arch"]})
    return records


class _Search:
    """One search's state between rounds; ``search`` below is its only user."""

    def __init__(self, space: SearchSpace, strategy: Strategy, evaluator: Evaluator, settings: SearchSettings,
                 history: History, store: CheckpointStore | None, meta: dict[str, Any]):
        self.space, self.strategy, self.evaluator = space, strategy, evaluator
        self.settings, self.history, self.store, self.meta = settings, history, store, meta
        # History rows by (round, key) where scores change between rounds, else by key.
        self.recorded = {self._slot(row["round"], row["key"]): row for row in history.rows}
        self.queried: dict[str, int] = {}  # key -> query number of its first score
        self.current: dict[str, dict[str, Any]] = {}  # key -> row, the scores the pool is ranked by
        self.rows: list[dict[str, Any]] = []
        self.replayed = 0
        self.start = time.perf_counter()
        self._keys: dict[Hashable, str] = {}
        self.saved_step: int | None = None  # the newest checkpoint's step

    def key(self, arch: Hashable) -> str:
        """``space.key``, computed once per architecture: the unbounded pool is walked every round."""
        if arch not in self._keys:
            self._keys[arch] = self.space.key(arch)
        return self._keys[arch]

    def _slot(self, round_index: int, key: str) -> tuple[int | None, str]:
        return (round_index if self.evaluator.rescores else None), key

    # -- checkpoints -----------------------------------------------------------------------------

    def _arrays(self) -> dict[str, Any]:
        return {"evaluator": self.evaluator.save_state()[0], "strategy": self.strategy.save_state()[0]}

    def save(self, step: int, round_index: int, pool: list[Hashable]) -> None:
        if self.store is None or (self.saved_step is not None and step <= self.saved_step):
            return  # no store, or a finished search resumed: its last checkpoint is this one
        self.saved_step = step
        (evaluator_arrays, evaluator_facts), (strategy_arrays, strategy_facts) = (
            self.evaluator.save_state(), self.strategy.save_state())
        self.store.save(step, {"evaluator": evaluator_arrays, "strategy": strategy_arrays}, {
            **self.meta, **self._identity(), "round": round_index,
            "pool": [self.space.to_string(a) for a in pool],
            "rounds": round_records(self.rows, self.evaluator.score_name, self.settings),
            "evaluator_state": evaluator_facts, "strategy_state": strategy_facts})

    def _identity(self) -> dict[str, Any]:
        """The meta fields a checkpoint must share with the search that resumes it."""
        return {"kind": CHECKPOINT_KIND, "space": self.space.name, "strategy": self.strategy.name,
                "seed": self.strategy.seed, "settings": dataclasses.asdict(self.settings)}

    def restore(self) -> tuple[int, list[Hashable]] | None:
        """(round, working pool) of the newest checkpoint, with evaluator and strategy restored."""
        if self.store is None or self.store.latest_step() is None:
            return None
        state, meta = self.store.restore(self._arrays(), expect=self._identity())
        self.saved_step = self.store.latest_step()
        self.evaluator.load_state(state["evaluator"], meta["evaluator_state"])
        self.strategy.load_state(state["strategy"], meta["strategy_state"])
        round_index = meta["round"]
        for row in self.history.rows:
            if row["round"] < round_index:
                self._take(row, replayed=True)
        if self.evaluator.rescores:
            self.current = {}
        return round_index, [self.space.from_string(s) for s in meta["pool"]]

    # -- scoring ---------------------------------------------------------------------------------

    def _take(self, row: dict[str, Any], replayed: bool) -> None:
        self.queried.setdefault(row["key"], row["query"])
        self.current[row["key"]] = row
        self.rows.append(row)
        self.replayed += replayed

    def score(self, pool: list[Hashable], round_index: int) -> list[dict[str, Any]]:
        """The rows of ``pool`` for this round: known ones, recorded ones, and the rest evaluated.

        Rows are written as results arrive (in any order) but join the search in pool order, so the
        strategy sees the same pool whatever order a parallel evaluator answers in."""
        keys = [self.key(a) for a in pool]
        found: dict[int, dict[str, Any]] = {}
        fresh: list[int] = []
        for slot, key in enumerate(keys):
            if key in self.current:
                continue
            row = self.recorded.pop(self._slot(round_index, key), None)
            # Query numbers follow the pool's order, not the order results arrive in.
            self.queried.setdefault(key, len(self.queried) + 1 if row is None else row["query"])
            if row is None:
                fresh.append(slot)
            else:
                found[slot] = row
        for position, result in self.evaluator.evaluate([pool[s] for s in fresh]):
            slot = fresh[position]
            found[slot] = self.record(round_index, self.queried[keys[slot]], pool[slot], result)
        evaluated = set(fresh)
        for slot in sorted(found):
            self._take(found[slot], replayed=slot not in evaluated)
        return [self.current[key] for key in keys]

    def record(self, round_index: int, query: int, arch: Hashable, result: Any) -> dict[str, Any]:
        """Write the history row of ``arch``'s evaluation ``result`` and return it."""
        row = {"round": round_index, "query": query, "arch": self.space.to_string(arch),
               "key": self.key(arch), "valid": result.valid, "test": result.test, "cost": result.cost,
               "elapsed": time.perf_counter() - self.start, **result.extra}
        self.history.append(row)
        return row

    # -- proposing -------------------------------------------------------------------------------

    def taken(self, archs: list[Hashable]) -> Pool:
        """A pool of ``archs`` for ``sample_unseen`` to avoid (their scores do not matter)."""
        taken = Pool(self.space)
        for arch in archs:
            taken.add(arch, 0.0, self.key(arch))
        return taken

    def propose_batch(self, pool: Pool, busy: list[Hashable], count: int) -> list[Hashable]:
        """``count`` new, valid architectures not being evaluated: the strategy's, topped up at random."""
        keys = {self.key(arch) for arch in busy}
        batch = []
        for arch in self.strategy.propose(pool, count + len(keys)):
            fresh = self.space.is_valid(arch) and arch not in pool and self.key(arch) not in keys
            if fresh and len(batch) < count:
                batch.append(arch)
                keys.add(self.key(arch))
        if len(batch) < count:
            taken = self.taken([*pool.archs, *busy, *batch])
            batch += sample_unseen(self.space, taken, self.strategy.rng, count - len(batch))
        if not batch:
            raise SearchError(f"no new architecture left after {len(self.queried)} queries: the space may be "
                              "exhausted; lower search.queries")
        return batch

    def propose(self, pool: Pool, round_index: int) -> list[Hashable]:
        """New architectures for the next round: the strategy's, then random ones, within the budget."""
        settings = self.settings
        left = settings.queries - len(self.queried) if settings.queries else math.inf
        count = settings.per_round or int(left)
        batch, keys = [], set()
        for arch in self.strategy.propose(pool, count):
            key = self.key(arch)
            if self.space.is_valid(arch) and arch not in pool and key not in keys:
                batch.append(arch)
                keys.add(key)
        batch = batch[:count]
        if settings.random_per_round:
            taken = self.taken([*pool.archs, *batch])
            rng = np.random.default_rng([self.strategy.seed, 1, round_index])
            batch += sample_unseen(self.space, taken, rng, settings.random_per_round)
        kept = []
        for arch in batch:
            if self.key(arch) not in self.queried:
                if left == 0:
                    break
                left -= 1
            kept.append(arch)
        if not kept:
            raise SearchError(f"strategy {self.strategy.name!r} proposed no new architecture after "
                              f"{len(self.queried)} queries: the space may be exhausted; lower "
                              "search.queries")
        return kept

    def finished(self, round_index: int) -> bool:
        settings = self.settings
        return bool((settings.epochs and settings.round_end(round_index) >= settings.epochs)
                    or (settings.queries and len(self.queried) >= settings.queries))

    def progress(self, round_index: int, ranked: Pool) -> Progress:
        best = self.current[self.key(ranked.top(1)[0])]
        return Progress(round_index + 1, len(self.queried), self.settings.queries, best,
                        time.perf_counter() - self.start, self.replayed)


def search(space: SearchSpace, strategy: Strategy, evaluator: Evaluator, settings: SearchSettings,
           history: History, store: CheckpointStore | None = None, meta: dict[str, Any] | None = None,
           on_progress: Callable[[Progress], None] | None = None,
           on_epoch: Callable[[dict[str, float]], None] | None = None) -> list[dict[str, Any]]:
    """Run ``strategy`` under ``evaluator`` until the budget of ``settings`` is spent.

    Returns every row (one per architecture and round it was scored in) in order. ``store`` holds the
    checkpoints (required by an evaluator with state) and ``meta`` is written into each; ``on_epoch``
    gets each training epoch's statistics (after a resume again for an epoch trained again, whose
    checkpoint a kill prevented), ``on_progress`` each round's progress.
    """
    settings.validate()
    if store is None and evaluator.save_state() is not None:
        raise ValueError(f"{type(evaluator).__name__} has state to checkpoint: pass "
                         "store=CheckpointStore(...)")
    if store is not None and not settings.epochs and evaluator.save_state() is not None:
        raise ValueError("an evaluator with state trains between rounds: set search.epochs and round_epochs")
    run = _Search(space, strategy, evaluator, settings, history, store, meta or {})
    try:
        if settings.schedule == "async":
            return _search_async(run, on_progress)
        return _search_rounds(run, on_progress, on_epoch)
    finally:
        evaluator.close()


def _search_rounds(run: _Search, on_progress: Callable[[Progress], None] | None,
                   on_epoch: Callable[[dict[str, float]], None] | None) -> list[dict[str, Any]]:
    """The synchronous schedule: rounds of train, score, propose (the module docstring)."""
    space, strategy, evaluator, settings, store = (run.space, run.strategy, run.evaluator, run.settings,
                                                   run.store)
    restored = run.restore()
    if restored is not None:
        round_index, pool = restored
    else:
        round_index = 0
        first = np.random.default_rng([strategy.seed, 0])
        pool = sample_unseen(space, Pool(space), first, settings.pool_size) if settings.pool_size else []
    while True:
        until = settings.round_end(round_index)
        for stats in evaluator.train_round(pool, until):
            # Nothing of a diverged epoch is saved: a resume continues from the last good one.
            check_finite(stats["train_loss"], stats["epoch"], 0, store)
            if on_epoch is not None:  # before the save: a kill between the two loses no epoch's record
                on_epoch(stats)
            if stats["epoch"] < until:  # the round's last epoch is saved with the round's outcome
                run.save(stats["epoch"], round_index, pool)
        rows = run.score(pool, round_index)
        ranked = Pool(space)
        for arch, row in zip(pool, rows, strict=True):
            if not row.get("failed"):  # a candidate that could not be trained: no score to learn from
                ranked.add(arch, row["valid"], row["key"])
        if on_progress is not None and ranked.archs:
            on_progress(run.progress(round_index, ranked))
        step = until if settings.epochs else round_index + 1
        if run.finished(round_index):
            run.save(step, round_index, pool)
            return run.rows
        new = run.propose(ranked, round_index)
        survivors = ranked.top(settings.pool_size - len(new)) if settings.pool_size else pool
        pool = [*survivors, *new]
        round_index += 1
        if evaluator.rescores:
            run.current = {}
        run.save(step, round_index, pool)


def _search_async(run: _Search, on_progress: Callable[[Progress], None] | None) -> list[dict[str, Any]]:
    """The asynchronous schedule: ``evaluator.workers`` evaluations in flight; as each ends its row is
    written and the strategy proposes the next from every result so far.

    Each proposal is written to the proposals file (``proposals_of(history)``) before its evaluation
    starts. A resumed search takes back every recorded score, first submits the proposals that have
    none (evaluations a kill cut short; a trained candidate continues from its checkpoint), then
    proposes anew: nothing is evaluated twice and nothing proposed is lost. Results arrive in the order
    evaluations end, so unlike the rounds this schedule is not replayed draw for draw: a resumed
    strategy draws from a fresh stream of its seed."""
    space, strategy, evaluator, settings = run.space, run.strategy, run.evaluator, run.settings
    proposals = proposals_of(run.history)
    ranked = Pool(space)
    for row in run.history.rows:
        run._take(row, replayed=True)
        if not row.get("failed"):
            ranked.add(space.from_string(row["arch"]), row["valid"], row["key"])
    queue = [entry for entry in proposals.rows if entry["key"] not in run.queried]
    if proposals.rows:
        strategy.rng = np.random.default_rng([strategy.seed, 2, len(proposals.rows)])
    in_flight: dict[int, Hashable] = {}  # query number -> architecture
    batch: list[Hashable] = []  # proposed, not yet started
    stream: Iterator[tuple[int, Any]] = iter(())
    while True:
        while len(in_flight) < evaluator.workers and (queue or len(proposals.rows) < settings.queries):
            if queue:
                entry = queue.pop(0)
                number, arch = entry["query"], space.from_string(entry["arch"])
            else:
                if not batch:
                    count = min(settings.async_batch, settings.queries - len(proposals.rows))
                    batch = run.propose_batch(ranked, list(in_flight.values()), count)
                arch = batch.pop(0)
                number = len(proposals.rows) + 1
                proposals.append({"query": number, "key": run.key(arch), "arch": space.to_string(arch)})
            in_flight[number] = arch
            evaluator.submit(number, arch)
        if not in_flight:
            return run.rows
        item = next(stream, None)
        if item is None:  # the evaluator's stream ended with nothing in flight; new ones are
            stream = evaluator.completed()
            continue
        number, result = item
        arch = in_flight.pop(number)
        row = run.record(0, number, arch, result)
        run._take(row, replayed=False)
        if not row.get("failed"):
            ranked.add(arch, row["valid"], row["key"])
        if on_progress is not None and ranked.archs:
            on_progress(run.progress(0, ranked))


__all__ = ["Progress", "SearchError", "SearchSettings", "best_so_far", "final_rows", "round_records",
           "search"]
