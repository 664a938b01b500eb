"""The Ray executor on a Ray instance of this machine: jobs on actors, a dying worker re-queued and
then failed, a job's exception reported, and the one-line errors for a missing Ray or a dead address."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray

from nao.executors.base import WorkerError
from nao.executors.ray_cluster import ClusterError, RayExecutor, import_ray

ROOT = Path(__file__).resolve().parents[1]
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # actors cannot import the tests folder


class ToyTask:
    """Squares numbers; ('die', path) kills its worker until ``path`` exists... or always."""

    def setup(self) -> None:
        self.pid = os.getpid()

    def __call__(self, payload):
        kind, value = payload
        if kind == "square":
            return value * value, self.pid
        if kind == "die_once":
            marker = Path(value)
            if not marker.exists():
                marker.write_text("died")
                os._exit(1)
            return "survived", self.pid
        if kind == "die":
            os._exit(1)
        raise RuntimeError("a bug in the job")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             object_store_memory=80 * 2**20)
    yield
    ray.shutdown()


def test_jobs_run_on_the_workers_and_a_dying_worker_is_replaced(local_ray, tmp_path):
    with RayExecutor(ToyTask(), workers=2) as executor:
        for job_id in range(4):
            executor.submit(job_id, ("square", job_id))
        executor.submit(4, ("die_once", str(tmp_path / "marker")))
        executor.submit(5, ("die", None))
        outcomes = {o.job_id: o for o in executor.results()}
    assert {i: outcomes[i].value[0] for i in range(4)} == {0: 0, 1: 1, 2: 4, 3: 9}
    assert len({outcomes[i].value[1] for i in range(4)}) <= 2  # at most two workers
    assert outcomes[4].value[0] == "survived" and outcomes[4].attempts == 2  # re-queued once
    assert outcomes[5].value is None and outcomes[5].attempts == 2 and "died 2 times" in outcomes[5].error


def test_an_exception_in_a_job_is_a_worker_error_not_a_retry(local_ray):
    with RayExecutor(ToyTask(), workers=1) as executor:
        executor.submit(0, ("bug", None))
        with pytest.raises(WorkerError, match="a bug in the job"):
            list(executor.results())


def test_more_workers_than_the_cluster_has_gpus_is_one_line():
    assert RayExecutor.check_workers(0, gpus=4) == 4 and RayExecutor.check_workers(0, gpus=0) == 1
    with pytest.raises(ValueError, match=r"^workers=5 but the Ray cluster has 4 GPU\(s\): use at most 4"):
        RayExecutor.check_workers(5, gpus=4)


def test_without_ray_installed_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ClusterError, match=r"pip install 'nao\[ray\]'") as raised:
        import_ray()
    assert "\n" not in str(raised.value)


def test_an_address_that_does_not_answer_is_reported_at_once():
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    start = time.perf_counter()
    with pytest.raises(ClusterError, match=rf"^ray_address=127\.0\.0\.1:{port} does not answer") as raised:
        RayExecutor(ToyTask(), workers=1, address=f"127.0.0.1:{port}")
    assert time.perf_counter() - start < 5 and "\n" not in str(raised.value)
    with pytest.raises(ClusterError, match="is not HOST:PORT"):
        RayExecutor(ToyTask(), workers=1, address="nowhere")


def test_the_command_line_names_a_dead_address_in_one_line_and_leaves_no_run(ptb_dir, tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, str(ROOT / "run_nao.py"), "--space=ptb", "--evaluator=train",
                             "--preset=smoke", f"--data_dir={ptb_dir}", "--executor=ray",
                             f"--ray_address=127.0.0.1:{port}", f"--output_dir={out}"],
                            capture_output=True, text=True, timeout=120)
    lines = [line for line in result.stderr.splitlines()
             if line.strip() and not (line[0] in "IWE" and line[1:5].isdigit())]  # absl's log lines aside
    assert result.returncode == 2 and lines == [
        f"error: ray_address=127.0.0.1:{port} does not answer (Connection refused): start the cluster's head "
        "there (ray start --head) or fix the address"], result.stderr
    assert not out.exists()
