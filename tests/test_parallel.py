"""Several processes, one job: the launcher path users take on pods and clusters, on this CPU."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

_WORKER = textwrap.dedent("""
    import sys
    import jax
    import numpy as np
    from nao.models import parallel
    parallel.initialize_multihost(sys.argv[1], 2, int(sys.argv[2]))
    assert jax.process_count() == 2 and jax.device_count() == 2 * jax.local_device_count()
    total = jax.pmap(lambda x: jax.lax.psum(x, parallel.AXIS), axis_name=parallel.AXIS)(
        np.full((jax.local_device_count(),), jax.process_index() + 1.0))
    print("psum", float(total[0]))
""")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def test_two_processes_join_and_reduce_across_each_other():
    address = f"localhost:{free_port()}"
    env = {"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"}
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, address, str(i)], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outputs = [proc.communicate(timeout=180) for proc in procs]
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-2000:]
        assert out.strip().splitlines()[-1] == "psum 3.0"  # 1 + 2: each process saw the other's value


def _train(args: list[str], env: dict[str, str], count: int = 1, address: str = "") -> list[str]:
    """Run ``count`` processes of the same training command (a multi-host job when count > 1)."""
    hosts = [["--multihost", f"--coordinator_address={address}", f"--num_processes={count}",
              f"--process_id={i}"] if count > 1 else [] for i in range(count)]
    procs = [subprocess.Popen([sys.executable, str(ROOT / "run_nao.py"), *args, *extra], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for extra in hosts]
    outputs = [proc.communicate(timeout=400) for proc in procs]
    for proc, (_, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-3000:]
    return [out for out, _ in outputs]


def test_two_hosts_train_as_one_host_with_two_devices(tmp_path):
    """The launcher path of the README: two processes of one device each, joined by --multihost, each
    feeding its share of the global batch, end where one process with two devices does; only process
    0 writes the run's files, both write the checkpoints."""
    from conftest import write_corpus

    data = write_corpus(tmp_path / "ptb", [f"w{i}" for i in range(40)], 300, 0)
    args = ["--mode=train", "--space=ptb", "--arch=naonet", "--child_preset=smoke", "--child_epochs=2",
            f"--data_dir={data}", "--compilation_cache_dir="]
    env = {"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"}
    _train([*args, f"--output_dir={tmp_path / 'two_hosts'}"], env, 2, f"localhost:{free_port()}")
    _train([*args, f"--output_dir={tmp_path / 'one_host'}"],
           {**env, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
    metrics = [json.loads((tmp_path / run / "metrics.json").read_text()) for run in ("two_hosts", "one_host")]
    for key in ("steps", "valid_ppl", "test_ppl"):
        assert metrics[0][key] == pytest.approx(metrics[1][key], rel=1e-5)
    rows = (tmp_path / "two_hosts" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 2  # a header and one row per epoch: process 1 wrote none
    assert sorted(p.name for p in (tmp_path / "two_hosts" / "checkpoints").iterdir()) == ["1", "2"]
