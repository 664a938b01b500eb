"""Checkpoints: Orbax-saved state plus a JSON description, checked before anything is restored.

On disk, ``<dir>/<step>/state`` is the Orbax pytree (NumPy leaves) and ``<dir>/<step>/meta``
a JSON object with at least ``format_version``, ``kind`` and ``shapes`` (every leaf's shape),
plus whatever the writer adds (architecture, space, dataset, vocabulary, flags, metrics).
Orbax writes each step to a temporary folder and renames it when complete, so a killed
process leaves the previous step intact.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that is missing, truncated, or does not fit what is asked of it."""


def _shapes(tree) -> dict[str, list[int]]:
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return {jax.tree_util.keystr(path): list(np.shape(leaf)) for path, leaf in leaves}


class CheckpointStore:
    """The numbered checkpoints of one run directory; keeps the newest ``max_to_keep``."""

    def __init__(self, directory: str | os.PathLike, max_to_keep: int = 2, create: bool = True):
        self.directory = Path(directory).expanduser().absolute()
        if not create and not self.directory.is_dir():
            raise CheckpointError(f"no checkpoint directory {self.directory}: pass the directory a "
                                  "training run wrote (its checkpoints/ folder or the run folder)")
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=create,
                                               enable_async_checkpointing=False)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        state = jax.tree.map(np.asarray, state)
        meta = {**meta, "format_version": FORMAT_VERSION, "shapes": _shapes(state)}
        self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                         meta=ocp.args.JsonSave(meta)), force=True)
        self._manager.wait_until_finished()

    def _step(self, step: int | None) -> int:
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"{self.directory} holds no checkpoint: train first, or pass the "
                                  "directory of a run that saved one")
        return step

    def read_meta(self, step: int | None = None) -> dict[str, Any]:
        """The JSON description, with its format version checked."""
        step = self._step(step)
        try:
            meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        except Exception as err:  # Orbax raises many types for damaged folders
            raise CheckpointError(f"checkpoint {self.directory / str(step)} is unreadable "
                                  f"({type(err).__name__}): it is truncated or damaged; delete that step "
                                  "folder to fall back to the previous one") from None
        version = meta.get("format_version") if isinstance(meta, dict) else None
        if version != FORMAT_VERSION:
            raise CheckpointError(f"checkpoint {self.directory / str(step)} has format version {version}, "
                                  f"this nao reads {FORMAT_VERSION}: use the nao release that wrote it")
        return meta

    def restore(self, like: Any, step: int | None = None, expect: dict[str, Any] | None = None
                ) -> tuple[Any, dict[str, Any]]:
        """(state shaped like ``like``, meta). ``expect`` are meta fields that must match."""
        step = self._step(step)
        meta = self.read_meta(step)
        check_meta(meta, expect or {}, self.directory / str(step))
        wanted = _shapes(like)
        if meta["shapes"] != wanted:
            differing = sorted(k for k in set(wanted) | set(meta["shapes"])
                               if wanted.get(k) != meta["shapes"].get(k))
            name = differing[0]
            raise CheckpointError(f"checkpoint {self.directory / str(step)} does not fit this model: "
                                  f"{name} is {meta['shapes'].get(name)} there and {wanted.get(name)} here "
                                  "(another architecture or size?)")
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), like)
        try:
            restored = self._manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))["state"]
        except Exception as err:
            raise CheckpointError(f"checkpoint {self.directory / str(step)} is unreadable "
                                  f"({type(err).__name__}): it is truncated or damaged; delete that step "
                                  "folder to fall back to the previous one") from None
        return restored, meta


def check_meta(meta: dict[str, Any], expect: dict[str, Any], where: Path | str) -> None:
    """Raise CheckpointError naming the first field whose value is not the expected one."""
    for field, value in expect.items():
        if meta.get(field) != value:
            raise CheckpointError(f"checkpoint {where} has {field}={meta.get(field)!r}, expected {value!r}")
