"""The append-only record of every evaluated architecture, one JSON line each.

Each row is flushed and fsync'd before the loop moves on, so a killed run
loses at most the evaluation in flight. A torn last line (the process died
mid-write) is dropped on load; damage anywhere else is an error, never
silently skipped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from nao.models.files import is_primary, writing

# What every row holds; the loop reads these back on resume.
REQUIRED_FIELDS = ("round", "query", "key", "arch", "valid")
# What every row of a proposals file holds (the asynchronous schedule records each proposal there
# before its evaluation starts).
PROPOSAL_FIELDS = ("query", "key", "arch")


class HistoryError(ValueError):
    """A history file that cannot be trusted."""


_FIX = "restore the file, delete the damaged lines, or start the run in a new output directory"


class History:
    """Rows of one (strategy, seed) search, mirrored to ``path`` (None: kept in memory only), each
    holding at least ``required``."""

    def __init__(self, path: str | os.PathLike | None, required: tuple[str, ...] = REQUIRED_FIELDS):
        self.path = None if path is None else Path(path)
        self.required = required
        self.rows: list[dict[str, Any]] = []
        if self.path is not None and self.path.exists():
            self.rows = self._load()

    def _load(self) -> list[dict[str, Any]]:
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        rows = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as err:  # not JSON, or not UTF-8 text at all
                if number == len(lines) and not data.endswith(b"\n"):
                    # Torn write of the last row: rewrite the file without it.
                    self._rewrite(rows)
                    break
                raise HistoryError(f"{self.path}:{number} is not a JSON row ({type(err).__name__}); "
                                   f"{_FIX}") from None
            missing = [f for f in self.required if f not in row] if isinstance(row, dict) else ["all"]
            if missing:
                raise HistoryError(f"{self.path}:{number} is not a history row (lacks {', '.join(missing)}); "
                                   f"{_FIX}")
            rows.append(row)
        else:
            if data and not data.endswith(b"\n"):
                self._rewrite(rows)  # a whole last row lacking its newline: the next append needs one
        return rows

    def _rewrite(self, rows: list[dict[str, Any]]) -> None:
        tmp = self.path.with_suffix(".tmp")
        with writing(self.path):
            tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        os.replace(tmp, self.path)

    def append(self, row: dict[str, Any]) -> None:
        if self.path is None or not is_primary():
            self.rows.append(row)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with writing(self.path), open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.rows.append(row)


def proposals_of(history: History) -> History:
    """The proposals file beside ``history`` (``seed_0.jsonl`` -> ``seed_0.proposed.jsonl``; in memory
    for an in-memory history)."""
    path = None if history.path is None else history.path.with_suffix(".proposed.jsonl")
    return History(path, required=PROPOSAL_FIELDS)


def history_files(output_dir: str | os.PathLike) -> list[Path]:
    """The history file of every (strategy, seed) search of a run directory, without proposals files."""
    files = sorted(Path(output_dir).glob("histories/*/seed_*.jsonl"))
    return [path for path in files if not path.name.endswith(".proposed.jsonl")]


def read_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a history file that its search may still be appending to, read only (benchmarks and
    reports): a torn last line is left out, not rewritten as ``History`` does on resume."""
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue  # the row being written
    return rows
