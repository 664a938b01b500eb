"""Full NAO on local workers, measured: candidates per hour, worker utilisation and the best cell of
each search, from the output folders of ``--evaluator=train`` searches.

Per search (strategy, seed): candidates trained, wall seconds (to its last result), candidates per
hour, utilisation (the workers' training seconds over workers x wall seconds: worker start-up, data
loading and the strategy's proposing count as idle) and the best validation score. Per strategy: the
mean best score over seeds with its standard deviation, and against the first strategy listed, the
paired difference seed by seed.

    # 1 vs 2 workers: random search proposes the same cells whatever the timing, so both train the
    # same 12 candidates
    python run_nao.py --space=ptb --evaluator=train --preset=cpu --data_dir=DATA/ptb --strategies=random \\
        --workers=1 --output_dir=runs/w1
    python run_nao.py --space=ptb --evaluator=train --preset=cpu --data_dir=DATA/ptb --strategies=random \\
        --workers=2 --output_dir=runs/w2
    # NAO against random search, same budget and seeds
    python run_nao.py --space=ptb --evaluator=train --preset=cpu --data_dir=DATA/ptb \\
        --strategies=nao,random --seeds=3 --workers=2 --output_dir=runs/fn
    python benchmarks/trained_search.py runs/w1 runs/w2 runs/fn
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def searches(run: Path) -> list[dict]:
    """One record per (strategy, seed) history of the run folder ``run``."""
    config = json.loads((run / "config.json").read_text())
    if config["evaluator"] != "train":
        raise SystemExit(f"{run}: evaluator {config['evaluator']!r}; this reads --evaluator=train searches")
    out = []
    for path in sorted(run.glob("histories/*/seed_*.jsonl")):
        if path.name.endswith(".proposed.jsonl"):
            continue
        rows = [json.loads(line) for line in path.read_text().splitlines() if line]
        if not rows:
            continue
        wall = max(row["elapsed"] for row in rows)
        good = [row for row in rows if not row.get("failed")]
        out.append({"run": run.name, "strategy": path.parent.name, "seed": int(path.stem.split("_")[1]),
                    "workers": config["workers"], "schedule": config["search"]["schedule"],
                    "candidates": len(rows), "failed": len(rows) - len(good), "wall": wall,
                    "per_hour": len(rows) / wall * 3600,
                    "utilisation": sum(row["cost"] for row in rows) / (config["workers"] * wall),
                    "best": max(row["valid"] for row in good) if good else float("-inf"),
                    "score": next((k for k in ("valid_ppl", "valid_acc") if k in rows[0]), "valid")})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="output folders of --evaluator=train searches")
    args = parser.parse_args()
    records = [record for run in args.runs for record in searches(Path(run))]
    if not records:
        raise SystemExit(f"no histories in {' '.join(args.runs)}")
    # Perplexities are stored negated (higher is better in the loop); print them as they are.
    sign = -1.0 if records[0]["score"] == "valid_ppl" else 1.0
    print("| run | strategy | seed | workers | schedule | candidates | wall s | candidates/h | utilisation | "
          f"best {records[0]['score']} |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in records:
        count = f"{r['candidates']}" + (f" ({r['failed']} failed)" if r["failed"] else "")
        print(f"| {r['run']} | {r['strategy']} | {r['seed']} | {r['workers']} | {r['schedule']} | {count} | "
              f"{r['wall']:.0f} | {r['per_hour']:.1f} | {r['utilisation']:.0%} | {sign * r['best']:.2f} |")
    # One best score per (strategy, seed): the same search in several runs (other worker counts) counts once.
    best: dict[str, dict[int, float]] = {}
    for r in records:
        best.setdefault(r["strategy"], {}).setdefault(r["seed"], r["best"])
    print()
    print(f"| strategy | seeds | mean best {records[0]['score']} | std | paired difference to the first |")
    print("|---|---|---|---|---|")
    first = next(iter(best))
    for strategy, by_seed in best.items():
        values = np.array([sign * v for v in by_seed.values()])
        common = sorted(set(by_seed) & set(best[first]))
        diffs = np.array([sign * (by_seed[s] - best[first][s]) for s in common])
        paired = "" if strategy == first or not len(common) else \
            f"{diffs.mean():+.2f} (seeds {common}: {', '.join(f'{d:+.2f}' for d in diffs)})"
        spread = values.std(ddof=1) if len(values) > 1 else 0.0
        print(f"| {strategy} | {len(values)} | {values.mean():.2f} | {spread:.2f} | {paired} |")


if __name__ == "__main__":
    main()
