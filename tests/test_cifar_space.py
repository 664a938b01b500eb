"""CIFAR cell spaces "cifar_ws" (5 ops) and "cifar" (11 ops): strings, tokens, masks, keys, neighbours."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nao.spaces import CifarSpace, CifarWsSpace, get_space
from nao.spaces.base import InvalidArchitectureError
from nao.spaces.cifar import FULL_OPS, PUBLISHED, WS_OPS

# The 11 ops as TF VOCAB2 (type, kernel) token pairs, written out independently of the module.
FULL_OP_TOKENS = {
    "identity": (7, 14), "conv_1x1": (9, 14), "conv_3x3": (9, 16), "conv_1x3_3x1": (9, 19),
    "conv_1x7_7x1": (9, 20), "max_pool_2x2": (12, 15), "max_pool_3x3": (12, 16), "max_pool_5x5": (12, 17),
    "avg_pool_2x2": (11, 15), "avg_pool_3x3": (11, 16), "avg_pool_5x5": (11, 17),
}

# NAONet as NAO/cnn/dag.NAONet.json describes it: node_k = (in1, op1, in2, op2), 1-based node names
# (node_1, node_2 are the cell inputs), nodes node_3..node_7.
NAONET_JSON = {
    "normal": [(1, "conv_3x3", 2, "avg_pool_5x5"), (3, "conv_1x3_3x1", 2, "conv_3x3"),
               (1, "conv_1x1", 2, "conv_3x3"), (1, "conv_1x3_3x1", 5, "conv_3x3"),
               (2, "identity", 1, "conv_3x3")],
    "reduce": [(1, "conv_3x3", 2, "avg_pool_2x2"), (1, "conv_1x1", 1, "avg_pool_3x3"),
               (2, "conv_1x7_7x1", 1, "max_pool_2x2"), (1, "avg_pool_3x3", 3, "conv_1x1"),
               (2, "max_pool_3x3", 1, "conv_3x3")],
}


@pytest.fixture(scope="module", params=["cifar_ws", "cifar"])
def space(request):
    return get_space(request.param)


@pytest.fixture(scope="module")
def archs(space) -> list[tuple[int, ...]]:
    rng = np.random.default_rng(0)
    canonical = [space.canonical(space.sample(rng)) for _ in range(3)]
    lowest = (0, 0) * 20
    highest = tuple(v for node in range(10) for v in (node % 5 + 1, len(space.ops) - 1) * 2)
    published = [space.from_string(name) for name in PUBLISHED[space.name]]
    return [space.sample(rng) for _ in range(200)] + canonical + [lowest, highest] + published


def num_valid(space) -> int:
    per_cell = math.prod(k * k for k in range(2, 7)) * len(space.ops) ** 10
    return per_cell ** 2


def input_limits() -> np.ndarray:
    """Exclusive bound of each of the 20 branch inputs: node k reads nodes 0..k-1."""
    return np.array([branch // 2 % 5 + 2 for branch in range(20)])


# --- basics and sampling ----------------------------------------------------------------------------

def test_registered_with_the_official_sizes():
    ws, full = get_space("cifar_ws"), get_space("cifar")
    assert isinstance(ws, CifarWsSpace) and isinstance(full, CifarSpace)
    assert (ws.vocab_size, ws.seq_len, ws.tokens_per_step, ws.ops) == (12, 40, 2, WS_OPS)
    assert (full.vocab_size, full.seq_len, full.tokens_per_step, full.ops) == (21, 60, 3, FULL_OPS)


def test_sampling_is_valid_and_covers_every_input_and_op(space):
    rng = np.random.default_rng(1)
    samples = np.array([space.sample(rng) for _ in range(3000)])
    assert all(space.is_valid(tuple(int(v) for v in row)) for row in samples[:100])
    for branch, limit in enumerate(input_limits()):
        assert set(samples[:, 2 * branch]) == set(range(limit))
        assert set(samples[:, 2 * branch + 1]) == set(range(len(space.ops)))


@pytest.mark.parametrize("arch", [
    [0] * 40,  # a list, not a tuple
    (0,) * 39,
    (0,) * 41,
    (True,) + (0,) * 39,
    (0, 0, 2) + (0,) * 37,  # node 2 reads itself
    (0, -1) + (0,) * 38,
    (0, 11) + (0,) * 38,
    "0 0 0 0",
])
def test_is_valid_rejects_malformed_archs(space, arch):
    assert not space.is_valid(arch)


# --- tokens -----------------------------------------------------------------------------------------

def test_tokens_follow_the_official_formats(space, archs):
    tokens = space.tokens_batch(archs)
    assert tokens.shape == (len(archs), space.seq_len) and tokens.dtype == np.int32
    arr = np.array(archs)
    blocks = tokens.reshape(len(archs), 20, space.tokens_per_step)
    np.testing.assert_array_equal(blocks[:, :, 0], arr[:, 0::2] + 1)
    if space.name == "cifar_ws":
        np.testing.assert_array_equal(blocks[:, :, 1], arr[:, 1::2] + 7)
    else:
        expected = np.array([FULL_OP_TOKENS[FULL_OPS[op]] for op in arr[:, 1::2].ravel()])
        np.testing.assert_array_equal(blocks[:, :, 1:].reshape(-1, 2), expected)
    assert [space.from_tokens(t) for t in tokens] == archs


def test_naonet_tokens_match_the_tf_encoding():
    tokens = get_space("cifar").to_tokens(get_space("cifar").from_string("naonet"))
    # node 2 of the normal cell: input 0 conv 3x3, input 1 avg pool 5x5
    np.testing.assert_array_equal(tokens[:6], [1, 9, 16, 2, 11, 17])


def test_from_tokens_rejects_invalid_sequences(space, archs):
    good = space.to_tokens(archs[0])
    width = space.tokens_per_step
    bad = []
    for position, value in [(0, 0), (0, 3), (width * 19, 7), (1, 1), (1, 0), (1, space.vocab_size)]:
        tokens = good.copy()
        tokens[position] = value
        bad.append(tokens)
    if space.name == "cifar":
        for pair in [(9, 15), (7, 16), (12, 14), (8, 16), (11, 19)]:  # conv 2x2, identity 3x3, ...
            tokens = good.copy()
            tokens[1:3] = pair
            bad.append(tokens)
    bad += [good[:-1], np.append(good, 1), good[None], good.astype(float), []]
    assert all(space.from_tokens(t) is None for t in bad)


# --- masks ------------------------------------------------------------------------------------------

def test_token_mask_allows_earlier_nodes_and_op_tokens(space):
    mask = space.token_mask()
    assert mask.shape == (space.seq_len, space.vocab_size) and mask.dtype == bool
    blocks = mask.reshape(20, space.tokens_per_step, space.vocab_size)
    for branch, limit in enumerate(input_limits()):
        assert set(np.flatnonzero(blocks[branch, 0])) == set(range(1, limit + 1))
    op_tokens = [range(7, 12)] if space.name == "cifar_ws" else [{7, 9, 11, 12}, {14, 15, 16, 17, 19, 20}]
    for position, allowed in enumerate(op_tokens, start=1):
        assert all(set(np.flatnonzero(row)) == set(allowed) for row in blocks[:, position])
    assert not mask[:, 0].any()


def test_transition_mask_refines_the_token_mask(space):
    transitions = space.transition_mask()
    assert transitions.shape == (space.seq_len, space.vocab_size, space.vocab_size)
    np.testing.assert_array_equal(transitions.any(axis=1), space.token_mask())
    if space.name == "cifar_ws":
        everywhere = np.broadcast_to(space.token_mask()[:, None], transitions.shape)
        np.testing.assert_array_equal(transitions, everywhere)
    else:
        kernels = transitions[2::3]
        for name, (op_type, kernel) in FULL_OP_TOKENS.items():
            assert kernels[:, op_type, kernel].all(), name
        assert kernels.sum() == 20 * len(FULL_OP_TOKENS)


def test_every_sequence_the_transition_mask_allows_decodes(space):
    transitions = space.transition_mask()
    rng = np.random.default_rng(2)
    # Greedy decoding on random logits, as the controller's greedy_decode restricts its argmax.
    previous = np.zeros(4000, np.int64)
    columns = []
    for step in range(space.seq_len):
        allowed = transitions[step, previous]
        previous = np.argmax(np.where(allowed, rng.random(allowed.shape), -np.inf), axis=1)
        columns.append(previous)
    sequences = np.stack(columns, axis=1)
    for tokens in sequences:
        arch = space.from_tokens(tokens)
        assert arch is not None and space.is_valid(arch)
        np.testing.assert_array_equal(space.to_tokens(arch), tokens)
    # The number of sequences the mask allows (counted exactly, position by position) is the number
    # of valid archs; with the round trip above the mask allows exactly the valid archs' tokens.
    counts = [1] + [0] * (space.vocab_size - 1)
    for step in range(space.seq_len):
        counts = [sum(c for c, ok in zip(counts, transitions[step, :, token]) if ok)
                  for token in range(space.vocab_size)]
    assert sum(counts) == num_valid(space)


def test_every_valid_arch_is_allowed_by_the_masks(space, archs):
    transitions, mask = space.transition_mask(), space.token_mask()
    positions = np.arange(space.seq_len)
    for tokens in space.tokens_batch(archs):
        previous = np.concatenate([[0], tokens[:-1]])
        assert transitions[positions, previous, tokens].all()
        assert mask[positions, tokens].all()


# --- strings ----------------------------------------------------------------------------------------

def test_strings_round_trip(space, archs):
    for arch in archs:
        text = space.to_string(arch)
        assert "\n" not in text and text.startswith("normal: [") and " | reduce: [" in text
        assert space.from_string(text) == arch
        official = space.to_official_string(arch)
        assert space.from_string(official) == arch
        assert space.from_string(official.replace(" | ", "  ")) == arch
    assert space.from_string("  " + space.to_string(archs[0]).replace(", ", " ,  ") + "\n") == archs[0]


def test_readable_string_names_nodes_inputs_and_ops():
    ws = get_space("cifar_ws")
    arch = ws.from_string("naonet_ws")
    assert ws.to_string(arch).startswith("normal: [0 sep_conv_5x5, 0 identity] "
                                         "[2 avg_pool_3x3, 1 max_pool_3x3]")


def test_published_cells_parse_to_their_official_strings(space):
    for name, official in PUBLISHED[space.name].items():
        arch = space.from_string(name)
        assert space.is_valid(arch)
        assert space.to_official_string(arch) == official
        assert space.from_string(official) == arch


def test_naonet_matches_the_json_description():
    full = get_space("cifar")

    def cell_nodes(arch, cell):
        values = arch[20 * cell:20 * cell + 20]
        return [(values[i] + 1, FULL_OPS[values[i + 1]], values[i + 2] + 1, FULL_OPS[values[i + 3]])
                for i in range(0, 20, 4)]

    naonet, naonet_json = full.from_string("naonet"), full.from_string("naonet_json")
    assert cell_nodes(naonet, 0) == cell_nodes(naonet_json, 0) == NAONET_JSON["normal"]
    assert cell_nodes(naonet_json, 1) == NAONET_JSON["reduce"]
    reduce = cell_nodes(naonet, 1)
    assert reduce[:2] + reduce[3:] == NAONET_JSON["reduce"][:2] + NAONET_JSON["reduce"][3:]
    # Reduction node 4 (the JSON's node_5): the same ops with their inputs swapped.
    in1, op1, in2, op2 = NAONET_JSON["reduce"][2]
    assert reduce[2] == (in2, op1, in1, op2)
    assert full.key(naonet) != full.key(naonet_json)


WS_OFFICIAL = PUBLISHED["cifar_ws"]["naonet_ws"]
FULL_OFFICIAL = PUBLISHED["cifar"]["naonet"]


@pytest.mark.parametrize("name, text, fragments", [
    ("cifar_ws", "2" + WS_OFFICIAL[1:], ["normal node 2 branch 1 reads node 2, which does not exist yet",
                                         "node 2 may read nodes 0..1"]),
    ("cifar_ws", WS_OFFICIAL[:-7] + "6 3 2 3", ["reduce node 6 branch 1 reads node 6", "nodes 0..5"]),
    ("cifar_ws", "-1" + WS_OFFICIAL[1:], ["reads node -1, which is not a node"]),
    ("cifar_ws", WS_OFFICIAL.replace("0 4 | 1 1", "0 9 | 1 1"),
     ["normal node 6 branch 2 has op id 9, outside 0..4", "space 'cifar'"]),
    ("cifar_ws", WS_OFFICIAL.replace("0 4 | 1 1", "0 17 | 1 1"), ["op id 17", "use op ids 0..4"]),
    ("cifar", WS_OFFICIAL, ["normal node 2 branch 1 has op id 1, outside 5..15", "space 'cifar_ws'"]),
    ("cifar", FULL_OFFICIAL.replace(" 1 11 0 7", " 1 16 0 7"), ["reduce node 6 branch 1 has op id 16",
                                                                 "use op ids 5..15"]),
    ("cifar_ws", WS_OFFICIAL.rsplit(" ", 1)[0], ["39 integers, expected 40"]),
    ("cifar_ws", WS_OFFICIAL.replace(" | ", " ").replace("0 4 2 2", "0 4 | 2 2"),
     ["'|' may only separate the two cells"]),
    ("cifar_ws", WS_OFFICIAL + " |", ["'|' may only separate the two cells"]),
    ("cifar_ws", "normal: [0 conv_3x3, 1 identity]", ["expected 'normal: [in op, in op]"]),
    ("cifar_ws", "normal: [0 conv_3x3, 1 identity] [0 identity, 1 identity] [0 identity, 1 identity] "
                 "[0 identity, 1 identity] [0 identity, 1 identity] | reduce: [0 identity, 1 identity] "
                 "[0 identity, 1 identity] [0 identity, 1 identity] [0 identity, 1 identity] "
                 "[0 identity, 1 identity]",
     ["unknown op 'conv_3x3' in normal node 2", "use one of sep_conv_3x3, sep_conv_5x5"]),
    ("cifar_ws", "normal: [0 identity, 1 identity] | reduce: [0 identity, 1 identity]",
     ["the normal cell needs exactly 5 nodes"]),
    ("cifar", "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|"
              "skip_connect~2|",
     ["expected a published cell (naonet, naonet_json)", "normal: [in op, in op]", "40 integers",
      "op ids 5..15"]),
    ("cifar_ws", "ops=input,conv3x3-bn-relu,output;edges=0-1,1-2", ["expected a published cell"]),
    ("cifar_ws", "naonet", ["published cell of space 'cifar'"]),
    ("cifar", "naonet_b", ["published cell of space 'cifar_ws'"]),
    ("cifar", "", ["0 integers, expected 40"]),
])
def test_bad_strings_raise_one_line_errors_with_the_fix(name, text, fragments):
    with pytest.raises(InvalidArchitectureError) as info:
        get_space(name).from_string(text)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"bad {name} arch ")
    for fragment in fragments:
        assert fragment in message


# --- key, symmetry, neighbours, graph ---------------------------------------------------------------

def swap_nodes(arch: tuple[int, ...], nodes) -> tuple[int, ...]:
    values = list(arch)
    for node in nodes:
        start = 4 * node
        values[start:start + 4] = values[start + 2:start + 4] + values[start:start + 2]
    return tuple(values)


def test_key_is_the_same_under_branch_swaps_only(space, archs):
    rng = np.random.default_rng(3)
    for arch in archs[:50]:
        nodes = np.flatnonzero(rng.integers(0, 2, 10))
        assert space.key(swap_nodes(arch, nodes)) == space.key(arch)
        assert space.key(arch) == space.to_string(space.canonical(arch))
    # Swapping only the inputs (or only the ops) of two different branches is another network.
    arch = (0, 0, 1, 1) * 10
    assert space.key((1, 0, 0, 1) + arch[4:]) != space.key(arch)
    assert space.key((0, 1, 1, 0) + arch[4:]) != space.key(arch)
    keys = {space.key(a) for a in archs}
    assert len(keys) == len({space.canonical(a) for a in archs})


def test_symmetry_permutations_swap_branches_and_keep_the_key(space, archs):
    perms = space.symmetry_permutations()
    assert perms.shape == (1024, space.seq_len)
    np.testing.assert_array_equal(perms[0], np.arange(space.seq_len))
    assert len({tuple(p) for p in perms}) == 1024
    identity = np.broadcast_to(perms[0], perms.shape)
    np.testing.assert_array_equal(np.sort(perms, axis=1), identity)
    np.testing.assert_array_equal(np.take_along_axis(perms, perms, axis=1), identity)  # swaps undo themselves
    for arch in archs[:5] + archs[-2:]:
        tokens = space.to_tokens(arch)
        keys = {space.key(space.from_tokens(tokens[p])) for p in perms}
        assert keys == {space.key(arch)}
    # The permutation with only normal node 2 swapped moves exactly that node's two branch blocks.
    width = space.tokens_per_step
    assert set(np.flatnonzero(perms[1] != perms[0])) == set(range(2 * width))


def test_neighbors_are_every_single_edit_once(space, archs):
    n_ops = len(space.ops)
    for arch in archs[:30] + archs[-2:]:
        neighbors = space.neighbors(arch)
        keys = [space.key(a) for a in neighbors]
        assert len(set(keys)) == len(keys) and space.key(arch) not in keys
        tokens = space.to_tokens(arch).reshape(20, space.tokens_per_step)
        for neighbor in neighbors:
            assert space.is_valid(neighbor)
            assert sum(a != b for a, b in zip(arch, neighbor)) == 1
            changed = (space.to_tokens(neighbor).reshape(20, -1) != tokens).any(axis=1)
            assert changed.sum() == 1
        # Each branch has (k - 1) other inputs and n_ops - 1 other ops; a node with two equal
        # branches yields each network twice, so it counts once.
        expected = 0
        for node in range(10):
            edits = (node % 5 + 1) + (n_ops - 1)
            equal = arch[4 * node:4 * node + 2] == arch[4 * node + 2:4 * node + 4]
            expected += edits if equal else 2 * edits
        assert len(neighbors) == expected
    assert len(space.neighbors((0, 0, 1, 1) * 10)) == 2 * (30 + 10 * (n_ops - 1))


def test_graph_draws_each_cell_apart_with_its_output():
    ws = get_space("cifar_ws")
    cells = ws.graph(ws.from_string("naonet_ws"))
    (normal_title, labels, normal), (reduce_title, reduce_labels, reduce) = cells
    assert (normal_title, reduce_title) == ("normal cell", "reduction cell")
    assert labels == reduce_labels and len(labels) == 8
    assert labels[0] == "in 0" and labels[7] == "out = concat"
    op_edges = [e for e in normal if e[2]]
    assert len(op_edges) == 10 and sum(1 for e in reduce if e[2]) == 10
    assert op_edges[:2] == [(0, 2, "sep_conv_5x5"), (0, 2, "identity")]
    assert (2, 3, "max_pool_3x3") in reduce  # reduce node 3 reads reduce node 2
    # normal: nodes 0, 1 and 2 are read; 3, 4, 5, 6 are not and are concatenated into the output.
    assert sorted(s for s, t, label in normal if t == 7) == [3, 4, 5, 6]
    assert all(label == "" for cell in (normal, reduce) for s, t, label in cell if t == 7)
