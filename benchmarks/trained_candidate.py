"""What one candidate of ``--evaluator=train`` costs: wall and CPU seconds, and XLA compilation's share.

Trains ``--candidates`` random cells of ``--space`` one after another in this process, exactly as a
worker does (``CandidateTraining``), and prints one JSON line per candidate: wall seconds, this
process's CPU seconds, the seconds JAX spent tracing, lowering and compiling during it, and the
validation score. Language-model candidates compile their steps once per worker, so the first
candidate carries the compilation; CIFAR candidates compile their own network each.

    python benchmarks/trained_candidate.py --space=ptb --data_dir=DATA/ptb --preset=cpu --candidates=2
    python benchmarks/trained_candidate.py --space=cifar --data_dir=DATA/cifar10 --preset=cpu

``--fake_cifar=N`` first writes N random images as official python batches into ``--data_dir``
(timing only: the images are noise).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pickle
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")


def write_fake_cifar(root: Path, images: int) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, count in [(f"data_batch_{i}", images // 5) for i in range(1, 6)]:
        data = rng.integers(0, 256, (count, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, count).tolist()
        (folder / name).write_bytes(pickle.dumps({b"data": data, b"labels": labels}, protocol=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--space", default="ptb", choices=("ptb", "ptb_ws", "cifar", "cifar_ws"))
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--candidates", type=int, default=2)
    parser.add_argument("--fake_cifar", type=int, default=0)
    parser.add_argument("--max_steps", type=int, default=None, help="override the preset's step limit")
    args = parser.parse_args()
    if args.fake_cifar:
        write_fake_cifar(Path(args.data_dir), args.fake_cifar)

    import jax

    from nao.evaluators.trained import SEARCH_RECIPES, SPACE_FAMILIES, CandidateTraining
    from nao.spaces import get_space

    compiling = [0.0]

    def listen(event: str, seconds: float, **_: object) -> None:
        if event in COMPILE_EVENTS:
            compiling[0] += seconds

    jax.monitoring.register_event_duration_secs_listener(listen)
    family = SPACE_FAMILIES[args.space]
    dataset = "ptb" if family == "lm" else "cifar10"
    recipe = SEARCH_RECIPES[family][args.preset]
    if args.max_steps is not None:
        recipe = dataclasses.replace(recipe, max_steps=args.max_steps)
    task = CandidateTraining(args.space, dataset, args.data_dir, recipe, 0)
    task.setup()
    space, rng = get_space(args.space), np.random.default_rng(0)
    out = Path(tempfile.mkdtemp(prefix="nao_candidates_"))
    try:
        for index in range(args.candidates):
            arch = space.sample(rng)
            compiling[0] = 0.0
            wall, cpu = time.perf_counter(), time.process_time()
            result = task((space.to_string(arch), str(out / str(index))))
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            print(json.dumps({"space": args.space, "preset": args.preset, "candidate": index,
                              "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
                              "compile_s": round(compiling[0], 1),
                              "compile_share": round(compiling[0] / wall, 3), **result}), flush=True)
    finally:
        shutil.rmtree(out)


if __name__ == "__main__":
    main()
