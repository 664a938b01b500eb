"""Several processes, one job: the launcher path users take on pods and clusters, on this CPU."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_WORKER = textwrap.dedent("""
    import sys
    import jax
    import numpy as np
    from models import parallel
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
