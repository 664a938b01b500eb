"""Workers on a Ray cluster (Moritz et al., 2018): the same jobs as local worker processes, on many hosts.

Each worker is a Ray actor that asks for one GPU where the cluster has GPUs (else one CPU), runs its
``WorkerTask``'s ``setup`` once (so it compiles its training step once) and then one job at a time;
Ray places the actors on whichever hosts have the resources. An actor that dies mid-job (its host
lost, killed, out of memory) is replaced and its job re-queued, and after ``max_attempts`` deaths the
job comes back failed, by ``Executor``'s rules. Ray is an optional extra (``pip install 'nao[ray]'``)
and is imported only here.

``address`` None starts a Ray instance on this machine (or joins the one ``RAY_ADDRESS`` names);
otherwise ``host:port`` of a running cluster's head (``ray start --head`` prints it) or a Ray Client
``ray://host:port``. An address that does not answer is reported at once, not retried for minutes.
"""

from __future__ import annotations

import collections
import importlib
import os
import socket
from collections.abc import Iterator
from typing import Any

from nao.executors.base import Executor, Outcome, WorkerError, WorkerTask

MAX_ATTEMPTS = 2  # actors that may die on one job before it is recorded as failed
CONNECT_SECONDS = 3.0  # how long an address may take to accept a connection


class ClusterError(RuntimeError):
    """Ray is missing or the cluster cannot be reached; the message says which and what to do."""


def import_ray() -> Any:
    """The ``ray`` module; a one-line ClusterError naming the extra when it is not installed."""
    try:
        return importlib.import_module("ray")
    except ImportError:
        raise ClusterError("executor=ray needs Ray, an optional extra: pip install 'nao[ray]' (or use "
                           "executor=local)") from None


def check_address(address: str) -> None:
    """Fail in one line, within seconds, when nothing accepts connections at ``address``."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ClusterError(f"ray_address={address!r} is not HOST:PORT (e.g. 10.0.0.5:6379, or "
                           "ray://10.0.0.5:10001 for Ray Client)")
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_SECONDS):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise ClusterError(f"ray_address={address} does not answer ({reason}): start the cluster's head "
                           "there (ray start --head) or fix the address") from None


class _Actor:
    """A worker: the task set up once, then jobs one at a time (wrapped by ``ray.remote``)."""

    def __init__(self, task: WorkerTask):
        self.task = task
        task.setup()

    def run(self, payload: Any) -> Any:
        return self.task(payload)

    def pid(self) -> int:
        return os.getpid()


class RayExecutor(Executor):
    """``workers`` Ray actors running jobs of ``task`` on the cluster at ``address``."""

    def __init__(self, task: WorkerTask, workers: int, address: str | None = None,
                 max_attempts: int = MAX_ATTEMPTS):
        self.ray = import_ray()
        if address:
            check_address(address)
        if not self.ray.is_initialized():
            self.ray.init(address=address or None, include_dashboard=False, log_to_driver=False,
                          configure_logging=False)
        gpus = int(self.ray.cluster_resources().get("GPU", 0))
        self.workers = self.check_workers(workers, gpus)
        self.max_attempts = max_attempts
        self._resources = {"num_gpus": 1} if gpus else {"num_cpus": 1}
        self._actor_class = self.ray.remote(max_restarts=0)(_Actor)
        self._task = self.ray.put(task)
        self._pending: collections.deque[tuple[int, Any, int]] = collections.deque()
        self._idle: list[Any] = []
        self._running: dict[Any, tuple[Any, int, Any, int]] = {}  # ref -> (actor, job id, payload, attempts)
        self._actors = 0

    @staticmethod
    def preflight(address: str | None) -> None:
        import_ray()
        if address:
            check_address(address)

    @staticmethod
    def check_workers(workers: int, gpus: int | None = None) -> int:
        """``workers`` (0: one per GPU of the cluster, else 1); more than the cluster's GPUs is an error.
        Without ``gpus`` (before connecting) only the sign is checked."""
        if workers < 0:
            raise ValueError(f"workers={workers} is negative: use 0 (one per GPU) or more")
        if gpus is None:
            return workers
        if workers == 0:
            return max(gpus, 1)
        if gpus and workers > gpus:
            raise ValueError(f"workers={workers} but the Ray cluster has {gpus} GPU(s): use at most {gpus} "
                             "(one worker per GPU)")
        return workers

    def submit(self, job_id: int, payload: Any) -> None:
        self._pending.append((job_id, payload, 0))

    def _dispatch(self) -> None:
        while self._pending and (self._idle or self._actors < self.workers):
            if self._idle:
                actor = self._idle.pop()
            else:
                actor = self._actor_class.options(**self._resources).remote(self._task)
                self._actors += 1
            job_id, payload, attempts = self._pending.popleft()
            self._running[actor.run.remote(payload)] = (actor, job_id, payload, attempts + 1)

    def results(self) -> Iterator[Outcome]:
        ray = self.ray
        while self._pending or self._running:
            self._dispatch()
            done, _ = ray.wait(list(self._running), num_returns=1)
            actor, job_id, payload, attempts = self._running.pop(done[0])
            try:
                value = ray.get(done[0])
            except ray.exceptions.RayActorError as err:  # the worker died: a new one takes the job
                self._actors -= 1
                if attempts >= self.max_attempts:
                    yield Outcome(job_id, error=f"its worker died {attempts} times ({type(err).__name__})",
                                  attempts=attempts)
                else:
                    self._pending.appendleft((job_id, payload, attempts))
                continue
            except ray.exceptions.RayTaskError as err:
                raise WorkerError(f"job {job_id} failed on a Ray worker:\n{err}") from None
            self._idle.append(actor)
            yield Outcome(job_id, value, attempts=attempts)

    def pids(self) -> list[int]:
        """The process ids of the idle actors (tests kill them)."""
        return self.ray.get([actor.pid.remote() for actor in self._idle])

    def shutdown(self) -> None:
        for actor in [*self._idle, *(entry[0] for entry in self._running.values())]:
            self.ray.kill(actor)
        self._idle, self._running, self._actors = [], {}, 0
        self._pending.clear()
