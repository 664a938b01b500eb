"""Train a given architecture from scratch, or transfer a trained one to another dataset.

``--mode=train`` and ``--mode=transfer`` of ``run_nao.py`` land here. A run directory holds
``checkpoints/`` (Orbax, every epoch), ``metrics.csv`` (one row an epoch), ``metrics.json``
(best and final figures) and ``cell.png`` (the architecture drawn).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import jax
import numpy as np

from data.text import load_corpus
from models.checkpoint import CheckpointError, CheckpointStore
from models.lm_train import LmRun, LmTrainConfig, init_params, train_lm
from models.rnn import RecurrentLM
from nao.spaces import get_space

log = logging.getLogger("nao")

# Which dataset each space's cells are trained on, and which they may be transferred to.
SPACE_DATASETS = {"ptb": ("ptb", "wikitext2"), "ptb_ws": ("ptb", "wikitext2")}
TRANSFER_KINDS = ("weights", "arch")


def checkpoint_dir(path: str | Path) -> Path:
    """A run directory or its ``checkpoints/`` folder -> the checkpoints folder."""
    path = Path(path).expanduser()
    return path / "checkpoints" if (path / "checkpoints").is_dir() else path


def _check_space(space_name: str, dataset: str) -> None:
    if space_name not in SPACE_DATASETS:
        trainable = ", ".join(SPACE_DATASETS)
        raise ValueError(f"--mode=train/transfer trains cells of {trainable}; --space={space_name} is not "
                         "one of them")
    if dataset not in SPACE_DATASETS[space_name]:
        raise ValueError(f"--dataset={dataset} does not fit --space={space_name}: choose one of "
                         f"{', '.join(SPACE_DATASETS[space_name])}")


def train_child(space_name: str, arch_text: str, dataset: str, data_dir: str | None, config: LmTrainConfig,
                output_dir: str | Path, resume: bool = False, flags: dict[str, Any] | None = None
                ) -> dict[str, Any]:
    """Train the cell ``arch_text`` (a string or published name of ``space_name``) from scratch."""
    _check_space(space_name, dataset)
    space = get_space(space_name)
    arch = space.from_string(arch_text)
    corpus = load_corpus(dataset, _data_dir(data_dir, dataset))
    out = Path(output_dir)
    _draw(space, arch, out)
    meta = {"space": space_name, "arch_string": space.to_string(arch), "flags": flags or {}}
    return train_lm(config, LmRun(arch, corpus, out, meta), resume=resume)


def transfer_child(from_checkpoint: str | Path, dataset: str, data_dir: str | None, config: LmTrainConfig,
                   output_dir: str | Path, kind: str = "weights", resume: bool = False,
                   flags: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train on ``dataset`` the cell of a checkpoint: with its recurrent weights, or the architecture alone.

    With ``kind="weights"`` the model keeps the checkpoint's sizes, starts from its input and
    cell matrices and gets a fresh embedding and softmax for the new vocabulary. With
    ``kind="arch"`` only the architecture carries over (the paper's transfer) and ``config``
    gives the sizes.
    """
    if kind not in TRANSFER_KINDS:
        raise ValueError(f"unknown --transfer={kind}: choose one of {', '.join(TRANSFER_KINDS)}")
    store = CheckpointStore(checkpoint_dir(from_checkpoint), create=False)
    meta = store.read_meta()
    if meta.get("kind") != "lm":
        raise CheckpointError(f"{store.directory} holds a {meta.get('kind')!r} checkpoint; transfer to "
                              f"{dataset} needs a language-model checkpoint (kind 'lm')")
    space_name = meta["space"]
    _check_space(space_name, dataset)
    if meta["dataset"] == dataset:
        raise ValueError(f"the checkpoint was trained on {dataset} already: use --mode=train --resume to "
                         "continue it, or transfer to another dataset")
    space = get_space(space_name)
    arch = tuple(meta["arch"])
    corpus = load_corpus(dataset, _data_dir(data_dir, dataset))
    init = None
    if kind == "weights":
        source = meta["config"]
        config = dataclasses.replace(config, emb_size=source["emb_size"], hidden_size=source["hidden_size"])
        init = _transferred_params(store, meta, config, len(corpus.vocab), arch)
    out = Path(output_dir)
    _draw(space, arch, out)
    run_meta = {"space": space_name, "arch_string": space.to_string(arch), "flags": flags or {},
                "transfer": {"from": str(store.directory), "kind": kind, "source_dataset": meta["dataset"]}}
    return train_lm(config, LmRun(arch, corpus, out, run_meta, init_params=init), resume=resume)


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


def _data_dir(data_dir: str | None, dataset: str) -> str:
    if not data_dir:
        raise ValueError(f"--dataset={dataset} needs --data_dir=DIR holding its train/valid/test token files")
    return data_dir


def _draw(space, arch, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    from nao import plots  # matplotlib is imported only when drawing
    plots.draw_cell(space, arch, out / "cell.png", title=space.to_string(arch))
