"""Final training and transfer of CIFAR cells, on tiny generated datasets in the official python layout.

Compiling a cell network's train step dominates on a CPU, so every run here uses one tiny network
(F=4, N=1, cells of pools and identities) and XLA's quickest compilation, and runs of one process
share the compiled steps.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import QUICK_XLA, write_cifar
from flax import traverse_util

from nao.child_training import train_child, transfer_child
from nao.config import assemble
from nao.models.checkpoint import CheckpointError, CheckpointStore
from nao.models.cnn_train import CNN_PRESETS, CnnTask, build_model, initial_variables
from nao.models.tasks import result_weights, transferred_weights
from nao.models.training import train
from nao.spaces import get_space
from nao.validation import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SPACE = get_space("cifar_ws")
# Pools and identities only, the quickest to compile: the stem and the classifier learn the colours.
CHEAP = "0 2 1 4 0 2 1 3 0 2 1 4 0 3 1 4 0 2 1 4 | 0 2 1 4 0 2 1 3 0 2 1 4 0 3 1 4 0 2 1 4"
OTHER = CHEAP.replace("0 3 1 4 0 2 1 4 |", "0 2 1 4 0 2 1 4 |")
SMOKE = dataclasses.replace(CNN_PRESETS["smoke"], epochs=1)
TWO_EPOCHS = dataclasses.replace(SMOKE, epochs=2)
pytestmark = pytest.mark.usefixtures("quick_compilation")


@pytest.fixture(scope="module")
def cifar10(tmp_path_factory) -> Path:
    return write_cifar(tmp_path_factory.mktemp("c10data"), "cifar10", 80, 32, 0)


@pytest.fixture(scope="module")
def cifar100(tmp_path_factory) -> Path:
    return write_cifar(tmp_path_factory.mktemp("c100data"), "cifar100", 32, 16, 1)


@pytest.fixture(scope="module")
def trained(cifar10, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("runs") / "cifar10"
    return out, train_child("cifar_ws", CHEAP, "cifar10", str(cifar10), TWO_EPOCHS, out)


def task_of(cifar10: Path, config=SMOKE, arch: str = CHEAP) -> CnnTask:
    return CnnTask(config, SPACE.from_string(arch), SPACE.ops, "cifar10",
                   CnnTask.load_data("cifar10", str(cifar10), config))


def test_training_learns_and_writes_metrics_checkpoints_and_a_diagram(trained):
    out, metrics = trained
    first, last = metrics["history"]
    assert metrics["epochs"] == 2 and metrics["steps"] == 20 and metrics["images"] == 160
    assert last["train_loss"] < first["train_loss"] and last["train_acc"] > first["train_acc"]
    # No validation split (the paper's recipe): the last epoch is the result, the test set is reported.
    assert metrics["selection"]["split"] is None and metrics["selection"]["epoch"] == 2
    assert metrics["test_acc"] == last["test_acc"] >= 75  # 4 classes: 25% by chance
    assert first["lr"] == pytest.approx(0.025) and last["lr"] == pytest.approx(0.0125)  # cosine, per epoch
    assert 0 <= last["input_wait"] < 1 and last["images_per_s"] > 0
    assert json.loads((out / "metrics.json").read_text())["test_acc"] == pytest.approx(metrics["test_acc"])
    assert len((out / "metrics.csv").read_text().splitlines()) == 3
    assert (out / "cell.png").stat().st_size > 5_000
    meta = CheckpointStore(out / "checkpoints", create=False).read_meta()
    assert meta["kind"] == "cnn" and meta["space"] == "cifar_ws" and meta["dataset"] == "cifar10"
    assert tuple(meta["arch"]) == SPACE.from_string(CHEAP) and meta["num_classes"] == 10
    assert meta["progress"]["epoch"] == 2


def test_a_validation_split_selects_the_result_and_the_test_set_is_only_reported(cifar10, tmp_path):
    task = task_of(cifar10, dataclasses.replace(TWO_EPOCHS, valid_images=16))
    assert len(task.data.train[0]) == 64 and len(task.data.valid[0]) == 16  # the last 16 training images
    metrics = train(task, tmp_path / "run", meta={"space": "cifar_ws"}).metrics
    history = metrics["history"]
    assert metrics["steps"] == 16
    assert metrics["selection"]["split"] == "valid" and metrics["selection"]["metric"] == "valid_acc"
    best = max(history, key=lambda row: row["valid_acc"])  # the earlier of equals, as the loop keeps it
    assert metrics["selection"]["epoch"] == best["epoch"] and metrics["valid_acc"] == best["valid_acc"]
    assert np.isfinite(metrics["test_acc"])
    assert not [key for row in history for key in row if key.startswith("test")]
    # Trained further, it keeps the split it was scored on (a search candidate's hold-out) unless told.
    further = {"mode": "train", "from_checkpoint": str(tmp_path / "run"),
               "output_dir": str(tmp_path / "more")}
    assert assemble(further).job.recipe.valid_images == 16
    assert assemble({**further, "child_valid_images": 0}).job.recipe.valid_images == 0


def test_a_resumed_run_ends_where_an_uninterrupted_one_does(trained, cifar10, tmp_path):
    _, uninterrupted = trained
    out = tmp_path / "run"
    # Stopped after its first epoch (the learning rate and drop path follow the planned epochs).
    train(task_of(cifar10, dataclasses.replace(TWO_EPOCHS, max_steps=10)), out)
    with pytest.raises(ValueError, match="resume=True"):
        train(task_of(cifar10, TWO_EPOCHS), out)
    resumed = train(task_of(cifar10, TWO_EPOCHS), out, resume=True).metrics
    for key in ("train_loss", "test_loss", "test_acc"):
        assert [r[key] for r in resumed["history"]] == pytest.approx(
            [r[key] for r in uninterrupted["history"]], rel=1e-4), key


def test_resuming_with_another_cell_or_dataset_is_refused(trained, cifar10, cifar100):
    out, _ = trained
    with pytest.raises(CheckpointError, match="has arch=") as info:
        train(task_of(cifar10, SMOKE, OTHER), out, resume=True)
    assert "\n" not in str(info.value)
    with pytest.raises(CheckpointError, match="has dataset='cifar10', expected 'cifar100'"):
        train_child("cifar_ws", CHEAP, "cifar100", str(cifar100), SMOKE, out, resume=True)


def test_weight_transfer_keeps_every_weight_but_the_classifiers(trained, cifar100, tmp_path):
    out, _ = trained
    store = CheckpointStore(out / "checkpoints", create=False)
    arch = SPACE.from_string(CHEAP)
    saved, meta = result_weights(store)
    assert meta["kind"] == "cnn"
    fresh = initial_variables(build_model(SMOKE, arch, SPACE.ops, 100), seed=1)
    start = transferred_weights(store, fresh)
    new, old = (traverse_util.flatten_dict(v) for v in (start, saved))
    assert set(new) == set(old)
    renewed = sorted(path for path in new if any(path[:len(p)] == p for p in CnnTask.renewed))
    assert renewed == [("params", "aux_head", "Dense_0", "bias"), ("params", "aux_head", "Dense_0", "kernel"),
                       ("params", "classifier", "bias"), ("params", "classifier", "kernel")]
    for path, value in new.items():
        if path in renewed:
            assert value.shape[-1] == 100 and old[path].shape[-1] == 10
        else:  # BatchNorm statistics included
            np.testing.assert_array_equal(value, old[path], err_msg=str(path))

    metrics = transfer_child(out, "cifar100", str(cifar100), SMOKE, tmp_path / "weights", fine_tune=True)
    assert metrics["epochs"] == 1 and np.isfinite(metrics["test_loss"])
    meta = CheckpointStore(tmp_path / "weights" / "checkpoints", create=False).read_meta()
    assert meta["dataset"] == "cifar100" and meta["num_classes"] == 100 and meta["arch"] == list(arch)
    assert meta["transfer"]["kind"] == "weights" and meta["transfer"]["fine_tune"]
    assert meta["config"]["lr"] == pytest.approx(SMOKE.lr / 10)
    assert meta["shapes"]["['params']['classifier']['kernel']"][-1] == 100


def test_architecture_transfer_and_its_refusals(trained, cifar100, tmp_path):
    out, _ = trained
    transfer_child(out, "cifar100", str(cifar100), SMOKE, tmp_path / "arch", kind="arch")
    meta = CheckpointStore(tmp_path / "arch" / "checkpoints", create=False).read_meta()
    assert meta["transfer"]["kind"] == "arch" and meta["transfer"]["source_dataset"] == "cifar10"
    with pytest.raises(ValueError, match="trained on cifar10 already"):
        transfer_child(out, "cifar10", str(cifar100), SMOKE, tmp_path / "again")
    with pytest.raises(ValueError, match="needs kind='weights'"):
        transfer_child(out, "cifar100", str(cifar100), SMOKE, tmp_path / "again", kind="arch", fine_tune=True)
    # Transferred weights fix the network's sizes; the architecture alone takes new ones.
    given = {"mode": "transfer", "from_checkpoint": str(out), "dataset": "cifar100", "child_channels": 8,
             "output_dir": str(tmp_path / "sizes")}
    with pytest.raises(ConfigError, match="--child_channels: the network keeps the sizes of"):
        assemble(given)
    assert assemble({**given, "transfer": "arch"}).job.recipe.channels == 8


_DEVICES_SCRIPT = textwrap.dedent("""
    import jax, numpy as np
    from nao.data.cifar import CHANNEL_STATS
    from nao.models import parallel
    from nao.models.cnn import CellNetworkConfig, make_cell_network
    from nao.models.cnn_train import CNN_PRESETS, initial_variables, make_train_step, train_state
    assert jax.local_device_count() == 2
    # One node per cell (quick to compile), no dropout or drop path: the update must not depend on the
    # split.
    config = CellNetworkConfig(channels=4, layers=1, nodes=1, keep_prob=1.0, drop_path_keep_prob=1.0,
                               use_aux_head=False)
    model = make_cell_network([0, 0, 1, 4] + [1, 0, 0, 2], config=config)
    state = train_state(initial_variables(model, 0), CNN_PRESETS["smoke"])
    # No augmentation: its randomness is drawn per device.
    step = make_train_step(model, CHANNEL_STATS["cifar10"], aux_weight=0.4, clip=5.0, weight_decay=3e-4,
                           momentum=0.9, crop_padding=0, flip=False, cutout_size=0)
    rng = np.random.default_rng(0)
    # BatchNorm normalises each device's share with its own statistics (as NAO_V1's DataParallel):
    # the second half repeats the first, so that each share has the statistics of the whole batch.
    half = rng.integers(0, 256, (4, 32, 32, 3)).astype(np.uint8)
    images, labels = np.concatenate([half, half]), np.array([0, 1, 2, 3] * 2, np.int32)
    results = []
    for devices in (1, 2):
        replicated = parallel.replicate(state, devices)
        batch = parallel.shard_to_devices((images, labels), devices)
        losses = []
        for number in (1, 2):
            replicated, metrics = step(replicated, *batch, np.float32(0.1), np.float32(0.5), np.int32(number),
                                       jax.random.key(0))
            losses.append(float(metrics["loss"][0]))
        jax.tree.map(lambda x: np.testing.assert_array_equal(x[0], x[-1]), replicated)  # replicas agree
        results.append((losses, parallel.unreplicate(replicated)))
    (losses1, state1), (losses2, state2) = results
    np.testing.assert_allclose(losses1, losses2, rtol=1e-5)
    for part in ("params", "opt_state"):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), state1[part],
                     state2[part])
    # Running means match; running variances differ by design (Bessel's correction of 4 vs 8 images).
    means = lambda stats: [v for k, v in jax.tree_util.tree_leaves_with_path(stats) if "mean" in str(k[-1])]
    for a, b in zip(means(state1["batch_stats"]), means(state2["batch_stats"])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    print("OK", losses1, losses2)
""")


def test_one_and_two_devices_make_the_same_update():
    env = {**os.environ, **QUICK_XLA,
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2 --xla_cpu_use_fusion_emitters=false"}
    result = subprocess.run([sys.executable, "-c", _DEVICES_SCRIPT], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("OK")


_SYNC_SCRIPT = textwrap.dedent("""
    import jax, numpy as np
    from nao.data.cifar import CHANNEL_STATS
    from nao.models import parallel
    from nao.models.cnn import CellNetworkConfig, make_cell_network
    from nao.models.cnn_train import CNN_PRESETS, initial_variables, make_train_step, train_state
    assert jax.local_device_count() == 4
    config = CellNetworkConfig(channels=4, layers=1, nodes=1, keep_prob=1.0, drop_path_keep_prob=1.0,
                               use_aux_head=False)
    model = make_cell_network([0, 0, 1, 4] + [1, 0, 0, 2], config=config)
    state = train_state(initial_variables(model, 0), CNN_PRESETS["smoke"])
    step = make_train_step(model, CHANNEL_STATS["cifar10"], aux_weight=0.4, clip=5.0, weight_decay=3e-4,
                           momentum=0.9, crop_padding=0, flip=False, cutout_size=0, sync_bn=True)
    # Any batch: with cross-device BatchNorm every device normalises with the whole batch's statistics.
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (8, 32, 32, 3)).astype(np.uint8), rng.integers(0, 10, 8)
    results = []
    for devices in (1, 4):
        replicated = parallel.replicate(state, devices)
        batch = parallel.shard_to_devices((images, labels.astype(np.int32)), devices)
        losses = []
        for number in (1, 2):
            replicated, metrics = step(replicated, *batch, np.float32(0.1), np.float32(0.5), np.int32(number),
                                       jax.random.key(0))
            losses.append(float(metrics["loss"][0]))
        jax.tree.map(lambda x: np.testing.assert_array_equal(x[0], x[-1]), replicated)
        results.append((losses, parallel.unreplicate(replicated)))
    (losses1, state1), (losses4, state4) = results
    np.testing.assert_allclose(losses1, losses4, rtol=1e-5)
    # Everything agrees, the running variances included (Bessel's correction over all 8 images).
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), state1, state4)
    print("OK", losses1, losses4)
""")


def test_one_and_four_devices_make_the_same_update_with_cross_device_batch_norm():
    env = {**os.environ, **QUICK_XLA,
           "XLA_FLAGS": "--xla_force_host_platform_device_count=4 --xla_cpu_use_fusion_emitters=false"}
    result = subprocess.run([sys.executable, "-c", _SYNC_SCRIPT], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("OK")


PTB_CELL = ("s1=relu(s0) s2=relu(s0) s3=relu(s1) s4=tanh(s3) s5=relu(s4) s6=relu(s4) s7=relu(s5) s8=relu(s1) "
            "s9=relu(s7) s10=relu(s1) s11=sigmoid(s1)")  # NAONet's PTB cell
NOWHERE = "--data_dir=/nonexistent"


@pytest.mark.parametrize("args, needle", [
    (["--space=cifar_ws", "--arch=naonet_b", NOWHERE], "no CIFAR-10 train data in /nonexistent"),
    (["--space=cifar_ws", f"--arch={PTB_CELL}", NOWHERE], "bad cifar_ws arch"),
    (["--space=ptb", "--arch=naonet_b", NOWHERE], "bad node 'naonet_b' in ptb architecture"),
    (["--space=cifar", "--arch=naonet", "--child_hidden_size=8"], "--child_hidden_size does not apply"),
])
def test_cli_bad_input_gives_one_line(args, needle):
    result = subprocess.run([sys.executable, str(ROOT / "run_nao.py"), "--mode=train", *args], cwd=ROOT,
                            env={**os.environ, **QUICK_XLA}, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and needle in lines[-1], result.stderr[-2000:]
