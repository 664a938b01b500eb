"""Controller speed: training steps and generation calls, at the sizes the original code uses.

The reference figures (jax-notes) are the official PyTorch NAO on the same 2-core CPU:
1.0 s per controller epoch over 1000 architectures of 40 tokens at batch 100 (94 ms a step),
and 41 ms per generation call (one gradient step + greedy decode for 100 seeds). This script
builds a 40-token, 12-symbol space of the NAO-WS CNN shape (two tokens per encoder step) and
times the paper controller on it, then the NAS-Bench-201 controllers; the default preset's
ensemble both in one call and in one thread per member group (what a CPU with several cores does).

    python benchmarks/controller_speed.py
"""

from __future__ import annotations

import time

import jax
import numpy as np

from nao.controller import Controller, get_preset, member_groups
from nao.spaces import NasBench201Space
from nao.spaces.nasbench201 import NasBench201Space as _Base


class CnnShapedTokens(_Base):
    """Only the token shape of NAO-WS CNN cells (40 tokens, vocab 12, 2 tokens a step) matters here."""

    name = "cnn_shape"
    vocab_size = 12
    seq_len = 40
    tokens_per_step = 2

    def token_mask(self) -> np.ndarray:
        mask = np.zeros((self.seq_len, self.vocab_size), bool)
        mask[0::2, 1:7] = True  # node-index positions
        mask[1::2, 7:] = True  # op positions
        return mask


def time_controller(space, preset: str, pool: int, seeds: int, threads: int | None,
                    repeats: int = 5) -> tuple[int, float, float, float, float]:
    """Fit threads, compile s, ms / step, s / epoch and ms / generation call; ``threads`` fit the
    ensemble (None: as many as the controller picks)."""
    rng = np.random.default_rng(0)
    mask = space.token_mask()
    tokens = np.stack([[rng.choice(np.flatnonzero(m)) for m in mask] for _ in range(pool)]).astype(np.int32)
    targets = rng.random(pool).astype(np.float32)
    config = get_preset(preset)
    controller = Controller(space, config, jax.random.key(0))
    if threads is not None:
        controller.groups = member_groups(config.ensemble, threads)
    start = time.perf_counter()
    controller.fit(tokens, targets, jax.random.key(1), epochs=1)
    compile_s = time.perf_counter() - start
    steps_per_epoch = int(np.ceil(pool / config.batch_size))
    start = time.perf_counter()
    steps = controller.fit(tokens, targets, jax.random.key(2), epochs=max(1, 200 // steps_per_epoch))["steps"]
    step_ms = (time.perf_counter() - start) / steps * 1e3
    controller.generate(tokens[:seeds], np.ones(1))  # compile
    start = time.perf_counter()
    for _ in range(repeats):
        controller.generate(tokens[:seeds], np.ones(1))
    generate_ms = (time.perf_counter() - start) / repeats * 1e3
    return len(controller.groups), compile_s, step_ms, step_ms * steps_per_epoch / 1e3, generate_ms


def main() -> None:
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {jax.device_count()} device(s)\n")
    print("| space (tokens) | preset | members | fit threads | compile s | ms / step "
          "| s / epoch (1000 archs) | ms / generation call (100 seeds, 1 eta) |")
    print("|---|---|---|---|---|---|---|---|")
    cases = [(CnnShapedTokens(), "paper", None), (NasBench201Space(), "paper", None),
             (NasBench201Space(), "default", 1), (NasBench201Space(), "default", None)]
    for space, preset, threads in cases:
        groups, compile_s, step_ms, epoch_s, generate_ms = time_controller(space, preset, 1000, 100, threads)
        members = get_preset(preset).ensemble
        print(f"| {space.name} ({space.seq_len}) | {preset} | {members} | {groups} | {compile_s:.1f} "
              f"| {step_ms:.1f} | {epoch_s:.2f} | {generate_ms:.1f} |", flush=True)
    print("| official PyTorch NAO_V1 (40) | its defaults | 1 | 2 (torch) | - | 94 | 1.0 | 41 |")


if __name__ == "__main__":
    main()
