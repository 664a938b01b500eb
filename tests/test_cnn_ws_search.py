"""NAO-WS on the cifar_ws space: the CIFAR supernet in the search loop, the hold-out split, resume,
divergence and missing data.

Data: tiny generated CIFAR-10 batches in the official python layout (images of four colour classes), so
the supernet learns within a few dozen steps. XLA's quickest compilation, as in test_cnn_train.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import run_killed_then_resumed, write_cifar

from nao.data.errors import DatasetError
from nao.evaluators.supernet import holdout_split
from nao.experiment import ExperimentConfig, build_evaluator, run_experiment
from nao.models.checkpoint import CheckpointStore
from nao.models.cnn_ws import CifarSupernet
from nao.models.training import TrainingDivergedError
from nao.search import SearchSettings
from nao.spaces import get_space

SPACE = get_space("cifar_ws")
SETTINGS = SearchSettings(queries=0, epochs=3, round_epochs=1, pool_size=8, per_round=3, random_per_round=1,
                          top=3)
pytestmark = pytest.mark.usefixtures("quick_compilation")


@pytest.fixture(scope="module")
def cifar10(tmp_path_factory) -> Path:
    # 400 training images: 40 held out, two score batches of 16.
    return write_cifar(tmp_path_factory.mktemp("wsdata"), "cifar10", 400, 16, 0)


def ws_config(data: Path, **changes) -> ExperimentConfig:
    config = ExperimentConfig(space="cifar_ws", evaluator="supernet", preset="smoke", strategies=("nao",),
                              data_dir=str(data), score_batches=2, search=SETTINGS)
    return dataclasses.replace(config, **changes)


@pytest.fixture(scope="module")
def finished(cifar10, tmp_path_factory):
    out = tmp_path_factory.mktemp("ws") / "run"
    return out, run_experiment(ws_config(cifar10), out)


def history(out: Path) -> list[dict]:
    path = out / "histories" / "nao" / "seed_0.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_round_scores_the_pool_on_the_same_images(finished):
    out, summary = finished
    rows = history(out)
    assert [sum(r["round"] == k for r in rows) for k in range(3)] == [SETTINGS.pool_size] * 3
    # Two score batches of 16 images: every accuracy is a multiple of 100/32.
    for row in rows:
        assert 0 <= row["valid_acc"] <= 100 and row["valid"] == row["valid_acc"]
        assert math.isclose(row["valid_acc"] * 32 / 100, round(row["valid_acc"] * 32 / 100), abs_tol=1e-6)
        assert SPACE.is_valid(SPACE.from_string(row["arch"]))
    assert summary["train_images"] == 360 and summary["valid_images"] == 40
    top = [entry["valid_acc"] for entry in summary["strategies"]["nao"]["seeds"][0]["top"]]
    assert top == sorted(top, reverse=True) and top[0] == max(r["valid_acc"] for r in rows if r["round"] == 2)
    assert (out / "search_curves.png").exists() and (out / "best_cell.png").stat().st_size > 5_000


def test_the_supernet_learns(finished):
    out, _ = finished
    with (out / "searches" / "nao" / "seed_0" / "train.csv").open() as handle:
        epochs = list(csv.DictReader(handle))
    assert [int(e["epoch"]) for e in epochs] == [1, 2, 3]
    assert float(epochs[-1]["train_loss"]) < float(epochs[0]["train_loss"])


def test_scores_do_not_depend_on_the_other_cells_scored(finished, cifar10):
    """A cell's score is a function of the weights and the cell alone (the same images every time)."""
    supernet = build_evaluator(ws_config(cifar10).resolved()).make(0).supernet
    cells = [SPACE.sample(np.random.default_rng(k)) for k in range(3)]
    together = supernet.score(cells)
    assert [supernet.score([cell])[0] for cell in cells] == together


def test_the_hold_out_is_drawn_from_split_seed():
    images, labels = np.arange(50)[:, None].repeat(3, 1), np.arange(50)
    (train, _), (valid, valid_labels) = holdout_split(images, labels, 5, seed=0)
    assert len(valid) == 5 and len(train) == 45 and set(valid_labels) | set(train[:, 0]) == set(range(50))
    np.testing.assert_array_equal(holdout_split(images, labels, 5, seed=0)[1][1], valid_labels)
    assert set(holdout_split(images, labels, 5, seed=1)[1][1]) != set(valid_labels)
    assert set(valid_labels) != set(range(45, 50))  # not simply the last images


def test_a_killed_search_resumes_to_the_same_result(finished, cifar10, tmp_path, monkeypatch):
    out, reference = finished
    summary = run_killed_then_resumed(monkeypatch, CifarSupernet, ws_config(cifar10), tmp_path / "killed")
    assert summary["strategies"] == reference["strategies"]
    assert len(history(tmp_path / "killed")) == 3 * SETTINGS.pool_size  # nothing scored twice


def test_a_diverging_supernet_stops_and_keeps_the_last_good_checkpoint(cifar10, tmp_path, monkeypatch):
    real_train = CifarSupernet.train_epoch

    def nan_in_epoch_two(self, archs, epoch):
        stats = real_train(self, archs, epoch)
        return {**stats, "train_loss": float("nan")} if epoch == 1 else stats

    monkeypatch.setattr(CifarSupernet, "train_epoch", nan_in_epoch_two)
    with pytest.raises(TrainingDivergedError, match="epoch 2.*last good checkpoint \\(epoch 1\\)"):
        run_experiment(ws_config(cifar10), tmp_path / "nan", plots=False)
    store = CheckpointStore(tmp_path / "nan" / "searches" / "nao" / "seed_0" / "checkpoints", create=False)
    assert store.latest_step() == 1


def test_missing_data_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(DatasetError, match="no CIFAR-10 train data in /nonexistent"):
        run_experiment(ws_config(Path("/nonexistent")), tmp_path / "run")
    assert not (tmp_path / "run").exists()
