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

``--project`` (with ``--max_steps=K``) answers how much of a full candidate of the preset compilation
would be, where training one is too long to wait for (the ``paper`` preset on a CPU): each candidate
is trained twice, for K and for 2K steps, the difference gives the seconds a step takes, and the
compilation seconds are divided by compilation plus the preset's full step count at that rate. Its
evaluations are left out of the denominator, so the share printed is an upper bound.

    python benchmarks/trained_candidate.py --space=cifar --data_dir=DATA/cifar10 --preset=paper \
        --max_steps=10 --project
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
    parser.add_argument("--project", action="store_true", help="project a full candidate's compile share")
    args = parser.parse_args()
    if args.project and not args.max_steps:
        parser.error("--project times --max_steps and twice as many: give --max_steps")
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
    task = CandidateTraining(args.space, dataset, args.data_dir, recipe)
    task.setup()
    full = SEARCH_RECIPES[family][args.preset]
    full_steps = full.epochs * (len(task._data.train[0]) // full.batch_size if family == "cnn" else
                                np.size(task._data.train) // (full.batch_size * full.bptt))
    if full.max_steps:
        full_steps = min(full_steps, full.max_steps)
    space, rng = get_space(args.space), np.random.default_rng(0)
    out = Path(tempfile.mkdtemp(prefix="nao_candidates_"))

    def timed(arch_text: str, folder: str, training: CandidateTraining) -> tuple[float, float, float, dict]:
        compiling[0] = 0.0
        wall, cpu = time.perf_counter(), time.process_time()
        result = training((arch_text, folder))
        return time.perf_counter() - wall, time.process_time() - cpu, compiling[0], result

    try:
        for index in range(args.candidates):
            arch_text = space.to_string(space.sample(rng))
            wall, cpu, compile_s, result = timed(arch_text, str(out / str(index)), task)
            line = {"space": args.space, "preset": args.preset, "candidate": index, "wall_s": round(wall, 1),
                    "cpu_s": round(cpu, 1), "compile_s": round(compile_s, 1),
                    "compile_share": round(compile_s / wall, 3), **result}
            if args.project:
                task.recipe = dataclasses.replace(task.recipe, max_steps=2 * args.max_steps)
                wall2, _, compile2, _ = timed(arch_text, str(out / f"{index}_long"), task)
                task.recipe = dataclasses.replace(task.recipe, max_steps=args.max_steps)
                step_s = ((wall2 - compile2) - (wall - compile_s)) / args.max_steps
                share = compile_s / (compile_s + full_steps * step_s)
                line.update(step_s=round(step_s, 3), full_steps=full_steps,
                            full_compile_share_at_most=round(share, 4))
            print(json.dumps(line), flush=True)
    finally:
        shutil.rmtree(out)


if __name__ == "__main__":
    main()
