"""Workers on a simulated clock: scheduling at a scale no machine here holds (hundreds of GPUs).

Each job runs at once in this process, but takes ``duration(job_id, payload)`` seconds of a virtual
clock on one of ``workers`` simulated workers: a job starts when a worker is free and its outcome
comes back when its time is up, so outcomes arrive in the order a real cluster's would, and the
scheduler above sees exactly what it would see there. ``clock`` is the simulated wall time so far,
``busy`` the summed job time, so ``utilisation()`` is the share of worker time spent on jobs. The
driver's own time (a strategy proposing) can be charged to the clock with ``advance``: a worker that
is free meanwhile idles, as it would on a real cluster.
"""

from __future__ import annotations

import collections
import heapq
from collections.abc import Callable, Iterator
from typing import Any

from nao.executors.base import Executor, Outcome, WorkerTask


class SimulatedExecutor(Executor):
    """``workers`` simulated workers running jobs of ``task``, each for ``duration`` virtual seconds."""

    def __init__(self, task: WorkerTask, workers: int, duration: Callable[[int, Any], float]):
        self.workers = self.check_workers(workers)
        self.task, self.duration = task, duration
        task.setup()
        self.clock = 0.0  # virtual seconds since the start
        self.busy = 0.0  # virtual worker-seconds spent on jobs
        self.spans: list[tuple[float, float]] = []  # (start, finish) of every job started
        self._pending: collections.deque[tuple[int, Any]] = collections.deque()
        self._running: list[tuple[float, int, Any]] = []  # heap of (finish time, job id, value)

    @staticmethod
    def check_workers(workers: int) -> int:
        if workers < 1:
            raise ValueError(f"workers={workers}: a simulated executor needs at least 1 worker")
        return workers

    def advance(self, seconds: float) -> None:
        """Charge ``seconds`` of the driver's work to the clock (jobs running meanwhile go on)."""
        self.clock += seconds

    def submit(self, job_id: int, payload: Any) -> None:
        self._pending.append((job_id, payload))

    def _dispatch(self) -> None:
        while self._pending and len(self._running) < self.workers:
            job_id, payload = self._pending.popleft()
            seconds = float(self.duration(job_id, payload))
            self.busy += seconds
            self.spans.append((self.clock, self.clock + seconds))
            heapq.heappush(self._running, (self.clock + seconds, job_id, self.task(payload)))

    def results(self) -> Iterator[Outcome]:
        while self._pending or self._running:
            self._dispatch()
            finish, job_id, value = heapq.heappop(self._running)
            self.clock = max(self.clock, finish)  # a job done while the driver worked is read after it
            yield Outcome(job_id, value)

    def utilisation(self, until: float | None = None) -> float:
        """Job time over worker time up to ``until`` (None: the clock, jobs still running counting in
        full). Up to the last job's start it says how busy the scheduler kept the workers while there
        was work to give; after it, workers only wait for the last jobs to end."""
        if until is None:
            return self.busy / (self.workers * self.clock) if self.clock else 0.0
        worked = sum(max(0.0, min(finish, until) - start) for start, finish in self.spans)
        return worked / (self.workers * until) if until else 0.0

    def last_start(self) -> float:
        """When the last job started."""
        return max((start for start, _ in self.spans), default=0.0)

    def shutdown(self) -> None:
        self._pending.clear()
        self._running = []
