"""Train a given architecture from scratch, a trained one further, or a trained one on another dataset.

``--mode=train`` and ``--mode=transfer`` of ``run_nao.py`` land here. Each space's cells train as one
task family of ``nao.models.tasks.TASKS`` (``SPACE_TASKS``): recurrent cells (spaces ptb, ptb_ws) as
language models, convolutional cells (cifar, cifar_ws) as CIFAR networks, all through the one loop
``nao.models.training.train``. A run directory holds ``checkpoints/`` (Orbax, every epoch),
``metrics.csv`` (one row an epoch), ``metrics.json`` (the result and how it was selected) and
``cell.png`` (the architecture drawn).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Literal

from nao.models.checkpoint import CheckpointError, CheckpointStore
from nao.models.files import is_primary
from nao.models.tasks import TASKS, result_weights, transferred_weights
from nao.models.training import Task, train
from nao.spaces import get_space

log = logging.getLogger("nao")

# Which task family trains each space's cells.
SPACE_TASKS = {"ptb": "lm", "ptb_ws": "lm", "cifar": "cnn", "cifar_ws": "cnn"}
# The datasets each space's cells train on (the default first): those of its task family.
SPACE_DATASETS = {space: TASKS[task].datasets for space, task in SPACE_TASKS.items()}
TRANSFER_KINDS = ("weights", "arch")
# fine_tune: the recipe's learning rate and epochs times this (our choice; NAO transfers architectures).
FINETUNE_SCALE = 0.1


def checkpoint_dir(path: str | Path) -> Path:
    """A run directory or its ``checkpoints/`` folder -> the checkpoints folder."""
    path = Path(path).expanduser()
    return path / "checkpoints" if (path / "checkpoints").is_dir() else path


def space_task(space_name: str) -> type[Task]:
    """The task family that trains cells of ``space_name``."""
    if space_name not in SPACE_TASKS:
        raise ValueError(f"training takes cells of {', '.join(SPACE_TASKS)}; space={space_name} is not one "
                         "of them")
    return TASKS[SPACE_TASKS[space_name]]


def child_preset(space_name: str, name: str) -> Any:
    """The training recipe ``name`` for cells of ``space_name``."""
    family = space_task(space_name)
    if name not in family.presets:
        raise ValueError(f"unknown {family.kind} training preset {name!r}: choose one of "
                         f"{', '.join(family.presets)}")
    return family.presets[name]


def checkpoint_meta(from_checkpoint: str | Path) -> dict[str, Any]:
    """What a training run's checkpoint says of itself: its space, dataset, recipe (``config``)..."""
    return _read_source(from_checkpoint)[1]


def finetune_recipe(config: Any) -> Any:
    """The recipe for fine-tuning transferred weights: ``FINETUNE_SCALE`` x its lr and epochs."""
    return dataclasses.replace(config, lr=config.lr * FINETUNE_SCALE,
                               epochs=max(1, round(config.epochs * FINETUNE_SCALE)))


def task_family(space_name: str, dataset: str, config: Any) -> type[Task]:
    """The task family that trains cells of ``space_name`` on ``dataset`` with ``config``; a one-line
    ValueError when the three do not fit together."""
    family = space_task(space_name)
    if dataset not in family.datasets:
        raise ValueError(f"dataset={dataset} does not fit space={space_name}: choose one of "
                         f"{', '.join(family.datasets)}")
    if not isinstance(config, family.config_type):
        raise ValueError(f"cells of space={space_name} train with a {family.config_type.__name__}, not a "
                         f"{type(config).__name__}")
    return family


def train_child(space_name: str, arch_text: str, dataset: str, data_dir: str | None, config: Any,
                output_dir: str | Path, resume: bool = False, flags: dict[str, Any] | None = None
                ) -> dict[str, Any]:
    """Train the cell ``arch_text`` (a string or published name of ``space_name``) from scratch;
    returns the metrics (as ``metrics.json``)."""
    family = task_family(space_name, dataset, config)
    space = get_space(space_name)
    arch = space.from_string(arch_text)
    data = family.load_data(dataset, data_dir, config)
    meta = {"space": space_name, "arch_string": space.to_string(arch), "flags": flags or {}}
    task = family.for_space(space, arch, dataset, data, config)
    return _train(space, arch, task, Path(output_dir), meta, resume)


def transfer_child(from_checkpoint: str | Path, dataset: str, data_dir: str | None, config: Any,
                   output_dir: str | Path, kind: str = "weights", fine_tune: bool = False,
                   resume: bool = False, flags: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train on ``dataset`` the cell of a checkpoint: with its trained weights, or the architecture alone.

    ``kind="weights"``: the network keeps the checkpoint's sizes and starts from all its result weights
    but the class-dependent ones (the family's ``renewed`` layers), which are drawn afresh: a language
    model's embedding and softmax (new vocabulary), a CIFAR network's classifier and auxiliary
    classifier (new classes). Every layer trains, with ``config``'s recipe, or with ``fine_tune`` a
    tenth of its learning rate and epochs. ``kind="arch"``: only the architecture carries over (the
    paper's transfer) and ``config`` gives the sizes.
    """
    if kind not in TRANSFER_KINDS:
        raise ValueError(f"unknown transfer kind={kind!r}: choose one of {', '.join(TRANSFER_KINDS)}")
    if fine_tune and kind != "weights":
        raise ValueError("fine_tune tunes transferred weights: it needs kind='weights'")
    store, meta = _read_source(from_checkpoint)
    if meta["dataset"] == dataset:
        raise ValueError(f"the checkpoint was trained on {dataset} already: train it further with "
                         f"--mode=train --from_checkpoint={from_checkpoint}, or transfer to another dataset")
    config = finetune_recipe(config) if fine_tune else config
    source = {"from": str(store.directory), "kind": kind, "fine_tune": fine_tune,
              "source_dataset": meta["dataset"]}
    return _train_from(store, meta, dataset, data_dir, config, output_dir, resume,
                       {"flags": flags or {}, "transfer": source},
                       keep="transferable" if kind == "weights" else "none")


def train_further(from_checkpoint: str | Path, data_dir: str | None, config: Any, output_dir: str | Path,
                  resume: bool = False, flags: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train a checkpoint's network further on its own dataset, into ``output_dir``: a search candidate
    of ``--evaluator=train`` (its folder) or any training run. The network keeps the checkpoint's
    sizes and starts from all its result weights; ``config`` gives the recipe (epochs, lr, the
    validation split...) of the new run, which starts its schedule afresh."""
    store, meta = _read_source(from_checkpoint)
    return _train_from(store, meta, meta["dataset"], data_dir, config, output_dir, resume,
                       {"flags": flags or {}, "continued_from": str(store.directory)}, keep="all")


def _train_from(store: CheckpointStore, meta: dict[str, Any], dataset: str, data_dir: str | None, config: Any,
                output_dir: str | Path, resume: bool, run_meta: dict[str, Any],
                keep: Literal["all", "transferable", "none"]) -> dict[str, Any]:
    """Train the cell of ``store`` on ``dataset``. ``keep``: which of its result weights the network
    starts from: "all", "transferable" (all but the class- or vocabulary-dependent ones), both at the
    checkpoint's sizes, or "none" (the architecture alone, at ``config``'s sizes)."""
    space_name = meta["space"]
    family = task_family(space_name, dataset, config)
    space = get_space(space_name)
    arch = tuple(meta["arch"])
    if keep != "none":
        config = dataclasses.replace(config, **{name: meta["config"][name] for name in family.sizes})
    data = family.load_data(dataset, data_dir, config)
    task = family.for_space(space, arch, dataset, data, config)
    if keep == "all":
        differ = [(name, meta[name], value) for name, value in task.meta().items()
                  if meta.get(name, value) != value]
        if differ:
            name, there, here = differ[0]
            raise ValueError(f"{store.directory} was trained with {name}={there}, these data give {here}: "
                             f"give the data_dir it was trained on")
        task.start_weights = result_weights(store)[0]
    elif keep == "transferable":
        task.start_weights = transferred_weights(store, family.init_weights(task.model, arch, config.seed))
    return _train(space, arch, task, Path(output_dir), {"space": space_name,
                                                        "arch_string": space.to_string(arch), **run_meta},
                  resume)


def _read_source(from_checkpoint: str | Path) -> tuple[CheckpointStore, dict[str, Any]]:
    store = CheckpointStore(checkpoint_dir(from_checkpoint), create=False)
    meta = store.read_meta()
    if meta.get("kind") not in TASKS:
        raise CheckpointError(f"{store.directory} holds a {meta.get('kind')!r} checkpoint; --from_checkpoint "
                              "needs the checkpoint of a training run")
    return store, meta


def _train(space, arch: tuple[int, ...], task: Task, out: Path, meta: dict[str, Any], resume: bool
           ) -> dict[str, Any]:
    """Draw the cell and train ``task``."""
    _draw(space, arch, out)
    return train(task, out, resume=resume, meta=meta).metrics


def _draw(space, arch, out: Path) -> None:
    """Draw the cell into a new run directory (one holding checkpoints keeps its drawing: a run that
    will be refused must not overwrite it)."""
    out.mkdir(parents=True, exist_ok=True)
    if not is_primary() or (out / "cell.png").exists() and any((out / "checkpoints").glob("*")):
        return
    from nao import plots  # matplotlib is imported only when drawing

    plots.draw_cell(space, arch, out / "cell.png", title=space.to_string(arch))
