"""Worker tasks for the executor tests: light (no JAX), so that a worker starts in a fraction of a second."""

from __future__ import annotations

import os
import time
from pathlib import Path


class Napper:
    """Job (name, seconds): note this worker's pid in ``folder/<name>.<attempt>.pid``, sleep, return name."""

    def __init__(self, folder: str):
        self.folder = Path(folder)

    def setup(self) -> None:
        return None

    def __call__(self, payload: tuple[str, float]) -> str:
        name, seconds = payload
        attempt = len(list(self.folder.glob(f"{name}.*.pid"))) + 1
        (self.folder / f"{name}.{attempt}.pid").write_text(str(os.getpid()))
        time.sleep(seconds)
        return name
