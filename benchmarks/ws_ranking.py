"""How far weight sharing can be trusted on PTB: Kendall tau between a NAO-WS supernet's scores and the
short standalone training of the same cells.

The standalone scores are the validation perplexities of cells that ``--evaluator=train`` searches
trained from scratch (``--runs``: their output folders; every cell trained counts, a cell trained by
several runs counts once, with its mean). A supernet of the same size and recipe as the standalone
candidates (``--preset``'s recipe of ``nao.evaluators.trained.SEARCH_RECIPES``) is trained as NAO-WS
trains on its pool: each step with one of exactly these cells drawn uniformly. After every epoch each
cell is scored with the shared weights on the whole validation stream (the data the standalone
scores come from), and the table gives Kendall's tau, Spearman's rho, how many of the standalone top
five are in the supernet's top five, and the standalone perplexity of the supernet's favourite
against the best cell's. Weight-sharing rankings are known to be weak (Yu et al., "Evaluating the
search phase of neural architecture search", ICLR 2020); this measures it here.

    python run_nao.py --space=ptb --evaluator=train --preset=cpu --data_dir=DATA/ptb \\
        --strategies=nao,random --seeds=3 --workers=2 --output_dir=runs/fn
    python benchmarks/ws_ranking.py --runs=runs/fn --data_dir=DATA/ptb --epochs=4
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np


def standalone_scores(runs: list[str]) -> dict[str, list[float]]:
    """Architecture string -> the validation perplexities its standalone trainings reached."""
    scores: dict[str, list[float]] = {}
    for run in runs:
        files = sorted(Path(run).glob("histories/*/seed_*.jsonl"))
        files = [f for f in files if not f.name.endswith(".proposed.jsonl")]
        if not files:
            raise SystemExit(f"{run}: no histories/*/seed_*.jsonl; pass the output_dir of a search with "
                             "--evaluator=train on ptb")
        for path in files:
            for row in map(json.loads, filter(None, path.read_text().splitlines())):
                if not row.get("failed") and "valid_ppl" in row:
                    scores.setdefault(row["arch"], []).append(float(row["valid_ppl"]))
    return scores


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    rank = lambda v: np.argsort(np.argsort(v, kind="stable"), kind="stable")  # noqa: E731
    return float(np.corrcoef(rank(x), rank(y))[0, 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", required=True, nargs="+", help="output folders of train-evaluator searches")
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--dataset", default="ptb")
    parser.add_argument("--preset", default="cpu", help="the standalone candidates' recipe")
    parser.add_argument("--epochs", type=int, default=4, help="supernet epochs (a table row after each)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default="", help="also write the rows to this file")
    args = parser.parse_args()

    from nao.data.text import load_corpus
    from nao.evaluators.trained import SEARCH_RECIPES
    from nao.models.lm_ws import LmSupernet
    from nao.ranking import kendall_tau
    from nao.spaces import get_space

    scores = standalone_scores(args.runs)
    if len(scores) < 3:
        raise SystemExit(f"{len(scores)} trained cells in {args.runs}: Kendall tau needs at least 3")
    strings = sorted(scores)
    standalone = np.array([np.mean(scores[s]) for s in strings])
    space = get_space("ptb")
    archs = [space.from_string(s) for s in strings]
    recipe = dataclasses.replace(SEARCH_RECIPES["lm"][args.preset], epochs=args.epochs, max_steps=0)
    corpus = load_corpus(args.dataset, args.data_dir, splits=("train", "valid"))
    supernet = LmSupernet(recipe, corpus, args.seed, score_windows=0)
    top = min(5, len(archs) // 2)
    best_true = set(np.argsort(standalone)[:top].tolist())
    print(f"{len(archs)} cells, standalone valid ppl {standalone.min():.1f} .. {standalone.max():.1f} "
          f"({sum(len(v) for v in scores.values())} trainings); supernet: {recipe.hidden_size} units, "
          f"batch {recipe.batch_size}, lr {recipe.lr}")
    n = len(archs)
    null_sd = np.sqrt(2 * (2 * n + 5) / (9 * n * (n - 1)))  # tau's spread when the rankings are unrelated
    print(f"Kendall tau of two unrelated rankings of {n} cells: 0 +- {null_sd:.3f}")
    print(f"| supernet epoch | seconds | train ppl | Kendall tau | Spearman | top-{top} overlap | "
          "standalone ppl of its pick (best) |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for epoch in range(args.epochs):
        begin = time.perf_counter()
        stats = supernet.train_epoch(archs, epoch)
        shared = np.asarray(supernet.score(archs))
        pick = int(np.argmin(shared))
        row = {"epoch": epoch + 1, "seconds": time.perf_counter() - begin, "train_ppl": stats["train_ppl"],
               "kendall_tau": kendall_tau(shared, standalone), "spearman": spearman(shared, standalone),
               "top_overlap": len(best_true & set(np.argsort(shared)[:top].tolist())),
               "pick_ppl": float(standalone[pick]), "best_ppl": float(standalone.min()),
               "supernet_ppl": shared.tolist()}
        rows.append(row)
        print(f"| {row['epoch']} | {row['seconds']:.0f} | {row['train_ppl']:.1f} | "
              f"{row['kendall_tau']:.3f} | {row['spearman']:.3f} | {row['top_overlap']}/{top} | "
              f"{row['pick_ppl']:.1f} ({row['best_ppl']:.1f}) |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"cells": strings, "standalone_ppl": standalone.tolist(),
                                               "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
