"""A run: every strategy x every seed on one space and evaluator, in one run directory.

Layout of ``output_dir``::

    config.json                  the configuration, presets resolved; a different one is refused
    histories/<strategy>/seed_<s>.jsonl   every score, written as it is computed
    searches/<strategy>/seed_<s>/         an evaluator with state (a supernet): its search's
        checkpoints/                      checkpoints (supernet, strategy, pool; every epoch) and
        train.csv                         each training epoch's statistics
    summary.json                 per strategy: per-seed results and mean curves over seeds
    timing.json                  wall seconds per strategy and seed (kept out of summary.json
                                 so a resumed run's summary is identical to an uninterrupted one)
    search_curves.png            per strategy: mean best-so-far test accuracy per query (tables),
                                 or the pool's best score per round (scores that change)
    best_cell.png                the best architecture found (where the space can draw it)

Each (strategy, seed) search resumes where it stopped (see ``nao.search``), so ``resume`` loses
nothing and scores nothing twice. Every search seeds its strategy and its evaluator (a supernet's
initialisation and data order) from its own seed; the data a supernet scores cells on (the CIFAR
hold-out, the PTB validation windows) comes from ``split_seed``, the same for all.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

import numpy as np

from nao.controller import ControllerConfig
from nao.evaluators import EvaluatorSetup, get_evaluator
from nao.history import History
from nao.models.checkpoint import CheckpointStore
from nao.models.cnn_train import CnnTrainConfig
from nao.models.files import file_sha256, is_primary, write_json
from nao.models.lm_train import LmTrainConfig
from nao.models.training import duration, read_csv, write_csv
from nao.search import Progress, SearchSettings, best_so_far, final_rows, round_records, search
from nao.spaces import SearchSpace, get_space
from nao.strategies import DEFAULT_STRATEGIES, STRATEGIES, BananasOptions, NaoOptions, make_strategy

log = logging.getLogger("nao")


class RunDirError(ValueError):
    """An output directory that holds something this run must not touch."""


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """One run. ``preset`` (None: the evaluator's default) supplies ``search``, ``controller`` and
    ``nao`` where they are None, and ``bananas`` is BANANAS' defaults where it is None;
    ``resolved()`` is the config with all of them set."""

    space: str = "nb201"
    evaluator: str = "table"  # a name of nao.evaluators.EVALUATORS
    strategies: tuple[str, ...] = DEFAULT_STRATEGIES
    seeds: int = 1
    first_seed: int = 0  # searches use seeds first_seed .. first_seed + seeds - 1
    split_seed: int = 0  # fixes the data cells are scored on (supernet), the same for every search
    preset: str | None = None  # a preset of the evaluator; None: its default
    search: SearchSettings | None = None  # None: the preset's
    controller: ControllerConfig | None = None  # None: the preset's
    nao: NaoOptions | None = None  # None: the preset's
    bananas: BananasOptions | None = None  # None: BananasOptions(), the authors' NAS-Bench-201 settings
    # evaluator 'table'
    benchmark_file: str | None = None
    valid_key: str | None = None  # None: the table's own (NB201: cifar10_valid_acc)
    test_key: str | None = None  # None: the table's own (NB201: cifar10_test_acc)
    # evaluator 'supernet'
    data_dir: str | None = None
    dataset: str | None = None  # None: ptb for ptb_ws, cifar10 for cifar_ws
    score_windows: int = 10  # PTB: validation windows each cell is scored on (0: the whole stream)
    score_batches: int = 1  # CIFAR: hold-out batches of 500 each cell is scored on (0: all of it)
    supernet_lr: float | None = None  # None: the supernet recipe's learning rate
    # evaluator 'train'
    candidate: CnnTrainConfig | LmTrainConfig | None = None  # each candidate's recipe; None: the preset's
    executor: str = "local"  # a name of nao.executors.EXECUTORS: where candidates train
    workers: int = 0  # candidates trained at once; 0: the executor's default (one per GPU, else 1)
    ray_address: str | None = None  # executor 'ray': the cluster's head (None: a Ray of this machine)

    def resolved(self) -> ExperimentConfig:
        """This config with the preset's settings filled in; ValueError for an unknown space,
        evaluator or preset, or a space the evaluator cannot score."""
        get_space(self.space)
        kind = get_evaluator(self.evaluator)
        presets = kind.presets(self.space)
        name = self.preset or kind.default_preset
        if name not in presets:
            raise ValueError(f"unknown preset {name!r} for evaluator {self.evaluator!r}: choose one of "
                             f"{', '.join(presets)}")
        preset = presets[name]
        return dataclasses.replace(self, preset=name, search=self.search or preset.search,
                                   controller=self.controller or preset.controller,
                                   nao=self.nao or preset.nao, bananas=self.bananas or BananasOptions(),
                                   candidate=self.candidate or preset.candidate)

    def validate(self) -> None:
        """Check a resolved config."""
        for name in self.strategies:
            if name not in STRATEGIES:
                raise ValueError(f"unknown strategy {name!r}: choose from {', '.join(STRATEGIES)}")
        if len(set(self.strategies)) != len(self.strategies) or not self.strategies:
            raise ValueError("strategies must name each strategy at most once, and at least one")
        if self.seeds < 1:
            raise ValueError(f"seeds={self.seeds}: need at least one seed")
        self.search.validate()
        queries, init_size = self.search.queries, self.nao.init_size
        if "nao" in self.strategies and not self.search.pool_size and queries and queries <= init_size:
            raise ValueError(f"search.queries={queries} leaves nothing after NAO's initial pool of "
                             f"{init_size}: raise search.queries or lower nao.init_size")
        for name in ("score_windows", "score_batches"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} is negative: use 0 (all) or more")

    def to_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))


def build_evaluator(config: ExperimentConfig) -> EvaluatorSetup:
    """The space, facts for the summary, and the per-seed evaluator factory of a resolved config."""
    return get_evaluator(config.evaluator).build(config)


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


# Of ExperimentConfig: how a run runs, not what it computes.
RUNTIME_FIELDS = ("executor", "workers", "ray_address")


def prepare_run_dir(output_dir: Path, config: ExperimentConfig, resume: bool,
                    fingerprints: dict[str, str] | None = None) -> None:
    """Create the run dir, or check that an existing one belongs to this configuration and to the same
    data (``fingerprints``: the SHA-256 of the files the scores come from, such as the table)."""
    config_path = output_dir / "config.json"
    wanted = {**config.to_json(), "fingerprints": fingerprints or {}}
    if config_path.exists():
        try:
            found = json.loads(config_path.read_text())
        except ValueError as err:
            raise RunDirError(f"{config_path} is unreadable ({type(err).__name__}): restore it, or choose "
                              "another output_dir") from None
        if not isinstance(found, dict):
            raise RunDirError(f"{config_path} holds a {type(found).__name__}, not a nao run's configuration: "
                              "restore it, or choose another output_dir")
        # Where candidates train does not change their scores: a resume may use other workers.
        found = {**found, **{name: wanted[name] for name in RUNTIME_FIELDS if name in found}}
        changed = [k for k, v in wanted["fingerprints"].items() if found.get("fingerprints", {}).get(k) != v]
        if changed and {**found, "fingerprints": wanted["fingerprints"]} == wanted:
            raise RunDirError(f"{output_dir} was searched on other data: the file behind {changed[0]} "
                              f"({getattr(config, 'benchmark_file', None) or 'the shipped table'}) changed "
                              "since the run started; restore it, or start the run in a new output_dir")
        if found != wanted:
            found, flat = _flat(found), _flat(wanted)
            diff = sorted(k for k in set(found) | set(flat) if found.get(k) != flat.get(k))
            raise RunDirError(f"{output_dir} holds a run with a different configuration "
                              f"(differs in: {', '.join(diff)}); rerun with its settings or choose "
                              "another output_dir")
        if not resume:
            raise RunDirError(f"{output_dir} already holds this run: resume it (resume=True, --resume), "
                              "or choose another output_dir")
        return
    if output_dir.exists() and any(output_dir.iterdir()):
        raise RunDirError(f"{output_dir} is not empty and holds no nao run: choose another output_dir")
    output_dir.mkdir(parents=True, exist_ok=True)
    write_json(config_path, wanted)


def _log_progress(name: str, seed: int, score_name: str) -> Callable[[Progress], None]:
    last = [0.0]

    def report(progress: Progress) -> None:
        now = time.perf_counter()
        if progress.budget and progress.queries < progress.budget and now - last[0] < 1.0:
            return  # at most one line a second, and always the last one
        last[0] = now
        best = progress.best
        if not progress.budget:  # a round of a search without a query budget: the pool's best
            log.info("%-9s seed %-3d round %d: %d cells scored, best %s %.4g: %s", name, seed, progress.round,
                     progress.queries, score_name, best[score_name], best["arch"])
            return
        rate = (progress.queries - progress.replayed) / max(progress.elapsed, 1e-9)
        eta = progress.eta
        eta_text = f"{eta:5.0f}s" if np.isfinite(eta) else "    ?"
        test = "" if best["test"] is None else f" test {best['test']:6.2f}"
        log.info("%-9s seed %-3d %4d/%d queries  best valid %6.2f%s  %6.1f q/s  ETA %s", name, seed,
                 progress.queries, progress.budget, best["valid"], test, rate, eta_text)

    return report


def _log_epoch(name: str, seed: int, folder: Path, epochs: int) -> Callable[[dict[str, float]], None]:
    path = folder / "train.csv"
    rows: list[dict[str, Any]] = read_csv(path)  # a resumed search's epochs

    def report(stats: dict[str, float]) -> None:
        # An epoch trained again after a resume (killed before its checkpoint) replaces its row.
        rows[:] = [row for row in rows if float(row["epoch"]) < stats["epoch"]] + [stats]
        write_csv(path, rows)
        eta = stats["seconds"] * (epochs - stats["epoch"])
        values = ", ".join(f"{k} {v:.4g}" for k, v in stats.items() if k != "epoch")
        log.info("%-9s seed %-3d epoch %d/%d: %s; ETA %s (scoring rounds not included)", name, seed,
                 stats["epoch"], epochs, values, duration(eta))

    return report


def _top(rows: list[dict[str, Any]], score_name: str, count: int) -> list[dict[str, Any]]:
    ranked = sorted(rows, key=lambda r: -r["valid"])[:count]  # stable: the first of equals first
    return [{"arch": r["arch"], score_name: r[score_name],
             **({} if r["test"] is None else {"test": r["test"]}),
             **({"checkpoint": r["checkpoint"]} if "checkpoint" in r else {})} for r in ranked]


def _mean_std(curves: list[list[float]], prefix: str, final: str) -> dict[str, Any]:
    """Mean and std over seeds of per-seed curves (cut to the shortest), and of their last points."""
    length = min(len(c) for c in curves)
    values = np.asarray([c[:length] for c in curves], np.float64)
    return {f"mean_{prefix}_curve": values.mean(0).round(6).tolist(),
            f"std_{prefix}_curve": values.std(0).round(6).tolist(),
            f"final_{final}_mean": round(float(values[:, -1].mean()), 6),
            f"final_{final}_std": round(float(values[:, -1].std()), 6)}


def summarize(config: ExperimentConfig, runs: dict[str, list[list[dict]]], space: SearchSpace, facts: dict,
              rescored: bool, score_name: str) -> dict[str, Any]:
    """summary.json: per strategy, per-seed results (the final ranking's top architectures) and mean/std
    curves over seeds: best-so-far per query for fixed scores, the pool's best per round for scores
    that change between rounds."""
    strategies = {}
    for name, seed_rows in runs.items():
        per_seed, curves, test_curves = [], [], []
        for offset, rows in enumerate(seed_rows):
            top = _top(final_rows(rows, rescored), score_name, config.search.top)
            best = max(final_rows(rows, rescored), key=lambda r: r["valid"])
            seed_entry: dict[str, Any] = {"seed": config.first_seed + offset,
                                          "queries": len({r["key"] for r in rows}),
                                          "final_valid": best["valid"], "final_test": best["test"],
                                          "best_arch": best["arch"]}
            if rescored:
                seed_entry["rounds"] = round_records(rows, score_name, config.search)
                curves.append([r[f"best_{score_name}"] for r in seed_entry["rounds"]])
            else:
                valid_curve, test_curve = best_so_far(rows)
                curves.append(valid_curve)
                test_curves.append(test_curve)
            per_seed.append({**seed_entry, "top": top})
        entry: dict[str, Any] = {"seeds": per_seed}
        if rescored:
            entry.update(_mean_std(curves, "best", "best"))
        else:
            entry.update(_mean_std(curves, "valid", "valid"))
            if all(v is not None for c in test_curves for v in c):
                entry.update(_mean_std(test_curves, "test", "test"))
        strategies[name] = entry
    return {"space": space.name, "evaluator": config.evaluator, "preset": config.preset,
            "curve": "round" if rescored else "query", "score_name": score_name,
            "queries": config.search.queries, "seeds": config.seeds, **facts, "strategies": strategies}


def run_experiment(config: ExperimentConfig, output_dir: str | os.PathLike, resume: bool = False,
                   plots: bool = True) -> dict[str, Any]:
    """Run (or resume) every strategy on every seed; write and return the summary."""
    config = config.resolved()
    config.validate()
    output_dir = Path(output_dir).absolute()
    setup = build_evaluator(config)
    cells = setup.facts.get("cells")
    if cells and config.search.queries > cells:
        raise ValueError(f"search.queries={config.search.queries} exceeds the {cells} architectures of the "
                         "table: lower it")
    table = setup.facts.get("table")
    fingerprints = {"table_sha256": file_sha256(table)} if table else {}
    prepare_run_dir(output_dir, config, resume, fingerprints)
    space = setup.space
    runs: dict[str, list[list[dict]]] = {}
    timing: dict[str, dict[str, float]] = {}
    meta = {"evaluator": config.evaluator, "preset": config.preset, **setup.facts}
    rescored, score_name = False, "valid"
    for name in config.strategies:
        runs[name], timing[name] = [], {}
        for seed in range(config.first_seed, config.first_seed + config.seeds):
            start = time.perf_counter()
            history = History(output_dir / "histories" / name / f"seed_{seed}.jsonl")
            evaluator = setup.make(seed)
            rescored, score_name = evaluator.rescores, evaluator.score_name
            folder = output_dir / "searches" / name / f"seed_{seed}"
            evaluator.use_folder(folder)
            store = CheckpointStore(folder / "checkpoints") if evaluator.save_state() is not None else None
            if history.rows:
                log.info("%s seed %d: resuming after %d recorded scores", name, seed, len(history.rows))
            strategy = make_strategy(name, space, seed, config.controller, config.nao, config.bananas)
            rows = search(space, strategy, evaluator, config.search, history, store, meta=meta,
                          on_progress=_log_progress(name, seed, score_name),
                          on_epoch=_log_epoch(name, seed, folder, config.search.epochs))
            runs[name].append(rows)
            timing[name][str(seed)] = round(time.perf_counter() - start, 3)
    summary = summarize(config, runs, space, setup.facts, rescored, score_name)
    write_json(output_dir / "summary.json", summary)
    write_json(output_dir / "timing.json", timing)
    if plots and is_primary():
        from nao import plots as plotting  # matplotlib is imported only when plotting

        if rescored:
            plotting.plot_round_curves(summary, output_dir / "search_curves.png")
        else:
            plotting.plot_search_curves(summary, output_dir / "search_curves.png")
        best_name, best_arch = _overall_best(runs, space, rescored)
        plotting.draw_cell(space, best_arch, output_dir / "best_cell.png",
                           title=f"best found ({best_name}): {space.to_string(best_arch)}")
    return summary


def _overall_best(runs: dict[str, list[list[dict]]], space: SearchSpace,
                  rescored: bool) -> tuple[str, Hashable]:
    finals = ((n, r) for n, seeds in runs.items() for rows in seeds for r in final_rows(rows, rescored))
    name, row = max(finals, key=lambda item: item[1]["valid"])
    return name, space.from_string(row["arch"])
