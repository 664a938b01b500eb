"""Workers as processes of this machine: one per accelerator, or a share of the CPU cores each.

Each worker is a process started with multiprocessing's 'spawn' context (a fresh interpreter, never a
fork of a process that holds JAX's runtime). Before it unpickles its ``WorkerTask`` (and so before JAX
starts a backend) a worker is given its device: on GPUs ``CUDA_VISIBLE_DEVICES`` names one GPU each
(and JAX does not preallocate, so the driver's controller fits beside it); on a CPU the worker's
affinity is set to its share of the cores, which sizes XLA's thread pools (no XLA flag differs between
workers, so they share compiled steps through the persistent compilation cache). Jobs go to whichever
worker is free; a worker that dies mid-job is replaced and its job re-queued (``Executor``'s rules).
"""

from __future__ import annotations

import collections
import dataclasses
import multiprocessing
import os
import pickle
import queue
import traceback
from collections.abc import Iterator
from typing import Any

from nao.executors.base import Executor, Outcome, WorkerError, WorkerTask
from nao.models.parallel import available_cores

MAX_ATTEMPTS = 2  # workers that may die on one job before it is recorded as failed
POLL_SECONDS = 0.2  # how often a silent executor checks that its workers are alive


def gpu_count() -> int:
    """GPUs JAX sees (0 on a CPU or TPU host)."""
    import jax

    return jax.local_device_count() if jax.default_backend() == "gpu" else 0


def resolve_workers(workers: int) -> int:
    """``workers`` (0: one per GPU, else 1), checked against the GPUs or CPU cores; one-line ValueError."""
    gpus = gpu_count()
    if workers == 0:
        return max(gpus, 1)
    if gpus and workers > gpus:
        raise ValueError(f"workers={workers} but this host has {gpus} GPU(s): use at most {gpus} (one "
                         "worker per GPU)")
    cores = len(available_cores())
    if not gpus and workers > cores:
        raise ValueError(f"workers={workers} but this process may use {cores} CPU core(s): use at most "
                         f"{cores}")
    return workers


def worker_settings(index: int, workers: int) -> tuple[dict[str, str], list[int]]:
    """(environment, CPU cores) of worker ``index`` of ``workers``. Workers share the driver's
    persistent compilation cache, so a step compiled once serves every later worker."""
    import jax

    cache = jax.config.jax_compilation_cache_dir
    env = {"JAX_COMPILATION_CACHE_DIR": cache} if cache else {}
    if gpu_count():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        ids = visible.split(",") if visible else [str(i) for i in range(gpu_count())]
        return {**env, "CUDA_VISIBLE_DEVICES": ids[index], "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}, []
    cores = available_cores()
    share = max(1, len(cores) // workers)
    mine = cores[index * share:(index + 1) * share] or cores[-share:]
    env["JAX_PLATFORMS"] = "cpu"
    return env, mine


def _worker_main(index: int, env: dict[str, str], cores: list[int], task_bytes: bytes,
                 inbox: Any, outbox: Any) -> None:
    """A worker's life: take its device, set its task up, run jobs until told to stop (None)."""
    os.environ.update(env)
    if cores and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cores)
    try:
        task: WorkerTask = pickle.loads(task_bytes)  # imports JAX, after the device is chosen
        task.setup()
    except Exception:  # a worker that cannot start: the driver raises it
        outbox.put((index, None, False, traceback.format_exc()))
        return
    while (item := inbox.get()) is not None:
        job_id, payload = item
        try:
            outbox.put((index, job_id, True, task(payload)))
        except Exception:
            outbox.put((index, job_id, False, traceback.format_exc()))


@dataclasses.dataclass
class _Worker:
    process: Any
    inbox: Any
    job: tuple[int, Any, int] | None = None  # (job id, payload, attempts) in flight


class LocalExecutor(Executor):
    """``workers`` processes of this machine running jobs of ``task``."""

    def __init__(self, task: WorkerTask, workers: int, max_attempts: int = MAX_ATTEMPTS):
        self.workers = resolve_workers(workers)
        self.max_attempts = max_attempts
        self._context = multiprocessing.get_context("spawn")
        self._task_bytes = pickle.dumps(task)
        self._outbox = self._context.Queue()
        self._pending: collections.deque[tuple[int, Any, int]] = collections.deque()
        self._open = 0  # jobs submitted whose outcome has not been handed out
        self._slots: list[_Worker | None] = [None] * self.workers

    def _start(self, index: int) -> _Worker:
        env, cores = worker_settings(index, self.workers)
        inbox = self._context.Queue()
        process = self._context.Process(target=_worker_main, name=f"nao-worker-{index}", daemon=True,
                                        args=(index, env, cores, self._task_bytes, inbox, self._outbox))
        process.start()
        self._slots[index] = _Worker(process, inbox)
        return self._slots[index]

    check_workers = staticmethod(resolve_workers)

    def pids(self) -> list[int]:
        """The process ids of the running workers."""
        return [w.process.pid for w in self._slots if w is not None and w.process.is_alive()]

    def submit(self, job_id: int, payload: Any) -> None:
        self._pending.append((job_id, payload, 0))
        self._open += 1

    def _dispatch(self) -> None:
        for index in range(self.workers):
            if not self._pending:
                return
            worker = self._slots[index] or self._start(index)
            if worker.job is None:
                job_id, payload, attempts = self._pending.popleft()
                worker.job = (job_id, payload, attempts + 1)
                worker.inbox.put((job_id, payload))

    def _receive(self, message: tuple[int, int | None, bool, Any]) -> Outcome:
        index, job_id, ok, value = message
        worker = self._slots[index]
        if job_id is None:
            raise WorkerError(f"worker {index} could not start:\n{value}")
        attempts = worker.job[2] if worker is not None and worker.job else 1
        if worker is not None:
            worker.job = None
        self._open -= 1
        if not ok:
            raise WorkerError(f"job {job_id} failed in worker {index}:\n{value}")
        return Outcome(job_id, value, attempts=attempts)

    def _bury(self) -> Iterator[Outcome]:
        """Replace dead workers; re-queue their jobs, or fail a job after ``max_attempts`` deaths."""
        for index, worker in enumerate(self._slots):
            if worker is None or worker.process.is_alive():
                continue
            worker.process.join()
            self._slots[index] = None
            if worker.job is None:
                continue
            job_id, payload, attempts = worker.job
            if attempts >= self.max_attempts:
                self._open -= 1
                yield Outcome(job_id, error=f"its worker died {attempts} times (last exit code "
                                             f"{worker.process.exitcode})", attempts=attempts)
            else:
                self._pending.appendleft((job_id, payload, attempts))

    def results(self) -> Iterator[Outcome]:
        while self._open:
            self._dispatch()
            try:
                yield self._receive(self._outbox.get(timeout=POLL_SECONDS))
                continue
            except queue.Empty:
                pass
            # A worker may have answered just before it died: read every answer first.
            while True:
                try:
                    yield self._receive(self._outbox.get_nowait())
                except queue.Empty:
                    break
            yield from self._bury()

    def shutdown(self) -> None:
        for worker in self._slots:
            if worker is not None and worker.process.is_alive():
                worker.inbox.put(None)
        for index, worker in enumerate(self._slots):
            if worker is None:
                continue
            worker.process.join(timeout=5)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            self._slots[index] = None
        self._pending.clear()
        self._open = 0
