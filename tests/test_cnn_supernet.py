"""The weight-sharing CIFAR supernet: one compilation for every architecture, only the chosen ops
trained, its op weights the fixed network's stacked, the loose-end output, weight copies, and the CPU
forms of its ops against XLA's in a whole training step.

The supernet is tiny (F=4, N=1, 3 nodes), and the tests share its module-scoped compiled functions.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cnn_helpers import FAST, NAONET_B, TINY, assert_same_training_step, parse, train_step

from nao.models import cpu_kernels
from nao.models.cnn import SEARCH_CONFIG, init_variables, make_cell_network
from nao.models.cnn_ops import WS_OPS, ReLUConvBN
from nao.models.cnn_supernet import LooseEndCombine, input_groups, make_supernet, weight_copies


def random_arch(rng: np.random.Generator, nodes: int, num_ops: int) -> np.ndarray:
    arch = np.zeros((2, nodes, 4), np.int32)
    for i in range(nodes):
        arch[:, i, 0::2] = rng.integers(0, i + 2, (2, 2))
        arch[:, i, 1::2] = rng.integers(0, num_ops, (2, 2))
    return arch


NODES = 3  # of the tiny supernet
CONFIG = dataclasses.replace(SEARCH_CONFIG, channels=4, layers=1, nodes=NODES)


@pytest.fixture(scope="module")
def supernet():
    """Variables and images of a supernet at F=4, N=1, and its jitted eval (as NAO-WS scores archs) and
    train functions, which count their traces."""
    model = make_supernet(config=CONFIG)
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


def test_cpu_forms_give_the_networks_xla_results(supernet, monkeypatch):
    """A whole training step of the supernet on a random cell with the CPU forms against XLA's ops
    everywhere: the same loss, logits, batch statistics and gradients."""
    variables, images, _, train, _ = supernet
    arch = random_arch(np.random.default_rng(2), NODES, len(WS_OPS)).reshape(-1)
    key = jax.random.key(2)
    ours = train(variables, images, key, 0.0, arch)
    monkeypatch.setattr(cpu_kernels, "on_cpu", lambda: False)
    xla = jax.jit(train_step(make_supernet(config=CONFIG)), compiler_options=FAST)(
        variables, images, key, 0.0, arch)
    assert_same_training_step(ours, xla)
