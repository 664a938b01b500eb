"""NAS-Bench-101 space: official hash, pruning, SemiNAS tokens, strings, neighbours, sampling."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from nao.spaces.base import InvalidArchitectureError
from nao.spaces.nasbench101 import (
    CONV1X1,
    CONV3X3,
    INPUT,
    MAXPOOL3X3,
    OUTPUT,
    NasBench101Space,
    Nb101Arch,
    from_table,
)

TABLE = Path(__file__).resolve().parents[1] / "data/nasbench/nb101_naslib_zc500.npz"
OP_POSITIONS = (1, 4, 8, 13, 19, 26)


@pytest.fixture(scope="module")
def space() -> NasBench101Space:
    return NasBench101Space()


@pytest.fixture(scope="module")
def table_archs() -> list[Nb101Arch]:
    return from_table(TABLE)


@pytest.fixture(scope="module")
def table_hashes() -> list[str]:
    with np.load(TABLE) as table:
        return [str(h) for h in table["hash"]]


@pytest.fixture(scope="module")
def samples(space) -> list[Nb101Arch]:
    rng = np.random.default_rng(0)
    return [space.sample(rng) for _ in range(200)]


def chain(*inner: str) -> Nb101Arch:
    """input -> inner[0] -> ... -> output."""
    n = len(inner) + 2
    return Nb101Arch.from_graph(np.eye(n, k=1, dtype=int), [INPUT, *inner, OUTPUT])


def test_key_matches_official_hash_for_every_table_row(space, table_archs, table_hashes):
    assert len(table_archs) == 500
    assert [space.key(a) for a in table_archs] == table_hashes


def test_table_has_292_distinct_keys(space, table_archs):
    assert len({space.key(a) for a in table_archs}) == 292
    # The table holds some cells under two vertex orders; those must collapse to one key.
    assert len(set(table_archs)) > 292


def test_table_rows_are_valid_pruned_graphs(space, table_archs):
    assert all(space.is_valid(a) for a in table_archs)


def relabel(arch: Nb101Arch, perm: tuple[int, ...]) -> Nb101Arch | None:
    """``arch`` with vertex v renamed perm[v]; None if that breaks upper-triangularity."""
    n = arch.num_vertices
    matrix = np.zeros((n, n), int)
    ops = [""] * n
    for v in range(n):
        ops[perm[v]] = arch.ops[v]
        for w in range(n):
            matrix[perm[v], perm[w]] = arch.matrix[v][w]
    if np.tril(matrix).any():
        return None
    return Nb101Arch.from_graph(matrix, ops)


def test_isomorphic_graphs_share_a_key(space, table_archs):
    relabelled = 0
    for arch in table_archs:
        n = arch.num_vertices
        for inner in itertools.permutations(range(1, n - 1)):
            other = relabel(arch, (0, *inner, n - 1))
            if other is not None and other != arch:
                assert space.key(other) == space.key(arch)
                relabelled += 1
                break
    assert relabelled > 50  # the check above really ran on many graphs


def test_different_graphs_get_different_keys(space):
    # Same op multiset and same degrees: only the order along the chain differs.
    assert space.key(chain(CONV3X3, CONV1X1)) != space.key(chain(CONV1X1, CONV3X3))
    assert space.key(chain(CONV3X3)) != space.key(chain(MAXPOOL3X3))
    parallel = Nb101Arch.from_graph([[0, 1, 1, 0], [0, 0, 0, 1], [0, 0, 0, 1], [0, 0, 0, 0]],
                                    [INPUT, CONV3X3, CONV3X3, OUTPUT])
    assert space.key(parallel) != space.key(chain(CONV3X3, CONV3X3))


def test_pruning_removes_dangling_vertices(space):
    matrix = np.zeros((5, 5), int)
    matrix[0, 1] = matrix[1, 4] = 1  # input -> 1 -> output
    matrix[0, 2] = 1  # 2 never reaches the output
    matrix[3, 4] = 1  # 3 is never reached from the input
    arch = Nb101Arch.from_graph(matrix, [INPUT, CONV3X3, CONV1X1, MAXPOOL3X3, OUTPUT])
    assert arch == chain(CONV3X3)
    assert arch.matrix == ((0, 1, 0), (0, 0, 1), (0, 0, 0))
    assert space.is_valid(arch)
    unpruned = Nb101Arch(tuple(tuple(int(x) for x in row) for row in matrix),
                         (INPUT, CONV3X3, CONV1X1, MAXPOOL3X3, OUTPUT))
    assert not space.is_valid(unpruned)


@pytest.mark.parametrize("matrix, ops", [
    ([[0, 0], [0, 0]], [INPUT, OUTPUT]),  # no input -> output path
    ([[0, 1], [1, 0]], [INPUT, OUTPUT]),  # not upper triangular
    ([[0, 2], [0, 0]], [INPUT, OUTPUT]),  # not 0/1
    ([[0, 1, 0], [0, 0, 1], [0, 0, 0]], [INPUT, "conv5x5", OUTPUT]),
    ([[0, 1, 0], [0, 0, 1], [0, 0, 0]], [INPUT, OUTPUT, OUTPUT]),
    ([[0, 1], [0, 0]], [INPUT, CONV3X3]),
    (np.eye(9, k=1, dtype=int), [INPUT] + [CONV3X3] * 7 + [OUTPUT]),  # 9 vertices
    (np.triu(np.ones((7, 7), int), k=1), [INPUT] + [CONV3X3] * 5 + [OUTPUT]),  # 21 edges
])
def test_invalid_graphs_are_rejected(matrix, ops):
    with pytest.raises(InvalidArchitectureError):
        Nb101Arch.from_graph(matrix, ops)


def test_tokens_round_trip(space, table_archs, samples):
    for arch in table_archs + samples:
        back = space.from_tokens(space.to_tokens(arch))
        assert back == arch
        assert space.key(back) == space.key(arch)


def test_tokens_follow_seminas_layout(space):
    arch = Nb101Arch.from_graph([[0, 1, 1, 0], [0, 0, 0, 1], [0, 0, 0, 1], [0, 0, 0, 0]],
                                [INPUT, CONV1X1, MAXPOOL3X3, OUTPUT])
    expected = [2, 3, 2, 1, 5, 1, 2, 2, 6] + [0] * 18
    assert space.to_tokens(arch).tolist() == expected


def test_tokens_are_allowed_by_the_mask(space, table_archs, samples):
    mask = space.token_mask()
    assert mask.shape == (27, 7) and mask.dtype == bool
    assert not mask[:, 0].any()
    assert [p for p in range(27) if mask[p, 6]] == list(OP_POSITIONS)
    for arch in table_archs + samples:
        tokens = space.to_tokens(arch)
        assert tokens.shape == (27,) and tokens.dtype == np.int32
        used = int(np.count_nonzero(tokens))
        assert not tokens[used:].any()  # padding only trails
        assert mask[np.arange(used), tokens[:used]].all()
        assert (used == 27) == (arch.num_vertices == 7)


def test_full_length_decoder_output_is_pruned(space):
    # A masked greedy decoder always writes 7 vertices; vertex 2 has no outgoing edge here.
    tokens = np.array([2, 4, 2, 1, 3, 1, 2, 1, 5, 1, 1, 1, 2, 4, 1, 1, 1, 1, 2, 3,
                       1, 1, 1, 1, 1, 2, 6])
    assert space.token_mask()[np.arange(27), tokens].all()
    arch = space.from_tokens(tokens)
    assert arch is not None and arch.num_vertices == 6
    assert space.key(arch) == space.key(space.from_tokens(space.to_tokens(arch)))


@pytest.mark.parametrize("edit", [
    lambda t: t[:-1],  # wrong length
    lambda t: np.where(np.arange(27) == 0, 7, t),  # out of vocabulary
    lambda t: np.where(np.arange(27) == 1, 6, t),  # output op before the last column
    lambda t: np.where(np.arange(27) == 4, 0, t),  # zero in the middle
    lambda t: np.where(np.arange(27) == 2, 3, t),  # op token at an edge position
    lambda t: np.where(np.arange(27) == 4, 1, t),  # edge token at an op position
    lambda t: np.where(np.isin(t, (1, 2)), 1, t),  # no edges: input not connected
    lambda t: t.astype(float),
])
def test_inconsistent_tokens_decode_to_none(space, edit):
    tokens = space.to_tokens(chain(CONV3X3, CONV3X3, CONV1X1, MAXPOOL3X3, CONV3X3))
    assert space.from_tokens(tokens) is not None
    assert space.from_tokens(edit(tokens)) is None


def test_string_round_trip(space, table_archs, samples):
    assert space.to_string(chain(CONV3X3)) == "ops=input,conv3x3-bn-relu,output;edges=0-1,1-2"
    for arch in table_archs + samples:
        assert space.from_string(space.to_string(arch)) == arch


def test_from_string_prunes(space):
    text = "ops=input,conv3x3-bn-relu,maxpool3x3,output;edges=0-1,1-3,0-2"
    assert space.from_string(text) == chain(CONV3X3)


@pytest.mark.parametrize("text", [
    "",
    "garbage",
    "|nor_conv_3x3~0|+|none~0|none~1|+|skip_connect~0|none~1|none~2|",
    "ops=input,output;edges=1-0",
    "ops=input,output;edges=0-2",
    "ops=input,output;edges=0_1",
    "ops=input,conv9x9,output;edges=0-1,1-2",
    "ops=input,conv3x3-bn-relu,output;edges=0-1",
])
def test_from_string_rejects_garbage_with_the_format(space, text):
    with pytest.raises(InvalidArchitectureError, match="expected 'ops=input") as info:
        space.from_string(text)
    assert "\n" not in str(info.value)


def test_neighbors_are_valid_distinct_and_different(space, table_archs, samples):
    total = 0
    for arch in table_archs[:100] + samples[:50]:
        options = space.neighbors(arch)
        keys = [space.key(a) for a in options]
        assert all(space.is_valid(a) for a in options)
        assert len(set(keys)) == len(keys)
        assert space.key(arch) not in keys
        total += len(options)
    assert total > 1000


def test_every_table_cell_and_sample_has_a_neighbor(space, table_archs):
    rng = np.random.default_rng(1)
    samples = [space.sample(rng) for _ in range(500)]
    assert sum(a.num_vertices == 2 for a in table_archs + samples) > 50  # the case that had none
    for arch in table_archs + samples:
        assert space.neighbors(arch), space.to_string(arch)


def parallel(first: str, second: str) -> Nb101Arch:
    """input -> first -> output and input -> second -> output."""
    return Nb101Arch.from_graph([[0, 1, 1, 0], [0, 0, 0, 1], [0, 0, 0, 1], [0, 0, 0, 0]],
                                [INPUT, first, second, OUTPUT])


def test_neighbors_of_the_input_output_cell(space):
    arch = Nb101Arch.from_graph([[0, 1], [0, 0]], [INPUT, OUTPUT])
    # Only a split of its one edge: through a new vertex with each of the three ops.
    assert set(space.neighbors(arch)) == {chain(op) for op in (CONV1X1, CONV3X3, MAXPOOL3X3)}
    rng = np.random.default_rng(0)
    assert {space.mutate(arch, rng) for _ in range(30)} == set(space.neighbors(arch))


def test_neighbors_of_a_chain(space):
    arch = chain(CONV3X3)
    skip = Nb101Arch.from_graph([[0, 1, 1], [0, 0, 1], [0, 0, 0]], [INPUT, CONV3X3, OUTPUT])
    inserted = {chain(op, CONV3X3) for op in (CONV1X1, CONV3X3, MAXPOOL3X3)}
    inserted |= {chain(CONV3X3, op) for op in (CONV1X1, MAXPOOL3X3)}  # chain(CONV3X3, CONV3X3) twice
    # Two other ops for the inner vertex; the skip edge 0->2 (removing 0->1 or 1->2 disconnects
    # input from output); a split of 0->1 or 1->2; and the inner vertex bypassed.
    options = space.neighbors(arch)
    assert len(options) == 9
    assert set(options) == {chain(CONV1X1), chain(MAXPOOL3X3), skip, chain(), *inserted}
    assert space.mutate(arch, np.random.default_rng(0)) in options


def test_split_renumbers_vertices_and_bypass_undoes_it(space):
    skip = Nb101Arch.from_graph([[0, 1, 1], [0, 0, 1], [0, 0, 0]], [INPUT, CONV3X3, OUTPUT])
    options = space.neighbors(skip)
    # Splitting the skip edge 0->2 puts the new vertex between input and output, beside vertex 1.
    assert {parallel(CONV3X3, op) for op in (CONV1X1, CONV3X3, MAXPOOL3X3)} <= set(options)
    # Splitting 0->1 puts the new vertex before vertex 1, which becomes vertex 2.
    before = Nb101Arch.from_graph([[0, 1, 0, 1], [0, 0, 1, 0], [0, 0, 0, 1], [0, 0, 0, 0]],
                                  [INPUT, MAXPOOL3X3, CONV3X3, OUTPUT])
    assert before in options
    # Bypassing vertex 1 merges 0->1->2 into the existing 0->2.
    assert chain() in options
    for arch in options:
        if arch.num_vertices == 4:  # made by a split: bypassing the new vertex gives skip back
            assert space.key(skip) in {space.key(a) for a in space.neighbors(arch)}


def test_neighbors_respect_the_size_limits(space):
    # 7 vertices: no split may add an eighth.
    full = chain(CONV3X3, CONV3X3, CONV1X1, MAXPOOL3X3, CONV3X3)
    assert max(a.num_vertices for a in space.neighbors(full)) == 7
    # 6 vertices and 9 edges: a split would make a tenth edge, and so would bypassing vertex 3
    # (3 predecessors times 2 successors replace its 5 edges).
    matrix = np.zeros((6, 6), int)
    for i, j in [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3), (3, 4), (3, 5), (4, 5)]:
        matrix[i, j] = 1
    nine = Nb101Arch.from_graph(matrix, [INPUT, CONV3X3, CONV3X3, CONV1X1, MAXPOOL3X3, OUTPUT])
    assert np.sum(nine.matrix) == 9
    options = space.neighbors(nine)
    assert options and max(a.num_vertices for a in options) == 6
    assert all(np.sum(a.matrix) <= 9 for a in options)


def test_sample_is_reproducible_and_valid(space, samples):
    again = np.random.default_rng(0)
    assert [space.sample(again) for _ in range(200)] == samples
    other = np.random.default_rng(1)
    assert [space.sample(other) for _ in range(20)] != samples[:20]
    assert all(space.is_valid(a) for a in samples)
    assert all(a.num_vertices <= 7 and np.sum(a.matrix) <= 9 for a in samples)


def test_is_valid_rejects_other_values(space):
    assert not space.is_valid((0, 1, 2))
    assert not space.is_valid(Nb101Arch(((0, 1), (0, 0)), (INPUT, "conv")))
