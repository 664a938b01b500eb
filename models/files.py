"""Small file helpers shared by every writer of run directories."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# A full disk, or a full quota: the run can go on once space is freed.
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def is_primary() -> bool:
    """Whether this process writes the run's files (metrics, histories, plots): process 0 of a
    multi-host job, or the only process. Checkpoints are written by every process, as Orbax wants."""
    import jax  # here, so that importing this module does not start JAX

    return jax.process_index() == 0


def disk_full(err: BaseException) -> int | None:
    """ENOSPC or EDQUOT when ``err`` reports a full disk or quota, else None: an OSError, or a
    TensorStore error (Orbax raises those as ValueError) that quotes the OS error."""
    if isinstance(err, OSError):
        return err.errno if err.errno in DISK_FULL else None
    text = str(err)
    quoted = (code for code in DISK_FULL if os.strerror(code) in text or f"os_error_code='{code}'" in text)
    return next(quoted, None)


@contextlib.contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Name ``path`` in an OSError raised inside that names no file: a write or a close that fails
    after the open did (a full disk) says nothing of where."""
    try:
        yield
    except OSError as err:
        if err.filename is not None or err.errno is None:
            raise
        raise OSError(err.errno, err.strerror, str(path)) from None


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, to tell whether data changed under a run."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json(path: str | os.PathLike, payload: Any) -> None:
    """Write JSON through a temporary file and a rename, so a reader never sees half a file. In a
    multi-host job only process 0 writes."""
    if not is_primary():
        return
    path = Path(path)
    tmp = path.with_suffix(".tmp")
    with writing(path):
        tmp.write_text(json.dumps(payload, indent=1) + "\n")
    os.replace(tmp, path)
