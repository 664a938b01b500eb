"""NAO against BANANAS, random search, regularized evolution and local search on NAS-Bench-201.

Prints, for every strategy side by side: mean +- std test accuracy of the
best-by-validation architecture after 25/50/100/150/300 queries over many seeds,
the share of seeds that found the optimum after 50/100/150/300 queries and the
first budget by which every seed had, and wall time; then the controller
predictor's Kendall tau on held-out architectures against the number of
training architectures.

    python benchmarks/nb201_search.py                 # 50 seeds, 300 queries, all strategies
    python benchmarks/nb201_search.py --seeds=10 --strategies=nao --preset=paper
    python benchmarks/nb201_search.py --strategies=bananas --tau_sizes=   # BANANAS alone, no tau table
"""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np
from absl import app, flags
from scipy.stats import kendalltau

from nao.controller import Controller, get_preset
from nao.data.nasbench import load_nb201_table
from nao.evaluators import Nb201TableEvaluator
from nao.history import History
from nao.search import SearchSettings, best_so_far, search
from nao.spaces import NasBench201Space
from nao.strategies import NAO_PRESETS, STRATEGIES, BananasOptions, make_strategy
from nao.strategies.nao import normalize_targets

FLAGS = flags.FLAGS
flags.DEFINE_integer("seeds", 50, "Seeds per strategy.")
flags.DEFINE_integer("queries", 300, "Budget per search.")
flags.DEFINE_list("strategies", list(STRATEGIES), "Strategies to compare.")
flags.DEFINE_string("preset", "default", "Controller/NAO preset for the nao strategy.")
flags.DEFINE_integer("neighbor_seeds", None, "Override the preset's neighbour candidates (0: decoded only).")
flags.DEFINE_list("tau_sizes", ["50", "100", "200", "500", "1000"], "Training-set sizes for Kendall tau.")
flags.DEFINE_integer("tau_repeats", 3, "Random training sets per size.")
flags.DEFINE_integer("tau_holdout", 2000, "Held-out architectures scored for Kendall tau.")

CHECKPOINTS = (25, 50, 100, 150, 300)  # budgets the accuracy is reported at
FOUND_AT = (50, 100, 150, 300)  # budgets the share of seeds that found the optimum is reported at


def nao_options():
    options = NAO_PRESETS[FLAGS.preset]
    if FLAGS.neighbor_seeds is not None:
        options = dataclasses.replace(options, neighbor_seeds=FLAGS.neighbor_seeds)
    return options


def search_table(space, evaluator, optimum: float) -> None:
    print(f"\nNAS-Bench-201 CIFAR-10: test accuracy (%) of the best-by-validation architecture, "
          f"{FLAGS.seeds} seeds, nao: preset {FLAGS.preset!r}, {nao_options()}, bananas: {BananasOptions()}")
    points = [q for q in CHECKPOINTS if q <= FLAGS.queries]
    found_at = [q for q in FOUND_AT if q <= FLAGS.queries] or [FLAGS.queries]
    header = " | ".join(f"@{q:<13d}" for q in points)
    found_header = " | ".join(f"found @{q}" for q in found_at)
    print(f"| strategy  | {header} | {found_header} | all found by | wall s/seed | first seed @150 (s) |")
    print("|" + "---|" * (len(points) + len(found_at) + 4))
    for name in FLAGS.strategies:
        curves, walls, first_150 = [], [], None
        for seed in range(FLAGS.seeds):
            start = time.perf_counter()
            strategy = make_strategy(name, space, seed, get_preset(FLAGS.preset), nao_options())
            built = time.perf_counter() - start
            rows = search(space, strategy, evaluator, SearchSettings(queries=FLAGS.queries), History(None))
            walls.append(time.perf_counter() - start)
            if seed == 0 and len(rows) >= 150:
                first_150 = built + rows[149]["elapsed"]  # building the controller and compiling included
            curves.append(best_so_far(rows)[1])
        curves = np.asarray(curves)
        found = np.isclose(curves, optimum)  # (seeds, queries): the seed's best so far is the optimum
        cells = " | ".join(f"{curves[:, q - 1].mean():.2f} +- {curves[:, q - 1].std():.2f}" for q in points)
        shares = " | ".join(f"{found[:, q - 1].mean():5.0%}" for q in found_at)
        everyone = np.flatnonzero(found.all(0))
        all_by = str(everyone[0] + 1) if len(everyone) else "-"
        first = f"{first_150:.1f}" if first_150 is not None else "-"
        print(f"| {name:9s} | {cells} | {shares} | {all_by} | {np.mean(walls):.2f} | {first} |", flush=True)


def tau_table(space, table) -> None:
    print(f"\nPredictor Kendall tau on {FLAGS.tau_holdout} held-out architectures (validation accuracy), "
          f"mean of {FLAGS.tau_repeats} random training sets")
    print("| preset | " + " | ".join(f"n={n}" for n in FLAGS.tau_sizes) + " |")
    print("|---|" + "---|" * len(FLAGS.tau_sizes))
    tokens = space.tokens_batch([tuple(int(o) for o in row) for row in table.ops])
    for preset in ("default", "paper"):
        config = get_preset(preset)
        cells = []
        for size in map(int, FLAGS.tau_sizes):
            taus = []
            for repeat in range(FLAGS.tau_repeats):
                rows = np.random.default_rng(repeat).permutation(len(tokens))
                train, held_out = rows[:size], rows[size:size + FLAGS.tau_holdout]
                controller = Controller(space, config, jax.random.key(repeat))
                targets = normalize_targets(table.valid[train], NAO_PRESETS[preset].targets)
                controller.fit(tokens[train], targets, jax.random.key(repeat + 1))
                predicted = controller.predict(tokens[held_out]).mean(0)
                taus.append(kendalltau(predicted, table.valid[held_out])[0])
            cells.append(f"{np.mean(taus):.3f}")
        print(f"| {preset} | " + " | ".join(cells) + " |", flush=True)


def main(argv) -> None:
    del argv
    table = load_nb201_table()
    space = NasBench201Space()
    search_table(space, Nb201TableEvaluator(table), float(table.test[np.argmax(table.valid)]))
    if FLAGS.tau_sizes and FLAGS.tau_sizes != [""]:
        tau_table(space, table)


if __name__ == "__main__":
    app.run(main)
