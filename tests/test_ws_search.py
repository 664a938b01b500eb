"""Weight sharing on the PTB space through the one search loop: NAO-WS (the NAO strategy) and random
search with weight sharing side by side, a killed and resumed run, presets and seeds, the CLI, bad input."""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import run_killed_then_resumed

from nao.data.text import load_corpus
from nao.experiment import ExperimentConfig, RunDirError, build_evaluator, run_experiment
from nao.history import History
from nao.models import lm_ws
from nao.models.checkpoint import CheckpointError, CheckpointStore
from nao.search import SearchSettings, search
from nao.spaces import get_space
from nao.strategies import make_strategy

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = SearchSettings(queries=0, epochs=3, round_epochs=1, pool_size=8, per_round=3, random_per_round=1,
                          top=3)
STRATEGIES = ("nao", "random")


def ws_config(ptb_dir: Path, **changes) -> ExperimentConfig:
    config = ExperimentConfig(space="ptb_ws", evaluator="supernet", preset="smoke", strategies=STRATEGIES,
                              data_dir=str(ptb_dir), score_windows=2, search=SETTINGS)
    return dataclasses.replace(config, **changes)


@pytest.fixture(scope="module")
def finished(ptb_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ws") / "run"
    return out, run_experiment(ws_config(ptb_dir), out)


def history(out: Path, strategy: str) -> list[dict]:
    path = out / "histories" / strategy / "seed_0.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_round_scores_the_whole_pool_and_the_pool_changes(finished, strategy):
    out, summary = finished
    rows = history(out, strategy)
    rounds = [[r for r in rows if r["round"] == k] for k in range(3)]
    assert [len(r) for r in rounds] == [SETTINGS.pool_size] * 3
    for index, round_rows in enumerate(rounds):
        assert len({r["key"] for r in round_rows}) == SETTINGS.pool_size
        assert all(r["valid"] == -r["valid_ppl"] and np.isfinite(r["valid_ppl"]) for r in round_rows)
        assert all(r["epoch"] == index + 1 for r in round_rows)
    first, second = ({r["key"] for r in rounds[k]} for k in (0, 1))
    replaced = SETTINGS.per_round + SETTINGS.random_per_round
    assert len(second - first) == replaced
    # The best cells of round 0 survive into round 1; the worst are the ones replaced.
    order = sorted(rounds[0], key=lambda r: r["valid_ppl"])
    assert {r["key"] for r in order[:SETTINGS.pool_size - replaced]} <= second
    (seed,) = summary["strategies"][strategy]["seeds"]
    assert [(e["round"], e["epoch"]) for e in seed["rounds"]] == [(0, 1), (1, 2), (2, 3)]
    top = [e["valid_ppl"] for e in seed["top"]]
    assert top == sorted(top) and len(top) == SETTINGS.top
    assert top[0] == min(r["valid_ppl"] for r in rounds[2])
    assert summary["strategies"][strategy]["final_best_mean"] == pytest.approx(top[0], abs=1e-6)
    assert (out / "searches" / strategy / "seed_0" / "checkpoints" / "3").is_dir()


def test_the_run_directory_holds_both_searches(finished):
    out, summary = finished
    assert summary["curve"] == "round" and summary["score_name"] == "valid_ppl"
    assert json.loads((out / "config.json").read_text())["preset"] == "smoke"
    assert (out / "search_curves.png").stat().st_size > 5_000 and (out / "best_cell.png").exists()
    # One supernet per search, each initialised from the search's seed: the same first pool and
    # weights, so both searches score round 0 alike; after that their pools differ.
    nao, random = history(out, "nao"), history(out, "random")
    assert [r["valid_ppl"] for r in nao[:8]] == [r["valid_ppl"] for r in random[:8]]
    assert {r["key"] for r in nao[-8:]} != {r["key"] for r in random[-8:]}


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_the_supernet_learns(finished, strategy):
    out, _ = finished
    with (out / "searches" / strategy / "seed_0" / "train.csv").open() as handle:
        epochs = list(csv.DictReader(handle))
    assert [int(e["epoch"]) for e in epochs] == [1, 2, 3]
    assert float(epochs[-1]["train_loss"]) < float(epochs[0]["train_loss"])


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_killed_search_resumes_to_the_same_result(finished, ptb_dir, tmp_path, monkeypatch, strategy):
    _, reference = finished
    out = tmp_path / "killed"
    config = ws_config(ptb_dir, strategies=(strategy,))
    summary = run_killed_then_resumed(monkeypatch, lm_ws.LmSupernet, config, out)
    assert summary["strategies"][strategy] == reference["strategies"][strategy]
    assert len(history(out, strategy)) == 3 * SETTINGS.pool_size  # nothing scored twice


def test_a_kill_while_scoring_leaves_one_row_per_epoch_after_the_resume(finished, ptb_dir, tmp_path,
                                                                        monkeypatch):
    # Round 0's epoch is trained and recorded, but its checkpoint comes with the round's scores: a
    # kill while scoring makes the resume train that epoch again.
    reference, _ = finished
    out = tmp_path / "killed"
    config = ws_config(ptb_dir, strategies=("random",))
    with monkeypatch.context() as patch:
        patch.setattr(lm_ws.LmSupernet, "score", lambda self, archs: (_ for _ in ()).throw(KeyboardInterrupt))
        with pytest.raises(KeyboardInterrupt):
            run_experiment(config, out, plots=False)
    train_csv = out / "searches" / "random" / "seed_0" / "train.csv"
    assert [row["epoch"] for row in csv.DictReader(train_csv.open())] == ["1"]
    run_experiment(config, out, resume=True, plots=False)
    rows = list(csv.DictReader(train_csv.open()))
    assert [row["epoch"] for row in rows] == ["1", "2", "3"]
    expected = list(csv.DictReader((reference / "searches" / "random" / "seed_0" / "train.csv").open()))
    assert [row["train_loss"] for row in rows] == [row["train_loss"] for row in expected]


def test_resume_refuses_other_settings(finished, ptb_dir):
    out, _ = finished
    other = dataclasses.replace(SETTINGS, pool_size=9)
    with pytest.raises(RunDirError, match="differs in: search.pool_size"):
        run_experiment(ws_config(ptb_dir, search=other), out, resume=True)
    # The search's own checkpoint refuses them too.
    setup = build_evaluator(ws_config(ptb_dir).resolved())
    store = CheckpointStore(out / "searches" / "random" / "seed_0" / "checkpoints", create=False)
    with pytest.raises(CheckpointError, match="settings"):
        search(setup.space, make_strategy("random", setup.space, 0), setup.make(0), other, History(None),
               store)


def test_settings_and_presets_are_checked():
    with pytest.raises(ValueError, match="must leave room in search.pool_size=8"):
        dataclasses.replace(SETTINGS, per_round=7).validate()
    with pytest.raises(ValueError, match="round_epochs"):
        dataclasses.replace(SETTINGS, round_epochs=5).validate()
    with pytest.raises(ValueError, match="unknown preset 'default' for evaluator 'supernet': choose one of "
                                         "paper, smoke"):
        ExperimentConfig(space="ptb_ws", evaluator="supernet", preset="default").resolved()
    paper = ExperimentConfig(space="ptb_ws", evaluator="supernet").resolved()
    assert paper.preset == "paper" and paper.search.pool_size == 1000 and paper.search.random_per_round == 50
    cifar = ExperimentConfig(space="cifar_ws", evaluator="supernet").resolved()
    assert (cifar.search.epochs, cifar.search.round_epochs, cifar.nao.max_eta) == (150, 30, 50)
    assert ExperimentConfig().resolved().preset == "default"


def test_the_scored_windows_come_from_split_seed_alone(ptb_dir):
    corpus = load_corpus("ptb", ptb_dir)
    recipe = lm_ws.SUPERNET_PRESETS["smoke"]
    streams = {(seed, split): lm_ws.LmSupernet(recipe, corpus, seed, 2, split).score_stream
               for seed, split in ((0, 0), (1, 0), (0, 1))}
    np.testing.assert_array_equal(streams[0, 0], streams[1, 0])
    assert not np.array_equal(streams[0, 0], streams[0, 1])
    np.testing.assert_array_equal(np.sort(streams[0, 1]), np.sort(corpus.valid))  # a rotation of it


def test_a_supernet_epoch_logs_its_steps_as_it_goes(ptb_dir, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="nao")
    monkeypatch.setattr(lm_ws, "Ticker", functools.partial(lm_ws.Ticker, every=0))  # a line every step
    corpus = load_corpus("ptb", ptb_dir)
    supernet = lm_ws.LmSupernet(lm_ws.SUPERNET_PRESETS["smoke"], corpus, 0, 2)
    space = get_space("ptb_ws")
    supernet.train_epoch([space.sample(np.random.default_rng(i)) for i in range(2)], 0)
    found = [re.search(r"supernet epoch 1/2  step (\d+)/~(\d+)  loss \S+  .* tokens/s  ETA ", r.getMessage())
             for r in caplog.records]
    steps = [(int(m[1]), int(m[2])) for m in found if m]
    assert [done for done, _ in steps] == list(range(1, len(steps) + 1)) and len(steps) > 3
    # The estimate of the epoch's steps is refined until it is the count the epoch took.
    assert abs(steps[-1][1] - len(steps)) <= 1


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "run_nao.py"), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_cli_runs_nao_and_random_in_one_command(ptb_dir, tmp_path):
    out = tmp_path / "cli"
    args = ("--space=ptb_ws", "--evaluator=supernet", "--strategies=nao,random", "--preset=smoke",
            "--score_windows=2", f"--data_dir={ptb_dir}", f"--output_dir={out}")
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["strategies"]) == {"nao", "random"} and summary["preset"] == "smoke"
    for entry in summary["strategies"].values():
        assert len(entry["seeds"][0]["rounds"]) == 2 and len(entry["seeds"][0]["top"]) == 3
    assert "--mode=train --space=ptb " in result.stdout
    again = run_cli(*args)
    assert again.returncode == 2 and "already holds this run" in again.stderr
    assert json.loads((out / "summary.json").read_text()) == summary  # nothing overwritten


@pytest.mark.parametrize("args, needle", [
    (["--space=nb201", "--evaluator=supernet"], "space 'nb201' has no supernet"),
    (["--space=ptb_ws", "--evaluator=supernet"], "needs data_dir"),
    (["--space=ptb_ws", "--evaluator=supernet", "--preset=default"],
     "unknown preset 'default' for evaluator 'supernet': choose one of paper, smoke"),
    (["--space=ptb_ws", "--evaluator=oracle"], "unknown evaluator 'oracle'"),
    (["--space=ptb_ws"], "has no tabular evaluator"),
])
def test_cli_bad_input(args, needle, tmp_path):
    result = run_cli(*args, f"--output_dir={tmp_path / 'run'}")
    assert result.returncode == 2
    last = [line for line in result.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("error: ") and needle in last, result.stderr[-2000:]
    assert not (tmp_path / "run").exists()
