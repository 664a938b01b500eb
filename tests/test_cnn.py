"""The fixed CIFAR cell network: NAONet-B-36's parameter count, networks in both op spaces, drop path,
``init_variables``, and the CPU forms of its ops against XLA's in a whole training step.

The network is tiny (F=4, N=1), and the tests share one module-scoped compiled training step.
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
from nao.models.cnn import Cell, CellNetworkConfig, init_variables, make_cell_network, param_count
from nao.models.cnn_ops import FULL_OPS, WS_OPS, fan_in

# Two nodes, so that compiling is quick; the reduction cell leaves its input 0 loose.
WS_ARCH = [0, 0, 1, 4, 2, 1, 0, 3] + [1, 2, 1, 4, 2, 0, 1, 1]


def full_space_arch(nodes: int) -> list[int]:
    """With nodes >= 3 it uses every one of the 11 ops, the stride-2 identity (a factorised reduction)
    included."""
    arch = []
    for cell in range(2):
        for i in range(nodes):
            branch = 2 * (cell * nodes + i)
            arch += [i % 2, branch % 11, i + 1, (branch + 1) % 11]
    return arch


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


def test_cpu_forms_give_the_networks_xla_results(ws_network, monkeypatch):
    """A whole training step of the 5-op network with the CPU forms against XLA's ops everywhere: the
    same loss, logits, batch statistics and gradients."""
    model, variables, images, step = ws_network
    key = jax.random.key(2)
    ours = step(variables, images, key, 0.0)
    monkeypatch.setattr(cpu_kernels, "on_cpu", lambda: False)
    xla = jax.jit(train_step(model), compiler_options=FAST)(variables, images, key, 0.0)
    assert_same_training_step(ours, xla)
