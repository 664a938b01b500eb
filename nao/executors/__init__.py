"""Executors: where an evaluator's jobs run. ``local``: worker processes of this machine; ``ray``:
Ray actors on a cluster of many hosts (the optional extra ``nao[ray]``); ``simulated``: a simulated
clock, for scheduling at scales no machine here holds."""

from nao.executors.base import Executor, Outcome, WorkerError, WorkerTask
from nao.executors.local import LocalExecutor, resolve_workers
from nao.executors.ray_cluster import ClusterError, RayExecutor

EXECUTORS: dict[str, type[Executor]] = {"local": LocalExecutor, "ray": RayExecutor}

__all__ = ["EXECUTORS", "ClusterError", "Executor", "LocalExecutor", "Outcome", "RayExecutor", "WorkerError",
           "WorkerTask", "resolve_workers"]
