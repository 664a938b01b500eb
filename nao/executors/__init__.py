"""Executors: where an evaluator's jobs run. ``local``: worker processes of this machine (``ray``, on
several hosts, comes next with the same interface)."""

from nao.executors.base import Executor, Outcome, WorkerError, WorkerTask
from nao.executors.local import LocalExecutor, resolve_workers

EXECUTORS = {"local": LocalExecutor}

__all__ = ["EXECUTORS", "Executor", "LocalExecutor", "Outcome", "WorkerError", "WorkerTask",
           "resolve_workers"]
