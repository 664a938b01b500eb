"""Small file helpers shared by every writer of run directories."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def is_primary() -> bool:
    """Whether this process writes the run's files (metrics, histories, plots): process 0 of a
    multi-host job, or the only process. Checkpoints are written by every process, as Orbax wants."""
    import jax  # here, so that importing this module does not start JAX

    return jax.process_index() == 0


def write_json(path: str | os.PathLike, payload: Any) -> None:
    """Write JSON through a temporary file and a rename, so a reader never sees half a file. In a
    multi-host job only process 0 writes."""
    if not is_primary():
        return
    path = Path(path)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=1) + "\n")
    os.replace(tmp, path)
