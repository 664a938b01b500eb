"""Fit the NAO controller on a whole benchmark table (``run_nao.py --mode=fit_controller``).

``fit_table_controller`` trains the controller on every architecture of a benchmark table but a
seeded held-out share, reports how well it ranks the held-out ones, and saves it as a ``controller``
checkpoint (``nao.load_checkpoint`` reads it) with a model card.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from nao.model_cards import controller_model_card, device_description, package_versions
from nao.models.checkpoint import CheckpointStore
from nao.ranking import kendall_tau, ranking_metrics, scores_to_metric

log = logging.getLogger("nao")

def _table(space_name: str, benchmark_file: str | None, valid_key: str | None, test_key: str | None):
    """(space, archs, valid, test or None, dataset, facts) of every architecture of the space's table."""
    from nao.evaluators.tabular import load_table

    table = load_table(space_name, benchmark_file, valid_key, test_key)
    facts = {"file": Path(table.path).name, "valid_key": table.valid_key, "test_key": table.test_key}
    return table.space, table.archs, table.valid, table.test, table.dataset, facts


def fit_table_controller(space_name: str, config, output_dir: str | Path, *, holdout: float = 0.1,
                         seed: int = 0, targets: str = "minmax", benchmark_file: str | None = None,
                         valid_key: str | None = None, test_key: str | None = None,
                         flags: dict[str, Any] | None = None, command: str | None = None,
                         log_every: int | None = None) -> dict[str, Any]:
    """Train the controller ``config`` on every architecture of the table but a seeded ``holdout``
    share, with the targets of the search (``normalize_targets``) from the validation metric; report
    Kendall tau and top-k overlap on the held-out share; save ``<output_dir>/checkpoints/<epochs>``,
    ``metrics.json`` and ``MODEL_CARD.md``. Returns the metrics."""
    from nao.controller import Controller
    from nao.models.files import write_json
    from nao.strategies.nao import TARGETS, normalize_targets

    if targets not in TARGETS:
        raise ValueError(f"unknown targets={targets!r}: choose one of {', '.join(TARGETS)}")
    if not 0 <= holdout < 1:
        raise ValueError(f"holdout={holdout} is the held-out share of the table: choose 0 <= holdout < 1")
    if config.epochs < 1:
        raise ValueError(f"epochs={config.epochs}: the controller needs at least one epoch")
    out = Path(output_dir)
    if (out / "checkpoints").is_dir() and any((out / "checkpoints").iterdir()):
        raise ValueError(f"{out} already holds a checkpoint: choose another output directory")
    space, archs, valid, test, dataset, facts = _table(space_name, benchmark_file, valid_key, test_key)
    order = np.random.default_rng(seed).permutation(len(archs))
    held = np.sort(order[:round(holdout * len(archs))])
    train = np.sort(order[round(holdout * len(archs)):])
    if len(train) < 2:
        raise ValueError(f"holdout={holdout} leaves {len(train)} architectures to train on: choose a smaller "
                         "holdout")
    tokens = space.tokens_batch(archs)
    low, high = float(valid[train].min()), float(valid[train].max())
    y = normalize_targets(valid[train], targets)
    quantiles = np.quantile(valid[train], np.linspace(0, 1, 101))  # rank scores -> accuracies
    target_info = {"normalisation": targets, "metric": facts["valid_key"], "low": low, "high": high,
                   "quantiles": [round(float(q), 4) for q in quantiles]}
    key = jax.random.key(seed)
    controller = Controller(space, config, jax.random.fold_in(key, 0))
    chunk = log_every or max(1, config.epochs // 10)
    log.info("fitting a %s controller on %d %s architectures (%d held out), %d epochs", space.name,
             len(train), facts["file"], len(held), config.epochs)
    start, done, steps, fit = time.perf_counter(), 0, 0, {}
    while done < config.epochs:
        epochs = min(chunk, config.epochs - done)
        fit = controller.fit(tokens[train], y, jax.random.fold_in(key, done + 1), epochs=epochs)
        done, steps = done + epochs, steps + fit["steps"]
        elapsed = time.perf_counter() - start
        line = f"epoch {done}/{config.epochs}  mse {fit['mse']:.5f}  nll {fit['nll']:.4f}"
        if len(held) > 1:
            predicted = controller.predict(tokens[held]).mean(0)
            line += f"  held-out Kendall tau {kendall_tau(predicted, valid[held]):.4f}"
        log.info("%s  %.0f s, ETA %.0f s", line, elapsed, elapsed / done * (config.epochs - done))
    seconds = time.perf_counter() - start
    metrics: dict[str, Any] = {}
    if len(held) > 1:
        predicted = controller.predict(tokens[held]).mean(0)
        metrics["holdout"] = ranking_metrics(predicted, valid[held], None if test is None else test[held])
        error = np.abs(scores_to_metric(predicted, target_info) - valid[held])
        metrics["holdout"]["metric_median_abs_error"] = round(float(np.median(error)), 4)
        metrics["holdout"]["metric_abs_error_p90"] = round(float(np.percentile(error, 90)), 4)
    sample = np.random.default_rng([seed, 1]).choice(train, min(len(train), 2000), replace=False)
    metrics["train_sample"] = {"count": len(sample), "kendall_tau": round(
        kendall_tau(controller.predict(tokens[sample]).mean(0), valid[sample]), 4)}
    meta = {
        "kind": "controller", "space": space.name, "dataset": dataset,
        "controller": dataclasses.asdict(config),
        "targets": target_info,
        "benchmark": {**facts, "architectures": len(archs)},
        "split": {"seed": seed, "holdout": holdout, "train_size": len(train), "holdout_size": len(held),
                  "holdout_indices": [int(i) for i in held]},
        "training": {"epochs": config.epochs, "steps": steps, "seconds": round(seconds, 1),
                     "device": device_description(),
                     "final_mse": fit["mse"], "final_nll": fit["nll"]},
        "metrics": metrics, "flags": flags or {}, "command": command,
        "versions": package_versions(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    store = CheckpointStore(out / "checkpoints", max_to_keep=1)
    store.save(config.epochs, {"params": controller.params}, meta)
    write_json(out / "metrics.json", {**metrics, "training": meta["training"]})
    (out / "MODEL_CARD.md").write_text(controller_model_card(meta, out))
    log.info("saved %s", out / "checkpoints" / str(config.epochs))
    return metrics
