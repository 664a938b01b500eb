"""One configuration per run: assembled from presets and the values given, every field range-checked
before any work starts, overridable field by field, refusals in one line."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nao.config import ConfigError, FitJob, TrainJob, assemble
from nao.experiment import ExperimentConfig
from nao.validation import unchecked_fields

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("values", [
    {},
    {"preset": "paper"},
    {"evaluator": "supernet", "space": "ptb_ws"},
    {"evaluator": "supernet", "space": "cifar_ws", "preset": "smoke"},
    {"mode": "train", "space": "ptb", "arch": "naonet"},
    {"mode": "train", "space": "cifar_ws", "arch": "naonet_ws", "child_preset": "cpu"},
    {"mode": "fit_controller"},
])
def test_every_field_of_every_kind_of_run_has_a_range(values):
    config = assemble(values)
    assert unchecked_fields(config.job) == []
    assert unchecked_fields(config) == []


def test_presets_then_the_values_given_then_field_overrides():
    config = assemble({"preset": "paper", "emb_size": 24, "queries": 60},
                      ("nao.etas=1,2", "controller.grad_clip=2.5", "nao.acquisition=ucb"))
    job = config.job
    assert isinstance(job, ExperimentConfig) and job.preset == "paper"
    assert job.controller.emb_size == 24 and job.controller.hidden_size == 96  # the rest is the preset's
    assert job.controller.grad_clip == 2.5 and job.nao.etas == (1.0, 2.0) and job.nao.acquisition == "ucb"
    assert job.search.queries == 60 and job.nao.init_size == 50
    supernet = assemble({"evaluator": "supernet", "space": "cifar_ws"}).job
    assert supernet.preset == "paper" and supernet.search.epochs == 150 and supernet.search.queries == 0
    assert supernet.strategies == ("nao",) and assemble({}).job.strategies == ("nao", "random", "evolution",
                                                                              "local")
    train = assemble({"mode": "train", "space": "ptb", "arch": "naonet", "child_preset": "cpu",
                      "child_hidden_size": 64}, ("recipe.dropout=0.5",)).job
    assert isinstance(train, TrainJob) and train.dataset == "ptb"
    assert train.recipe.hidden_size == train.recipe.emb_size == 64 and train.recipe.dropout == 0.5
    assert isinstance(assemble({"mode": "fit_controller", "first_seed": 3}).job, FitJob)
    assert assemble({"mode": "fit_controller", "first_seed": 3}).job.seed == 3


@pytest.mark.parametrize("values, overrides, message", [
    ({"queries": -1}, (), r"^search\.queries=-1 is out of range: it must be an integer >= 0 \(--queries\)$"),
    ({"batch_size": 0}, (), r"^controller\.batch_size=0 .* >= 1 \(--batch_size\)$"),
    ({"ensemble": 0}, (), r"^controller\.ensemble=0 .* >= 1 \(--ensemble\)$"),
    ({"learning_rate": -1.0}, (), r"^controller\.learning_rate=-1\.0 .* > 0\.0 \(--learning_rate\)$"),
    ({"learning_rate": float("nan")}, (), r"^controller\.learning_rate=nan .* finite"),
    ({"trade_off": 1.5}, (), r"^controller\.trade_off=1\.5 .* in \[0\.0, 1\.0\]"),
    ({"acquisition": "best"}, (), r"^nao\.acquisition='best' .* one of its, mean, ucb, none"),
    ({"strategies": ["nao", "bogus"]}, (),
     r"^strategies=\('nao', 'bogus'\) .* each item one of nao, .* \('bogus' is not\)"),
    ({"seeds": 0}, (), r"^seeds=0 .* >= 1 \(--seeds\)$"),
    ({"space": "nb999"}, (), r"unknown space 'nb999'|space='nb999' is out of range"),
    ({"init_size": 0, "preset": "smoke"}, (), r"^nao\.init_size=0: NAO needs"),
    ({"preset": "default", "evaluator": "supernet", "space": "ptb_ws"}, (),
     r"^unknown preset 'default' for evaluator 'supernet': choose one of paper, smoke$"),
    ({"score_windows": -2}, (), r"^score_windows=-2 .* >= 0 \(--score_windows\)$"),
    ({"mode": "train", "space": "ptb", "arch": "naonet", "child_epochs": -1}, (),
     r"^recipe\.epochs=-1 .* >= 1 \(--child_epochs\)$"),
    ({"mode": "train", "space": "cifar_ws", "arch": "naonet_ws", "child_batch_size": 0}, (),
     r"^recipe\.batch_size=0 .* \(--child_batch_size\)$"),
    ({"mode": "train", "space": "ptb", "arch": "naonet", "child_channels": 8}, (),
     r"^--child_channels does not apply to cells of space=ptb"),
    ({"mode": "train", "space": "ptb"}, (), r"^--mode=train needs --arch"),
    ({"mode": "train", "space": "ptb", "arch": "naonet", "dataset": "cifar10"}, (),
     r"^dataset=cifar10 does not fit space=ptb: choose one of ptb, wikitext2$"),
    ({"mode": "fit_controller", "holdout": 1.0}, (), r"^holdout=1\.0 .* in \[0\.0, 0\.99\] \(--holdout\)$"),
    ({"child_epochs": 3}, (), r"^--child_epochs does not apply to --mode=search: drop it"),
    ({"mode": "dance"}, (), r"^mode='dance' is unknown"),
    ({}, ("controller.emb_size=many",), r"^--set=controller\.emb_size=many: expected an integer$"),
    ({}, ("nao.etas=1,x",), r"^--set=nao\.etas=1,x: expected a comma list of numbers$"),
    ({}, ("controller.size=3",), r"^--set=controller\.size=\.\.\.: ControllerConfig has no field 'size'"),
    ({}, ("nao.ucb_kappa=-1",), r"^nao\.ucb_kappa=-1\.0 .* >= 0\.0 \(--set=nao\.ucb_kappa=\.\.\.\)$"),
    ({}, ("emb_size",), r"^--set='emb_size': write FIELD=VALUE"),
])
def test_a_bad_value_is_one_line_naming_the_field_and_the_range(values, overrides, message):
    with pytest.raises(ConfigError, match=message) as raised:
        assemble(values, overrides)
    assert "\n" not in str(raised.value)


def test_output_dir_and_resume_are_checked_before_work(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        assemble({"output_dir": str(tmp_path / "file")})
    with pytest.raises(ConfigError, match="does not exist, so there is nothing to continue"):
        assemble({"output_dir": str(tmp_path / "none"), "resume": True})
    with pytest.raises(ConfigError, match="--resume continues a run: name it with --output_dir"):
        assemble({"resume": True})


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, str(ROOT / "run_nao.py"), *args, "--compilation_cache_dir="],
                          cwd=cwd, capture_output=True, text=True, env=env, timeout=300)


def _messages(stderr: str) -> list[str]:
    """stderr without absl's and JAX's own log lines."""
    return [line for line in stderr.splitlines() if line.strip()
            and not (line[:1] in "IWE" and line[1:5].isdigit()) and not line.startswith("WARNING:")]


@pytest.mark.parametrize("args, needle", [
    (("--queries=abc",), "flag --queries=abc"),
    (("--quries=3",), "Unknown command line flag 'quries'"),
    (("--child_epochs=-1", "--mode=train", "--space=ptb", "--arch=naonet"), "recipe.epochs=-1"),
    (("--ensemble=0",), "controller.ensemble=0"),
    (("--queries=16000",), "exceeds the 15625 architectures"),
    (("stray",), "unexpected arguments stray"),
])
def test_the_cli_refuses_in_one_line_and_leaves_no_run_directory(tmp_path, args, needle):
    out = tmp_path / "run"
    done = _cli(*args, f"--output_dir={out}", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    lines = _messages(done.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], done.stderr
    assert not out.exists() and done.stdout == ""


def test_a_search_writes_its_whole_configuration(tmp_path):
    from nao.experiment import run_experiment

    config = assemble({"preset": "smoke", "strategies": ["random"], "queries": 6,
                       "output_dir": str(tmp_path / "run")})
    run_experiment(config.job, config.output_dir, plots=False)
    written = (tmp_path / "run" / "config.json").read_text()
    assert '"queries": 6' in written and '"preset": "smoke"' in written
    assert dataclasses.asdict(config.job)["controller"]["emb_size"] == 8
