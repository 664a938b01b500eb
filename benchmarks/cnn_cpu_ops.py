"""Where a CIFAR training step's time goes on a CPU: the ops' CPU forms against XLA's, and the supernet
against the fixed network with nothing else in the step.

    python benchmarks/cnn_cpu_ops.py               # batch 64, stage-1 shapes of the search network (F=20)
    python benchmarks/cnn_cpu_ops.py --batch=128

Table 1: forward and forward+backward (``jax.grad`` of a sum of squares) of single ops on a
(batch, 32, 32, 20) input, each form of ``nao.models.cpu_kernels`` (``conv(matmul=...)``,
``depthwise_conv(shifted=...)``, ``pool(shifted=...)``). Table 2: ``jax.grad`` of the training loss of
the NAONet-WS cell at the search size (F=20, N=3) as ``CellNetwork`` and as ``Supernet``, runs
interleaved so that other load hits both alike, and the MB that the compiled forward+backward copies
inside its loop bodies (once per body; a scan's body runs once per step). Times are the fastest of
``--repeats``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hlo import loop_copies, megabytes  # noqa: E402

from nao.models.cnn import SEARCH_CONFIG, init_variables, make_cell_network  # noqa: E402
from nao.models.cnn_supernet import make_supernet  # noqa: E402
from nao.models.cpu_kernels import conv, depthwise_conv, pool  # noqa: E402
from nao.spaces.cifar import CifarWsSpace  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("batch", 64, "Images per step.")
flags.DEFINE_integer("repeats", 4, "Timed calls per function (after one compiling call).")


def fastest(calls: dict[str, Callable[[], jax.Array]]) -> dict[str, float]:
    """Seconds of the fastest call of each function, the functions' calls interleaved."""
    for call in calls.values():
        jax.block_until_ready(call())
    times = {name: [] for name in calls}
    for _ in range(FLAGS.repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            jax.block_until_ready(call())
            times[name].append(time.perf_counter() - start)
    return {name: min(t) for name, t in times.items()}


def op_table(x: jax.Array) -> None:
    channels = x.shape[-1]
    rng = np.random.default_rng(0)
    k1 = jnp.asarray(rng.normal(size=(1, 1, channels, channels)), jnp.float32)
    k3 = jnp.asarray(rng.normal(size=(3, 3, channels, channels)), jnp.float32)
    dw3 = jnp.asarray(rng.normal(size=(3, 3, 1, channels)), jnp.float32)
    dw5 = jnp.asarray(rng.normal(size=(5, 5, 1, channels)), jnp.float32)
    pads = ((1, 1), (1, 1))
    ops = {
        "conv 1x1": lambda x, k1=k1, flag=True: conv(x, k1, matmul=flag),
        "conv 3x3": lambda x, flag=True: conv(x, k3, matmul=flag),
        "depthwise 3x3": lambda x, flag=True: depthwise_conv(x, dw3, shifted=flag),
        "depthwise 5x5": lambda x, flag=True: depthwise_conv(x, dw5, shifted=flag),
        "max pool 3x3": lambda x, flag=True: pool(x, "max", (3, 3), (1, 1), pads, shifted=flag),
        "avg pool 3x3": lambda x, flag=True: pool(x, "avg", (3, 3), (1, 1), pads, shifted=flag),
    }
    print(f"| op on {tuple(x.shape)} | CPU form fwd ms | XLA fwd ms | CPU form fwd+bwd ms | XLA fwd+bwd ms | "
          "speed-up fwd+bwd |")
    print("|---|---|---|---|---|---|")
    for name, op in ops.items():
        calls = {}
        for flag in (True, False):
            forward = jax.jit(lambda x, op=op, flag=flag: op(x, flag=flag))
            grad = jax.jit(jax.grad(lambda x, op=op, flag=flag: jnp.sum(op(x, flag=flag) ** 2)))
            calls[("fwd", flag)] = lambda f=forward: f(x)
            calls[("grad", flag)] = lambda g=grad: g(x)
        t = fastest(calls)
        ms = {key: f"{value * 1e3:.1f}" for key, value in t.items()}
        print(f"| {name} | {ms['fwd', True]} | {ms['fwd', False]} | {ms['grad', True]} | "
              f"{ms['grad', False]} | {t['grad', False] / t['grad', True]:.1f}x |", flush=True)


def network_table(batch: int) -> None:
    arch = tuple(CifarWsSpace().from_string("naonet_ws"))
    cell = np.asarray(arch, np.int32)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(batch, 32, 32, 3)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, batch), jnp.int32)
    calls, copies = {}, {}
    for name, model, args in (("fixed", make_cell_network(arch, config=SEARCH_CONFIG), ()),
                              ("supernet", make_supernet(config=SEARCH_CONFIG), (cell,))):
        variables = init_variables(model, jax.random.key(0), x, *args)

        def loss(params, model=model, args=args, stats=variables["batch_stats"]):
            (logits, _), _ = model.apply({"params": params, "batch_stats": stats}, x, *args, train=True,
                                         progress=0.5, mutable=["batch_stats"],
                                         rngs={"dropout": jax.random.key(1), "droppath": jax.random.key(1)})
            return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))

        forward = jax.jit(loss)
        grad = jax.jit(jax.grad(loss)).lower(variables["params"]).compile()
        copies[name] = megabytes(loop_copies(grad.as_text()))
        calls[name, "fwd"] = lambda f=forward, p=variables["params"]: f(p)
        calls[name, "grad"] = lambda g=grad, p=variables["params"]: g(p)
    t = fastest(calls)
    print(f"\n| search network (F=20, N=3), batch {batch} | forward (train) ms | forward+backward ms | "
          "forward+backward copies in loop bodies MB |")
    print("|---|---|---|---|")
    for name in ("fixed", "supernet"):
        print(f"| {name} | {t[name, 'fwd'] * 1e3:.0f} | {t[name, 'grad'] * 1e3:.0f} | {copies[name]:.1f} |")
    print(f"| supernet / fixed | {t['supernet', 'fwd'] / t['fixed', 'fwd']:.2f}x | "
          f"{t['supernet', 'grad'] / t['fixed', 'grad']:.2f}x | |")


def main(argv: list[str]) -> None:
    del argv
    print(f"backend: {jax.default_backend()} ({jax.devices()[0].device_kind})")
    x = jnp.asarray(np.random.default_rng(0).normal(size=(FLAGS.batch, 32, 32, 20)), jnp.float32)
    op_table(x)
    network_table(FLAGS.batch)


if __name__ == "__main__":
    app.run(main)
