"""Checkpoints: Orbax-saved state plus a JSON description, both checked before anything is restored.

On disk, ``<dir>/<step>/state`` is an Orbax PyTree checkpoint (NumPy leaves) and
``<dir>/<step>/meta/metadata`` a JSON object with at least ``format_version``, ``kind``, ``shapes``
(every leaf's shape) and ``state_files`` (the size and SHA-256 of every file under ``state/``), plus
whatever the writer adds (architecture, space, dataset, vocabulary, flags, metrics); the format is
described in docs/checkpoints.md.

A step is written into ``<dir>/<step>.partial`` and renamed to ``<dir>/<step>`` once its state and
meta are complete, so a killed process or a full disk leaves the steps saved before as they were.
Every file is checked against ``state_files`` before Orbax reads any: a damaged step is refused in
one line, never restored with other values, and Orbax never meets a missing or cut file (its reader
threads would print tracebacks about it after the error). Checkpoints written before ``state_files``
existed are read unverified.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from nao.models.files import disk_full, is_primary

FORMAT_VERSION = 1
_PARTIAL = ".partial"  # the suffix of a step folder being written: never read


class CheckpointError(ValueError):
    """A checkpoint that is missing, truncated, damaged, or does not fit what is asked of it."""


def _shapes(tree) -> dict[str, list[int]]:
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return {jax.tree_util.keystr(path): list(np.shape(leaf)) for path, leaf in leaves}


class CheckpointStore:
    """The numbered checkpoints of one run directory; keeps the newest ``max_to_keep``."""

    def __init__(self, directory: str | os.PathLike, max_to_keep: int = 2, create: bool = True):
        self.directory = Path(directory).expanduser().absolute()
        self.max_to_keep = max_to_keep
        if create:
            self.directory.mkdir(parents=True, exist_ok=True)
        elif not self.directory.is_dir():
            raise CheckpointError(f"no checkpoint directory {self.directory}: pass the directory a "
                                  "training run wrote (its checkpoints/ folder or the run folder)")

    def steps(self) -> list[int]:
        """The saved steps, oldest first."""
        if not self.directory.is_dir():
            return []
        return sorted(int(p.name) for p in self.directory.iterdir() if p.name.isdigit() and p.is_dir())

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        """Save ``state`` (a pytree) and ``meta`` as ``step``, then drop the steps older than the newest
        ``max_to_keep``. A full disk raises OSError(ENOSPC or EDQUOT) naming the step folder, with the
        steps saved before kept as they were."""
        state = jax.tree.map(np.asarray, state)
        final = self.directory / str(step)
        partial = final.with_name(final.name + _PARTIAL)
        try:
            if is_primary():
                shutil.rmtree(partial, ignore_errors=True)  # left by a save that was killed
            _barrier(f"nao_checkpoint_{step}_start")
            with _checkpointer() as checkpointer:
                checkpointer.save(partial / "state", args=ocp.args.StandardSave(state))
            if is_primary():
                meta = {**meta, "format_version": FORMAT_VERSION, "shapes": _shapes(state),
                        "state_files": file_table(partial / "state")}
                (partial / "meta").mkdir()
                (partial / "meta" / "metadata").write_text(json.dumps(meta))
                if final.exists():
                    shutil.rmtree(final)
                partial.rename(final)  # the commit: the step exists from here on, whole
        except Exception as err:
            if is_primary():
                shutil.rmtree(partial, ignore_errors=True)  # frees the space it took
            code = disk_full(err)
            if code is None:
                raise
            raise OSError(code, os.strerror(code), str(final)) from None
        if is_primary():
            for old in self.steps()[:-self.max_to_keep]:
                shutil.rmtree(self.directory / str(old))
        _barrier(f"nao_checkpoint_{step}_done")

    def _step(self, step: int | None) -> int:
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"{self.directory} holds no checkpoint: train first, or pass the "
                                  "directory of a run that saved one")
        return step

    def _damaged(self, step: int, what: str) -> CheckpointError:
        """The error for a damaged step: what is wrong, and how to fall back to the step before it."""
        earlier = [s for s in self.steps() if s < step]
        fallback = (f"delete that step folder to resume from step {earlier[-1]}, or load step {earlier[-1]} "
                    f"(step={earlier[-1]})" if earlier else "no earlier step is kept: copy it again, or "
                    "train anew")
        return CheckpointError(f"checkpoint {self.directory / str(step)} is truncated or damaged: {what}; "
                               f"{fallback}")

    def read_meta(self, step: int | None = None) -> dict[str, Any]:
        """The JSON description, with its format version checked."""
        step = self._step(step)
        try:
            meta = json.loads((self.directory / str(step) / "meta" / "metadata").read_text())
        except (OSError, ValueError) as err:
            raise self._damaged(step, f"its meta is unreadable ({type(err).__name__})") from None
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
        return self._read_state(step, meta, ocp.args.StandardRestore(abstract)), meta

    def read_state(self, step: int | None = None) -> Any:
        """The saved pytree of ``step`` (the newest if None) as NumPy arrays, in the structure Orbax
        gives back without a target (attributes become dict keys, tuples lists)."""
        step = self._step(step)
        state = self._read_state(step, self.read_meta(step), ocp.args.StandardRestore())
        return jax.tree.map(np.asarray, state)

    def _read_state(self, step: int, meta: dict[str, Any], args: ocp.args.StandardRestore) -> Any:
        self._verify(step, meta)
        try:
            with _checkpointer() as checkpointer:
                return checkpointer.restore(self.directory / str(step) / "state", args=args)
        except Exception as err:  # Orbax and TensorStore raise many types for missing or cut files
            reason = re.sub(r" \[tensorstore_spec=.*", "", " ".join(str(err).split()))[:160]
            raise self._damaged(step, f"reading its state failed ({type(err).__name__}: {reason})") from None

    def _verify(self, step: int, meta: dict[str, Any]) -> None:
        """Check every file of the step's state against the size and SHA-256 its meta records."""
        table = meta.get("state_files")
        if table is None:
            return  # written before checksums existed: read unverified (docs/checkpoints.md)
        folder = self.directory / str(step) / "state"
        try:
            for name, saved in sorted(table.items()):
                path = folder / name
                if not path.is_file():
                    problem = "is missing"
                elif path.stat().st_size != saved["bytes"]:
                    problem = f"is {path.stat().st_size} bytes, {saved['bytes']} when it was saved"
                elif _sha256(path) != saved["sha256"]:
                    problem = "differs from the SHA-256 recorded when it was saved"
                else:
                    continue
                raise self._damaged(step, f"state/{name} {problem}")
        except (AttributeError, KeyError, TypeError) as err:
            raise self._damaged(step, f"its meta's state_files table is malformed ({type(err).__name__})"
                                ) from None


def check_meta(meta: dict[str, Any], expect: dict[str, Any], where: Path | str) -> None:
    """Raise CheckpointError naming the first field whose value is not the expected one."""
    for field, value in expect.items():
        if meta.get(field) != value:
            raise CheckpointError(f"checkpoint {where} has {field}={meta.get(field)!r}, expected {value!r}")


def _sha256(path: Path) -> str:
    """The SHA-256 of a file, in hex."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_table(folder: Path) -> dict[str, dict[str, Any]]:
    """``state_files``: the size and SHA-256 of every file under ``folder``, by its path relative to it."""
    return {path.relative_to(folder).as_posix(): {"bytes": path.stat().st_size, "sha256": _sha256(path)}
            for path in sorted(folder.rglob("*")) if path.is_file()}


@contextlib.contextmanager
def _checkpointer() -> Iterator[ocp.Checkpointer]:
    """A synchronous Orbax checkpointer, closed on the way out. Orbax logs a failure of its worker
    threads at ERROR, with tracebacks, before it raises it; the store reports it in one line instead, so
    Orbax's logger is muted meanwhile."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    checkpointer = ocp.Checkpointer(ocp.StandardCheckpointHandler())
    try:
        yield checkpointer
    finally:
        checkpointer.close()
        logger.setLevel(level)


def _barrier(name: str) -> None:
    """Wait for every process of a multi-host job (they all write their part of the state)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
