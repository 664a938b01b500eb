"""What the final-training loops of every cell kind share: run directories, resuming, divergence, logs.

A run directory holds ``checkpoints/`` (a ``CheckpointStore``), ``metrics.csv`` (one row an epoch)
and ``metrics.json``. A run starts fresh, or continues its newest checkpoint with ``resume``; a
directory that holds a run is never overwritten. A NaN or infinite loss stops the run with
``TrainingDivergedError`` before anything is saved, so the last checkpoint is a good one.
"""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path
from typing import Any

import jax

from nao.models.checkpoint import CheckpointStore
from nao.models.files import is_primary

log = logging.getLogger("nao")


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def start_or_resume(store: CheckpointStore, state: Any, expect: dict[str, Any], resume: bool,
                    out: Path) -> tuple[Any, dict[str, Any] | None]:
    """(state, saved progress) of the newest checkpoint with ``resume``, else (``state``, None).

    ``expect``: the meta fields that fix the weights' meaning (architecture, dataset...); the
    optimiser settings may change on resume (a lower lr after a divergence).
    """
    if store.latest_step() is None:
        return state, None
    if not resume:
        raise ValueError(f"{out} already holds a training run: pass --resume to continue it, or choose "
                         "another --output_dir")
    state, saved = store.restore(state, expect=expect)
    progress = saved["progress"]
    log.info("resumed from epoch %d (step %d) in %s", progress["epoch"], progress["step"], out)
    return state, progress


def check_finite(loss: float, epoch: int, step: int, store: CheckpointStore) -> None:
    """Raise TrainingDivergedError (one line) unless ``loss`` is finite."""
    if not math.isfinite(loss):
        last = store.latest_step()
        kept = f"the last good checkpoint (epoch {last}) is kept" if last else "no checkpoint was written yet"
        raise TrainingDivergedError(f"the loss became {loss} at epoch {epoch}, step {step}; {kept} in "
                                    f"{store.directory}: lower the learning rate (--child_lr) and rerun "
                                    "with --resume")


def device_multiple(batch_size: int) -> int:
    """``batch_size`` rounded up to a multiple of the job's device count (evaluation batches)."""
    devices = jax.device_count()
    return -(-batch_size // devices) * devices


def check_batch(batch_size: int) -> int:
    """The local device count; the job's device count (all hosts) must divide the global batch."""
    if batch_size % jax.device_count():
        raise ValueError(f"--batch_size={batch_size} must be divisible by the {jax.device_count()} devices "
                         f"({jax.process_count()} process(es))")
    return jax.local_device_count()


def append_csv(path: Path, row: dict[str, Any]) -> None:
    """One row more in a CSV file (written by process 0 of a multi-host job only)."""
    if not is_primary():
        return
    new = not path.exists()
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"
