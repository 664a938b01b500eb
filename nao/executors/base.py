"""What every executor offers an evaluator: run jobs on workers and hand back results as they finish.

An evaluator submits picklable jobs (``submit``) and reads their outcomes in the order they complete
(``results``); ``shutdown`` stops the workers. What a job does is the ``WorkerTask`` the executor was
built with: a picklable object whose ``setup`` runs once in each worker (load the data) and whose call
runs one job there. A worker that dies mid-job (killed, out of memory) gets its job re-queued; after
``max_attempts`` deaths the job comes back as a failed ``Outcome`` and the others go on. An exception a
job raises is a bug or bad input, not bad luck: it comes back as ``WorkerError``, and is not retried.

``nao.executors.local.LocalExecutor`` runs the workers as processes of this machine; a Ray executor
(several hosts) implements the same three methods.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Iterator
from typing import Any, Protocol


class WorkerError(RuntimeError):
    """A job raised an exception in its worker; the message carries the worker's traceback."""


class WorkerTask(Protocol):
    """The work of one kind of job; pickled once to every worker."""

    def setup(self) -> None:
        """Runs once in each worker before its first job (load data, warm caches)."""

    def __call__(self, payload: Any) -> Any:
        """Run one job; the return value must pickle."""


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What became of job ``job_id``: its ``value``, or ``error`` (why its workers died) when it failed."""

    job_id: int
    value: Any = None
    error: str | None = None
    attempts: int = 1  # workers that started it


class Executor(abc.ABC):
    """Runs jobs of one ``WorkerTask`` on workers."""

    @staticmethod
    @abc.abstractmethod
    def check_workers(workers: int) -> int:
        """The worker count ``workers`` asks for (0: the executor's default); a one-line ValueError when
        the executor cannot run that many."""

    workers: int  # the workers it runs, as resolved

    @staticmethod
    def preflight(address: str | None) -> None:
        """Check before any work that the workers can be reached (``address``: a cluster's, for an
        executor that reaches one); a one-line error otherwise. Local workers need nothing."""
        return None

    @abc.abstractmethod
    def submit(self, job_id: int, payload: Any) -> None:
        """Queue a job; ``job_id`` names it in its ``Outcome``."""

    @abc.abstractmethod
    def results(self) -> Iterator[Outcome]:
        """The outcomes of every job submitted, each as soon as it is done; ends when none is left."""

    @abc.abstractmethod
    def shutdown(self) -> None:
        """Stop the workers (jobs not done are dropped)."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
