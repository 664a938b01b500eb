"""CIFAR cell networks: train and eval images/s, fixed network against the weight-sharing supernet.

    python benchmarks/child_throughput.py                            # both sizes, both modes
    python benchmarks/child_throughput.py --sizes=search --steps=2   # the NAO-WS search size only
    python benchmarks/child_throughput.py --peak_tflops=989          # on a GPU: + the share of its peak

Rows: the NAONet-B cell (``naonet_b``, the cell the original code's CPU figures time) at the
final-training size ("final": F=36, N=6, aux head, drop path, dropout: NAONet-B-36) and at the NAO-WS
search size ("search": ``SEARCH_CONFIG``, F=20, N=3), each as a fixed network (``CellNetwork``: the cell
compiled in) and as the supernet (``Supernet``: the cell a traced int array, so one compilation serves
every cell), the supernet once with the same cell (for the supernet / fixed ratio) and once with a new
random cell every step ("supernet, random cells": what a search does, and what the original code's
supernet figure measures). A train step is one pmapped SGD step on
uint8 images (``nao.models.cnn_train.make_train_step``, which takes the supernet's cell as an argument):
augmentation, forward, backward, gradient clipping, weight decay, momentum, BatchNorm statistics. Eval
is the forward pass (``make_eval_step``): with the running BatchNorm statistics for the fixed network,
with batch statistics for the supernet (as NAO-WS scores cells). Times are the median of ``--steps``
steps after the first, and the fastest of them beside it; "compile s" is that first call, compilation
included, less the median step, for train and eval. Other processes on the machine inflate both.

"vs PyTorch" divides the median images/s by the original NAO code's (NAO_V1, torch CPU build, 2
threads, random inputs, batch 128), measured earlier in the project on the same kind of machine, which
the script recognises by its CPU model: NAONet-B-36 fixed and the NAO-WS supernet (F=20, N=3, one sampled
cell per step) on a 2-core Intel Xeon with AVX-512 (7.75 / 28.7 and 35.0 / 112.6 train / eval images/s)
and on a 2-core AMD EPYC (7.45 / 24.6 and 34.7 / 98); on an H200 (899 / 4992 and 1158 / 4494). Those
were separate sittings, so a ratio is indicative only: a claim needs both codes run on one machine in
one sitting with the same statistic. On another machine the column stays empty.

Then the input pipeline: ``epoch_batches`` + ``prefetch`` (the host-to-device copy in the producer
thread) over random uint8 arrays of CIFAR-10's shape feed the fixed row with the shortest step, and
the consumer's wait for each batch is set against the step time.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nao.data.cifar import CHANNEL_STATS  # noqa: E402
from nao.data.image_input import epoch_batches, prefetch  # noqa: E402
from nao.models import parallel  # noqa: E402
from nao.models.cnn import (  # noqa: E402
    SEARCH_CONFIG,
    CellNetworkConfig,
    init_variables,
    make_cell_network,
)
from nao.models.cnn_supernet import make_supernet  # noqa: E402
from nao.models.cnn_train import CnnTrainConfig, make_eval_step, make_train_step, train_state  # noqa: E402
from nao.spaces.cifar import CifarWsSpace  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("sizes", ["final", "search"], "Which network sizes to time (final, search).")
flags.DEFINE_list("modes", ["fixed", "supernet"], "fixed (CellNetwork) and/or supernet (Supernet).")
flags.DEFINE_integer("batch", 128, "Global batch size, divided over the local devices.")
flags.DEFINE_integer("steps", 5, "Timed steps per row and mode, after one compiling step.")
flags.DEFINE_float("peak_tflops", None, "The device's peak TFLOP/s: adds the share of it used "
                   "(model FLOPs: 3x the forward's for training).")
flags.DEFINE_integer("pipeline_steps", 6, "Train steps fed by the input pipeline (0: skip it).")
flags.DEFINE_string("arch", "naonet_b", "The cell: a published name or string of the cifar_ws space.")

SIZES = {"final": CellNetworkConfig(), "search": SEARCH_CONFIG}
RECIPE = CnnTrainConfig()  # NAO_V1's optimiser settings; they do not change the step's cost
STATS = CHANNEL_STATS["cifar10"]
# The original code's images/s (train, eval) for (size, mode) by the machine they were measured on.
PYTORCH = {
    "Intel(R) Xeon(R) Processor": {("final", "fixed"): (7.75, 28.7), ("search", "random"): (35.0, 112.6)},
    "AMD EPYC": {("final", "fixed"): (7.45, 24.6), ("search", "random"): (34.7, 98.0)},
    "NVIDIA H200": {("final", "fixed"): (899.0, 4992.0), ("search", "random"): (1158.0, 4494.0)},
}


def machine() -> str:
    """The accelerator's name, or on a CPU its model name (the key of ``PYTORCH``)."""
    if jax.default_backend() != "cpu":
        return jax.devices()[0].device_kind
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def pytorch_figures(name: str) -> dict:
    """The original code's figures measured on the kind of machine ``name`` (a Xeon: with AVX-512)."""
    cpuinfo = Path("/proc/cpuinfo").read_text() if jax.default_backend() == "cpu" else ""
    for key, figures in PYTORCH.items():
        if name.startswith(key) and (not key.startswith("Intel") or "avx512f" in cpuinfo):
            return figures
    return {}


@dataclasses.dataclass
class Row:
    size: str
    mode: str  # fixed | supernet | random (the supernet, a new random cell every step)
    config: CellNetworkConfig
    train_s: float = 0.0  # median seconds per step
    eval_s: float = 0.0
    train_fastest: float = 0.0
    eval_fastest: float = 0.0
    compile_s: float = 0.0


def timed(fn: Callable[[int], None], steps: int) -> tuple[float, float, float]:
    """(median, fastest, first) seconds of ``fn(i)`` over ``steps`` calls after a first one that
    compiles; ``fn`` blocks until its result is ready."""
    start = time.perf_counter()
    fn(0)
    first = time.perf_counter() - start
    times = []
    for i in range(1, steps + 1):
        start = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - start)
    return float(np.median(times)), min(times), first


def build(row: Row, arch: tuple[int, ...], batch: int) -> tuple[Callable, Callable, dict]:
    """(train step: (state, batch, cell) -> state; eval step: cell -> None; the initial train state).
    Both block until done; a fixed network ignores the cell (its own is compiled in)."""
    devices = jax.local_device_count()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, batch).astype(np.int32)
    sharded = parallel.shard_to_devices((images, labels), devices)
    dummy = jnp.zeros((2, 32, 32, 3), jnp.float32)
    step_args = (np.float32(RECIPE.lr), np.float32(0.5), np.int32(1), jax.random.key(0))
    supernet = row.mode == "supernet"
    model = make_supernet(config=row.config) if supernet else make_cell_network(arch, config=row.config)
    variables = jax.tree.map(np.asarray, init_variables(model, jax.random.key(0), dummy,
                                                        *((np.asarray(arch, np.int32),) if supernet else ())))
    replicated = parallel.replicate(variables)
    train = make_train_step(model, STATS, aux_weight=RECIPE.aux_weight, clip=RECIPE.clip,
                            weight_decay=RECIPE.weight_decay, momentum=RECIPE.momentum,
                            crop_padding=RECIPE.crop_padding, flip=RECIPE.flip,
                            cutout_size=RECIPE.cutout_size)
    evaluate = make_eval_step(model, STATS)
    mask = parallel.shard_to_devices(np.ones(batch, np.float32), devices)

    def cell_args(cell: tuple[int, ...]) -> tuple:
        return (np.asarray(cell, np.int32),) if supernet else ()  # the supernet's steps take the cell

    def train_step(state: dict, batch_args=sharded, cell=arch) -> dict:
        state, metrics = train(state, *batch_args, *step_args, *cell_args(cell))
        jax.block_until_ready(metrics)
        return state

    def eval_step(cell=arch) -> None:
        jax.block_until_ready(evaluate(replicated, *sharded, mask, *cell_args(cell)))

    return train_step, eval_step, parallel.replicate(train_state(variables, RECIPE))


def forward_flops(config: CellNetworkConfig, arch: tuple[int, ...], batch: int) -> float:
    """XLA's FLOP count of the fixed network's eval forward pass (cells unrolled: XLA counts a loop's
    body once)."""
    model = make_cell_network(arch, config=dataclasses.replace(config, scan_cells=False))
    images = jax.ShapeDtypeStruct((batch, 32, 32, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), images)
    lowered = jax.jit(functools.partial(model.apply, train=False)).lower(variables, images)
    return float(lowered.cost_analysis()["flops"])


def pipeline_wait(train_step: Callable, state, batch: int, steps: int) -> tuple[float, float, float]:
    """Seconds per batch: (producing one on the host alone, the consumer's mean wait while training,
    the mean step) over ``steps`` steps fed by ``prefetch``, the first (nothing to overlap with) left out."""
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (50_000, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 50_000).astype(np.int32)
    devices = jax.local_device_count()

    def batches(epoch: int):
        return (parallel.shard_to_devices(b, devices) for b in epoch_batches(images, labels, batch, 0, epoch))

    start = time.perf_counter()
    for _, shards in zip(range(steps), batches(0)):
        jax.block_until_ready(shards)
    host = (time.perf_counter() - start) / steps
    waits, step_times = [], []
    feed = prefetch(batches(1))
    try:
        for _ in range(steps + 1):
            start = time.perf_counter()
            shards = next(feed)
            ready = time.perf_counter()
            state = train_step(state, shards)
            waits.append(ready - start)
            step_times.append(time.perf_counter() - ready)
    finally:
        feed.close()
    return host, float(np.mean(waits[1:])), float(np.mean(step_times[1:]))


def time_row(row: Row, train_step: Callable, eval_step: Callable, holder: dict, cells: Callable) -> None:
    """Fill ``row``'s times; ``cells(i)`` is the cell of timed call ``i``."""

    def one_step(i: int) -> None:
        holder["state"] = train_step(holder["state"], cell=cells(i))

    row.train_s, row.train_fastest, train_first = timed(one_step, FLAGS.steps)
    row.eval_s, row.eval_fastest, eval_first = timed(lambda i: eval_step(cells(i)), FLAGS.steps)
    row.compile_s = train_first - row.train_s + eval_first - row.eval_s


def throughput_table() -> None:
    space = CifarWsSpace()
    arch = tuple(space.from_string(FLAGS.arch))
    batch = FLAGS.batch
    parallel.shard(np.zeros(batch), jax.local_device_count())  # fails early on an indivisible batch
    name = machine()
    reference = pytorch_figures(name)
    print(f"devices: {jax.local_device_count()} x {jax.devices()[0].device_kind} ({jax.default_backend()}, "
          f"{name}); cell {FLAGS.arch}; batch {batch}; median of {FLAGS.steps} steps (fastest)")
    peak = FLAGS.peak_tflops
    header = ("| network | F | N | batch | mode | train images/s | eval images/s | supernet / fixed step "
              "(train, eval) | compile s (train + eval) | vs PyTorch (train, eval) |")
    if peak:
        header += " % of peak (train, eval) |"
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    fastest = None
    notes = ["supernet eval normalises with batch statistics, as NAO-WS scores cells; the fixed network's "
             "with its running averages",
             "vs PyTorch: " + ("figures measured in another sitting on this kind of machine, indicative only"
                               if reference else f"no figures of the original code for {name}")]
    for size in FLAGS.sizes:
        config = SIZES[size]
        flops = forward_flops(config, arch, batch) if peak else 0.0
        if peak:
            notes.append(f"{size}: {flops / batch / 1e9:.3f} GFLOP per image in the forward pass")
        fixed = None
        for mode in FLAGS.modes:
            built = build(Row(size, mode, config), arch, batch)
            holder = {"state": built[2]}
            rows = [(Row(size, mode, config), lambda i: arch)]
            if mode == "supernet":  # the same compiled steps, a random cell each call
                rows.append((Row(size, "random", config),
                             lambda i: tuple(space.sample(np.random.default_rng(i)))))
            for row, cells in rows:
                time_row(row, built[0], built[1], holder, cells)
                fixed = row if mode == "fixed" else fixed
                ratio = (f"{row.train_s / fixed.train_s:.2f}x, {row.eval_s / fixed.eval_s:.2f}x"
                         if row.mode == "supernet" and fixed else "")
                figures = reference.get((size, row.mode))
                versus = (f"{batch / row.train_s / figures[0]:.2f}x, {batch / row.eval_s / figures[1]:.2f}x"
                          if figures else "")
                line = (f"| {size} | {config.channels} | {config.layers} | {batch} | "
                        f"{'supernet, random cells' if row.mode == 'random' else row.mode} | "
                        f"{batch / row.train_s:.1f} ({batch / row.train_fastest:.1f}) | "
                        f"{batch / row.eval_s:.1f} ({batch / row.eval_fastest:.1f}) | {ratio} | "
                        f"{row.compile_s:.0f} | {versus} |")
                if peak:
                    line += (f" {100 * 3 * flops / row.train_s / (peak * 1e12):.2f}%, "
                             f"{100 * flops / row.eval_s / (peak * 1e12):.2f}% |")
                print(line, flush=True)
            if mode == "fixed" and (fastest is None or rows[0][0].train_s < fastest[0].train_s):
                fastest = (rows[0][0], built[0], holder)
    print("\n" + "; ".join(notes))
    if FLAGS.pipeline_steps and fastest:
        row, train_step, holder = fastest
        host, wait, step = pipeline_wait(train_step, holder["state"], batch, FLAGS.pipeline_steps)
        print(f"\ninput pipeline ({row.size}, fixed, batch {batch}, {FLAGS.pipeline_steps} steps): a batch "
              f"takes {host * 1e3:.1f} ms to gather and put on the device(s) alone; while training the "
              f"consumer waited {wait * 1e3:.1f} ms per batch against a {step * 1e3:.0f} ms step "
              f"({100 * wait / (wait + step):.1f}% of the time)")


def main(argv: list[str]) -> None:
    del argv
    logging.getLogger("absl").setLevel(logging.WARNING)
    unknown = (set(FLAGS.sizes) - set(SIZES)) | (set(FLAGS.modes) - {"fixed", "supernet"})
    if unknown:
        raise app.UsageError(f"unknown --sizes/--modes {sorted(unknown)}: sizes {', '.join(SIZES)}, "
                             "modes fixed, supernet")
    throughput_table()


if __name__ == "__main__":
    app.run(main)
