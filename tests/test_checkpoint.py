"""Checkpoint integrity (nao.models.checkpoint.CheckpointStore): every state file is checked against
the size and SHA-256 its meta records before Orbax reads it, a damaged step is refused in one line
that names the file and the step to fall back to, checkpoints written before checksums load
unverified, and a full disk while saving raises OSError naming the step, with the steps before kept."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest

from nao import load_checkpoint
from nao.models.checkpoint import CheckpointError, CheckpointStore, file_table
from nao.pretrained import PRETRAINED


def tiny_state(step: int) -> dict:
    return {"params": {"w": np.arange(64 * 32, dtype=np.float32).reshape(64, 32) * step}, "t": np.int32(step)}


LIKE = tiny_state(0)


@pytest.fixture
def store(tmp_path) -> CheckpointStore:
    """A run's checkpoints folder holding steps 1 and 2."""
    store = CheckpointStore(tmp_path / "run" / "checkpoints")
    for step in (1, 2):
        store.save(step, tiny_state(step), {"kind": "toy"})
    return store


def biggest_state_file(store: CheckpointStore, step: int) -> tuple[Path, str]:
    """The largest file of the step's state (the array data) and its path relative to the step."""
    folder = store.directory / str(step)
    path = max((p for p in (folder / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    return path, path.relative_to(folder).as_posix()


def flip_bytes(path: Path, count: int = 32) -> None:
    data = bytearray(path.read_bytes())
    for i in np.linspace(0, len(data) - 1, count).astype(int):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def refused(call, *needles: str) -> str:
    with pytest.raises(CheckpointError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, message
    return message


def test_flipped_bytes_are_refused_naming_the_file_and_the_step_to_fall_back_to(store):
    path, name = biggest_state_file(store, 2)
    flip_bytes(path)
    where = store.directory / "2"
    needles = (f"checkpoint {where} is truncated or damaged: {name} differs from the SHA-256 recorded",
               "delete that step folder to resume from step 1, or load step 1 (step=1)")
    refused(lambda: store.restore(LIKE), *needles)
    refused(lambda: store.read_state(), *needles)
    refused(lambda: load_checkpoint(store.directory.parent), *needles)
    # The step before is intact and loads, from the store and from load_checkpoint.
    state, _ = store.restore(LIKE, step=1)
    np.testing.assert_array_equal(state["params"]["w"], tiny_state(1)["params"]["w"])
    ckpt = load_checkpoint(store.directory.parent, step=1)
    np.testing.assert_array_equal(ckpt.state["params"]["w"], tiny_state(1)["params"]["w"])


@pytest.mark.parametrize("damage", ["manifest", "cut", "meta"])
def test_a_missing_or_cut_file_is_named(store, damage):
    where = store.directory / "2"
    if damage == "manifest":
        (where / "state" / "manifest.ocdbt").unlink()
        problem = "state/manifest.ocdbt is missing"
    elif damage == "cut":
        path, name = biggest_state_file(store, 2)
        size = path.stat().st_size
        path.write_bytes(path.read_bytes()[:100])
        problem = f"{name} is 100 bytes, {size} when it was saved"
    else:
        meta = where / "meta" / "metadata"
        meta.write_text(meta.read_text()[:50])
        problem = "its meta is unreadable (JSONDecodeError)"
    refused(lambda: store.restore(LIKE), f"checkpoint {where} is truncated or damaged: {problem}",
            "resume from step 1")


def test_a_damaged_only_step_says_none_is_left_to_fall_back_to(tmp_path):
    store = CheckpointStore(tmp_path / "checkpoints")
    store.save(1, tiny_state(1), {"kind": "toy"})
    flip_bytes(biggest_state_file(store, 1)[0])
    refused(lambda: store.restore(LIKE), "is truncated or damaged", "no earlier step is kept")


def test_a_checkpoint_written_before_checksums_loads_unverified(store):
    meta_path = store.directory / "2" / "meta" / "metadata"
    meta = json.loads(meta_path.read_text())
    del meta["state_files"]
    meta_path.write_text(json.dumps(meta))
    state, _ = store.restore(LIKE)
    np.testing.assert_array_equal(state["params"]["w"], tiny_state(2)["params"]["w"])


def test_the_shipped_checkpoints_are_verified():
    for name, folder in PRETRAINED.items():
        store = CheckpointStore(folder / "checkpoints", create=False)
        step = store.latest_step()
        assert store.read_meta()["state_files"] == file_table(store.directory / str(step) / "state"), name


def test_saves_keep_the_newest_steps_and_describe_every_state_file(store):
    store.save(3, tiny_state(3), {"kind": "toy"})
    assert store.steps() == [2, 3] and store.latest_step() == 3
    assert sorted(p.name for p in store.directory.iterdir()) == ["2", "3"]  # no partial folder left
    table = store.read_meta()["state_files"]
    assert "manifest.ocdbt" in table and all(len(entry["sha256"]) == 64 for entry in table.values())
    assert table == file_table(store.directory / "3" / "state")


TENSORSTORE_FULL = ValueError("RESOURCE_EXHAUSTED: Error writing \"params.w/0.0\" in OCDBT database: Failed "
                              "to write 4576 bytes to file 11: No space left on device [os_error_code='28']")


@pytest.mark.parametrize("error, code", [
    (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), errno.ENOSPC),
    (OSError(errno.EDQUOT, os.strerror(errno.EDQUOT)), errno.EDQUOT),
    (TENSORSTORE_FULL, errno.ENOSPC),  # how Orbax reports a full disk
])
def test_a_full_disk_while_saving_keeps_the_steps_before(store, monkeypatch, error, code):
    def fill_then_fail(self, directory, *args, **kwargs):
        Path(directory).mkdir(parents=True)
        (Path(directory) / "half_written").write_bytes(b"x" * 1000)
        raise error

    with monkeypatch.context() as patch:
        patch.setattr(ocp.Checkpointer, "save", fill_then_fail)
        with pytest.raises(OSError) as info:
            store.save(3, tiny_state(3), {"kind": "toy"})
    assert info.value.errno == code and info.value.filename == str(store.directory / "3")
    assert sorted(p.name for p in store.directory.iterdir()) == ["1", "2"]  # the partial step is gone
    state, _ = store.restore(LIKE)
    np.testing.assert_array_equal(state["params"]["w"], tiny_state(2)["params"]["w"])
    store.save(3, tiny_state(3), {"kind": "toy"})  # with space again
    assert store.steps() == [2, 3]


def test_other_save_errors_pass_through_and_leave_no_partial_step(store, monkeypatch):
    def fail(self, directory, *args, **kwargs):
        raise ValueError("PERMISSION_DENIED: cannot write")

    monkeypatch.setattr(ocp.Checkpointer, "save", fail)
    with pytest.raises(ValueError, match="PERMISSION_DENIED"):
        store.save(3, tiny_state(3), {"kind": "toy"})
    assert store.steps() == [1, 2] and not list(store.directory.glob("*.partial"))
