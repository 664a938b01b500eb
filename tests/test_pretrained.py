"""Pretrained checkpoints: the shipped NB201 controller, a round trip of each kind through
load_checkpoint, and one-line errors for every bad input (Python API and run_nao.py)."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import quick_xla, write_cifar

from nao import load_checkpoint
from nao.child_training import train_child
from nao.data.cifar import load_cifar
from nao.data.text import load_corpus
from nao.model_cards import lm_model_card
from nao.models.checkpoint import FORMAT_VERSION, CheckpointError
from nao.models.cnn_train import CNN_PRESETS
from nao.models.lm_train import LM_PRESETS
from nao.pretrained import PRETRAINED, CnnCheckpoint, ControllerCheckpoint, LmCheckpoint, WsSearchCheckpoint
from nao.ranking import kendall_tau

ROOT = Path(__file__).resolve().parents[1]
# Orbax's reader threads complain late about a damaged checkpoint without checksums it was asked to read.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
NONE_CELL = "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"
POOL_CELL = "|avg_pool_3x3~0|+|avg_pool_3x3~0|avg_pool_3x3~1|+|avg_pool_3x3~0|avg_pool_3x3~1|avg_pool_3x3~2|"
# A CIFAR cell of pools and identities, the quickest to compile (as in test_cnn_train).
CHEAP = "0 2 1 4 0 2 1 3 0 2 1 4 0 3 1 4 0 2 1 4 | 0 2 1 4 0 2 1 3 0 2 1 4 0 3 1 4 0 2 1 4"


def run_main(*args: str) -> tuple[int, str, str]:
    """run_nao.py's main() in this process with ``args`` (as sys.argv too): (exit code, stdout, stderr)."""
    import run_nao

    argv = ["run_nao.py", *args, "--compilation_cache_dir="]
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(out), \
            contextlib.redirect_stderr(err):
        patch.setattr(sys, "argv", argv)
        run_nao.FLAGS.unparse_flags()
        run_nao.FLAGS(argv)
        try:
            code = run_nao.main(["run_nao.py"])
        finally:
            run_nao.FLAGS.unparse_flags()
    return code, out.getvalue(), err.getvalue()


def last_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def one_line_error(info: pytest.ExceptionInfo, *needles: str) -> str:
    message = str(info.value)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, message
    return message


# ---------------------------------------------------------------------------------------------
# The shipped controller


@pytest.fixture(scope="module")
def shipped() -> ControllerCheckpoint:
    return load_checkpoint("nb201_controller", expect_kind="controller", expect_space="nb201")


def table_archs(table, rows) -> list[tuple[int, ...]]:
    return [tuple(int(o) for o in table.ops[i]) for i in rows]


def test_shipped_controller_is_small_and_described(shipped):
    folder = PRETRAINED["nb201_controller"]
    assert shipped.path.parent == folder / "checkpoints" and isinstance(shipped, ControllerCheckpoint)
    assert sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) < 5_000_000
    meta = shipped.meta
    assert meta["format_version"] == FORMAT_VERSION and meta["dataset"] == "cifar10"
    assert meta["command"].startswith("python run_nao.py --mode=fit_controller --space=nb201")
    split = meta["split"]
    assert split["train_size"] + split["holdout_size"] == 15625 == meta["benchmark"]["architectures"]
    assert len(split["holdout_indices"]) == split["holdout_size"] > 1000
    card = (folder / "MODEL_CARD.md").read_text()
    assert f"{meta['metrics']['holdout']['kendall_tau']:.4f}" in card and meta["command"] in card


def test_shipped_controller_ranks_cells_it_never_saw(shipped, nb201_table, nb201_space):
    held = np.array(shipped.meta["split"]["holdout_indices"])
    # Its held-out figure, recomputed from the loaded weights, is the one its meta and card report.
    predicted = shipped.predict(table_archs(nb201_table, held))
    assert kendall_tau(predicted, nb201_table.valid[held]) == pytest.approx(
        shipped.meta["metrics"]["holdout"]["kendall_tau"], abs=2e-3)
    # A few hundred unseen cells: ranked well (the shipped model reaches ~0.8 on the whole held-out set).
    sample = np.random.default_rng(0).choice(held, 300, replace=False)
    predicted = shipped.predict(table_archs(nb201_table, sample))
    assert kendall_tau(predicted, nb201_table.valid[sample]) > 0.7
    top = sample[np.argsort(-predicted)[:10]]
    assert nb201_table.valid[top].min() > np.percentile(nb201_table.valid[sample], 80)
    # Known good against known bad: the table's best cell, a median one, all-pooling, nothing at all.
    best = nb201_space.to_string(table_archs(nb201_table, [int(np.argmax(nb201_table.valid))])[0])
    median = nb201_space.to_string(table_archs(nb201_table, [int(np.argsort(nb201_table.valid)[7812])])[0])
    scores = shipped.predict([best, median, POOL_CELL, NONE_CELL])
    assert scores[0] > scores[1] > scores[2] > scores[3]
    assert shipped.rank([NONE_CELL, best, median]) == [best, median, NONE_CELL]
    accuracy = shipped.predict_accuracy([best, NONE_CELL])
    assert accuracy[0] > 88 and accuracy[1] < np.percentile(nb201_table.valid, 10)
    error = np.abs(shipped.predict_accuracy(table_archs(nb201_table, sample)) - nb201_table.valid[sample])
    assert np.median(error) < 1.0  # accuracy points (the shipped model: about 0.6 on the held-out cells)


def test_shipped_language_model_loads_and_predicts():
    folder = PRETRAINED["ptb_small"]
    assert sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) < 5_000_000
    lm = load_checkpoint("ptb_small", expect_kind="lm", expect_space="ptb", expect_dataset="ptb")
    assert isinstance(lm, LmCheckpoint) and len(lm.vocab) == lm.meta["vocab_size"] == 10_000
    # A config field this version no longer has is ignored (docs/checkpoints.md's format policy).
    assert "log_every" in lm.meta["config"] and lm.config.hidden_size == 32
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["valid_ppl"] == pytest.approx(metrics["best_valid_ppl"], rel=1e-3)
    assert metrics["test_ppl"] < 300
    card = (folder / "MODEL_CARD.md").read_text()
    assert f"test perplexity {metrics['test_ppl']:.2f}" in card and "--mode=train --space=ptb" in card
    words = lm.next_words("the company said", k=5)
    probabilities = [p for _, p in words]
    assert len(words) == 5 and probabilities == sorted(probabilities, reverse=True) and sum(probabilities) < 1
    # A sentence of its training domain is likelier than the same words shuffled.
    sentence = "the company said it expects sales to rise in the third quarter\n"
    shuffled = "quarter rise the said third to it sales company in the expects\n"
    assert lm.perplexity(sentence) < lm.perplexity(shuffled)


def test_kendall_tau_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 20, 1100).astype(float)  # ties, and more rows than one block
    y = x + rng.normal(0, 5, 1100).round()
    assert kendall_tau(x, y) == pytest.approx(stats.kendalltau(x, y)[0], abs=1e-9)


# ---------------------------------------------------------------------------------------------
# Round trips: a freshly written checkpoint of each kind


@pytest.fixture(scope="module")
def controller_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("controller") / "run"
    code, stdout, stderr = run_main("--mode=fit_controller", "--space=nb201", "--preset=smoke", "--epochs=1",
                                    "--batch_size=256", "--holdout=0.1", f"--output_dir={out}")
    assert code == 0, stderr[-3000:]
    assert "held-out Kendall tau" in stdout
    return out


def test_controller_round_trip(controller_run, nb201_table):
    ckpt = load_checkpoint(controller_run / "checkpoints")  # the checkpoints/ folder works as well
    assert isinstance(ckpt, ControllerCheckpoint) and ckpt.step == 1 and ckpt.config.ensemble == 2
    meta = ckpt.meta
    assert meta["command"].startswith("python run_nao.py --mode=fit_controller")
    assert meta["flags"]["controller"]["epochs"] == 1 and meta["controller"]["batch_size"] == 256
    held = np.array(meta["split"]["holdout_indices"])
    train = np.setdiff1d(np.arange(15625), held)
    assert meta["targets"]["low"] == nb201_table.valid[train].min()
    assert meta["targets"]["high"] == nb201_table.valid[train].max()
    tau = kendall_tau(ckpt.predict(table_archs(nb201_table, held)), nb201_table.valid[held])
    assert tau == pytest.approx(meta["metrics"]["holdout"]["kendall_tau"], abs=2e-3)
    assert json.loads((controller_run / "metrics.json").read_text())["holdout"] == meta["metrics"]["holdout"]
    assert "held-out" in (controller_run / "MODEL_CARD.md").read_text()
    step_folder = load_checkpoint(controller_run / "checkpoints" / "1")
    np.testing.assert_array_equal(step_folder.predict([NONE_CELL]), ckpt.predict([NONE_CELL]))


def test_nb101_controller_round_trip(tmp_path):
    out = tmp_path / "nb101"
    code, _, err = run_main("--mode=fit_controller", "--space=nb101", "--preset=smoke", "--epochs=2",
                            f"--output_dir={out}")
    assert code == 0, err[-3000:]
    ckpt = load_checkpoint(out, expect_space="nb101")
    held = ckpt.meta["metrics"]["holdout"]
    assert held["count"] == ckpt.meta["split"]["holdout_size"] == 29
    assert ckpt.meta["targets"]["metric"] == "valid_acc_108ep_single_seed"  # the NB101 table's own key
    archs = ckpt.space.sample(np.random.default_rng(0)), ckpt.space.sample(np.random.default_rng(1))
    assert ckpt.predict(archs).shape == (2,)


def test_fit_controller_refuses_bad_flags(controller_run):
    for args, needle in [(["--space=ptb"], "space='ptb' is out of range: it must be one of nb201, nb101"),
                         (["--holdout=1.5"], "holdout=1.5 is out of range: it must be a finite number "
                                             "in [0.0, 0.99] (--holdout)"),
                         ([f"--output_dir={controller_run}"], "already holds a checkpoint")]:
        code, _, err = run_main("--mode=fit_controller", "--preset=smoke", "--epochs=1", *args)
        assert code == 2 and needle in last_error_line(err)


@pytest.fixture(scope="module")
def lm_run(ptb_dir, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("lm") / "run"
    config = dataclasses.replace(LM_PRESETS["smoke"], epochs=1)
    with quick_xla():
        return out, train_child("ptb", "naonet", "ptb", str(ptb_dir), config, out)


def test_language_model_round_trip(lm_run, ptb_dir):
    out, metrics = lm_run
    ckpt = load_checkpoint(out, expect_kind="lm", expect_space="ptb", expect_dataset="ptb")
    assert isinstance(ckpt, LmCheckpoint) and ckpt.step == 1 and ckpt.arch == tuple(ckpt.meta["arch"])
    corpus = load_corpus("ptb", ptb_dir)
    assert ckpt.vocab.words == corpus.vocab.words
    # The trainer's figure, from the loaded best weights and the raw text.
    text = (ptb_dir / "valid.txt").read_text()
    np.testing.assert_array_equal(ckpt.encode(text), corpus.valid)
    with quick_xla():
        ppl = ckpt.perplexity(text, batch_size=ckpt.config.eval_batch_size)
        words = ckpt.next_words(" w3 w4 w5", k=3)
    assert ppl == pytest.approx(metrics["valid_ppl"], rel=1e-4)
    assert len(words) == 3 and all(w in corpus.vocab.words for w, _ in words)
    assert 0 < sum(p for _, p in words) <= 1
    card = lm_model_card(ckpt, "python run_nao.py --mode=train ...")
    assert f"validation perplexity {metrics['valid_ppl']:.2f}" in card and "--mode=train" in card


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory) -> tuple[Path, Path, dict]:
    data = write_cifar(tmp_path_factory.mktemp("c10"), "cifar10", 40, 24, 0)
    out = tmp_path_factory.mktemp("cnn") / "run"
    with quick_xla():
        metrics = train_child("cifar_ws", CHEAP, "cifar10", str(data),
                              dataclasses.replace(CNN_PRESETS["smoke"], epochs=1), out)
    return data, out, metrics


def test_cifar_network_round_trip(cnn_run):
    data, out, metrics = cnn_run
    ckpt = load_checkpoint(out, expect_kind="cnn", expect_dataset="cifar10")
    assert isinstance(ckpt, CnnCheckpoint) and ckpt.class_names[0] == "airplane"
    images, labels = load_cifar("cifar10", data, "test")
    with quick_xla():
        logits = ckpt.predict(images)
    assert logits.shape == (len(images), 10)
    accuracy = 100 * np.mean(logits.argmax(1) == labels)
    assert accuracy == pytest.approx(metrics["test_acc"], abs=100 / len(images) + 1e-6)
    # No validation split: the result weights are the last epoch's.
    jax.tree.map(np.testing.assert_array_equal, ckpt.variables, ckpt.last_variables)
    with pytest.raises(ValueError, match="uint8"):
        ckpt.predict(images.astype(np.float32))


def test_weight_sharing_search_round_trip(ptb_dir, tmp_path):
    from nao.experiment import ExperimentConfig, build_evaluator
    from nao.history import History
    from nao.models.checkpoint import CheckpointStore
    from nao.search import SearchSettings, search
    from nao.strategies import make_strategy

    settings = SearchSettings(queries=0, epochs=1, round_epochs=1, pool_size=8, per_round=3,
                              random_per_round=1)  # one epoch, one scoring round
    config = ExperimentConfig(space="ptb_ws", evaluator="supernet", preset="smoke", data_dir=str(ptb_dir),
                              score_windows=1, search=settings).resolved()
    setup = build_evaluator(config)
    evaluator = setup.make(0)
    strategy = make_strategy("nao", setup.space, 0, config.controller, config.nao)
    folder = tmp_path / "ws" / "searches" / "nao" / "seed_0"
    with quick_xla():
        search(setup.space, strategy, evaluator, settings, History(None),
               CheckpointStore(folder / "checkpoints"))
    ckpt = load_checkpoint(folder, expect_kind="ws_search", expect_space="ptb_ws")
    assert isinstance(ckpt, WsSearchCheckpoint) and ckpt.step == 1 and len(ckpt.pool) == 8
    assert [r["round"] for r in ckpt.rounds] == [0] and ckpt.space.name == "ptb_ws" and ckpt.strategy == "nao"
    np.testing.assert_array_equal(ckpt.supernet_state["params"]["cell_bank"],
                                  evaluator.supernet.state["params"]["cell_bank"])
    assert jax.tree.structure(ckpt.controller_params) == jax.tree.structure(strategy.controller.params)
    # The meta records the controller's configuration: the predictor is rebuilt and predicts as the live one.
    archs = [ckpt.space.from_string(a) for a in ckpt.pool[:3]]
    live = strategy.controller.predict(ckpt.space.tokens_batch(archs)).mean(axis=0)
    np.testing.assert_allclose(ckpt.predict(archs), live, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Bad input: one line, naming what was found and what was expected


def copy_run(run: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the run and its newest step folder."""
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    return copy, max((copy / "checkpoints").iterdir(), key=lambda p: int(p.name))


def edit_meta(step: Path, **fields) -> None:
    path = step / "meta" / "metadata"
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))


@pytest.mark.parametrize("version", [FORMAT_VERSION + 1, FORMAT_VERSION - 1])
def test_another_format_version(lm_run, tmp_path, version):
    copy, step = copy_run(lm_run[0], tmp_path)
    edit_meta(step, format_version=version)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(copy)
    one_line_error(info, f"format version {version}", f"reads {FORMAT_VERSION}")


@pytest.mark.parametrize("damage", ["delete", "cut", "cut_unverified"])
def test_a_truncated_state(lm_run, tmp_path, damage):
    copy, step = copy_run(lm_run[0], tmp_path)
    biggest = max((p for p in (step / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    name = biggest.relative_to(step).as_posix()
    if damage == "delete":
        biggest.unlink()
        problem = f"{name} is missing"
    else:
        size = biggest.stat().st_size
        biggest.write_bytes(biggest.read_bytes()[:100])
        problem = f"{name} is 100 bytes, {size} when it was saved"
    if damage == "cut_unverified":  # written before checksums: Orbax finds the damage
        meta = json.loads((step / "meta" / "metadata").read_text())
        del meta["state_files"]
        (step / "meta" / "metadata").write_text(json.dumps(meta))
        problem = "reading its state failed"
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(copy)
    one_line_error(info, f"checkpoint {step} is truncated or damaged: {problem}", "no earlier step is kept")


def test_a_state_without_its_metadata(lm_run, tmp_path):
    copy, step = copy_run(lm_run[0], tmp_path)
    (step / "state" / "_METADATA").unlink()
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(copy)
    one_line_error(info, "truncated or damaged: state/_METADATA is missing")


def test_another_space_dataset_or_kind(lm_run):
    out = lm_run[0]
    for kwargs, needle in [({"expect_space": "nb201"}, "has space='ptb', expected 'nb201'"),
                           ({"expect_dataset": "wikitext2"}, "has dataset='ptb', expected 'wikitext2'"),
                           ({"expect_kind": "controller"}, "has kind='lm', expected 'controller'")]:
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(out, **kwargs)
        one_line_error(info, needle)


def test_weights_that_do_not_fit_their_meta(lm_run, tmp_path):
    copy, step = copy_run(lm_run[0], tmp_path)
    meta = json.loads((step / "meta" / "metadata").read_text())
    size = meta["config"]["hidden_size"] + 1
    edit_meta(step, config={**meta["config"], "hidden_size": size, "emb_size": size})
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(copy)
    one_line_error(info, "does not fit the language model its meta describes", "there", "in the model")


def test_a_meta_without_a_field_of_its_kind(lm_run, tmp_path):
    copy, step = copy_run(lm_run[0], tmp_path)
    meta = json.loads((step / "meta" / "metadata").read_text())
    del meta["config"]
    (step / "meta" / "metadata").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(copy)
    one_line_error(info, "'lm' checkpoint without 'config'", "expected the fields docs/checkpoints.md lists")


def test_no_checkpoint_there(tmp_path, lm_run):
    cases = [(tmp_path / "nothing", ["no checkpoint at", "does not exist", "expected a run directory"]),
             (tmp_path, ["no checkpoint in", "found an empty folder", "expected numbered step folders"]),
             (lm_run[0] / "metrics.json", ["found a file", "expected a run directory"])]
    for path, needles in cases:
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(path)
        one_line_error(info, *needles)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(lm_run[0], step=99)
    one_line_error(info, "has no step 99", "found steps [1]")


def test_a_vocabulary_file_of_another_run(lm_run, tmp_path):
    copy, _ = copy_run(lm_run[0], tmp_path)
    (copy / "vocab.txt").write_text("a\nb\n<unk>\n")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(copy)
    one_line_error(info, "vocabulary fingerprint", "(3 words), the checkpoint expects")


# In one process: run_nao.main for each argument list of argv[1] (JSON), as `python run_nao.py ARGS`
# would, then load_checkpoint on each path of argv[2] (JSON), printing its error as main does; exit codes
# to stdout. One process, so that whatever threads of an earlier call print late shows as well.
CLI_RUNS = """
import json, sys
import run_nao
from nao import CheckpointError, load_checkpoint
for args in json.loads(sys.argv[1]):
    argv = ["run_nao.py", *args, "--compilation_cache_dir="]
    run_nao.FLAGS.unparse_flags()
    run_nao.FLAGS(argv)
    print(run_nao.main(argv[:1]))
for path in json.loads(sys.argv[2]):
    try:
        load_checkpoint(path)
        print(0)
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        print(2)
"""
LOG_LINE = re.compile(r"^([IW]\d|WARNING:)")  # absl and JAX log lines


def test_a_bad_checkpoint_prints_one_line(lm_run, controller_run, wt2_dir, tmp_path):
    """run_nao.py --mode=transfer --from_checkpoint=... (and load_checkpoint): each bad checkpoint stops
    with one line on stderr, log lines aside. A missing manifest and a cut data file, which Orbax's reader
    threads used to follow with "Event loop is closed" tracebacks now and then, are read several times."""
    newer, newer_step = copy_run(lm_run[0], tmp_path / "newer")
    edit_meta(newer_step, format_version=FORMAT_VERSION + 1)
    no_manifest, no_manifest_step = copy_run(lm_run[0], tmp_path / "manifest")
    (no_manifest_step / "state" / "manifest.ocdbt").unlink()
    cut, cut_step = copy_run(lm_run[0], tmp_path / "cut")
    for path in (cut_step / "state").rglob("*"):
        if path.is_file() and path.stat().st_size > 200:
            path.write_bytes(path.read_bytes()[:100])
    damaged = [(no_manifest, "truncated or damaged: state/manifest.ocdbt is missing"),
               (cut, "truncated or damaged: state/")]
    cases = [(tmp_path / "nothing", "no checkpoint directory"),
             (newer, f"has format version {FORMAT_VERSION + 1}, this nao reads {FORMAT_VERSION}"),
             (controller_run, "holds a 'controller' checkpoint; --from_checkpoint needs the checkpoint"),
             *damaged]
    runs = [["--mode=transfer", f"--from_checkpoint={source}", "--dataset=wikitext2", f"--data_dir={wt2_dir}",
             "--child_preset=smoke", f"--output_dir={tmp_path / 'out'}"] for source, _ in cases]
    loads = damaged * 3
    result = subprocess.run([sys.executable, "-c", CLI_RUNS, json.dumps(runs),
                             json.dumps([str(path) for path, _ in loads])],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.stdout.split() == ["2"] * len(cases + loads), result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip() and not LOG_LINE.match(line)]
    assert len(lines) == len(cases + loads), lines
    for line, (_, needle) in zip(lines, cases + loads):
        assert line.startswith("error: ") and needle in line, line


def test_a_full_disk_is_one_line(ptb_dir, tmp_path, monkeypatch):
    """run_nao.py stops on a full disk or quota with one line naming where it was writing and how to go
    on; another OSError keeps its own message, in one line too."""
    out = tmp_path / "run"
    checkpoints = out / "checkpoints"
    full = f"no space left on device while writing {checkpoints}: free space and rerun with --resume"
    mkdir = Path.mkdir
    for code, expected in [(errno.ENOSPC, full), (errno.EDQUOT, full),
                           (errno.EACCES, f"[Errno 13] Permission denied: '{checkpoints}'")]:
        def fail_on_checkpoints(path, *args, code=code, **kwargs):
            if path == checkpoints:
                raise OSError(code, os.strerror(code), str(path))
            return mkdir(path, *args, **kwargs)

        monkeypatch.setattr(Path, "mkdir", fail_on_checkpoints)
        status, _, err = run_main("--mode=train", "--space=ptb", "--arch=naonet", f"--data_dir={ptb_dir}",
                                  "--child_preset=smoke", f"--output_dir={out}")
        assert status == 2 and err.splitlines() == [f"error: {expected}"]
