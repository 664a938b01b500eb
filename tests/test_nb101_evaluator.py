"""NB101 table evaluator, the table-restricted space, and short searches over the shipped table."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nao.data.nasbench import NB101_SAMPLE, BenchmarkFileError
from nao.evaluators.nb101_table import (
    Nb101TableEvaluator,
    NotInTableError,
    TableRestrictedSpace,
    load_nb101_table,
    nb101_table_space_and_evaluator,
)
from nao.history import History
from nao.search import SearchSettings, search
from nao.spaces.base import InvalidArchitectureError, SearchSpace
from nao.spaces.nasbench101 import INPUT, OUTPUT, NasBench101Space, Nb101Arch, from_table
from nao.strategies import make_strategy

VALID = "valid_acc_108ep_single_seed"


@pytest.fixture(scope="module")
def raw() -> dict[str, np.ndarray]:
    with np.load(NB101_SAMPLE) as table:
        return {k: table[k] for k in table.files}


@pytest.fixture(scope="module")
def pair() -> tuple[TableRestrictedSpace, Nb101TableEvaluator]:
    return nb101_table_space_and_evaluator()


@pytest.fixture(scope="module")
def space(pair) -> TableRestrictedSpace:
    return pair[0]


@pytest.fixture(scope="module")
def evaluator(pair) -> Nb101TableEvaluator:
    return pair[1]


@pytest.fixture(scope="module")
def base() -> NasBench101Space:
    return NasBench101Space()


@pytest.fixture(scope="module")
def outside(base, evaluator) -> list[Nb101Arch]:
    """Valid NB101 cells that the table lacks."""
    rng = np.random.default_rng(0)
    cells = [base.sample(rng) for _ in range(100)]
    cells = [a for a in cells if a not in evaluator]
    assert len(cells) > 20
    return cells


def means_by_hash(raw, key: str) -> dict[str, float]:
    groups: dict[str, list[float]] = {}
    for h, value in zip(raw["hash"], raw[key], strict=True):
        groups.setdefault(str(h), []).append(float(value))
    return {h: float(np.mean(v)) for h, v in groups.items()}


def test_lookups_are_the_mean_of_the_rows_of_each_cell(raw, evaluator):
    expected = means_by_hash(raw, VALID)
    assert len(evaluator) == len(expected) == 292
    # Every row, under whichever vertex order the table stores it, finds its cell's mean.
    for h, arch in zip(raw["hash"], from_table(NB101_SAMPLE), strict=True):
        valid, test = evaluator.lookup(arch)
        assert valid == pytest.approx(expected[str(h)], abs=1e-9)
        assert test is None
    # The mean matters: some duplicated cells carry different single-seed values.
    spread = [h for h in expected if len({float(v) for v in raw[VALID][raw["hash"] == h]}) > 1]
    assert len(spread) > 10


def test_a_test_key_is_looked_up_as_well(raw):
    evaluator = Nb101TableEvaluator(test_key="params_m")
    expected = means_by_hash(raw, "params_m")
    for arch in evaluator.archs:
        assert evaluator.lookup(arch)[1] == pytest.approx(expected[evaluator.space.key(arch)], abs=1e-9)


def test_every_allowed_cell_evaluates(space, evaluator):
    results = list(evaluator.evaluate(space.archs))
    assert [position for position, _ in results] == list(range(292))
    for position, result in results:
        assert result.valid == evaluator.lookup(space.archs[position])[0]
        assert 0 < result.valid <= 100 and result.test is None and 0 <= result.cost < 1


def test_cells_outside_the_table_are_refused(evaluator, outside):
    assert outside[0] not in evaluator
    with pytest.raises(NotInTableError, match="nb101_table_space_and_evaluator"):
        list(evaluator.evaluate([evaluator.archs[0], outside[0]]))


def test_restricted_sample_is_uniform_over_table_cells(space, evaluator):
    rng = np.random.default_rng(0)
    draws = [space.sample(rng) for _ in range(5000)]
    assert all(a in evaluator for a in draws)
    counts: dict[str, int] = {}
    for a in draws:
        counts[space.key(a)] = counts.get(space.key(a), 0) + 1
    # Uniform over the 292 distinct cells (about 17 draws each), not over the 500 rows.
    assert len(counts) == 292
    assert max(counts.values()) < 45


def test_restricted_neighbors_are_the_table_cells_among_all_neighbours(space, base):
    table_keys = {space.key(a) for a in space.archs}
    empty = 0
    for i, arch in enumerate(space.archs):
        options = space.neighbors(arch)
        keys = [space.key(a) for a in options]
        assert set(keys) <= table_keys and space.key(arch) not in keys
        if i % 4 == 0:  # the full neighbourhood is slower to build; a quarter of the cells suffice
            assert options == [a for a in base.neighbors(arch) if space.key(a) in table_keys]
        empty += not options
    assert 0 < empty < 20  # a few table cells have no neighbour inside the table


def test_mutate_falls_back_to_another_table_cell(space, evaluator):
    rng = np.random.default_rng(0)
    lonely = next(a for a in space.archs if not space.neighbors(a))
    children = [space.mutate(lonely, rng) for _ in range(50)]
    assert all(c in evaluator and space.key(c) != space.key(lonely) for c in children)
    assert len({space.key(c) for c in children}) > 30
    social = next(a for a in space.archs if len(space.neighbors(a)) > 3)
    assert all(space.mutate(social, rng) in space.neighbors(social) for _ in range(20))


def test_mutate_with_a_single_allowed_cell_returns_it(base):
    only = Nb101Arch.from_graph([[0, 1], [0, 0]], [INPUT, OUTPUT])
    single = TableRestrictedSpace(base, [only])
    assert single.mutate(only, np.random.default_rng(0)) == only


def test_restricted_from_tokens_keeps_only_table_cells(space, base, outside):
    for arch in space.archs:
        assert space.key(space.from_tokens(space.to_tokens(arch))) == space.key(arch)
    for arch in outside:
        tokens = base.to_tokens(arch)
        assert base.from_tokens(tokens) == arch
        assert space.from_tokens(tokens) is None
    assert space.from_tokens(np.zeros(27, np.int32)) is None


def test_is_valid_requires_membership(space, base, outside):
    assert all(space.is_valid(a) for a in space.archs)
    assert all(base.is_valid(a) and not space.is_valid(a) for a in outside)
    assert not space.is_valid((0, 1, 2))


def test_restricted_space_delegates_the_rest(space, base):
    assert (space.name, space.vocab_size, space.seq_len, space.tokens_per_step) == (
        base.name, base.vocab_size, base.seq_len, base.tokens_per_step)
    assert (space.token_mask() == base.token_mask()).all()
    assert (space.symmetry_permutations() == base.symmetry_permutations()).all()
    arch = space.archs[5]
    assert space.from_string(space.to_string(arch)) == arch
    assert (space.tokens_batch(space.archs[:3]) == base.tokens_batch(space.archs[:3])).all()
    # Every public method of the interface is forwarded, so none falls back to a base default.
    public = [n for n, v in vars(SearchSpace).items() if callable(v) and not n.startswith("_")]
    assert "mutate" in public and all(n in vars(TableRestrictedSpace) for n in public)


def test_restricted_space_collapses_duplicates_and_checks_its_cells(base):
    assert len(TableRestrictedSpace(base, from_table(NB101_SAMPLE))) == 292
    with pytest.raises(ValueError, match="at least one"):
        TableRestrictedSpace(base, [])
    with pytest.raises(InvalidArchitectureError, match="not valid"):
        TableRestrictedSpace(base, [(0, 1, 2)])


def write(tmp_path, arrays: dict[str, np.ndarray]):
    path = tmp_path / "table.npz"
    np.savez(path, **arrays)
    return path


def without(raw, key):
    return {k: v for k, v in raw.items() if k != key}


def with_array(raw, key, value):
    return {**raw, key: value}


def bad_row(raw):
    adjacency = raw["adjacency"].copy()
    adjacency[3] = 0  # no input -> output path
    return with_array(raw, "adjacency", adjacency)


def nan_valid(raw):
    valid = raw[VALID].copy()
    valid[7] = np.nan
    return with_array(raw, VALID, valid)


@pytest.mark.parametrize("make, kwargs, message", [
    (lambda raw: without(raw, "adjacency"), {}, "has no adjacency: it needs adjacency"),
    (lambda raw: with_array(raw, "ops", raw["ops"][:, :6]), {}, r"ops \(500, 6\).*do not fit"),
    (lambda raw: with_array(raw, "num_vertices", raw["num_vertices"][:10]), {}, "do not fit"),
    (lambda raw: with_array(raw, "adjacency", raw["adjacency"].astype(float)), {}, "do not fit"),
    (bad_row, {}, "row 3 is not a valid NB101 cell .*no path"),
    (lambda raw: with_array(raw, "op_names", raw["op_names"][:3]), {}, r"row 0 .*op id \d does not index"),
    (lambda raw: with_array(raw, "ops", np.where(raw["ops"] == 4, -1, raw["ops"]).astype(np.int8)), {},
     "row 0 .*op id -1 does not index"),
    (lambda raw: raw, {"valid_key": "test_acc"},
     "'test_acc' does not exist; set --valid_key to one of flops_m, params_m, " + VALID),
    (lambda raw: raw, {"test_key": "hash"}, r"'hash' has shape \(500,\) and dtype <U32.*--test_key"),
    (lambda raw: without(raw, VALID), {}, f"'{VALID}' does not exist"),
    (nan_valid, {}, "NaN or inf"),
])
def test_bad_tables_are_refused_with_the_fix(tmp_path, raw, make, kwargs, message):
    path = write(tmp_path, make(raw))
    with pytest.raises(BenchmarkFileError, match=message) as info:
        load_nb101_table(path, **kwargs)
    assert "\n" not in str(info.value)
    with pytest.raises(BenchmarkFileError):
        nb101_table_space_and_evaluator(path, **kwargs)


def test_unreadable_files_are_refused_with_the_fix(tmp_path):
    missing = tmp_path / "nope.npz"
    with pytest.raises(BenchmarkFileError, match=f"does not exist.*{NB101_SAMPLE.name}"):
        Nb101TableEvaluator(missing)
    text = tmp_path / "table.npz"
    text.write_text("not a table\n")
    with pytest.raises(BenchmarkFileError, match="not a readable npz") as info:
        load_nb101_table(text)
    assert "\n" not in str(info.value)
    single = tmp_path / "array.npy"
    np.save(single, np.zeros(3))
    with pytest.raises(BenchmarkFileError, match="single .npy array.*numpy.savez"):
        load_nb101_table(single)


@pytest.mark.parametrize("name", ["random", "evolution", "local"])
def test_search_over_the_table(tmp_path, space, evaluator, name):
    history = History(tmp_path / "h.jsonl")
    rows = search(space, make_strategy(name, space, 0), evaluator, SearchSettings(queries=40), history)
    assert len(rows) == 40 and len({row["key"] for row in rows}) == 40
    assert len(History(tmp_path / "h.jsonl").rows) == 40
    for row in rows:
        arch = space.from_string(row["arch"])
        assert space.is_valid(arch) and space.key(arch) == row["key"]
        assert row["valid"] == evaluator.lookup(arch)[0] and row["test"] is None
        assert math.isfinite(row["valid"])
