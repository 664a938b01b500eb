"""Any evaluator, as if each evaluation took a training run's time on one of many workers.

Scheduling at scale without the hardware: ``DelayedEvaluator`` looks each architecture up in the
evaluator it wraps (a table, instantly) on a ``SimulatedExecutor``, where it occupies one of
``workers`` simulated workers for a time drawn from ``durations`` (e.g. measured candidate-training
times). The search loop runs unchanged, synchronous or asynchronous, and sees results in the order a
cluster of that size would deliver them; the executor's clock and utilisation say how long the search
took and how busy the workers were.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence
from typing import Any

import numpy as np

from nao.evaluators.base import Evaluation, Evaluator, StreamingEvaluator
from nao.executors.simulated import SimulatedExecutor


class _Lookup:
    """The executor's task: one evaluation of the wrapped evaluator."""

    def __init__(self, inner: Evaluator):
        self.inner = inner

    def setup(self) -> None:
        return None

    def __call__(self, arch: Hashable) -> Evaluation:
        return next(self.inner.evaluate([arch]))[1]


class DelayedEvaluator(StreamingEvaluator):
    """``inner``'s scores, each taking a duration drawn (with ``seed``) from ``durations`` on one of
    ``workers`` simulated workers."""

    def __init__(self, inner: Evaluator, workers: int, durations: Sequence[float], seed: int = 0):
        self.inner, self.workers = inner, workers
        self.score_name = inner.score_name
        rng = np.random.default_rng(seed)
        samples = np.asarray(durations, np.float64)
        self.executor = SimulatedExecutor(_Lookup(inner), workers,
                                          lambda job_id, arch: float(rng.choice(samples)))

    def submit(self, ticket: int, arch: Hashable) -> None:
        self.executor.submit(ticket, arch)

    def completed(self) -> Iterator[tuple[int, Evaluation]]:
        for outcome in self.executor.results():
            value: Evaluation = outcome.value
            yield outcome.job_id, Evaluation(value.valid, value.test, value.cost,
                                             {**value.extra, "clock": self.executor.clock})

    def facts(self) -> dict[str, Any]:
        """The simulated wall time and the workers' utilisation so far, overall and up to the last
        evaluation's start (the end of the budget: then workers only wait for the last ones)."""
        executor = self.executor
        return {"clock": executor.clock, "utilisation": executor.utilisation(),
                "utilisation_while_proposing": executor.utilisation(executor.last_start())}
