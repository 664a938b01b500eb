"""NAO-WS on the cifar_ws space: the CIFAR supernet in the search loop, resume, divergence, the CLI.

Data: tiny generated CIFAR-10 batches in the official python layout (images of four colour classes), so
the supernet learns within a few dozen steps. XLA's quickest compilation, as in test_cnn_train.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import QUICK_XLA, run_killed_then_resumed, write_cifar

from nao.controller import PRESETS
from nao.data.cifar import load_cifar, search_split
from nao.models.cnn_ws import CifarSupernet, supernet_config
from nao.models.training import TrainingDivergedError
from nao.spaces import get_space
from nao.ws_search import WsSearch, ws_options

ROOT = Path(__file__).resolve().parents[1]
SPACE = get_space("cifar_ws")
OPTIONS = ws_options("cifar_ws", "smoke", epochs=3, round_epochs=1)
pytestmark = pytest.mark.usefixtures("quick_compilation")


@pytest.fixture(scope="module")
def cifar10(tmp_path_factory) -> Path:
    return write_cifar(tmp_path_factory.mktemp("wsdata"), "cifar10", 200, 16, 0)


def make_search(data: Path, out: Path, options=OPTIONS) -> WsSearch:
    train, valid = search_split(*load_cifar("cifar10", data, "train"), num_valid=40)
    supernet = CifarSupernet(supernet_config("smoke"), train, valid, seed=0, score_batches=2)
    return WsSearch(SPACE, supernet, PRESETS["smoke"], options, out, meta={"dataset": "cifar10"})


@pytest.fixture(scope="module")
def finished(cifar10, tmp_path_factory):
    out = tmp_path_factory.mktemp("ws") / "run"
    return out, make_search(cifar10, out).run()


def history(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]


def test_every_round_scores_the_pool_on_the_same_images(finished):
    out, summary = finished
    rows = history(out)
    assert [sum(r["round"] == k for r in rows) for k in range(3)] == [OPTIONS.pool_size] * 3
    # Two score batches of 16 images: every accuracy is a multiple of 100/32.
    for row in rows:
        assert 0 <= row["valid_acc"] <= 100 and row["valid"] == row["valid_acc"]
        assert math.isclose(row["valid_acc"] * 32 / 100, round(row["valid_acc"] * 32 / 100), abs_tol=1e-6)
        assert SPACE.is_valid(SPACE.from_string(row["arch"]))
    top = [entry["valid_acc"] for entry in summary["top"]]
    assert top == sorted(top, reverse=True) and top[0] == max(r["valid_acc"] for r in rows if r["round"] == 2)
    assert (out / "search_curves.png").exists() and (out / "best_cell.png").stat().st_size > 5_000


def test_the_supernet_learns(finished):
    out, _ = finished
    with (out / "supernet.csv").open() as handle:
        epochs = list(csv.DictReader(handle))
    assert [int(e["epoch"]) for e in epochs] == [1, 2, 3]
    assert float(epochs[-1]["train_loss"]) < float(epochs[0]["train_loss"])


def test_scores_do_not_depend_on_the_other_cells_scored(finished, cifar10, tmp_path):
    """A cell's score is a function of the weights and the cell alone (the same images every time)."""
    search = make_search(cifar10, tmp_path / "fresh")
    cells = [SPACE.sample(np.random.default_rng(k)) for k in range(3)]
    together = search.supernet.score(cells)
    assert [search.supernet.score([cell])[0] for cell in cells] == together


def test_a_killed_search_resumes_to_the_same_result(finished, cifar10, tmp_path):
    _, reference = finished
    out = tmp_path / "killed"
    summary = run_killed_then_resumed(lambda: make_search(cifar10, out))
    assert summary["top"] == reference["top"] and summary["rounds"] == reference["rounds"]
    assert len(history(out)) == 3 * OPTIONS.pool_size  # nothing scored twice


def test_a_diverging_supernet_stops_and_keeps_the_last_good_checkpoint(cifar10, tmp_path):
    search = make_search(cifar10, tmp_path / "nan")
    real_train = search.supernet.train_epoch

    def nan_in_epoch_two(archs, epoch):
        stats = real_train(archs, epoch)
        return {**stats, "train_loss": float("nan")} if epoch == 1 else stats

    search.supernet.train_epoch = nan_in_epoch_two
    with pytest.raises(TrainingDivergedError, match="epoch 2.*last good checkpoint \\(epoch 1\\)"):
        search.run()
    assert search.store.latest_step() == 1


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "run_nao.py"), "--mode=search", "--evaluator=supernet",
                           *args], cwd=ROOT, env={**os.environ, **QUICK_XLA}, capture_output=True, text=True,
                          timeout=400)


def test_cli_search_and_its_refusals(cifar10, tmp_path):
    out = tmp_path / "cli"
    args = ("--space=cifar_ws", "--preset=smoke", f"--data_dir={cifar10}", f"--output_dir={out}")
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["rounds"]) == 2 and len(summary["top"]) == 3
    assert "--mode=train --space=cifar_ws" in result.stdout
    again = run_cli(*args)
    assert again.returncode == 2 and "already holds a search: pass --resume" in again.stderr
    assert json.loads((out / "summary.json").read_text()) == summary  # nothing overwritten


@pytest.mark.parametrize("args, needle", [
    (["--space=cifar_ws", "--data_dir=/nonexistent"], "no CIFAR-10 train data in /nonexistent"),
    (["--space=cifar", "--data_dir=/nonexistent"], "--space=cifar has no supernet"),
])
def test_cli_bad_input(args, needle):
    result = run_cli(*args)
    assert result.returncode == 2
    last = [line for line in result.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("error: ") and needle in last, result.stderr[-2000:]
