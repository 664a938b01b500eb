"""CIFAR cell networks: NAONet-B-36's parameter count, fixed networks in both op spaces, the supernet, and
the CPU forms of the convolutions and pools against XLA's.

The networks are tiny (F=4, N=1), yet on a 2-core CPU each jitted forward+backward takes seconds to
compile, so the tests share a few module-scoped compiled functions (XLA's backend optimisations off).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nao.models import cnn_ops
from nao.models.cnn import (
    SEARCH_CONFIG,
    Cell,
    CellNetworkConfig,
    LooseEndCombine,
    init_variables,
    input_groups,
    make_cell_network,
    make_supernet,
    param_count,
    weight_copies,
)
from nao.models.cnn_ops import (
    FULL_OPS,
    OPS,
    WS_OPS,
    ReLUConvBN,
    conv,
    depthwise_conv,
    drop_path,
    fan_in,
    make_op,
    pool,
)

NAONET_B = "0 1 0 2 0 1 2 2 1 3 0 2 4 0 1 3 2 1 0 3 | 1 1 1 0 2 1 2 4 1 0 2 3 3 1 2 2 0 2 0 2"
TINY = CellNetworkConfig(channels=4, layers=1, nodes=2, keep_prob=1.0)
# Two nodes, so that compiling is quick; the reduction cell leaves its input 0 loose.
WS_ARCH = [0, 0, 1, 4, 2, 1, 0, 3] + [1, 2, 1, 4, 2, 0, 1, 1]
# Each function runs a few times, so compile time dominates: spare XLA's optimisations.
FAST = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}


def parse(text: str) -> list[int]:
    return [int(t) for t in text.replace("|", " ").split()]


def full_space_arch(nodes: int) -> list[int]:
    """With nodes >= 3 it uses every one of the 11 ops, the stride-2 identity (a factorised reduction)
    included."""
    arch = []
    for cell in range(2):
        for i in range(nodes):
            branch = 2 * (cell * nodes + i)
            arch += [i % 2, branch % 11, i + 1, (branch + 1) % 11]
    return arch


def random_arch(rng: np.random.Generator, nodes: int, num_ops: int) -> np.ndarray:
    arch = np.zeros((2, nodes, 4), np.int32)
    for i in range(nodes):
        arch[:, i, 0::2] = rng.integers(0, i + 2, (2, 2))
        arch[:, i, 1::2] = rng.integers(0, num_ops, (2, 2))
    return arch


def train_step(model):
    """(loss, (logits, aux logits, new batch stats)), grads of one training step."""

    def step(variables, images, key, progress, *inputs):
        def loss_fn(params):
            (logits, aux), updates = model.apply(
                {**variables, "params": params}, images, *inputs, train=True, progress=progress,
                mutable=["batch_stats"], rngs={"droppath": key, "dropout": key})
            labels = jnp.arange(logits.shape[0]) % logits.shape[1]
            loss = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1))
            return loss, (logits, aux, updates["batch_stats"])

        return jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])

    return step


# -- fixed networks ---------------------------------------------------------------------------------


def test_naonet_b_36_has_the_official_parameter_count():
    images = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    for scan_cells in (False, True):
        config = dataclasses.replace(CellNetworkConfig(), scan_cells=scan_cells)
        model = make_cell_network(parse(NAONET_B), config=config)
        variables = jax.eval_shape(model.init, jax.random.key(0), images)
        assert param_count(variables["params"]) == 3_379_296
    # The scanned cells (4 per stage) also trace in training, with drop path and the aux head.
    rngs = {"droppath": jax.random.key(1), "dropout": jax.random.key(2)}
    (logits, aux), _ = jax.eval_shape(functools.partial(
        model.apply, train=True, progress=0.5, mutable=["batch_stats"], rngs=rngs), variables, images)
    assert logits.shape == aux.shape == (2, 10)


def test_arch_validation():
    with pytest.raises(ValueError, match="40 ints"):
        make_cell_network([0] * 39)
    bad_input = parse(NAONET_B)
    bad_input[4] = 3  # node 1 may read states 0..2
    with pytest.raises(ValueError, match="may read 0..2"):
        make_cell_network(bad_input)
    with pytest.raises(ValueError, match="op id 5"):
        make_cell_network([0, 5] + parse(NAONET_B)[2:])


@pytest.fixture(scope="module")
def ws_network():
    """A 5-op network with the aux head (which needs 32x32 images), its variables and train step."""
    model = make_cell_network(WS_ARCH, config=TINY)
    images = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    step = jax.jit(train_step(model), compiler_options=FAST)
    return model, init_variables(model, jax.random.key(0), images), images, step


def test_ws_network_forward_backward(ws_network):
    model, variables, images, step = ws_network
    (loss, (logits, aux, stats)), grads = step(variables, images, jax.random.key(2), 1.0)
    assert logits.shape == aux.shape == (2, 10)
    assert jax.tree.map(jnp.shape, grads) == jax.tree.map(jnp.shape, variables["params"])
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    assert jax.tree.structure(stats) == jax.tree.structure(variables["batch_stats"])
    # Running averages move in training; the aux head exists only when training.
    assert not np.allclose(stats["stem_bn"]["mean"], variables["batch_stats"]["stem_bn"]["mean"])
    eval_logits, eval_aux = jax.eval_shape(functools.partial(model.apply, train=False), variables, images)
    assert eval_logits.shape == (2, 10) and eval_aux is None


def test_drop_path_is_seeded_and_scheduled(ws_network):
    _, variables, images, step = ws_network  # no final dropout: the seed only drives drop path

    def logits(seed, progress):
        return step(variables, images, jax.random.key(seed), progress)[0][1][0]

    np.testing.assert_array_equal(logits(3, 1.0), logits(3, 1.0))
    assert not np.allclose(logits(3, 1.0), logits(4, 1.0))
    np.testing.assert_array_equal(logits(3, 0.0), logits(4, 0.0))  # keep 1 at the start of training
    cell = Cell(ops=WS_OPS, channels=4, nodes=2, reduction=False, train=True, bn_train=True,
                drop_path_keep_prob=0.8, total_cells=5)
    assert cell.keep_prob(4, 1.0) == pytest.approx(0.8)
    assert cell.keep_prob(0, 1.0) == pytest.approx(0.96)
    assert cell.keep_prob(4, 0.5) == pytest.approx(0.9)
    assert cell.clone(train=False).keep_prob(4, 1.0) is None


def test_drop_path_zeroes_whole_examples():
    x = jnp.ones((64, 2, 2, 3))
    y = drop_path(x, 0.5, jax.random.key(0))
    per_example = np.unique(np.asarray(y).reshape(64, -1), axis=1)
    assert per_example.shape == (64, 1) and set(per_example[:, 0]) == {0.0, 2.0}
    np.testing.assert_array_equal(y, drop_path(x, 0.5, jax.random.key(0)))
    np.testing.assert_array_equal(drop_path(x, 1.0, jax.random.key(0)), x)


def test_eval_needs_no_rng_and_ignores_drop_path(ws_network):
    model, variables, images, _ = ws_network
    evaluate = jax.jit(functools.partial(model.apply, train=False), compiler_options=FAST)
    logits, aux = evaluate(variables, images)  # no 'droppath' or 'dropout' rng given
    assert aux is None and bool(jnp.all(jnp.isfinite(logits)))


def test_full_space_network_forward_backward():
    config = dataclasses.replace(TINY, ops=FULL_OPS, nodes=3, use_aux_head=False, keep_prob=0.6)
    arch = full_space_arch(3)
    assert set(arch[1::2]) == set(range(11))
    model = make_cell_network(arch, config=config)
    images = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
    variables = init_variables(model, jax.random.key(0), images)
    forward = jax.jit(functools.partial(model.apply, train=True, mutable=["batch_stats"]),
                      compiler_options=FAST)
    rngs = {"droppath": jax.random.key(2), "dropout": jax.random.key(3)}
    (logits, aux), _ = forward(variables, images, rngs=rngs)
    assert logits.shape == (2, 10) and aux is None and bool(jnp.all(jnp.isfinite(logits)))
    # The backward pass only abstractly: one more compile would cost seconds.
    _, grads = jax.eval_shape(train_step(model), variables, images, jax.random.key(2), 0.5)
    assert jax.tree.map(jnp.shape, grads) == jax.tree.map(jnp.shape, variables["params"])


def test_init_variables_follows_the_initialisers(ws_network):
    model, variables, images, _ = ws_network
    assert jax.tree.map(jnp.shape, variables) == jax.tree.map(
        jnp.shape, jax.eval_shape(model.init, jax.random.key(0), images))
    flat = jax.tree_util.tree_flatten_with_path(variables)[0]
    kernels = [leaf for path, leaf in flat if path[-1].key == "kernel"]
    for path, leaf in flat:
        if path[-1].key in ("scale", "var"):
            np.testing.assert_array_equal(leaf, 1.0)
        elif path[-1].key in ("bias", "mean"):
            np.testing.assert_array_equal(leaf, 0.0)
    big = max(kernels, key=lambda k: k.size)
    assert float(jnp.std(big)) == pytest.approx(np.sqrt(2.0 / fan_in(big.shape)), rel=0.05)


# -- the weight-sharing supernet --------------------------------------------------------------------

NODES = 3  # of the tiny supernet


@pytest.fixture(scope="module")
def supernet():
    """Variables and images of a supernet at F=4, N=1, and its jitted eval (as NAO-WS scores archs) and
    train functions, which count their traces."""
    model = make_supernet(config=dataclasses.replace(SEARCH_CONFIG, channels=4, layers=1, nodes=NODES))
    images = jax.random.normal(jax.random.key(1), (4, 8, 8, 3))
    arch = jnp.zeros((2, NODES, 4), jnp.int32)
    variables = init_variables(model, jax.random.key(0), images, arch)
    traces = {"eval": 0, "train": 0}

    def evaluate(variables, images, arch):
        traces["eval"] += 1
        return model.apply(variables, images, arch, train=False, bn_train=True)[0]

    step = train_step(model)

    def train(variables, images, key, progress, arch):
        traces["train"] += 1
        return step(variables, images, key, progress, arch)

    jit = functools.partial(jax.jit, compiler_options=FAST)
    return variables, images, jit(evaluate), jit(train), traces


def test_supernet_compiles_once_for_every_arch(supernet):
    variables, images, evaluate, train, traces = supernet
    rng = np.random.default_rng(0)
    scores, losses = [], []
    for _ in range(20):
        arch = random_arch(rng, NODES, len(WS_OPS))
        scores.append(np.asarray(evaluate(variables, images, arch)))
        losses.append(float(train(variables, images, jax.random.key(0), 1.0, arch.reshape(-1))[0][0]))
    assert traces == {"eval": 1, "train": 1}
    assert evaluate._cache_size() == 1 and train._cache_size() == 1
    assert len({s.tobytes() for s in scores}) == 20 and len(set(losses)) == 20


def used_copies(arch: np.ndarray, nodes: int) -> set[tuple[str, str, int]]:
    """(cell kind, op parameter name, weight copy) of every branch of ``arch``."""
    used = set()
    for kind, reduction in (("normal", False), ("reduction", True)):
        groups = input_groups(nodes, reduction)
        for i in range(nodes):
            for side in range(2):
                in_id, op_id = arch[int(reduction), i, 2 * side:2 * side + 2]
                group = int(reduction and in_id >= 2)
                copy = weight_copies(i, side, int(in_id), nodes, reduction)[group]
                used.add((kind, WS_OPS[op_id] + groups[group][0], copy))
    return used


def test_supernet_trains_only_the_chosen_ops(supernet):
    variables, images, _, train, _ = supernet
    arch = random_arch(np.random.default_rng(1), NODES, len(WS_OPS))
    # progress 0: nothing is dropped, so every chosen op gets a gradient.
    (_, (_, _, stats)), grads = jax.device_get(
        train(variables, images, jax.random.key(0), 0.0, arch.reshape(-1)))
    old_stats = jax.device_get(variables["batch_stats"])
    expected = used_copies(arch, NODES)
    for cell in range(5):
        kind = "reduction" if cell in (1, 3) else "normal"
        for group in input_groups(NODES, kind == "reduction"):
            for op in WS_OPS:
                key = op + group[0]
                if key not in grads[f"cell_{cell}"]:
                    continue  # pools and the stride-1 identity have no weights
                for copy in range(2 * group[2]):
                    chosen = (kind, key, copy) in expected
                    touched = [np.any(g[copy] != 0) for g in jax.tree.leaves(grads[f"cell_{cell}"][key])]
                    moved = [np.any(new[copy] != old[copy]) for new, old in zip(
                        jax.tree.leaves(stats[f"cell_{cell}"][key]),
                        jax.tree.leaves(old_stats[f"cell_{cell}"][key]))]
                    assert all(touched) == chosen and any(touched) == chosen, (cell, key, copy)
                    assert all(moved) == chosen and any(moved) == chosen, (cell, key, copy)


def test_supernet_op_weights_are_the_fixed_networks_stacked():
    """For the ops an arch uses, the supernet's weight copy has the fixed network's shapes; the rest of
    the two networks differ by design (cell outputs of C channels against C times the loose ends)."""
    arch = parse(NAONET_B)
    images = jnp.zeros((1, 8, 8, 3))
    config = dataclasses.replace(TINY, nodes=5, use_aux_head=False)
    fixed = jax.eval_shape(make_cell_network(arch, config=config).init, jax.random.key(0), images)["params"]
    shared = jax.eval_shape(make_supernet(config=config).init, jax.random.key(0), images,
                            jnp.zeros(40, jnp.int32))["params"]
    checked = 0
    for cell in range(5):
        reduction = cell in (1, 3)
        genotype = np.reshape(arch[20:] if reduction else arch[:20], (5, 4))
        groups = input_groups(5, reduction)
        for i in range(5):
            for side in range(2):
                in_id, op_id = genotype[i, 2 * side:2 * side + 2]
                name = f"node{i}_{'xy'[side]}"
                if name not in fixed[f"cell_{cell}"]:
                    continue
                suffix, _, per_side = groups[int(reduction and in_id >= 2)]
                stacked = shared[f"cell_{cell}"][WS_OPS[op_id] + suffix]
                assert {s.shape[0] for s in jax.tree.leaves(stacked)} == {2 * per_side}
                assert jax.tree.map(lambda s: s.shape[1:], stacked) == jax.tree.map(
                    lambda s: s.shape, fixed[f"cell_{cell}"][name])
                checked += 1
    assert checked > 10


def test_loose_end_combine_is_the_conv_of_the_masked_concatenation():
    """Skipping the states that are not loose changes nothing: the output is ReLU-conv-BN of all states
    concatenated with the others zeroed, and the kernel rows of skipped states get no gradient."""
    states = list(jax.random.normal(jax.random.key(0), (4, 2, 5, 5, 3)))
    loose = jnp.array([True, False, False, True])
    combine, reference = LooseEndCombine(6), ReLUConvBN(6)
    variables = combine.init(jax.random.key(1), states, loose, True)
    mirrored = {"params": {"Conv_0": {"kernel": variables["params"]["kernel"]},
                           "BatchNorm_0": variables["params"]["BatchNorm_0"]},
                "batch_stats": variables["batch_stats"]}
    masked = jnp.concatenate([s * m for s, m in zip(states, loose)], axis=-1)
    out, stats = combine.apply(variables, states, loose, True, mutable=["batch_stats"])
    expected, expected_stats = reference.apply(mirrored, masked, True, mutable=["batch_stats"])
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(stats["batch_stats"]["BatchNorm_0"]["mean"],
                               expected_stats["batch_stats"]["BatchNorm_0"]["mean"], rtol=1e-5, atol=1e-6)

    def loss(variables):
        return jnp.sum(combine.apply(variables, states, loose, True, mutable=["batch_stats"])[0] ** 3)

    grad = jax.grad(loss)(variables)["params"]["kernel"].reshape(4, 3, 6)
    assert np.all(grad[1:3] == 0) and np.all(grad[0] != 0) and np.all(grad[3] != 0)


def test_weight_copies_give_each_branch_and_input_its_own_weights():
    for reduction in (False, True):
        copies = {}
        for i in range(5):
            for side in range(2):
                for j in range(i + 2):
                    group = int(reduction and j >= 2)
                    copies.setdefault(group, []).append(weight_copies(i, side, j, 5, reduction)[group])
        for group, (_, _, per_side) in enumerate(input_groups(5, reduction)):
            assert sorted(copies[group]) == list(range(2 * per_side))


def test_op_registry_covers_both_spaces():
    assert set(OPS) == set(WS_OPS) | set(FULL_OPS)
    with pytest.raises(ValueError, match="unknown op"):
        make_op("sep_conv_7x7", 4)


# -- the CPU forms of convolutions and pools ----------------------------------------------------------


def assert_same_vjp(fn, *args):
    """``fn(*args, flag)`` gives the same values and gradients (for a random cotangent) with the flag on
    (the CPU form) and off (XLA's op), up to float32 rounding."""
    results = []
    for flag in (True, False):
        y, vjp = jax.vjp(lambda *a, flag=flag: fn(*a, flag), *args)
        cotangent = jnp.asarray(np.random.default_rng(1).normal(size=y.shape), y.dtype)
        results.append((y, *vjp(cotangent)))
    for ours, xla in zip(*results):
        np.testing.assert_allclose(ours, xla, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(xla))))


@pytest.mark.parametrize("size", [8, 9])
@pytest.mark.parametrize("kernel,stride", [(3, 1), (3, 2), (5, 1), (5, 2)])
def test_shifted_depthwise_conv_matches_xla(size, kernel, stride):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, size, size, 3)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(kernel, kernel, 1, 3)), jnp.float32)
    assert_same_vjp(lambda x, w, shifted: depthwise_conv(x, w, (stride, stride), shifted), x, w)


@pytest.mark.parametrize("kernel,stride", [((1, 1), 1), ((1, 1), 2), ((3, 3), 1), ((3, 3), 2), ((1, 7), 1),
                                           ((7, 1), 2), ((2, 2), 1)])
def test_matmul_conv_matches_xla(kernel, stride):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 9, 9, 3)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(*kernel, 3, 4)), jnp.float32)
    assert_same_vjp(lambda x, w, matmul: conv(x, w, (stride, stride), matmul), x, w)


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("size,stride", [(2, 1), (2, 2), (3, 1), (3, 2), (5, 1), (5, 2)])
def test_shifted_pools_match_xla(kind, size, stride):
    # Values on a coarse grid: max pools see ties, whose gradient goes to the first maximum in both.
    x = jnp.asarray(np.round(np.random.default_rng(0).normal(size=(2, 9, 9, 3)) * 2) / 2, jnp.float32)
    if size == 2:  # as Pool does: zero rows and columns on the bottom and right, then no padding
        x, padding = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0))), ((0, 0), (0, 0))
    else:
        padding = ((size // 2,) * 2,) * 2
    assert_same_vjp(lambda x, shifted: pool(x, kind, (size, size), (stride, stride), padding, shifted), x)


def test_cpu_forms_give_the_networks_xla_results(ws_network, supernet, monkeypatch):
    """Whole training steps (the 5-op network, and the supernet on a random cell) with the CPU forms
    against XLA's ops everywhere: the same loss, logits, batch statistics and gradients."""
    model, variables, images, step = ws_network
    s_variables, s_images, _, s_train, _ = supernet
    arch = random_arch(np.random.default_rng(2), NODES, len(WS_OPS)).reshape(-1)
    key = jax.random.key(2)
    ours = [step(variables, images, key, 0.0), s_train(s_variables, s_images, key, 0.0, arch)]
    monkeypatch.setattr(cnn_ops, "_on_cpu", lambda: False)
    jit = functools.partial(jax.jit, compiler_options=FAST)
    s_model = make_supernet(config=dataclasses.replace(SEARCH_CONFIG, channels=4, layers=1, nodes=NODES))
    xla = [jit(train_step(model))(variables, images, key, 0.0),
           jit(train_step(s_model))(s_variables, s_images, key, 0.0, arch)]
    for ((loss, outputs), grads), ((xla_loss, xla_outputs), xla_grads) in zip(ours, xla):
        # Tolerances on each tree's scale: some gradients are zero but for rounding (a bias before a
        # BatchNorm), so their own scale is noise.
        for tree, xla_tree in ((loss, xla_loss), (outputs, xla_outputs), (grads, xla_grads)):
            scale = max(float(jnp.max(jnp.abs(leaf))) for leaf in jax.tree.leaves(xla_tree))
            for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(xla_tree)):
                np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4 * scale)
