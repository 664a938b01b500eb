"""How far weight sharing can be trusted on PTB: Kendall tau between a NAO-WS supernet's scores and the
short standalone training of the same cells.

The standalone scores are the validation perplexities of cells that ``--evaluator=train`` searches
trained from scratch (``--runs``: their output folders; every cell trained counts, a cell trained by
several runs counts once, with its mean). A supernet of the same size and recipe as the standalone
candidates (``--preset``'s recipe of ``nao.evaluators.trained.SEARCH_RECIPES``) is trained as NAO-WS
trains on its first pool: each step with one of ``--pool`` random cells (1000, NAO-WS's pool) drawn
uniformly. With the weights of every epoch each cell is scored on the whole validation stream (the
data the standalone scores come from), and the table gives Kendall's tau, Spearman's rho, how many
of the standalone top five are in the supernet's top five, and the standalone perplexity of the
supernet's favourite against the best cell's. Weight-sharing rankings are known to be weak (Yu et
al., "Evaluating the search phase of neural architecture search", ICLR 2020); this measures it here.

    python run_nao.py --space=ptb --evaluator=train --preset=cpu --data_dir=DATA/ptb \\
        --strategies=nao,random --seeds=3 --workers=2 --output_dir=runs/fn
    python benchmarks/ws_ranking.py --runs=runs/fn --data_dir=DATA/ptb --epochs=4 --supernet_dir=runs/ws

``--supernet_dir`` keeps each epoch's weights, so that cells trained later are scored without training
the supernet again.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import pickle
import time
from pathlib import Path

import numpy as np

from nao.history import history_files, read_rows


def standalone_scores(runs: list[str]) -> dict[str, list[float]]:
    """Architecture string -> the validation perplexities its standalone trainings reached."""
    scores: dict[str, list[float]] = {}
    for run in runs:
        files = history_files(run)
        if not files:
            raise SystemExit(f"{run}: no histories/*/seed_*.jsonl; pass the output_dir of a search with "
                             "--evaluator=train on ptb")
        for path in files:
            for row in read_rows(path):
                if not row.get("failed") and "valid_ppl" in row:
                    scores.setdefault(row["arch"], []).append(float(row["valid_ppl"]))
    return scores


def ranks(values: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(values, kind="stable"), kind="stable")


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho: the correlation of the ranks (ties broken by position)."""
    return float(np.corrcoef(ranks(x), ranks(y))[0, 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", required=True, nargs="+", help="output folders of train-evaluator searches")
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--dataset", default="ptb")
    parser.add_argument("--preset", default="cpu", help="the standalone candidates' recipe")
    parser.add_argument("--epochs", type=int, default=4, help="supernet epochs (a table row after each)")
    parser.add_argument("--pool", type=int, default=1000, help="random cells the supernet trains on")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--supernet_dir", default="", help="keep each epoch's weights here, and reuse them")
    parser.add_argument("--json", default="", help="also write the rows to this file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")  # the supernet's progress

    import jax

    from nao.data.text import load_corpus
    from nao.evaluators.trained import SEARCH_RECIPES
    from nao.models.lm_ws import LmSupernet
    from nao.ranking import kendall_tau
    from nao.spaces import get_space

    space = get_space("ptb")
    recipe = dataclasses.replace(SEARCH_RECIPES["lm"][args.preset], epochs=args.epochs, max_steps=0)
    corpus = load_corpus(args.dataset, args.data_dir, splits=("train", "valid"))
    supernet = LmSupernet(recipe, corpus, args.seed, score_windows=0)
    rng = np.random.default_rng(args.seed)
    pool = [space.sample(rng) for _ in range(args.pool)]
    # Train first, then read the standalone scores: a supernet can train while the searches still run.
    states, seconds = [], []
    for epoch in range(args.epochs):
        name = f"{args.preset}_seed{args.seed}_pool{args.pool}_epoch{epoch + 1}.pkl"  # what fixes the weights
        cached = Path(args.supernet_dir, name) if args.supernet_dir else None
        begin = time.perf_counter()
        if cached and cached.exists():
            supernet.state, train_ppl = pickle.loads(cached.read_bytes())
        else:
            train_ppl = supernet.train_epoch(pool, epoch)["train_ppl"]
            if cached:
                cached.parent.mkdir(parents=True, exist_ok=True)
                cached.write_bytes(pickle.dumps((jax.tree.map(np.asarray, supernet.state), train_ppl)))
        states.append((supernet.state, train_ppl))
        seconds.append(time.perf_counter() - begin)

    scores = standalone_scores(args.runs)
    if len(scores) < 3:
        raise SystemExit(f"{len(scores)} trained cells in {args.runs}: Kendall tau needs at least 3")
    strings = sorted(scores)
    standalone = np.array([np.mean(scores[s]) for s in strings])
    archs = [space.from_string(s) for s in strings]
    top = min(5, len(archs) // 2)
    best_true = set(np.argsort(standalone)[:top].tolist())
    n = len(archs)
    null_sd = np.sqrt(2 * (2 * n + 5) / (9 * n * (n - 1)))  # tau's spread when the rankings are unrelated
    print(f"{n} cells, standalone valid ppl {standalone.min():.1f} .. {standalone.max():.1f} "
          f"({sum(len(v) for v in scores.values())} trainings); supernet: {recipe.hidden_size} units, "
          f"batch {recipe.batch_size}, lr {recipe.lr}, trained on {args.pool} random cells (NAO-WS's pool)")
    print(f"Kendall tau of two unrelated rankings of {n} cells: 0 +- {null_sd:.3f}")
    print(f"| supernet epoch | train seconds | train ppl | Kendall tau | Spearman | top-{top} overlap | "
          "standalone ppl of its pick (best) |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for epoch, ((state, train_ppl), spent) in enumerate(zip(states, seconds)):
        supernet.state = state
        shared = np.asarray(supernet.score(archs))
        pick = int(np.argmin(shared))
        row = {"epoch": epoch + 1, "seconds": spent, "train_ppl": train_ppl,
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
