"""The one training loop (nao.models.training.train) on a toy task: a scalar linear fit whose
validation and test figures are scripted per epoch, so that what the loop selects, reports, logs and
keeps across a resume can be checked exactly in well under a second a run."""

from __future__ import annotations

import csv
import dataclasses
import errno
import json
import logging
import os
import re
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from nao.models import parallel
from nao.models.checkpoint import CheckpointError, CheckpointStore
from nao.models.training import Selection, Step, TrainingDivergedError, train

STEPS_PER_EPOCH = 4


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    epochs: int = 3
    max_steps: int = 0
    batch_size: int = 2
    seed: int = 0
    lr: float = 0.1


@jax.pmap
def _toy_step(state, x, lr):
    loss, grad = jax.value_and_grad(lambda w: jnp.mean((w * x - 2 * x) ** 2))(state["w"])
    return {"w": state["w"] - lr * grad, "t": state["t"] + 1}, loss


class ToyTask:
    """w fits y = 2x; the figures of epoch e's weights are ``scores[split][e - 1]`` (accuracies)."""

    kind, unit = "toy", "examples"

    def __init__(self, config: ToyConfig, scores: dict[str, list[float]], validation: bool = True):
        self.config, self.scores = config, scores
        self.selection = Selection("valid", "acc", higher_is_better=True) if validation else None
        self.epoch_splits = ("valid",) if validation else ("test",)
        self.final_splits = ("valid", "test") if validation else ("test",)
        self.evaluated: Counter = Counter()

    def meta(self) -> dict[str, Any]:
        return {"arch": [0]}

    def write_run_files(self, output_dir: Path) -> None:
        return None

    def initial_state(self) -> dict[str, Any]:
        return {"w": np.float32(0.0), "t": np.int32(0)}

    def initial_progress(self) -> dict[str, Any]:
        return {}

    def weights(self, state: Any, progress: dict[str, Any]) -> Any:
        return state

    def steps_in_epoch(self, epoch: int) -> int:
        return STEPS_PER_EPOCH

    def train_epoch(self, state: Any, epoch: int, step: int, progress: dict[str, Any]) -> Iterator[Step]:
        rng = np.random.default_rng([self.config.seed, epoch])
        for _ in range(STEPS_PER_EPOCH):
            x = parallel.shard_to_devices(rng.normal(size=self.config.batch_size).astype(np.float32))
            state, loss = _toy_step(state, x, parallel.replicate(np.float32(self.config.lr)))
            yield Step(state, {"loss": loss * self.config.batch_size}, self.config.batch_size, 0.0)

    def evaluate(self, weights: Any, split: str) -> dict[str, float]:
        self.evaluated[split] += 1
        epoch = int(parallel.unreplicate(weights)["t"]) // STEPS_PER_EPOCH
        return {"acc": float(self.scores[split][epoch - 1]), "loss": 1.0}

    def train_fields(self, means: dict[str, float]) -> dict[str, float]:
        return {"train_loss": means["loss"]}

    def end_epoch(self, epoch: int, evaluation: dict[str, float], progress: dict[str, Any]) -> dict[str, Any]:
        return {}


SCORES = {"valid": [50.0, 90.0, 70.0], "test": [90.0, 10.0, 40.0]}


def csv_rows(out: Path) -> list[dict[str, str]]:
    with (out / "metrics.csv").open() as handle:
        return list(csv.DictReader(handle))


def test_the_best_validation_epoch_is_the_result_and_the_test_set_is_only_reported(tmp_path):
    task = ToyTask(ToyConfig(), SCORES)
    result = train(task, tmp_path / "run")
    metrics = result.metrics
    assert metrics["selection"] == {"epoch": 2, "split": "valid", "metric": "valid_acc",
                                    "rule": "the epoch with the highest valid_acc"}
    # Epoch 2's figures, though epoch 1 and 3 score better on the test set.
    assert metrics["valid_acc"] == 90.0 and metrics["test_acc"] == 10.0
    assert task.evaluated == {"valid": 3, "test": 1}  # the test set once, on the result weights
    assert all(not key.startswith("test") for row in metrics["history"] for key in row)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == metrics
    assert result.score == 90.0 and result.seconds > 0
    assert result.examples == metrics["examples"] == 3 * STEPS_PER_EPOCH * 2 and metrics["unit"] == "examples"
    state, _ = CheckpointStore(result.checkpoint).restore(
        {"w": np.float32(0), "t": np.int32(0), "best": {"w": np.float32(0), "t": np.int32(0)}})
    assert int(state["best"]["t"]) == 2 * STEPS_PER_EPOCH and int(state["t"]) == 3 * STEPS_PER_EPOCH


def test_without_a_validation_split_the_last_epoch_is_the_result(tmp_path):
    task = ToyTask(ToyConfig(), SCORES, validation=False)
    metrics = train(task, tmp_path / "run").metrics
    assert metrics["selection"]["split"] is None and metrics["selection"]["epoch"] == 3
    assert "last epoch" in metrics["selection"]["rule"]
    assert metrics["test_acc"] == 40.0  # not epoch 1's 90: the test set never selects
    assert [row["test_acc"] for row in metrics["history"]] == SCORES["test"]  # reported every epoch
    assert task.evaluated == {"test": 3}  # the last epoch's figures are reused, not recomputed


def test_a_resume_drops_the_rows_of_epochs_its_checkpoint_does_not_hold(tmp_path):
    out = tmp_path / "run"
    train(ToyTask(ToyConfig(epochs=2), SCORES), out)
    assert [row["epoch"] for row in csv_rows(out)] == ["1", "2"]
    # Killed while writing epoch 2's checkpoint: its row is there, its checkpoint is not.
    (out / "checkpoints" / "2").rename(tmp_path / "cut")
    assert CheckpointStore(out / "checkpoints").latest_step() == 1
    with pytest.raises(ValueError, match=r"resume it \(resume=True\)"):
        train(ToyTask(ToyConfig(epochs=2), SCORES), out)
    metrics = train(ToyTask(ToyConfig(epochs=2), SCORES), out, resume=True).metrics
    assert [row["epoch"] for row in csv_rows(out)] == ["1", "2"]
    assert [int(row["epoch"]) for row in metrics["history"]] == [1, 2] and metrics["selection"]["epoch"] == 2


def test_a_diverging_run_stops_and_keeps_its_last_good_checkpoint(tmp_path):
    out = tmp_path / "run"
    train(ToyTask(ToyConfig(epochs=1), SCORES), out)
    with pytest.raises(TrainingDivergedError) as info:
        train(ToyTask(ToyConfig(epochs=2, lr=1e30), SCORES), out, resume=True)
    message = str(info.value)
    assert "epoch 2" in message and "last good checkpoint (epoch 1)" in message and "\n" not in message
    assert "lower the config's lr" in message
    assert CheckpointStore(out / "checkpoints").latest_step() == 1
    assert [row["epoch"] for row in csv_rows(out)] == ["1"]
    metrics = train(ToyTask(ToyConfig(epochs=2), SCORES), out, resume=True).metrics  # a lower lr goes on
    assert metrics["epochs"] == 2 and np.isfinite(metrics["history"][-1]["train_loss"])


def test_a_damaged_newest_checkpoint_is_never_resumed_from(tmp_path):
    out = tmp_path / "run"
    train(ToyTask(ToyConfig(epochs=2), SCORES), out)
    step = out / "checkpoints" / "2"
    data = max((p for p in (step / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    damaged = bytearray(data.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    data.write_bytes(bytes(damaged))
    with pytest.raises(CheckpointError) as info:
        train(ToyTask(ToyConfig(epochs=3), SCORES), out, resume=True)
    message = str(info.value)
    assert f"checkpoint {step} is truncated or damaged" in message and "\n" not in message
    assert "delete that step folder to resume from step 1" in message
    shutil.rmtree(step)  # the fallback the message gives
    metrics = train(ToyTask(ToyConfig(epochs=3), SCORES), out, resume=True).metrics
    assert [row["epoch"] for row in metrics["history"]] == [1, 2, 3]
    assert [row["epoch"] for row in csv_rows(out)] == ["1", "2", "3"]


def disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a write or close reports it: no file name


@pytest.mark.parametrize("writer", ["checkpoint", "csv", "json"])
def test_a_full_disk_stops_the_run_naming_the_file_and_a_resume_goes_on(tmp_path, monkeypatch, writer):
    out = tmp_path / "run"
    train(ToyTask(ToyConfig(epochs=1), SCORES), out)
    writerow, write_text = csv.DictWriter.writerow, Path.write_text
    with monkeypatch.context() as patch:
        if writer == "checkpoint":
            patch.setattr(ocp.Checkpointer, "save", disk_full)
        elif writer == "csv":  # epoch 2's row (the resume rewrites epoch 1's first)
            patch.setattr(csv.DictWriter, "writerow", lambda self, row: disk_full() if row["epoch"] == 2
                          else writerow(self, row))
        else:  # write_json writes metrics.tmp, then renames it
            patch.setattr(Path, "write_text", lambda path, *args: disk_full() if path.suffix == ".tmp"
                          else write_text(path, *args))
        with pytest.raises(OSError) as info:
            train(ToyTask(ToyConfig(epochs=2), SCORES), out, resume=True)
    expected = {"checkpoint": "checkpoints/2", "csv": "metrics.csv", "json": "metrics.json"}[writer]
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(out / expected)
    # A failed save leaves the step before it; the CSV and JSON files are written after the save.
    assert CheckpointStore(out / "checkpoints").steps() == ([1] if writer == "checkpoint" else [1, 2])
    metrics = train(ToyTask(ToyConfig(epochs=2), SCORES), out, resume=True).metrics
    assert metrics["epochs"] == 2 and [row["epoch"] for row in csv_rows(out)] == ["1", "2"]
    assert json.loads((out / "metrics.json").read_text()) == metrics


def progress_lines(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "nao"]


def test_progress_lines_count_steps_within_each_epoch(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="nao")
    # Every step logs (no pause between lines); max_steps cuts the second epoch after two steps.
    train(ToyTask(ToyConfig(epochs=3, max_steps=STEPS_PER_EPOCH + 2), SCORES), tmp_path / "a", log_seconds=0)
    counters = [tuple(map(int, m.groups())) for line in progress_lines(caplog)
                if (m := re.search(r"  step (\d+)/(\d+)  ", line))]
    assert counters == [(1, 4), (2, 4), (3, 4), (4, 4), (1, 2), (2, 2)]
    assert all("examples/s" in line and "ETA" in line
               for line in progress_lines(caplog) if "  step " in line)
    caplog.clear()
    train(ToyTask(ToyConfig(epochs=2), SCORES), tmp_path / "b")  # fast epochs: only their end lines
    lines = progress_lines(caplog)
    assert not [line for line in lines if "  step " in line]
    assert [line.split(" done in")[0] for line in lines if " done in " in line] == ["epoch 1/2", "epoch 2/2"]
    assert lines[-1].startswith("result: the weights of epoch 2 (the epoch with the highest valid_acc)")
