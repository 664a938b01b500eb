"""NAS-Bench-201 space (strings, tokens, mask, neighbours) and the NB201 table loader."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from nao.data.nasbench import NB201_CIFAR10, NB201_SIZE, BenchmarkFileError, load_nb201_table
from nao.spaces.base import InvalidArchitectureError
from nao.spaces.nasbench201 import EDGES, OP_NAMES

EXPECTED_FORM = "'|op~0|+|op~0|op~1|+|op~0|op~1|op~2|'"


@pytest.fixture(scope="module")
def raw_table() -> dict[str, np.ndarray]:
    with np.load(NB201_CIFAR10, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


# --- strings and tokens ---------------------------------------------------------------------------

def test_official_string_round_trips_for_every_table_row(nb201_space, raw_table):
    ops, strings = raw_table["ops"], raw_table["arch_str"]
    assert ops.shape == (NB201_SIZE, 6) and strings.shape == (NB201_SIZE,)
    for row, text in zip(ops, strings):
        arch = tuple(int(o) for o in row)
        assert nb201_space.to_string(arch) == text
        assert nb201_space.from_string(str(text)) == arch
        assert nb201_space.key(arch) == text


def test_table_rows_are_all_distinct_valid_architectures(nb201_space, raw_table):
    archs = {tuple(int(o) for o in row) for row in raw_table["ops"]}
    assert len(archs) == NB201_SIZE == len(OP_NAMES) ** len(EDGES)
    assert all(nb201_space.is_valid(a) for a in archs)


def test_tokens_round_trip_for_every_table_row(nb201_space, raw_table):
    archs = [tuple(int(o) for o in row) for row in raw_table["ops"]]
    tokens = nb201_space.tokens_batch(archs)
    assert tokens.shape == (NB201_SIZE, nb201_space.seq_len) and tokens.dtype == np.int32
    assert tokens.min() == 1 and tokens.max() == len(OP_NAMES)
    np.testing.assert_array_equal(tokens, raw_table["ops"].astype(np.int32) + 1)
    assert [nb201_space.from_tokens(t) for t in tokens] == archs


def test_token_mask_allows_exactly_op_tokens_at_every_position(nb201_space):
    mask = nb201_space.token_mask()
    assert mask.shape == (nb201_space.seq_len, nb201_space.vocab_size) == (6, 6)
    assert mask.dtype == bool
    expected = np.zeros((6, 6), bool)
    expected[:, 1:6] = True
    np.testing.assert_array_equal(mask, expected)


@pytest.mark.parametrize("tokens", [
    [0, 1, 1, 1, 1, 1],  # start symbol
    [1, 1, 1, 1, 1, 6],  # past the last op
    [1, 1, -1, 1, 1, 1],
    [1, 2, 3, 4, 5],  # too short
    [1, 2, 3, 4, 5, 1, 2],  # too long
    [],
    [[1, 2, 3, 4, 5, 1]],  # wrong rank
])
def test_from_tokens_rejects_out_of_range_or_wrong_length(nb201_space, tokens):
    assert nb201_space.from_tokens(tokens) is None


def test_neighbors_are_the_24_single_edge_edits(nb201_space):
    rng = np.random.default_rng(0)
    archs = [nb201_space.sample(rng) for _ in range(50)] + [(0,) * 6, (4,) * 6]
    for arch in archs:
        neighbors = nb201_space.neighbors(arch)
        assert len(neighbors) == 24
        assert len(set(neighbors)) == 24
        assert arch not in neighbors
        for neighbor in neighbors:
            assert nb201_space.is_valid(neighbor)
            assert sum(a != b for a, b in zip(arch, neighbor)) == 1
        assert nb201_space.mutate(arch, rng) in neighbors


@pytest.mark.parametrize("text", [
    "|conv_9x9~0|+|none~0|none~1|+|none~0|none~1|none~2|",  # unknown op
    "|none~1|+|none~0|none~1|+|none~0|none~1|none~2|",  # wrong source node
    "|none~0|+|none~0|none~0|+|none~0|none~1|none~2|",  # wrong source node
    "|none~0|+|none~0|none~1|",  # missing node
    "|none~0|+|none~0|+|none~0|none~1|none~2|",  # node with too few edges
    "",
    "|none~0|++|none~0|none~1|+|none~0|none~1|none~2|",  # extra '+'
    "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|+",  # trailing '+'
])
def test_malformed_strings_raise_one_line_error_with_expected_form(nb201_space, text):
    with pytest.raises(InvalidArchitectureError) as info:
        nb201_space.from_string(text)
    message = str(info.value)
    assert "\n" not in message
    assert EXPECTED_FORM in message


# --- table loader ---------------------------------------------------------------------------------

def test_default_table_best_architecture(nb201_table, nb201_space):
    assert nb201_table.path == str(NB201_CIFAR10)
    assert nb201_table.valid_key == "cifar10_valid_acc" and nb201_table.test_key == "cifar10_test_acc"
    assert nb201_table.ops.shape == (NB201_SIZE, 6)
    assert nb201_table.valid.shape == nb201_table.test.shape == (NB201_SIZE,)
    assert int(np.argmax(nb201_table.test)) == 6111
    assert round(float(nb201_table.test[6111]), 2) == 94.37
    assert int(np.argmax(nb201_table.valid)) == 6111
    index = nb201_table.index_of()
    assert len(index) == NB201_SIZE
    assert index[tuple(int(o) for o in nb201_table.ops[6111])] == 6111


def _error_message(path, **kwargs) -> str:
    with pytest.raises(BenchmarkFileError) as info:
        load_nb201_table(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_file_error(tmp_path):
    message = _error_message(tmp_path / "absent.npz")
    assert "does not exist" in message and "--benchmark_file" in message


@pytest.mark.parametrize("content", [b"garbage bytes, not a zip" * 4, b"PK\x03\x04 torn zip", b""])
def test_non_npz_file_error(tmp_path, content):
    path = tmp_path / "bad.npz"
    path.write_bytes(content)
    message = _error_message(path)
    assert "not a readable npz" in message and "re-create or re-download" in message


def test_npz_without_ops_error(tmp_path, raw_table):
    path = tmp_path / "no_ops.npz"
    np.savez(path, cifar10_valid_acc=raw_table["cifar10_valid_acc"],
             cifar10_test_acc=raw_table["cifar10_test_acc"])
    message = _error_message(path)
    assert "'ops'" in message and "(15625, 6)" in message


@pytest.mark.parametrize("ops", [
    np.zeros((10, 6), np.uint8),
    np.zeros((NB201_SIZE, 5), np.uint8),
    np.zeros((NB201_SIZE * 6,), np.uint8),
    np.full((NB201_SIZE, 6), 5, np.uint8),  # op id out of range
    np.full((NB201_SIZE, 6), -1, np.int8),  # negative op id
    np.zeros((0, 6), np.uint8),  # empty
], ids=["rows", "cols", "flat", "op5", "negative", "empty"])
def test_npz_with_wrong_ops_error(tmp_path, raw_table, ops):
    path = tmp_path / "wrong_ops.npz"
    np.savez(path, ops=ops, cifar10_valid_acc=raw_table["cifar10_valid_acc"],
             cifar10_test_acc=raw_table["cifar10_test_acc"])
    message = _error_message(path)
    assert "'ops'" in message and "expected (15625, 6) op ids in 0..4" in message


def test_bad_valid_key_lists_available_keys():
    message = _error_message(NB201_CIFAR10, valid_key="cifar100_valid_acc")
    assert "--valid_key" in message and "'cifar100_valid_acc'" in message
    for key in ("cifar10_valid_acc", "cifar10_test_acc", "cifar10valid_test_acc", "params_mb"):
        assert key in message


def test_bad_test_key_names_its_flag():
    message = _error_message(NB201_CIFAR10, test_key="imagenet_test_acc")
    assert "--test_key" in message and "cifar10_test_acc" in message


def test_non_float_key_error():
    message = _error_message(NB201_CIFAR10, valid_key="arch_str")
    assert "'arch_str'" in message and "not (15625,) floats" in message


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_values_error(tmp_path, raw_table, bad):
    valid = raw_table["cifar10_valid_acc"].copy()
    valid[123] = bad
    path = tmp_path / "nan.npz"
    np.savez(path, ops=raw_table["ops"], cifar10_valid_acc=valid,
             cifar10_test_acc=raw_table["cifar10_test_acc"])
    message = _error_message(path)
    assert "'cifar10_valid_acc'" in message and "NaN or inf" in message


def test_custom_table_with_own_keys(tmp_path, raw_table):
    path = tmp_path / "custom.npz"
    my_valid = raw_table["cifar10valid_test_acc"]
    my_test = -raw_table["params_mb"]
    np.savez(path, ops=raw_table["ops"], my_valid=my_valid, my_test=my_test)
    table = load_nb201_table(path, valid_key="my_valid", test_key="my_test")
    assert (table.path, table.valid_key, table.test_key) == (str(path), "my_valid", "my_test")
    np.testing.assert_array_equal(table.ops, raw_table["ops"])
    np.testing.assert_allclose(table.valid, my_valid)
    np.testing.assert_allclose(table.test, my_test)
    # The default keys are not there: the error names the ones that are.
    message = _error_message(path)
    assert "my_test, my_valid" in message


def test_copied_shipped_table_loads_from_any_path(tmp_path, nb201_table):
    path = tmp_path / "copy.npz"
    shutil.copy(NB201_CIFAR10, path)
    table = load_nb201_table(path)
    np.testing.assert_array_equal(table.valid, nb201_table.valid)
    np.testing.assert_array_equal(table.test, nb201_table.test)
