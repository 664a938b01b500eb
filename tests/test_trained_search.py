"""Full NAO: every candidate trained from scratch on local worker processes (``--evaluator=train``).

A PTB search on a data folder without test files, its rows (score, cost, checkpoint), a transfer
from a candidate's checkpoint and a candidate trained further; 2 workers give the rows 1 gives; a
diverged candidate is a failed row and the search ends normally; a killed driver resumes without
training a candidate twice; a worker killed twice fails its job and the others go on; bad values of
the new settings stop in one line.
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

import numpy as np
import pytest
from conftest import QUICK_XLA, write_cifar
from worker_tasks import Napper

from nao.config import assemble
from nao.data.text import load_corpus
from nao.evaluators.trained import SEARCH_RECIPES, load_search_data
from nao.executors import LocalExecutor
from nao.experiment import ExperimentConfig, run_experiment
from nao.history import History
from nao.models.checkpoint import CheckpointStore
from nao.models.cnn_train import CnnTask
from nao.models.tasks import result_weights, transferred_weights
from nao.runs import RUNNERS
from nao.search import SearchSettings
from nao.validation import ConfigError


@pytest.fixture(scope="module", autouse=True)
def quick_workers(tmp_path_factory):
    """Workers (which inherit the environment) compile cheaply and share one compilation cache, so only
    the first worker of the module compiles the candidates' steps."""
    cache = tmp_path_factory.mktemp("jax_cache")
    with pytest.MonkeyPatch.context() as patch:
        for name, value in {**QUICK_XLA, "JAX_COMPILATION_CACHE_DIR": str(cache),
                            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}.items():
            patch.setenv(name, value)
        yield


@pytest.fixture(scope="module")
def no_test_dir(ptb_dir, tmp_path_factory) -> Path:
    """The PTB fixture without its test file: a search must not need it."""
    folder = tmp_path_factory.mktemp("ptb_no_test")
    for name in ("train.txt", "valid.txt"):
        shutil.copy(ptb_dir / name, folder / name)
    return folder


def search_config(data_dir: Path, queries: int = 3, **changes) -> ExperimentConfig:
    return ExperimentConfig(space="ptb", evaluator="train", preset="smoke", strategies=("random",),
                            data_dir=str(data_dir), search=SearchSettings(queries=queries, top=2), **changes)


def rows_of(out: Path) -> list[dict]:
    return History(out / "histories" / "random" / "seed_0.jsonl").rows


@pytest.fixture(scope="module")
def finished(no_test_dir, tmp_path_factory):
    """A 3-candidate search whose driver dies after the 2nd candidate trained but before its row was
    written, then resumed: (run dir, summary, the checkpoint steps written before the kill: mtimes)."""
    out, config = tmp_path_factory.mktemp("trained") / "run", search_config(no_test_dir)
    real_append = History.append

    def dies_on_second_row(self, row):
        if len(self.rows) == 1:
            raise KeyboardInterrupt
        real_append(self, row)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(History, "append", dies_on_second_row)
        with pytest.raises(KeyboardInterrupt):
            run_experiment(config, out)
    steps = out.glob("searches/random/seed_0/candidates/*/checkpoints/*")
    before = {step: step.stat().st_mtime_ns for step in steps}
    return out, run_experiment(config, out, resume=True), before


def test_rows_carry_score_cost_and_checkpoint(finished):
    out, summary, _ = finished
    rows = rows_of(out)
    assert len(rows) == len({r["key"] for r in rows}) == 3
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


def test_a_resumed_driver_trains_no_candidate_twice(finished):
    out, _, before = finished
    assert len(before) == 2  # two candidates had trained (one of them without a row) when it died
    assert {step: step.stat().st_mtime_ns for step in before} == before  # untouched by the resume
    assert len(list(out.glob("searches/random/seed_0/candidates/*/checkpoints/*"))) == 3


def test_a_candidate_checkpoint_is_what_transfer_takes(finished, wt2_dir, tmp_path):
    out, _, _ = finished
    source = Path(rows_of(out)[0]["checkpoint"])
    config = assemble({"mode": "transfer", "from_checkpoint": str(source), "dataset": "wikitext2",
                       "data_dir": str(wt2_dir), "child_preset": "smoke", "output_dir": str(tmp_path / "t")})
    assert config.job.space == "ptb"
    # What --mode=transfer starts from: the candidate's weights in a model of WikiText-2's vocabulary.
    store = CheckpointStore(source / "checkpoints", create=False)
    recipe, vocab = SEARCH_RECIPES["lm"]["smoke"], len(load_corpus("wikitext2", wt2_dir).vocab)
    size = recipe.hidden_size
    fresh = {"cell": np.zeros((11, size, 2 * size), np.float32), "w_input": np.zeros((2 * size, 2 * size),
             np.float32), "embedding": np.zeros((vocab, size), np.float32),
             "softmax_bias": np.zeros(vocab, np.float32)}
    started = transferred_weights(store, fresh)
    # The cell's trained matrices come from the candidate; the vocabulary's layers stay fresh.
    assert np.any(started["cell"] != 0) and np.any(started["w_input"] != 0)
    assert not np.any(started["embedding"]) and started["embedding"].shape[0] == vocab


def test_a_candidate_trains_further_from_its_folder(finished, ptb_dir, tmp_path):
    out, _, _ = finished
    row = rows_of(out)[0]
    source = Path(row["checkpoint"])
    further = tmp_path / "further"
    # One step at a negligible learning rate: the result is the candidate's network, scored again.
    config = assemble({"mode": "train", "from_checkpoint": str(source), "data_dir": str(ptb_dir),
                       "child_preset": "smoke", "child_max_steps": 1, "child_lr": 1e-9,
                       "output_dir": str(further)})
    assert (config.job.space, config.job.dataset) == ("ptb", "ptb")
    with pytest.raises(ConfigError, match="is the run of --from_checkpoint: choose a new folder"):
        assemble({"mode": "train", "from_checkpoint": str(source / "checkpoints"), "output_dir": str(source),
                  "resume": True})
    RUNNERS["train"](config)
    store = CheckpointStore(further / "checkpoints", create=False)
    meta = store.read_meta()
    assert meta["arch_string"] == row["arch"] and meta["continued_from"] == str(source / "checkpoints")
    started, _ = result_weights(store)
    trained, _ = result_weights(CheckpointStore(source / "checkpoints", create=False))
    for name, value in trained.items():
        np.testing.assert_allclose(started[name], value, atol=1e-6, err_msg=name)
    metrics = json.loads((further / "metrics.json").read_text())
    assert metrics["valid_ppl"] == pytest.approx(row["valid_ppl"], rel=1e-4)


@pytest.mark.parametrize("values, message", [
    ({"arch": "naonet"}, "--arch and --from_checkpoint: give one"),
    ({"dataset": "wikitext2"}, "holds a cell of dataset ptb; drop --dataset to train it further, or move it "
                               "with --mode=transfer"),
    ({"space": "ptb_ws"}, "holds a cell of space ptb; drop --space"),
    ({"child_hidden_size": 32}, "--child_hidden_size: the network keeps the sizes of"),
])
def test_training_a_checkpoint_further_refuses_other_cells_in_one_line(finished, values, message, tmp_path):
    out, _, _ = finished
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        assemble({"mode": "train", "from_checkpoint": rows_of(out)[0]["checkpoint"],
                  "output_dir": str(tmp_path / "o"), **values})


def test_two_workers_give_the_rows_of_one(finished, no_test_dir, tmp_path):
    out, _, _ = finished
    two = run_experiment(search_config(no_test_dir, workers=2), tmp_path / "two", plots=False)
    # Resuming with other workers is allowed: they do not change the scores (nothing left to train).
    run_experiment(search_config(no_test_dir, workers=1), tmp_path / "two", resume=True, plots=False)
    one = {r["key"]: r["valid_ppl"] for r in rows_of(out)}
    assert {r["key"]: pytest.approx(r["valid_ppl"], rel=1e-4) for r in rows_of(tmp_path / "two")} == one
    assert two["strategies"]["random"]["final_valid_mean"] == pytest.approx(
        max(-v for v in one.values()), rel=1e-4)


def test_ray_workers_give_the_rows_of_one_local_worker(finished, no_test_dir, tmp_path):
    import ray

    out, _, _ = finished
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             object_store_memory=80 * 2**20)
    try:
        run_experiment(search_config(no_test_dir, executor="ray", workers=2), tmp_path / "ray", plots=False)
    finally:
        ray.shutdown()
    one = {r["key"]: r["valid_ppl"] for r in rows_of(out)}
    assert {r["key"]: pytest.approx(r["valid_ppl"], rel=1e-4) for r in rows_of(tmp_path / "ray")} == one


def test_async_workers_start_a_candidate_whenever_one_ends(no_test_dir, tmp_path):
    config = search_config(no_test_dir, queries=4, workers=2)
    config = dataclasses.replace(config, search=dataclasses.replace(config.search, schedule="async"))
    run_experiment(config, tmp_path / "async", plots=False)
    rows = rows_of(tmp_path / "async")
    proposed = History(tmp_path / "async" / "histories" / "random" / "seed_0.proposed.jsonl",
                       required=("query", "key", "arch")).rows
    assert len({r["key"] for r in rows}) == 4 and [p["query"] for p in proposed] == [1, 2, 3, 4]
    assert {r["key"] for r in rows} == {p["key"] for p in proposed}
    assert all(Path(r["checkpoint"]).is_dir() and math.isfinite(r["valid_ppl"]) for r in rows)


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
    data, recipe = load_search_data("cnn", "cifar10", str(root), SEARCH_RECIPES["cnn"]["smoke"])
    assert len(data.valid[0]) == recipe.valid_images == 20 and len(data.train[0]) == 180
    assert len(data.test[0]) == 0
    seen = {bytes(image) for image in data.train[0]}
    assert not any(bytes(image) in seen for image in data.valid[0])
    # The hold-out --mode=train uses with the same number of images: a candidate trained further is
    # scored on the images its search scored it on.
    (root / "cifar-10-batches-py" / "test_batch").write_bytes((root / "cifar-10-batches-py" / "data_batch_1")
                                                             .read_bytes())
    again = CnnTask.load_data("cifar10", str(root), dataclasses.replace(recipe, valid_images=20))
    np.testing.assert_array_equal(again.valid[0], data.valid[0])
    np.testing.assert_array_equal(again.train[0], data.train[0])


@pytest.mark.parametrize("values, message", [
    ({"workers": 99}, "workers=99 but this process may use"),
    ({"workers": -1}, "workers=-1 is out of range"),
    ({"executor": "cloud"}, "executor='cloud' is out of range"),
    ({"ray_address": "127.0.0.1:1"}, "--ray_address applies to --executor=ray"),
    ({"child_lr": 0.5}, "--child_lr sets a supernet's learning rate; evaluator=train has none: set the "
                        "candidates' with --set=candidate.lr=..."),
    ({"evaluator": "table", "space": "nb201", "workers": 2}, "apply to --evaluator=train"),
    ({"split_seed": 3}, "--split_seed draws a supernet's hold-out data; evaluator=train has none"),
    ({"space": "nb201"}, "evaluator 'train' trains cells of"),
])
def test_bad_settings_stop_in_one_line(values, message, tmp_path):
    given = {"space": "ptb", "evaluator": "train", "data_dir": "x", "output_dir": str(tmp_path / "o"),
             **values}
    with pytest.raises(ConfigError) as err:
        assemble(given)
    assert message in str(err.value) and "\n" not in str(err.value)
