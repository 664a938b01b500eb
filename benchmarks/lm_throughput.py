"""Recurrent-cell language models: training throughput, supernet vs fixed cell, and a real PTB curve.

    python benchmarks/lm_throughput.py                         # tokens/s table (random tokens)
    python benchmarks/lm_throughput.py --ptb_dir=DATA/ptb      # + the 'cpu' preset trained on real PTB

The table times the jitted, pmapped train step of the NAONet PTB cell at three sizes: the
paper's final model (850 units, batch 64), the paper's supernet (300 units, batch 256) and the
'cpu' preset (256 units, batch 32). "fixed" compiles the cell as constants; "supernet" takes it
as a traced array and reads its matrices from the weight bank of every (node, predecessor,
activation), so one compilation serves every cell. The real-data run trains the 'cpu' preset on
PTB and prints validation perplexity per epoch with the wall time.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nao.data.text import load_corpus  # noqa: E402
from nao.models import parallel  # noqa: E402
from nao.models.lm_train import (  # noqa: E402
    LM_PRESETS,
    LmTask,
    init_params,
    make_supernet_step,
    make_train_step,
)
from nao.models.rnn import LmConfig, RecurrentLM, init_bank  # noqa: E402
from nao.models.training import train  # noqa: E402
from nao.spaces.ptb import PtbSpace  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("ptb_dir", None, "PTB token files: also train the 'cpu' preset on real data.")
flags.DEFINE_integer("steps", 5, "Timed steps per configuration (after one compiling step).")
flags.DEFINE_list("sizes", ["paper_final", "paper_supernet", "cpu"], "Which rows to time.")
flags.DEFINE_integer("epochs", 0, "Real-data run: epochs (0: the preset's).")

SIZES = {  # name: (hidden, batch, bptt, modes)
    "paper_final": (850, 64, 35, ("fixed",)),
    "paper_supernet": (300, 256, 35, ("fixed", "supernet")),
    "cpu": (256, 32, 35, ("fixed", "supernet")),
}


def _with_averaging(train_step, *args):
    return train_step(*args, np.bool_(False))


def time_step(hidden: int, batch: int, bptt: int, supernet: bool, steps: int) -> tuple[float, float]:
    """(seconds per step, compile seconds) of the train step on random tokens."""
    arch = PtbSpace().from_string("naonet")
    model = RecurrentLM(LmConfig(vocab_size=10000, emb_size=hidden, hidden_size=hidden))
    params = jax.tree.map(np.asarray, init_params(model, arch, jax.random.key(0)))
    if supernet:
        params["cell_bank"] = np.asarray(init_bank(jax.random.key(1), hidden))
        del params["cell"]
        step = make_supernet_step(model, 0.25, 8e-7, 1e-3)
        state = parallel.replicate({"params": params})
    else:
        train_step = make_train_step(model, 0.25, 8e-7, 1e-3, fixed_arch=tuple(arch))
        step = functools.partial(_with_averaging, train_step)
        state = parallel.replicate({"params": params, "avg": params, "count": np.int32(0)})
    rng = np.random.default_rng(0)
    inputs, targets = (rng.integers(0, 10000, (batch, bptt)).astype(np.int32) for _ in range(2))
    hidden_state = parallel.shard(np.zeros((batch, hidden), np.float32))
    batch_args = parallel.shard((inputs, targets))
    arch_array = np.asarray(arch, np.int32)

    def run(state, hidden_state):
        out = step(state, *batch_args, np.int32(bptt), hidden_state, arch_array, np.float32(1.0),
                   jax.random.key(1))
        jax.block_until_ready(out)
        return out[0], out[1]

    start = time.perf_counter()
    state, hidden_state = run(state, hidden_state)
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        state, hidden_state = run(state, hidden_state)
        times.append(time.perf_counter() - start)
    # The fastest step: other processes on a shared machine only ever add time.
    return min(times), compile_s


def throughput_table() -> None:
    print(f"devices: {jax.local_device_count()} x {jax.devices()[0].device_kind}")
    print("| size | hidden | batch | mode | ms/step (fastest) | tokens/s | supernet / fixed | compile s |")
    print("|---|---|---|---|---|---|---|---|")
    for name in FLAGS.sizes:
        hidden, batch, bptt, modes = SIZES[name]
        fixed_time = None
        for mode in modes:
            seconds, compile_s = time_step(hidden, batch, bptt, mode == "supernet", FLAGS.steps)
            fixed_time = seconds if mode == "fixed" else fixed_time
            ratio = f"{seconds / fixed_time:.2f}x" if mode == "supernet" else ""
            print(f"| {name} | {hidden} | {batch} | {mode} | {seconds * 1e3:.0f} | "
                  f"{batch * bptt / seconds:.0f} | {ratio} | {compile_s:.1f} |", flush=True)


def real_ptb_run() -> None:
    corpus = load_corpus("ptb", FLAGS.ptb_dir)
    config = LM_PRESETS["cpu"]
    if FLAGS.epochs:
        config = dataclasses.replace(config, epochs=FLAGS.epochs)
    arch = PtbSpace().from_string("naonet")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        metrics = train(LmTask(config, arch, corpus), Path(out), meta={"space": "ptb"}).metrics
    total = time.perf_counter() - start
    print(f"\nNAONet cell, 'cpu' preset ({config.hidden_size} units, batch {config.batch_size}) on real PTB:")
    print("| epoch | minutes | train ppl | valid ppl | tokens/s |")
    print("|---|---|---|---|---|")
    minutes = 0.0
    for row in metrics["history"]:
        minutes += row["seconds"] / 60
        print(f"| {row['epoch']} | {minutes:.1f} | {row['train_ppl']:.1f} | {row['valid_ppl']:.1f} | "
              f"{row['tokens_per_s']:.0f} |")
    print(f"best valid ppl {metrics['valid_ppl']:.1f}, test ppl {metrics['test_ppl']:.1f}; "
          f"{total / 60:.1f} minutes in all (compilation and evaluation included)")


def main(argv: list[str]) -> None:
    del argv
    logging.getLogger("absl").setLevel(logging.WARNING)
    logging.getLogger("nao").setLevel(logging.INFO)
    if FLAGS.sizes:
        throughput_table()
    if FLAGS.ptb_dir:
        real_ptb_run()


if __name__ == "__main__":
    app.run(main)
