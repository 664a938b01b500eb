"""Train a given architecture from scratch, or transfer a trained one to another dataset.

``--mode=train`` and ``--mode=transfer`` of ``run_nao.py`` land here: recurrent cells (spaces ptb,
ptb_ws) train as language models (``nao.models.lm_train``), convolutional cells (cifar, cifar_ws) as
CIFAR networks (``nao.models.cnn_train``). A run directory holds ``checkpoints/`` (Orbax, every epoch),
``metrics.csv`` (one row an epoch), ``metrics.json`` (best and final figures) and ``cell.png`` (the
architecture drawn).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import jax
import numpy as np

from nao.data.cifar import load_cifar
from nao.data.text import load_corpus
from nao.models.checkpoint import CheckpointError, CheckpointStore
from nao.models.cnn_train import CnnRun, CnnTrainConfig, build_model, get_cnn_preset, num_classes, train_cnn
from nao.models.cnn_train import transfer_variables as cnn_transfer_variables
from nao.models.files import is_primary
from nao.models.lm_train import LmRun, LmTrainConfig, get_lm_preset, init_params, train_lm
from nao.models.rnn import RecurrentLM
from nao.spaces import get_space

log = logging.getLogger("nao")

# Which dataset each space's cells are trained on (the first), and which they may be transferred to.
SPACE_DATASETS = {"ptb": ("ptb", "wikitext2"), "ptb_ws": ("ptb", "wikitext2"),
                  "cifar": ("cifar10", "cifar100"), "cifar_ws": ("cifar10", "cifar100")}
CNN_SPACES = ("cifar", "cifar_ws")
TRANSFER_KINDS = ("weights", "arch")
# --finetune: the recipe's learning rate and epochs times this (our choice; NAO transfers architectures).
FINETUNE_SCALE = 0.1

TrainConfig = LmTrainConfig | CnnTrainConfig


def checkpoint_dir(path: str | Path) -> Path:
    """A run directory or its ``checkpoints/`` folder -> the checkpoints folder."""
    path = Path(path).expanduser()
    return path / "checkpoints" if (path / "checkpoints").is_dir() else path


def child_preset(space_name: str, name: str) -> TrainConfig:
    """The training recipe ``name`` for cells of ``space_name`` (CIFAR or language-model presets)."""
    return get_cnn_preset(name) if space_name in CNN_SPACES else get_lm_preset(name)


def checkpoint_space(from_checkpoint: str | Path) -> str:
    """The space of the cell a training run's checkpoint holds."""
    return _read_source(from_checkpoint)[1]["space"]


def finetune_recipe(config: TrainConfig) -> TrainConfig:
    """The recipe for fine-tuning transferred weights: ``FINETUNE_SCALE`` x its lr and epochs."""
    return dataclasses.replace(config, lr=config.lr * FINETUNE_SCALE,
                               epochs=max(1, round(config.epochs * FINETUNE_SCALE)))


def _check_space(space_name: str, dataset: str, config: TrainConfig) -> None:
    if space_name not in SPACE_DATASETS:
        trainable = ", ".join(SPACE_DATASETS)
        raise ValueError(f"--mode=train/transfer trains cells of {trainable}; --space={space_name} is not "
                         "one of them")
    if dataset not in SPACE_DATASETS[space_name]:
        raise ValueError(f"--dataset={dataset} does not fit --space={space_name}: choose one of "
                         f"{', '.join(SPACE_DATASETS[space_name])}")
    wanted = CnnTrainConfig if space_name in CNN_SPACES else LmTrainConfig
    if not isinstance(config, wanted):
        raise ValueError(f"cells of --space={space_name} train with a {wanted.__name__}, not a "
                         f"{type(config).__name__}")


def train_child(space_name: str, arch_text: str, dataset: str, data_dir: str | None, config: TrainConfig,
                output_dir: str | Path, resume: bool = False, flags: dict[str, Any] | None = None
                ) -> dict[str, Any]:
    """Train the cell ``arch_text`` (a string or published name of ``space_name``) from scratch."""
    _check_space(space_name, dataset, config)
    space = get_space(space_name)
    arch = space.from_string(arch_text)
    data = _load(dataset, data_dir, config)
    meta = {"space": space_name, "arch_string": space.to_string(arch), "flags": flags or {}}
    return _train(space, arch, dataset, data, config, Path(output_dir), meta, None, resume)


def transfer_child(from_checkpoint: str | Path, dataset: str, data_dir: str | None, config: TrainConfig,
                   output_dir: str | Path, kind: str = "weights", fine_tune: bool = False,
                   resume: bool = False, flags: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train on ``dataset`` the cell of a checkpoint: with its trained weights, or the architecture alone.

    ``kind="weights"``: the network keeps the checkpoint's sizes and starts from all its weights but
    the class-dependent ones, which are drawn afresh: a language model's embedding and softmax (new
    vocabulary), a CIFAR network's classifier and auxiliary classifier (new classes). Every layer
    trains, with ``config``'s recipe, or with ``fine_tune`` a tenth of its learning rate and epochs.
    ``kind="arch"``: only the architecture carries over (the paper's transfer) and ``config`` gives
    the sizes.
    """
    if kind not in TRANSFER_KINDS:
        raise ValueError(f"unknown --transfer={kind}: choose one of {', '.join(TRANSFER_KINDS)}")
    if fine_tune and kind != "weights":
        raise ValueError("--finetune tunes transferred weights: it needs --transfer=weights")
    store, meta = _read_source(from_checkpoint)
    space_name = meta["space"]
    _check_space(space_name, dataset, config)
    if meta["dataset"] == dataset:
        raise ValueError(f"the checkpoint was trained on {dataset} already: use --mode=train --resume to "
                         "continue it, or transfer to another dataset")
    space = get_space(space_name)
    arch = tuple(meta["arch"])
    config = finetune_recipe(config) if fine_tune else config
    data = _load(dataset, data_dir, config)
    init = None
    if kind == "weights":
        source = meta["config"]
        sizes = ("channels", "layers") if space_name in CNN_SPACES else ("emb_size", "hidden_size")
        config = dataclasses.replace(config, **{name: source[name] for name in sizes})
        if space_name in CNN_SPACES:
            init = cnn_transfer_variables(store, build_model(config, arch, space.ops, num_classes(dataset)),
                                          config.seed)
        else:
            init = _transferred_params(store, meta, config, len(data.vocab), arch)
    run_meta = {"space": space_name, "arch_string": space.to_string(arch), "flags": flags or {},
                "transfer": {"from": str(store.directory), "kind": kind, "fine_tune": fine_tune,
                             "source_dataset": meta["dataset"]}}
    return _train(space, arch, dataset, data, config, Path(output_dir), run_meta, init, resume)


def _read_source(from_checkpoint: str | Path) -> tuple[CheckpointStore, dict[str, Any]]:
    store = CheckpointStore(checkpoint_dir(from_checkpoint), create=False)
    meta = store.read_meta()
    if meta.get("kind") not in ("lm", "cnn"):
        raise CheckpointError(f"{store.directory} holds a {meta.get('kind')!r} checkpoint; transfer needs "
                              "the checkpoint of a --mode=train run")
    return store, meta


def _load(dataset: str, data_dir: str | None, config: TrainConfig):
    """A CIFAR dataset's (train, test) pairs, or a language-model corpus."""
    if isinstance(config, CnnTrainConfig):
        # data_dir None: the tensorflow-datasets folder (load_cifar says what is missing, in one line).
        return tuple(load_cifar(dataset, data_dir, split) for split in ("train", "test"))
    if not data_dir:
        raise ValueError(f"--dataset={dataset} needs --data_dir=DIR holding its train/valid/test token files")
    return load_corpus(dataset, data_dir)


def _train(space, arch: tuple[int, ...], dataset: str, data, config: TrainConfig, out: Path,
           meta: dict[str, Any], init, resume: bool) -> dict[str, Any]:
    """Draw the cell and train it on ``data`` (``init``: starting weights, None for fresh ones)."""
    _draw(space, arch, out)
    if isinstance(config, CnnTrainConfig):
        return train_cnn(config, CnnRun(arch, space.ops, dataset, *data, out, meta, init), resume=resume)
    return train_lm(config, LmRun(arch, data, out, meta, init_params=init), resume=resume)


def _transferred_params(store: CheckpointStore, meta: dict[str, Any], config: LmTrainConfig,
                        vocab_size: int, arch: tuple[int, ...]):
    """The checkpoint's best recurrent weights, a fresh embedding and softmax of the new size."""
    source_config = LmTrainConfig(**meta["config"])
    source_model = RecurrentLM(source_config.model_config(meta["vocab_size"]))
    like = _init(source_model, arch, source_config.seed)
    state, _ = store.restore({"params": like, "avg": like, "count": np.int32(0), "best": like})
    fresh = _init(RecurrentLM(config.model_config(vocab_size)), arch, config.seed)
    return {**fresh, **{k: v for k, v in state["best"].items() if k not in ("embedding", "softmax_bias")}}


def _init(model: RecurrentLM, arch, seed: int):
    return jax.tree.map(np.asarray, init_params(model, arch, jax.random.key(seed)))


def _draw(space, arch, out: Path) -> None:
    """Draw the cell into a new run directory (one holding checkpoints keeps its drawing: a run that
    will be refused must not overwrite it)."""
    out.mkdir(parents=True, exist_ok=True)
    if not is_primary() or (out / "cell.png").exists() and any((out / "checkpoints").glob("*")):
        return
    from nao import plots  # matplotlib is imported only when drawing
    plots.draw_cell(space, arch, out / "cell.png", title=space.to_string(arch))
