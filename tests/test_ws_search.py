"""NAO-WS on the PTB space: a tiny search, a killed and resumed one, and bad input."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import run_killed_then_resumed

from nao.controller import PRESETS
from nao.data.text import load_corpus
from nao.models.lm_ws import LmSupernet, supernet_config
from nao.spaces import get_space
from nao.ws_search import WsSearch, ws_options

ROOT = Path(__file__).resolve().parents[1]
OPTIONS = ws_options("ptb_ws", "smoke", epochs=3, round_epochs=1)


def make_search(ptb_dir: Path, out: Path, options=OPTIONS) -> WsSearch:
    corpus = load_corpus("ptb", ptb_dir)
    supernet = LmSupernet(supernet_config("smoke"), corpus, seed=0, score_windows=2)
    return WsSearch(get_space("ptb_ws"), supernet, PRESETS["smoke"], options, out,
                    meta={"dataset": "ptb", "vocab_fingerprint": corpus.vocab.fingerprint})


@pytest.fixture(scope="module")
def finished(ptb_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ws") / "run"
    return out, make_search(ptb_dir, out).run()


def history(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]


def test_every_round_scores_the_whole_pool_and_the_pool_changes(finished):
    out, summary = finished
    rows = history(out)
    rounds = [[r for r in rows if r["round"] == k] for k in range(3)]
    assert [len(r) for r in rounds] == [OPTIONS.pool_size] * 3
    for round_rows in rounds:
        assert len({r["key"] for r in round_rows}) == OPTIONS.pool_size
        assert all(r["valid"] == -r["valid_ppl"] and np.isfinite(r["valid_ppl"]) for r in round_rows)
    first, second = ({r["key"] for r in rounds[k]} for k in (0, 1))
    replaced = OPTIONS.new_per_round + OPTIONS.random_per_round
    assert len(second - first) == replaced
    # The best cells of round 0 survive into round 1; the worst are the ones replaced.
    order = sorted(rounds[0], key=lambda r: r["valid_ppl"])
    assert {r["key"] for r in order[:OPTIONS.pool_size - replaced]} <= second
    assert [e["round"] for e in summary["rounds"]] == [0, 1, 2]
    top = [e["valid_ppl"] for e in summary["top"]]
    assert top == sorted(top) and len(top) == OPTIONS.final_top
    assert top[0] == min(r["valid_ppl"] for r in rounds[2])
    assert (out / "search_curves.png").stat().st_size > 5_000 and (out / "best_cell.png").exists()


def test_the_supernet_learns_across_rounds(finished):
    _, summary = finished
    means = [r["mean_valid_ppl"] for r in summary["rounds"]]
    assert means[-1] < means[0]


def test_a_killed_search_resumes_to_the_same_result(finished, ptb_dir, tmp_path):
    _, reference = finished
    out = tmp_path / "killed"
    summary = run_killed_then_resumed(lambda: make_search(ptb_dir, out))
    assert summary["top"] == reference["top"]
    assert summary["rounds"] == reference["rounds"]
    rows = history(out)
    assert len(rows) == 3 * OPTIONS.pool_size  # nothing scored twice


def test_resume_refuses_other_options(finished, ptb_dir):
    out, _ = finished
    other = make_search(ptb_dir, out, dataclasses.replace(OPTIONS, pool_size=9))
    with pytest.raises(ValueError, match="options"):
        other.resume()


def test_options_are_checked():
    with pytest.raises(ValueError, match="must be below pool_size"):
        dataclasses.replace(OPTIONS, new_per_round=8).validate()
    with pytest.raises(ValueError, match="round_epochs"):
        dataclasses.replace(OPTIONS, round_epochs=5).validate()


@pytest.mark.parametrize("args, needle", [
    (["--space=nb201", "--evaluator=supernet"], "--space=nb201 has no supernet"),
    (["--space=ptb_ws", "--evaluator=supernet"], "needs --data_dir"),
    (["--space=ptb_ws", "--evaluator=oracle"], "unknown --evaluator=oracle"),
    (["--space=ptb_ws"], "has no tabular evaluator"),
])
def test_cli_bad_input(args, needle):
    result = subprocess.run([sys.executable, str(ROOT / "run_nao.py"), *args], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2
    last = [line for line in result.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("error: ") and needle in last, result.stderr[-2000:]
