"""The task families by name, and the one way to rebuild a model and its weights from a checkpoint.

``TASKS[kind]`` is the family of a checkpoint ``kind`` (``cnn``: CIFAR cell networks, ``lm``:
recurrent-cell language models); ``rebuild(meta)`` gives the model and config a checkpoint's meta
describes, ``result_weights(store)`` its result weights, and ``transferred_weights`` starts a model
of another dataset from them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flax import traverse_util

from nao.models.checkpoint import CheckpointError, CheckpointStore
from nao.models.cnn_train import CnnTask
from nao.models.lm_train import LmTask
from nao.models.training import Task

TASKS: dict[str, type[Task]] = {"cnn": CnnTask, "lm": LmTask}


def get_task(kind: str) -> type[Task]:
    if kind not in TASKS:
        raise ValueError(f"unknown task {kind!r}: choose one of {', '.join(TASKS)}")
    return TASKS[kind]


def rebuild(meta: dict[str, Any]) -> tuple[Any, Any]:
    """(model, config) of a training checkpoint's meta (KeyError names a missing field)."""
    kind = meta["kind"]
    if kind not in TASKS:
        raise CheckpointError(f"a {kind!r} checkpoint holds no trained model: expected one of "
                              f"{', '.join(TASKS)}")
    return TASKS[kind].rebuild(meta)


def result_weights(store: CheckpointStore) -> tuple[Any, dict[str, Any]]:
    """(the result weights, the meta) of the newest checkpoint of a training run: those of its best
    validation epoch, or of its last epoch when it had no validation split."""
    meta = store.read_meta()
    family = get_task(meta["kind"])
    model, config = family.rebuild(meta)
    like = family.init_weights(model, meta["arch"], config.seed)
    state, _ = store.restore({**family.train_state(like, config), "best": like})
    return state["best"], meta


def transferred_weights(store: CheckpointStore, fresh: Any) -> Any:
    """``fresh`` (a model's new weights, of the checkpoint's kind and sizes) with every array of the
    checkpoint's result weights but the family's ``renewed`` ones (the class- or vocabulary-dependent
    layers), which stay fresh."""
    source, meta = result_weights(store)
    renewed = get_task(meta["kind"]).renewed
    source = traverse_util.flatten_dict(source)
    merged = {}
    for path, value in traverse_util.flatten_dict(fresh).items():
        if path in source and not any(path[:len(prefix)] == prefix for prefix in renewed):
            if np.shape(source[path]) != np.shape(value):
                raise CheckpointError(f"{store.directory}: {'/'.join(path)} is {np.shape(source[path])} "
                                      f"there, {np.shape(value)} here: a weight transfer keeps the sizes")
            value = source[path]
        merged[path] = value
    return traverse_util.unflatten_dict(merged)
