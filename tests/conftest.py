"""Shared fixtures: the NAS-Bench-201 space and table, and one small controller config.

Every controller test and the NAO strategy use ``small_controller``, so the jitted
fit / predict / generate functions compile once per pytest session.
"""

from __future__ import annotations

import contextlib
import importlib.util
import pickle
from pathlib import Path

import jax
import numpy as np
import pytest

from nao.controller import ControllerConfig
from nao.data.nasbench import Nb201Table, load_nb201_table
from nao.evaluators import Nb201TableEvaluator
from nao.spaces import NasBench201Space

SMALL_CONTROLLER = ControllerConfig(emb_size=16, hidden_size=32, mlp_layers=1, mlp_hidden=32,
                                    ensemble=2, batch_size=32, epochs=5)


@pytest.fixture(scope="session")
def small_controller() -> ControllerConfig:
    return SMALL_CONTROLLER


@pytest.fixture(scope="session")
def nb201_space() -> NasBench201Space:
    return NasBench201Space()


@pytest.fixture(scope="session")
def nb201_table() -> Nb201Table:
    return load_nb201_table()


@pytest.fixture(scope="session")
def nb201_evaluator(nb201_table) -> Nb201TableEvaluator:
    return Nb201TableEvaluator(nb201_table)


def write_corpus(folder: Path, words: list[str], lines: int, seed: int) -> Path:
    """Sentences from a small grammar: a language model can learn it, so perplexity must fall."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name, count in (("train.txt", lines), ("valid.txt", lines // 8), ("test.txt", lines // 8)):
        text = []
        for _ in range(count):
            start = rng.integers(len(words) - 4)
            text.append(" " + " ".join(words[start:start + 4]) + " " + words[rng.integers(len(words))])
        (folder / name).write_text("\n".join(text) + "\n")
    return folder


@pytest.fixture(scope="session")
def ptb_dir(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("ptb"), [f"w{i}" for i in range(40)], 300, 0)


@pytest.fixture(scope="session")
def wt2_dir(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("wt2"), [f"v{i}" for i in range(60)], 300, 1)


# Each image is one of four colours plus noise, its class the colour's index: learnt in a few steps.
PALETTE = np.array([[230, 30, 30], [30, 200, 30], [30, 30, 230], [220, 220, 40]], np.float32)


def _batch(path: Path, labels: np.ndarray, rng: np.random.Generator, label_key: bytes) -> None:
    images = PALETTE[labels][:, None, None, :] + rng.normal(0, 40, (len(labels), 32, 32, 3))
    rows = np.clip(images, 0, 255).astype(np.uint8).transpose(0, 3, 1, 2).reshape(len(labels), -1)
    path.write_bytes(pickle.dumps({b"data": rows, label_key: labels.tolist()}, protocol=2))


def write_cifar(root: Path, dataset: str, train: int, test: int, seed: int) -> Path:
    """The official python batches of ``dataset``, ``train`` and ``test`` images of 4 colour classes."""
    rng = np.random.default_rng(seed)
    if dataset == "cifar10":
        folder, key = root / "cifar-10-batches-py", b"labels"
        files = [(f"data_batch_{i}", train // 5) for i in range(1, 6)] + [("test_batch", test)]
    else:
        folder, key = root / "cifar-100-python", b"fine_labels"
        files = [("train", train), ("test", test)]
    folder.mkdir(parents=True)
    for name, count in files:
        _batch(folder / name, rng.integers(0, len(PALETTE), count), rng, key)
    return root


def extending_example(name: str):
    """A module of docs/extending/ (the README's toy space and strategy), imported by its path."""
    path = Path(__file__).resolve().parents[1] / "docs" / "extending" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"extending_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# XLA's cheapest compilation, for subprocesses (env) and in-process: compiling a cell network, not
# running it, is what costs in the CIFAR tests.
QUICK_XLA = {"JAX_DISABLE_MOST_OPTIMIZATIONS": "1", "JAX_PLATFORMS": "cpu"}


@contextlib.contextmanager
def quick_xla():
    before = jax.config.values["jax_disable_most_optimizations"]
    jax.config.update("jax_disable_most_optimizations", True)
    try:
        yield
    finally:
        jax.config.update("jax_disable_most_optimizations", before)


@pytest.fixture(scope="module")
def quick_compilation():
    """``quick_xla`` for a whole module (``pytestmark = pytest.mark.usefixtures(...)``)."""
    with quick_xla():
        yield


def run_killed_then_resumed(monkeypatch: pytest.MonkeyPatch, supernet_class: type, config, out: Path) -> dict:
    """Kill a weight-sharing run (``run_experiment(config, out)``, one round an epoch) in the second
    supernet epoch of its first search, check what that search's checkpoint kept, resume the run and
    return its summary."""
    from nao.experiment import run_experiment
    from nao.models.checkpoint import CheckpointStore

    real_train = supernet_class.train_epoch

    def dies_in_epoch_two(self, archs, epoch):
        if epoch == 1:
            raise KeyboardInterrupt
        return real_train(self, archs, epoch)

    with monkeypatch.context() as patch:
        patch.setattr(supernet_class, "train_epoch", dies_in_epoch_two)
        with pytest.raises(KeyboardInterrupt):
            run_experiment(config, out, plots=False)
    folder = out / "searches" / config.strategies[0] / f"seed_{config.first_seed}" / "checkpoints"
    store = CheckpointStore(folder, create=False)
    # Epoch 1 trained, round 0 scored and the next pool proposed; nothing of epoch 2.
    assert store.latest_step() == 1 and store.read_meta()["round"] == 1
    return run_experiment(config, out, resume=True, plots=False)
