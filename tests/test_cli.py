"""The main job through the command line: a tiny search, a kill and resume, and bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ["--preset=smoke", "--queries=24"]


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "run_nao.py"), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def test_tiny_search_writes_summary_and_plots(tmp_path):
    out = tmp_path / "run"
    result = run_cli(*SMOKE, "--seeds=2", f"--output_dir={out}")
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["strategies"]) == {"nao", "random", "evolution", "local"}
    for name, entry in summary["strategies"].items():
        assert [s["seed"] for s in entry["seeds"]] == [0, 1]
        curve = entry["mean_test_curve"]
        assert len(curve) == 24
        finals = [s["final_test"] for s in entry["seeds"]]
        assert curve[-1] == pytest.approx(np.mean(finals)), name
        for seed in (0, 1):
            rows = (out / "histories" / name / f"seed_{seed}.jsonl").read_text().splitlines()
            keys = [json.loads(r)["key"] for r in rows]
            assert len(keys) == 24 and len(set(keys)) == 24
    assert (out / "search_curves.png").stat().st_size > 10_000
    assert (out / "best_cell.png").stat().st_size > 5_000
    assert "nao" in result.stdout and "optimum" in result.stdout


def test_killed_search_resumes_to_the_same_summary(tmp_path):
    args = ["--preset=smoke", "--queries=60", "--strategies=nao,local", "--init_size=8"]
    reference = tmp_path / "reference"
    assert run_cli(*args, f"--output_dir={reference}").returncode == 0

    killed = tmp_path / "killed"
    history = killed / "histories" / "nao" / "seed_0.jsonl"
    proc = subprocess.Popen([sys.executable, str(ROOT / "run_nao.py"), *args, f"--output_dir={killed}"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline:
        if history.exists() and len(history.read_text().splitlines()) >= 20:
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    recorded = history.read_text().splitlines()
    assert 20 <= len(recorded) < 60, "the kill must land mid-search"
    assert not (killed / "summary.json").exists()

    refused = run_cli(*args, f"--output_dir={killed}")
    assert refused.returncode == 2 and "--resume" in refused.stderr

    resumed = run_cli(*args, f"--output_dir={killed}", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    final = history.read_text().splitlines()
    assert final[:len(recorded)] == recorded, "rows recorded before the kill were kept as they were"
    assert len(final) == 60
    assert (json.loads((killed / "summary.json").read_text())
            == json.loads((reference / "summary.json").read_text()))


@pytest.mark.parametrize("signum, code, word", [(signal.SIGINT, 130, "interrupted"),
                                                 (signal.SIGTERM, 143, "terminated")])
def test_ctrl_c_or_sigterm_stops_in_one_line_that_says_how_to_resume(tmp_path, signum, code, word):
    out = tmp_path / "run"
    history = out / "histories" / "random" / "seed_0.jsonl"
    args = ["--preset=smoke", "--strategies=random", "--queries=15000", f"--output_dir={out}"]
    # A child of a shell's background job inherits SIGINT ignored: give it the handler a terminal gives.
    terminal = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
                "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")
    proc = subprocess.Popen([sys.executable, "-c", terminal, str(ROOT / "run_nao.py"), *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (history.exists() and len(history.read_text().splitlines()) > 50):
        time.sleep(0.02)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code
    lines = [line for line in stderr.splitlines()
             if line.strip() and not (line[0] in "IWE" and line[1:5].isdigit())]  # absl's log lines aside
    assert lines == [f"{word}: continue with the same flags and --resume --output_dir={out}"], stderr
    assert len(history.read_text().splitlines()) > 50


@pytest.mark.parametrize("args, expected", [
    (["--space=nb999"], "unknown space 'nb999'"),
    (["--strategies=nao,annealing"], "one of nao, random, evolution, local, bananas ('annealing' is not)"),
    (["--queries=3"], "raise search.queries or lower nao.init_size"),
    (["--preset=huge"], "unknown preset 'huge' for evaluator 'table': choose one of paper, default, smoke"),
    (["--mode=evaluate", "--arch=|conv~0|+|"], "bad NAS-Bench-201"),
    (["--valid_key=imagenet_acc"], "set --valid_key to one of"),
    (["--benchmark_file=/nonexistent/table.npz"], "does not exist"),
])
def test_bad_input_is_one_line_with_the_fix(tmp_path, args, expected):
    search_flags = [] if "--mode=evaluate" in args else SMOKE  # evaluate refuses flags it would ignore
    result = run_cli(*search_flags, f"--output_dir={tmp_path / 'run'}", *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr
    assert not (tmp_path / "run").exists(), "a refused run writes nothing"


def test_benchmark_file_with_missing_arrays_is_refused(tmp_path):
    table = tmp_path / "table.npz"
    every_cell = np.indices((5,) * 6).reshape(6, -1).T.astype(np.uint8)
    np.savez(table, ops=every_cell)
    result = run_cli(*SMOKE, f"--benchmark_file={table}", f"--output_dir={tmp_path / 'run'}")
    assert result.returncode == 2 and "array 'cifar10_valid_acc' does not exist" in result.stderr


def test_foreign_run_dir_is_refused_and_untouched(tmp_path):
    out = tmp_path / "run"
    assert run_cli(*SMOKE, "--strategies=random", f"--output_dir={out}").returncode == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    result = run_cli("--preset=smoke", "--queries=30", "--strategies=random", f"--output_dir={out}",
                     "--resume")
    assert result.returncode == 2 and "different configuration (differs in: search.queries)" in result.stderr
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before

    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    result = run_cli(*SMOKE, f"--output_dir={stranger}")
    assert result.returncode == 2 and "holds no nao run" in result.stderr
    assert (stranger / "notes.txt").read_text() == "mine"


def test_evaluate_mode_prints_the_table_values():
    result = run_cli("--mode=evaluate", "--arch=|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|"
                     "skip_connect~0|nor_conv_3x3~1|nor_conv_1x1~2|")
    assert result.returncode == 0, result.stderr
    assert "valid 91.61" in result.stdout and "test 94.37" in result.stdout
