"""What each mode of a run does, as library calls: ``run(config)`` takes a checked ``RunConfig``
(``nao.config.assemble``) and returns the lines that report its result. ``run_nao.py`` is a thin
layer over this; notebooks and tests can call the same functions.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nao.config import RunConfig

# The space whose cells --mode=train trains, for the cells a search of this space found.
TRAIN_SPACES = {"ptb_ws": "ptb"}


def run(config: RunConfig) -> list[str]:
    """Do the run ``config`` describes; the lines that report its result."""
    return RUNNERS[config.mode](config)


def command_line() -> str:
    return " ".join(["python", Path(sys.argv[0]).name, *map(shlex.quote, sys.argv[1:])])


def run_search(config: RunConfig) -> list[str]:
    from nao.experiment import run_experiment

    summary = run_experiment(config.job, config.output_dir, resume=config.resume)
    return search_report(summary, config)


def search_report(summary: dict[str, Any], config: RunConfig) -> list[str]:
    strategies, lines = summary["strategies"], []
    if summary["curve"] == "round":  # scores with shared weights: the final pools' best cells
        score = summary["score_name"]
        lines.append(f"\n{summary['space']}, {summary['evaluator']} ({summary['preset']}), "
                     f"{summary['seeds']} seed(s); best {score} of the final pool, with shared weights:")
        for name, entry in strategies.items():
            lines.append(f"  {name:10s} {entry['final_best_mean']:9.2f} +- {entry['final_best_std']:.2f}; "
                         f"best cells of seed {entry['seeds'][0]['seed']}:")
            lines += [f"    {cell[score]:9.2f}  {cell['arch']}" for cell in entry["seeds"][0]["top"]]
        best = max((s for e in strategies.values() for s in e["seeds"]), key=lambda s: s["final_valid"])
        space = TRAIN_SPACES.get(summary["space"], summary["space"])
        data = f" --data_dir={shlex.quote(config.job.data_dir)}" if config.job.data_dir else ""
        lines.append(f"train the best: python run_nao.py --mode=train --space={space} "
                     f"--arch={shlex.quote(best['best_arch'])}{data}")
    elif summary["evaluator"] == "train":  # every candidate trained: the best ones' checkpoints
        score = summary["score_name"]
        lines.append(f"\n{summary['space']}, {summary['queries']} candidates trained, {summary['seeds']} "
                     f"seed(s); the best {score} of each search and its checkpoint (for --mode=transfer "
                     "--from_checkpoint=...):")
        for name, entry in strategies.items():
            for seed in entry["seeds"]:
                best = seed["top"][0]
                value = "failed" if best[score] is None else f"{best[score]:.2f}"
                lines.append(f"  {name:10s} seed {seed['seed']}: {value}  {best['arch']}")
                lines.append(f"    {best['checkpoint']}")
    else:
        metric = "test" if all("final_test_mean" in e for e in strategies.values()) else "valid"
        lines.append(f"\n{summary['space']}, {summary['queries']} queries, {summary['seeds']} seed(s); "
                     f"{metric} accuracy of the best-by-validation architecture:")
        for name, entry in strategies.items():
            lines.append(f"  {name:10s} {entry[f'final_{metric}_mean']:6.2f} +- "
                         f"{entry[f'final_{metric}_std']:.2f}")
        if f"optimum_{metric}" in summary:
            lines.append(f"  {'optimum':10s} {summary[f'optimum_{metric}']:6.2f}")
    lines.append(f"results, curves and plots in {config.output_dir}")
    return lines


def run_evaluate(config: RunConfig) -> list[str]:
    from nao.experiment import build_evaluator

    setup = build_evaluator(config.job)
    space, evaluator = setup.space, setup.make(config.job.first_seed)
    arch = space.from_string(config.arch)
    (_, result), = evaluator.evaluate([arch])
    test = "" if result.test is None else f"  test {result.test:.2f}"
    return [f"{space.to_string(arch)}  valid {result.valid:.2f}{test}"]


def run_train(config: RunConfig) -> list[str]:
    from nao.child_training import train_child, train_further, transfer_child
    from nao.models.training import result_line

    job, out = config.job, Path(config.output_dir)
    _write_config(config)
    recorded = {"command": command_line(), "config": config.to_json()}
    if config.mode == "train" and job.from_checkpoint:
        metrics = train_further(job.from_checkpoint, job.data_dir, job.recipe, out, resume=config.resume,
                                flags=recorded)
    elif config.mode == "train":
        metrics = train_child(job.space, job.arch, job.dataset, job.data_dir, job.recipe, out,
                              resume=config.resume, flags=recorded)
    else:
        metrics = transfer_child(job.from_checkpoint, job.dataset, job.data_dir, job.recipe, out,
                                 kind=job.transfer, fine_tune=job.finetune, resume=config.resume,
                                 flags=recorded)
    return [f"{result_line(metrics)} (metrics, checkpoints and cell.png in {out})"]


def run_fit_controller(config: RunConfig) -> list[str]:
    import dataclasses

    from nao.fit_controller import fit_table_controller

    job = config.job
    _write_config(config)
    metrics = fit_table_controller(job.space, job.controller, config.output_dir, holdout=job.holdout,
                                   seed=job.seed, targets=job.targets, benchmark_file=job.benchmark_file,
                                   command=command_line(), flags=dataclasses.asdict(job),
                                   valid_key=job.valid_key, test_key=job.test_key)
    lines = []
    held = metrics.get("holdout")
    if held:
        lines.append(f"held-out Kendall tau {held['kendall_tau']:.4f} on {held['count']} architectures, "
                     f"top-10 overlap {held.get('top10_overlap', float('nan')):.2f}; predicted best: valid "
                     f"{held['predicted_best_valid']:.2f} (rank {held['predicted_best_rank']})")
    return [*lines, f"checkpoint, metrics.json and MODEL_CARD.md in {config.output_dir}"]


def _write_config(config: RunConfig) -> None:
    """config.json of a training or fitting run, unless the directory holds a run this one will refuse
    to touch."""
    out = Path(config.output_dir)
    holds_run = (out / "checkpoints").is_dir() and any((out / "checkpoints").iterdir())
    if holds_run and not config.resume:
        return
    out.mkdir(parents=True, exist_ok=True)
    config.write(out / "config.json")


RUNNERS: dict[str, Callable[[RunConfig], list[str]]] = {
    "search": run_search, "evaluate": run_evaluate, "train": run_train, "transfer": run_train,
    "fit_controller": run_fit_controller,
}
