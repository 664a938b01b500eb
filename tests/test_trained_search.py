"""Full NAO: every candidate trained from scratch on local worker processes (``--evaluator=train``).

A PTB search on a data folder without test files, its rows (score, cost, checkpoint) and a transfer
from a candidate's checkpoint; 2 workers give the rows 1 gives; a diverged candidate is a failed row
and the search ends normally; a killed driver resumes without training a candidate twice; a worker
killed twice fails its job and the others go on; bad values of the new settings stop in one line.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest
from conftest import write_cifar
from worker_tasks import Napper

from nao.child_training import transfer_child
from nao.config import assemble
from nao.evaluators.trained import SEARCH_RECIPES, load_search_data
from nao.executors import LocalExecutor
from nao.experiment import ExperimentConfig, run_experiment
from nao.history import History
from nao.models.checkpoint import CheckpointStore
from nao.search import SearchSettings
from nao.validation import ConfigError


@pytest.fixture(scope="module")
def no_test_dir(ptb_dir, tmp_path_factory) -> Path:
    """The PTB fixture without its test file: a search must not need it."""
    folder = tmp_path_factory.mktemp("ptb_no_test")
    for name in ("train.txt", "valid.txt"):
        shutil.copy(ptb_dir / name, folder / name)
    return folder


def search_config(data_dir: Path, queries: int = 2, **changes) -> ExperimentConfig:
    return ExperimentConfig(space="ptb", evaluator="train", preset="smoke", strategies=("random",),
                            data_dir=str(data_dir), search=SearchSettings(queries=queries, top=2), **changes)


def rows_of(out: Path) -> list[dict]:
    return History(out / "histories" / "random" / "seed_0.jsonl").rows


@pytest.fixture(scope="module")
def finished(no_test_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained") / "run"
    return out, run_experiment(search_config(no_test_dir), out)


def test_rows_carry_score_cost_and_checkpoint(finished):
    out, summary = finished
    rows = rows_of(out)
    assert len({r["key"] for r in rows}) == 2
    recipe = SEARCH_RECIPES["lm"]["smoke"]
    for row in rows:
        assert math.isfinite(row["valid_ppl"]) and row["valid"] == -row["valid_ppl"]
        assert row["test"] is None and not row.get("failed")
        assert row["cost"] > 0 and row["tokens"] >= recipe.max_steps * recipe.batch_size
        folder = Path(row["checkpoint"])
        assert folder.parent == out / "searches" / "random" / "seed_0" / "candidates"
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["valid_ppl"] == row["valid_ppl"] and "test_ppl" not in metrics
    assert summary["evaluator"] == "train" and summary["score_name"] == "valid_ppl"
    best = max(rows, key=lambda r: r["valid"])
    assert summary["strategies"]["random"]["seeds"][0]["best_arch"] == best["arch"]
    assert (out / "search_curves.png").exists()


def test_a_candidate_checkpoint_transfers(finished, wt2_dir, tmp_path):
    out, _ = finished
    source = rows_of(out)[0]["checkpoint"]
    recipe = dataclasses.replace(SEARCH_RECIPES["lm"]["smoke"], max_steps=2)
    metrics = transfer_child(source, "wikitext2", str(wt2_dir), recipe, tmp_path / "wt2")
    assert math.isfinite(metrics["valid_ppl"])
    meta = CheckpointStore(tmp_path / "wt2" / "checkpoints", create=False).read_meta()
    assert meta["transfer"]["from"] == str(Path(source) / "checkpoints") and meta["dataset"] == "wikitext2"


def test_two_workers_give_the_rows_of_one(finished, no_test_dir, tmp_path):
    out, _ = finished
    two = run_experiment(search_config(no_test_dir, workers=2), tmp_path / "two", plots=False)
    one = {r["key"]: r["valid_ppl"] for r in rows_of(out)}
    assert {r["key"]: pytest.approx(r["valid_ppl"], rel=1e-4) for r in rows_of(tmp_path / "two")} == one
    assert two["strategies"]["random"]["final_valid_mean"] == pytest.approx(
        max(-v for v in one.values()), rel=1e-4)


def test_a_diverged_candidate_is_a_failed_row_and_the_search_ends(ptb_dir, tmp_path):
    config = assemble({"space": "ptb", "evaluator": "train", "preset": "smoke", "strategies": ["random"],
                       "data_dir": str(ptb_dir), "queries": 2, "output_dir": str(tmp_path / "nan")},
                      ("candidate.lr=1e30",))
    summary = run_experiment(config.job, config.output_dir)
    rows = rows_of(tmp_path / "nan")
    assert len(rows) == 2 and all(r["failed"] and r["valid"] == -math.inf for r in rows)
    assert all("loss became" in r["error"] for r in rows)
    assert summary["strategies"]["random"]["seeds"][0]["queries"] == 2
    assert (tmp_path / "nan" / "search_curves.png").exists()


def test_a_killed_driver_resumes_without_training_a_candidate_twice(ptb_dir, tmp_path, monkeypatch):
    out, config = tmp_path / "run", search_config(ptb_dir, queries=3)
    real_append = History.append

    def dies_on_second_row(self, row):
        if len(self.rows) == 1:
            raise KeyboardInterrupt  # the driver dies after the 2nd candidate trained, before its row
        real_append(self, row)

    with monkeypatch.context() as patch:
        patch.setattr(History, "append", dies_on_second_row)
        with pytest.raises(KeyboardInterrupt):
            run_experiment(config, out, plots=False)
    candidates = out / "searches" / "random" / "seed_0" / "candidates"
    trained = {p: p.stat().st_mtime_ns for p in candidates.glob("*/checkpoints/*")}
    assert len(trained) == 2  # both finished candidates, one of them without a row
    run_experiment(config, out, resume=True, plots=False)
    rows = rows_of(out)
    assert len(rows) == len({r["key"] for r in rows}) == 3
    assert {p: p.stat().st_mtime_ns for p in trained} == trained  # nothing trained again
    assert len(list(candidates.glob("*/checkpoints/*"))) == 3


def test_a_worker_killed_twice_fails_its_job_and_the_others_finish(tmp_path):
    executor = LocalExecutor(Napper(str(tmp_path)), workers=1)

    def kill(pid_file: Path) -> None:
        while not pid_file.exists():
            time.sleep(0.05)
        os.kill(int(pid_file.read_text()), signal.SIGKILL)

    killer = threading.Thread(target=lambda: [kill(tmp_path / f"slow.{k}.pid") for k in (1, 2)])
    killer.start()
    with executor:
        executor.submit(0, ("slow", 60.0))
        executor.submit(1, ("quick", 0.0))
        outcomes = {o.job_id: o for o in executor.results()}
    killer.join()
    assert outcomes[0].value is None and outcomes[0].attempts == 2 and "died 2 times" in outcomes[0].error
    assert outcomes[1].value == "quick" and outcomes[1].error is None
    assert (tmp_path / "slow.2.pid").read_text() != (tmp_path / "slow.1.pid").read_text()  # re-queued


def test_cifar_search_data_hold_out_a_validation_split_and_read_no_test_file(tmp_path):
    root = write_cifar(tmp_path, "cifar10", 200, 10, 0)
    (root / "cifar-10-batches-py" / "test_batch").unlink()
    data, recipe = load_search_data("cnn", "cifar10", str(root), SEARCH_RECIPES["cnn"]["smoke"], 0)
    assert len(data.valid[0]) == recipe.valid_images == 20 and len(data.train[0]) == 180
    assert len(data.test[0]) == 0
    seen = {bytes(image) for image in data.train[0]}
    assert not any(bytes(image) in seen for image in data.valid[0])


@pytest.mark.parametrize("values, message", [
    ({"workers": 99}, "workers=99 but this process may use"),
    ({"workers": -1}, "workers=-1 is out of range"),
    ({"executor": "ray"}, "executor='ray' is out of range"),
    ({"evaluator": "table", "space": "nb201", "workers": 2}, "apply to --evaluator=train"),
    ({"space": "nb201"}, "evaluator 'train' trains cells of"),
])
def test_bad_settings_stop_in_one_line(values, message, tmp_path):
    given = {"space": "ptb", "evaluator": "train", "data_dir": "x", "output_dir": str(tmp_path / "o"),
             **values}
    with pytest.raises(ConfigError) as err:
        assemble(given)
    assert message in str(err.value) and "\n" not in str(err.value)
