"""Final training and transfer of recurrent cells, on small generated corpora in the standard layout."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nao.child_training import train_child, transfer_child
from nao.data.text import load_corpus
from nao.models.checkpoint import CheckpointError, CheckpointStore
from nao.models.lm_train import LM_PRESETS, LmTask
from nao.models.rnn import RecurrentLM
from nao.models.tasks import result_weights, transferred_weights
from nao.models.training import train
from nao.spaces.ptb import PtbSpace

ROOT = Path(__file__).resolve().parents[1]
SMOKE = dataclasses.replace(LM_PRESETS["smoke"], epochs=1)
NAONET = PtbSpace().from_string("naonet")


@pytest.fixture(scope="module")
def trained(ptb_dir, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("runs") / "ptb"
    metrics = train_child("ptb", "naonet", "ptb", str(ptb_dir), dataclasses.replace(SMOKE, epochs=3), out)
    return out, metrics


def test_training_learns_and_writes_metrics_checkpoints_and_a_diagram(trained, ptb_dir):
    out, metrics = trained
    vocab = len(load_corpus("ptb", ptb_dir).vocab)
    assert metrics["epochs"] == 3 and len(metrics["history"]) == 3
    # The grammar is far more predictable than uniform over the vocabulary, or than word frequencies.
    assert metrics["valid_ppl"] < 0.6 * vocab and metrics["test_ppl"] < 0.6 * vocab
    assert metrics["history"][2]["valid_ppl"] < metrics["history"][0]["valid_ppl"]
    # The best validation epoch is the result; the test set is scored once, on it.
    assert metrics["selection"]["split"] == "valid" and metrics["selection"]["metric"] == "valid_loss"
    best = min(metrics["history"], key=lambda row: row["valid_loss"])
    assert metrics["selection"]["epoch"] == best["epoch"] and metrics["valid_ppl"] == best["valid_ppl"]
    assert not [key for row in metrics["history"] for key in row if key.startswith("test")]
    streams = SMOKE.batch_size
    train_ids = load_corpus("ptb", ptb_dir).train
    assert metrics["tokens"] == 3 * streams * (len(train_ids) // streams - 1)  # each epoch: every window
    assert json.loads((out / "metrics.json").read_text())["test_ppl"] == pytest.approx(metrics["test_ppl"])
    assert len((out / "metrics.csv").read_text().splitlines()) == 4
    assert (out / "cell.png").stat().st_size > 5_000
    assert (out / "vocab.txt").read_text().split("\n")[:-1] == list(load_corpus("ptb", ptb_dir).vocab.words)
    meta = CheckpointStore(out / "checkpoints", create=False).read_meta()
    assert meta["kind"] == "lm" and meta["space"] == "ptb" and meta["dataset"] == "ptb"
    assert tuple(meta["arch"]) == PtbSpace().from_string("naonet")
    assert meta["progress"]["epoch"] == 3


def test_a_resumed_run_ends_where_an_uninterrupted_one_does(trained, ptb_dir, tmp_path):
    _, uninterrupted = trained
    corpus = load_corpus("ptb", ptb_dir)
    out = tmp_path / "run"
    train(LmTask(SMOKE, NAONET, corpus), out, meta={"space": "ptb"})
    with pytest.raises(ValueError, match="resume=True"):
        train(LmTask(SMOKE, NAONET, corpus), out)
    resumed = train(LmTask(dataclasses.replace(SMOKE, epochs=3), NAONET, corpus), out, resume=True).metrics
    assert [r["valid_ppl"] for r in resumed["history"]] == pytest.approx(
        [r["valid_ppl"] for r in uninterrupted["history"]], rel=1e-4)
    assert resumed["test_ppl"] == pytest.approx(uninterrupted["test_ppl"], rel=1e-4)


def test_resuming_with_another_vocabulary_or_cell_is_refused(trained, wt2_dir, ptb_dir):
    out, _ = trained
    with pytest.raises(CheckpointError, match="vocab_fingerprint"):
        train(LmTask(SMOKE, NAONET, load_corpus("ptb", wt2_dir)), out, resume=True)
    with pytest.raises(CheckpointError, match="has arch="):
        train(LmTask(SMOKE, PtbSpace().from_string("naonet_ws"), load_corpus("ptb", ptb_dir)), out,
              resume=True)


def test_a_damaged_checkpoint_gives_one_line(trained, ptb_dir, tmp_path):
    out, _ = trained
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    step = CheckpointStore(copy / "checkpoints").latest_step()
    for path in (copy / "checkpoints" / str(step) / "state").rglob("*"):
        if path.is_file() and path.stat().st_size > 1000:
            path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError) as info:
        train(LmTask(SMOKE, NAONET, load_corpus("ptb", ptb_dir)), copy, resume=True)
    assert "truncated or damaged" in str(info.value) and "\n" not in str(info.value)


def test_weight_transfer_keeps_the_cell_and_renews_embedding_and_softmax(trained, wt2_dir, tmp_path):
    out, _ = trained
    store = CheckpointStore(out / "checkpoints", create=False)
    best, meta = result_weights(store)
    vocab = len(load_corpus("wikitext2", wt2_dir).vocab)
    fresh = LmTask.init_weights(RecurrentLM(SMOKE.model_config(vocab)), NAONET, seed=1)
    params = transferred_weights(store, fresh)
    assert set(params) == set(best)
    for name, value in params.items():
        if (name,) in LmTask.renewed:
            np.testing.assert_array_equal(value, fresh[name])
        else:
            np.testing.assert_array_equal(value, best[name], err_msg=name)
    assert params["embedding"].shape[0] == vocab != meta["vocab_size"]

    metrics = transfer_child(out, "wikitext2", str(wt2_dir), SMOKE, tmp_path / "weights")
    assert np.isfinite(metrics["test_ppl"]) and metrics["test_ppl"] < vocab
    transfer_meta = CheckpointStore(tmp_path / "weights" / "checkpoints", create=False).read_meta()
    assert transfer_meta["dataset"] == "wikitext2" and transfer_meta["transfer"]["kind"] == "weights"
    assert transfer_meta["arch"] == meta["arch"]


def test_architecture_transfer_uses_the_new_sizes(trained, wt2_dir, tmp_path):
    out, _ = trained
    config = dataclasses.replace(SMOKE, emb_size=12, hidden_size=12)
    transfer_child(out, "wikitext2", str(wt2_dir), config, tmp_path / "arch", kind="arch")
    meta = CheckpointStore(tmp_path / "arch" / "checkpoints", create=False).read_meta()
    assert meta["config"]["hidden_size"] == 12 and meta["transfer"]["kind"] == "arch"
    with pytest.raises(ValueError, match="trained on ptb already"):
        transfer_child(out, "ptb", str(wt2_dir), config, tmp_path / "again")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "run_nao.py"), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("args, needle", [
    (["--mode=train", "--space=ptb", "--arch=naonet"], "needs data_dir"),
    (["--mode=train", "--space=ptb", "--arch=0 1 2", "--data_dir=."], "has 3 numbers, needs 22"),
    (["--mode=train", "--space=nb201", "--arch=x", "--data_dir=."], "space=nb201 is not one of them"),
    (["--mode=train", "--space=ptb", "--arch=naonet", "--data_dir=/nonexistent"], "no token files under"),
    (["--mode=train", "--space=ptb", "--arch=naonet", "--child_preset=huge"], "unknown lm training preset"),
    (["--mode=transfer", "--dataset=wikitext2", "--from_checkpoint=/nonexistent"], "no checkpoint directory"),
])
def test_cli_bad_input_gives_one_line(args, needle):
    result = run_cli(*args)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and needle in lines[-1], result.stderr[-2000:]


def test_cli_trains_a_published_cell(ptb_dir, tmp_path):
    out = tmp_path / "cli"
    result = run_cli("--mode=train", "--space=ptb", "--arch=naonet_ws", f"--data_dir={ptb_dir}",
                     "--child_preset=smoke", "--child_epochs=1", f"--output_dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "result: the weights of epoch 1 (the epoch with the lowest valid_loss)" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] == 1 and np.isfinite(metrics["test_ppl"])
