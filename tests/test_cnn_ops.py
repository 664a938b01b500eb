"""The CIFAR ops: the op registry covers both spaces, drop path zeroes whole examples."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nao.models.cnn_ops import FULL_OPS, OPS, WS_OPS, drop_path, make_op


def test_op_registry_covers_both_spaces():
    assert set(OPS) == set(WS_OPS) | set(FULL_OPS)
    with pytest.raises(ValueError, match="unknown op"):
        make_op("sep_conv_7x7", 4)


def test_drop_path_zeroes_whole_examples():
    x = jnp.ones((64, 2, 2, 3))
    y = drop_path(x, 0.5, jax.random.key(0))
    per_example = np.unique(np.asarray(y).reshape(64, -1), axis=1)
    assert per_example.shape == (64, 1) and set(per_example[:, 0]) == {0.0, 2.0}
    np.testing.assert_array_equal(y, drop_path(x, 0.5, jax.random.key(0)))
    np.testing.assert_array_equal(drop_path(x, 1.0, jax.random.key(0)), x)
