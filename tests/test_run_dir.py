"""A run directory belongs to one configuration and one table: anything else is refused in one line."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from nao.config import assemble
from nao.data.nasbench import NB201_CIFAR10, BenchmarkFileError, load_nb201_table
from nao.experiment import RunDirError, run_experiment


def _search(table, out):
    config = assemble({"preset": "smoke", "strategies": ["random"], "queries": 5,
                       "benchmark_file": str(table), "output_dir": str(out)})
    return run_experiment(config.job, out, resume=out.exists(), plots=False)


def test_a_table_replaced_under_the_same_path_is_refused_on_resume(tmp_path):
    table, out = tmp_path / "table.npz", tmp_path / "run"
    shutil.copy(NB201_CIFAR10, table)
    first = _search(table, out)
    assert _search(table, out) == first  # the same table: resumed as it was
    arrays = dict(np.load(table))
    arrays["cifar10_valid_acc"] = arrays["cifar10_valid_acc"][::-1].copy()
    np.savez(table, **arrays)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(RunDirError, match=r"was searched on other data: the file behind table_sha256 "
                                          rf"\({table}\) changed since the run started"):
        _search(table, out)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("content, needle", [("[1, 2]", "holds a list, not a nao run's configuration"),
                                             ("{oops", r"is unreadable \(JSONDecodeError\)")])
def test_a_damaged_config_json_is_named(tmp_path, content, needle):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(content)
    with pytest.raises(RunDirError, match=needle) as info:
        _search(NB201_CIFAR10, out)
    assert "\n" not in str(info.value) and str(out / "config.json") in str(info.value)


def test_a_table_with_a_cell_twice_is_refused(tmp_path):
    arrays = dict(np.load(NB201_CIFAR10))
    arrays["ops"] = arrays["ops"].copy()
    arrays["ops"][7] = arrays["ops"][3]
    np.savez(tmp_path / "dup.npz", **arrays)
    with pytest.raises(BenchmarkFileError, match=r"'ops' rows 3 and 7 are the same cell, so another"):
        load_nb201_table(tmp_path / "dup.npz")
    assert load_nb201_table().ops.shape == (15625, 6)  # the shipped table passes the check
