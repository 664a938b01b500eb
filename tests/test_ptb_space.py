import itertools

import numpy as np
import pytest

from nao.spaces import InvalidArchitectureError, get_space
from nao.spaces.ptb import ACTIVATIONS, NUM_NODES, PUBLISHED, PtbSpace


@pytest.fixture(scope="module")
def space() -> PtbSpace:
    return PtbSpace()


@pytest.fixture(scope="module")
def archs(space):
    rng = np.random.default_rng(0)
    return [space.sample(rng) for _ in range(300)]


def test_sampled_archs_are_valid_and_cover_every_choice(space, archs):
    assert all(space.is_valid(a) for a in archs)
    values = np.array(archs)
    for node in range(NUM_NODES):
        assert set(values[:, 2 * node]) == set(range(node + 1))
        assert set(values[:, 2 * node + 1]) == set(range(len(ACTIVATIONS)))


def test_tokens_round_trip_and_stay_inside_the_mask(space, archs):
    mask = space.token_mask()
    for arch in archs:
        tokens = space.to_tokens(arch)
        assert tokens.shape == (22,) and tokens.dtype == np.int32
        assert mask[np.arange(22), tokens].all()
        assert space.from_tokens(tokens) == arch
    assert space.vocab_size == 16


def test_every_sequence_the_mask_allows_decodes(space):
    mask = space.token_mask()
    rng = np.random.default_rng(1)
    for _ in range(500):
        tokens = np.array([rng.choice(np.flatnonzero(row)) for row in mask])
        assert space.is_valid(space.from_tokens(tokens))
    # The mask admits exactly the space: 11! predecessor choices times 4^11 activations.
    assert np.prod(mask.sum(axis=1), dtype=float) == float(np.prod(np.arange(1, 12))) * 4.0 ** 11


def test_tokens_outside_the_mask_decode_to_none(space, archs):
    tokens = space.to_tokens(archs[0])
    bad = tokens.copy()
    bad[0] = 2  # node 1 may only read s0
    assert space.from_tokens(bad) is None
    bad = tokens.copy()
    bad[1] = 3  # a node token where an activation belongs
    assert space.from_tokens(bad) is None
    assert space.from_tokens(tokens[:-1]) is None


def test_strings_round_trip_both_forms(space, archs):
    for arch in archs[:50]:
        assert space.from_string(space.to_string(arch)) == arch
        assert space.from_string(" ".join(map(str, arch))) == arch


def test_published_cells_parse_by_name(space):
    for name, integers in PUBLISHED.items():
        arch = space.from_string(name)
        assert arch == tuple(int(v) for v in integers.split())
        assert space.is_valid(arch)
    assert space.to_string(space.from_string("naonet")).startswith("s1=relu(s0) s2=relu(s0) s3=relu(s1)")


@pytest.mark.parametrize("text, needle", [
    ("0 1 0 1", "has 4 numbers, needs 22"),
    ("0 1 2 1 1 1 3 0 4 1 4 1 5 1 1 1 7 1 1 1 1 2", "node s2 reads s2, but it may only read s0..s1"),
    ("0 7 0 1 1 1 3 0 4 1 4 1 5 1 1 1 7 1 1 1 1 2", "node s1 has activation id 7"),
    ("s1=relu(s0) s2=gelu(s1)", "bad node 's2=gelu(s1)'"),
    ("|nor_conv_3x3~0|+|none~0|none~1|+|skip_connect~0|none~1|none~2|", "bad node"),
    ("", "empty ptb architecture"),
])
def test_bad_strings_give_one_line_errors_with_the_fix(space, text, needle):
    with pytest.raises(InvalidArchitectureError) as info:
        space.from_string(text)
    message = str(info.value)
    assert needle in message and "\n" not in message


def test_key_identifies_isomorphic_cells_only(space):
    # s1 = relu(s0), s2 = sigmoid(s0), s3..s11 = tanh(s1); and the same with s1 and s2 renumbered.
    tail = (1, 0) * 9
    first = (0, 1, 0, 2) + tail
    swapped = (0, 2, 0, 1) + (2, 0) * 9
    assert space.is_valid(first) and space.is_valid(swapped)
    assert first != swapped
    assert space.key(first) == space.key(swapped)
    # Changing one activation changes the function, and the key.
    changed = (0, 1, 0, 3) + tail
    assert space.key(changed) != space.key(first)


def test_key_separates_distinct_trees(space, archs):
    # Brute force on a small prefix: keys collide only for isomorphic trees, so the number of
    # distinct keys over all 2-node cells (then a fixed tail) is the number of distinct trees.
    tail = tuple(itertools.chain.from_iterable((0, 0) for _ in range(NUM_NODES - 2)))
    cells = [(0, a1, p2, a2) + tail for a1 in range(4) for p2 in range(2) for a2 in range(4)]
    keys = {space.key(c) for c in cells}
    # p2 = 1: a chain s0->s1->s2, 16 distinct. p2 = 0: two children of s0, unordered: 4 + 6 = 10.
    assert len(keys) == 16 + 10


def test_neighbors_are_valid_single_edits(space, archs):
    for arch in archs[:20]:
        neighbors = space.neighbors(arch)
        assert len(neighbors) == sum(range(NUM_NODES)) + NUM_NODES * 3
        for other in neighbors:
            assert space.is_valid(other)
            assert sum(a != b for a, b in zip(arch, other)) == 1


def test_ws_space_is_registered_with_the_same_cells(space):
    ws = get_space("ptb_ws")
    assert ws.name == "ptb_ws" and ws.seq_len == space.seq_len
    assert ws.from_string("naonet_ws") == space.from_string("naonet_ws")


def test_graph_has_one_edge_per_node_plus_the_output_mean(space):
    labels, edges = space.graph(space.from_string("naonet"))
    assert len(labels) == NUM_NODES + 2
    assert len(edges) == 2 * NUM_NODES
    assert all(src < dst for src, dst, _ in edges)
