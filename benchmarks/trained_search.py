"""Full NAO on local workers, measured: candidates per hour, worker utilisation and the best cell of
each search, from the output folders of ``--evaluator=train`` searches.

Per search (strategy, seed): candidates trained, wall seconds (to its last result), candidates per
hour, utilisation (the workers' training seconds over workers x wall seconds: worker start-up, data
loading and the strategy's proposing count as idle), the best validation score, and the mean score
of the candidates after the first ``--after`` (by query number: the cpu preset's NAO starts from 4
random cells, drawn as random search's first 4 with the same seed, so this compares what each
strategy proposed itself). Utilisation needs ``--workers`` given (0 picks a count the run does not
record); a resumed search's wall time counts from its resume. Per strategy: the mean over seeds of
both, with standard deviations, and against the first strategy listed, the paired difference of the
best, seed by seed.

    # 1 vs 2 workers: random search, same seed (with 2 workers it also draws past the busy cells, so
    # the two share most cells, not all; every PTB cell costs about the same)
    python run_nao.py --space=ptb --evaluator=train --preset=cpu --data_dir=DATA/ptb --strategies=random \\
        --workers=1 --output_dir=runs/w1
    python run_nao.py --space=ptb --evaluator=train --preset=cpu --data_dir=DATA/ptb --strategies=random \\
        --workers=2 --output_dir=runs/w2
    # NAO against random search, same budget and seeds
    python run_nao.py --space=ptb --evaluator=train --preset=cpu --data_dir=DATA/ptb \\
        --strategies=nao,random --seeds=3 --workers=2 --output_dir=runs/fn
    python benchmarks/trained_search.py runs/fn runs/w1 runs/w2
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from nao.history import history_files, read_rows


def searches(run: Path, after: int) -> list[dict]:
    """One record per (strategy, seed) history of the run folder ``run``."""
    if not (run / "config.json").is_file():
        raise SystemExit(f"{run}: no config.json; pass the output_dir of a search")
    config = json.loads((run / "config.json").read_text())
    if config["evaluator"] != "train":
        raise SystemExit(f"{run}: evaluator {config['evaluator']!r}; this reads --evaluator=train searches")
    out = []
    for path in history_files(run):
        rows = read_rows(path)
        if not rows:
            continue
        wall = max(row["elapsed"] for row in rows)
        good = [row for row in rows if not row.get("failed")]
        later = [row["valid"] for row in good if row["query"] > after]
        out.append({"run": run.name, "strategy": path.parent.name, "seed": int(path.stem.split("_")[1]),
                    "workers": config["workers"], "schedule": config["search"]["schedule"],
                    "candidates": len(rows), "failed": len(rows) - len(good), "wall": wall,
                    "per_hour": len(rows) / wall * 3600,
                    "utilisation": (sum(row["cost"] for row in rows) / (config["workers"] * wall)
                                    if config["workers"] else float("nan")),
                    "best": max(row["valid"] for row in good) if good else float("-inf"),
                    "later": float(np.mean(later)) if later else float("nan"),
                    "score": next((k for k in ("valid_ppl", "valid_acc") if k in rows[0]), "valid")})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="output folders of --evaluator=train searches")
    parser.add_argument("--after", type=int, default=4, help="mean score of the candidates after this many")
    args = parser.parse_args()
    records = [record for run in args.runs for record in searches(Path(run), args.after)]
    if not records:
        raise SystemExit(f"no histories in {' '.join(args.runs)}")
    # Perplexities are stored negated (higher is better in the loop); print them as they are.
    sign = -1.0 if records[0]["score"] == "valid_ppl" else 1.0
    name = records[0]["score"]
    print("| run | strategy | seed | workers | schedule | candidates | wall s | candidates/h | utilisation | "
          f"best {name} | mean {name} after {args.after} |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in records:
        count = f"{r['candidates']}" + (f" ({r['failed']} failed)" if r["failed"] else "")
        print(f"| {r['run']} | {r['strategy']} | {r['seed']} | {r['workers']} | {r['schedule']} | {count} | "
              f"{r['wall']:.0f} | {r['per_hour']:.1f} | {r['utilisation']:.0%} | {sign * r['best']:.2f} | "
              f"{sign * r['later']:.2f} |")
    # One record per (strategy, seed): the same search in several runs (other worker counts) counts once.
    once: dict[str, dict[int, dict]] = {}
    for r in records:
        once.setdefault(r["strategy"], {}).setdefault(r["seed"], r)
    print()
    print(f"| strategy | seeds | best {name}: mean +- std | mean {name} after {args.after}: mean +- std | "
          "best: paired difference to the first, per seed |")
    print("|---|---|---|---|---|")
    first = next(iter(once))

    def spread(values: np.ndarray) -> str:
        return f"{values.mean():.2f} +- {values.std(ddof=1) if len(values) > 1 else 0.0:.2f}"

    for strategy, by_seed in once.items():
        best = np.array([sign * r["best"] for r in by_seed.values()])
        later = np.array([sign * r["later"] for r in by_seed.values()])
        common = sorted(set(by_seed) & set(once[first]))
        diffs = np.array([sign * (by_seed[s]["best"] - once[first][s]["best"]) for s in common])
        paired = "" if strategy == first or not len(common) else \
            f"{diffs.mean():+.2f} (seeds {common}: {', '.join(f'{d:+.2f}' for d in diffs)})"
        print(f"| {strategy} | {len(best)} | {spread(best)} | {spread(later)} | {paired} |")


if __name__ == "__main__":
    main()
