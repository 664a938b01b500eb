"""The CPU forms of convolutions, pools and BatchNorm's training step give XLA's values and gradients
(whole networks: ``test_cnn.py``, ``test_cnn_supernet.py``)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nao.models.cpu_kernels import batch_norm_train, conv, depthwise_conv, pool


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


def test_batch_norm_train_hand_vjp_matches_autodiff():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(2.0, 3.0, size=(4, 5, 5, 3)), jnp.float32)
    scale = jnp.asarray(rng.normal(size=3), jnp.float32)
    bias = jnp.asarray(rng.normal(size=3), jnp.float32)

    # Jitted: op by op, the many small reductions would compile one at a time.
    @functools.partial(jax.jit, static_argnums=3)
    def output(x, scale, bias, hand_vjp):
        return batch_norm_train(x, scale, bias, 1e-5, hand_vjp)[0]

    assert_same_vjp(output, x, scale, bias)
