"""A run: every strategy x every seed on one space and evaluator, in one run directory.

Layout of ``output_dir``::

    config.json                  the configuration; a different one is refused
    histories/<strategy>/seed_<s>.jsonl   every evaluation, written as it completes
    summary.json                 per strategy: per-seed finals and mean best-so-far curves
    timing.json                  wall seconds per strategy and seed (kept out of summary.json
                                 so a resumed run's summary is identical to an uninterrupted one)
    search_curves.png            mean best-so-far test accuracy per query, one line per strategy
    best_cell.png                the best architecture found (where the space can draw it)

A finished (strategy, seed) history is read back as it is; an unfinished one
is replayed (see ``nao.search``), so ``--resume`` loses nothing and re-queries
nothing.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import numpy as np

from nao.controller import ControllerConfig, get_preset
from nao.data.nasbench import NB101_SAMPLE, load_nb201_table
from nao.evaluators import Evaluator, Nb201TableEvaluator
from nao.evaluators.nb101_table import nb101_table_space_and_evaluator
from nao.history import History
from nao.models.files import write_json
from nao.search import Progress, best_so_far, search
from nao.spaces import SearchSpace, get_space
from nao.strategies import NAO_PRESETS, STRATEGIES, NaoOptions, make_strategy

log = logging.getLogger("nao")


class RunDirError(ValueError):
    """An output directory that holds something this run must not touch."""


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    space: str = "nb201"
    strategies: tuple[str, ...] = STRATEGIES
    queries: int = 150
    seeds: int = 1
    first_seed: int = 0
    preset: str = "default"
    controller: ControllerConfig = dataclasses.field(default_factory=lambda: get_preset("default"))
    nao: NaoOptions = dataclasses.field(default_factory=lambda: NAO_PRESETS["default"])
    benchmark_file: str | None = None
    valid_key: str = "cifar10_valid_acc"
    test_key: str = "cifar10_test_acc"

    def validate(self) -> None:
        get_space(self.space)
        for name in self.strategies:
            if name not in STRATEGIES:
                raise ValueError(f"unknown strategy {name!r}: choose from {', '.join(STRATEGIES)}")
        if len(set(self.strategies)) != len(self.strategies) or not self.strategies:
            raise ValueError("--strategies must name each strategy at most once, and at least one")
        if self.seeds < 1:
            raise ValueError(f"--seeds={self.seeds}: need at least one seed")
        if "nao" in self.strategies and self.queries <= self.nao.init_size:
            raise ValueError(f"--queries={self.queries} leaves nothing after NAO's initial pool of "
                             f"{self.nao.init_size}: raise --queries or lower --init_size")
        if self.queries < 1:
            raise ValueError(f"--queries={self.queries}: need at least one query")

    def to_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))


def make_space_and_evaluator(config: ExperimentConfig) -> tuple[SearchSpace, Evaluator, dict]:
    """The space, its evaluator, and facts about the table (the optimum) for reports."""
    if config.space == "nb201":
        space = get_space(config.space)
        table = load_nb201_table(config.benchmark_file, config.valid_key, config.test_key)
        best = int(np.argmax(table.valid))
        facts = {"table": table.path, "optimum_valid": float(table.valid.max()),
                 "optimum_test": float(table.test.max()), "test_of_best_valid": float(table.test[best])}
        return space, Nb201TableEvaluator(table), facts
    if config.space == "nb101":
        # Only the shipped 292-cell sample exists here, so the search runs over those cells.
        if config.benchmark_file is not None:
            raise ValueError("--benchmark_file is for NB201 tables; --space=nb101 uses the shipped sample")
        space, evaluator = nb101_table_space_and_evaluator()
        return space, evaluator, {"table": str(NB101_SAMPLE), "cells": len(evaluator),
                                  "optimum_valid": max(evaluator.lookup(a)[0] for a in evaluator.archs)}
    raise ValueError(f"space {config.space!r} has no tabular evaluator here; use --space=nb201 or nb101")



def prepare_run_dir(output_dir: Path, config: ExperimentConfig, resume: bool) -> None:
    """Create the run dir, or check that an existing one belongs to this configuration."""
    config_path = output_dir / "config.json"
    wanted = config.to_json()
    if config_path.exists():
        try:
            found = json.loads(config_path.read_text())
        except json.JSONDecodeError as err:
            raise RunDirError(f"{config_path} is unreadable ({err}): choose another --output_dir") from err
        if found != wanted:
            diff = sorted(k for k in set(found) | set(wanted) if found.get(k) != wanted.get(k))
            raise RunDirError(f"{output_dir} holds a run with a different configuration "
                              f"(differs in: {', '.join(diff)}); rerun with its flags or choose "
                              "another --output_dir")
        if not resume:
            raise RunDirError(f"{output_dir} already holds this run: pass --resume to continue it, "
                              "or choose another --output_dir")
        return
    if output_dir.exists() and any(output_dir.iterdir()):
        raise RunDirError(f"{output_dir} is not empty and holds no nao run: choose another --output_dir")
    output_dir.mkdir(parents=True, exist_ok=True)
    write_json(config_path, wanted)


def _log_progress(name: str, seed: int):
    last = [0.0]

    def report(progress: Progress) -> None:
        now = time.perf_counter()
        if progress.queries < progress.budget and now - last[0] < 1.0:
            return  # at most one line a second, and always the last one
        last[0] = now
        rate = (progress.queries - progress.replayed) / max(progress.elapsed, 1e-9)
        eta = progress.eta
        eta_text = f"{eta:5.0f}s" if np.isfinite(eta) else "    ?"
        test = "" if progress.best_test is None else f" test {progress.best_test:6.2f}"
        log.info("%-9s seed %-3d %4d/%d queries  best valid %6.2f%s  %6.1f q/s  ETA %s",
                 name, seed, progress.queries, progress.budget, progress.best_valid, test, rate, eta_text)

    return report


def summarize(config: ExperimentConfig, runs: dict[str, list[list[dict]]], space: SearchSpace,
              facts: dict) -> dict[str, Any]:
    """summary.json: per strategy, per-seed finals and mean/std best-so-far curves per query."""
    strategies = {}
    for name, seed_rows in runs.items():
        per_seed, valid_curves, test_curves = [], [], []
        for offset, rows in enumerate(seed_rows):
            valid_curve, test_curve = best_so_far(rows)
            best = max(rows, key=lambda r: r["valid"])
            per_seed.append({"seed": config.first_seed + offset, "queries": len(rows),
                             "final_valid": valid_curve[-1], "final_test": test_curve[-1],
                             "best_arch": best["arch"]})
            valid_curves.append(valid_curve)
            test_curves.append(test_curve)
        entry: dict[str, Any] = {"seeds": per_seed}
        length = min(len(c) for c in valid_curves)
        valid = np.asarray([c[:length] for c in valid_curves], np.float64)
        entry["mean_valid_curve"] = valid.mean(0).round(6).tolist()
        entry["std_valid_curve"] = valid.std(0).round(6).tolist()
        entry["final_valid_mean"] = round(float(valid[:, -1].mean()), 6)
        entry["final_valid_std"] = round(float(valid[:, -1].std()), 6)
        if all(v is not None for c in test_curves for v in c):
            test = np.asarray([c[:length] for c in test_curves], np.float64)
            entry["mean_test_curve"] = test.mean(0).round(6).tolist()
            entry["std_test_curve"] = test.std(0).round(6).tolist()
            entry["final_test_mean"] = round(float(test[:, -1].mean()), 6)
            entry["final_test_std"] = round(float(test[:, -1].std()), 6)
        strategies[name] = entry
    return {"space": space.name, "queries": config.queries, "seeds": config.seeds, **facts,
            "strategies": strategies}


def run_experiment(config: ExperimentConfig, output_dir: str | os.PathLike, resume: bool = False,
                   plots: bool = True) -> dict[str, Any]:
    """Run (or resume) every strategy on every seed; write and return the summary."""
    config.validate()
    output_dir = Path(output_dir).absolute()
    space, evaluator, facts = make_space_and_evaluator(config)
    prepare_run_dir(output_dir, config, resume)
    runs: dict[str, list[list[dict]]] = {}
    timing: dict[str, dict[str, float]] = {}
    for name in config.strategies:
        runs[name], timing[name] = [], {}
        for seed in range(config.first_seed, config.first_seed + config.seeds):
            history = History(output_dir / "histories" / name / f"seed_{seed}.jsonl")
            start = time.perf_counter()
            if len(history.rows) >= config.queries:
                rows = sorted(history.rows, key=lambda r: r["query"])[:config.queries]
            else:
                if history.rows:
                    log.info("%s seed %d: resuming after %d recorded queries", name, seed, len(history.rows))
                strategy = make_strategy(name, space, seed, config.controller, config.nao)
                rows = search(space, strategy, evaluator, config.queries, history,
                              on_progress=_log_progress(name, seed))
            runs[name].append(rows)
            timing[name][str(seed)] = round(time.perf_counter() - start, 3)
    summary = summarize(config, runs, space, facts)
    write_json(output_dir / "summary.json", summary)
    write_json(output_dir / "timing.json", timing)
    if plots:
        from nao import plots as plotting  # matplotlib is imported only when plotting

        plotting.plot_search_curves(summary, output_dir / "search_curves.png")
        best_name, best_arch = _overall_best(runs, space)
        plotting.draw_cell(space, best_arch, output_dir / "best_cell.png",
                           title=f"best found ({best_name}): {space.to_string(best_arch)}")
    return summary


def _overall_best(runs: dict[str, list[list[dict]]], space: SearchSpace) -> tuple[str, Hashable]:
    name, row = max(((n, r) for n, seeds in runs.items() for rows in seeds for r in rows),
                    key=lambda item: item[1]["valid"])
    return name, space.from_string(row["arch"])
