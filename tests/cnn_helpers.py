"""What the CIFAR network tests share: tiny configs, an architecture, a training step and its comparison.

The networks are tiny (F=4, N=1), yet on a 2-core CPU each jitted forward+backward takes seconds to
compile, so the test modules share a few module-scoped compiled functions built with ``FAST``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from nao.models.cnn import CellNetworkConfig

NAONET_B = "0 1 0 2 0 1 2 2 1 3 0 2 4 0 1 3 2 1 0 3 | 1 1 1 0 2 1 2 4 1 0 2 3 3 1 2 2 0 2 0 2"
TINY = CellNetworkConfig(channels=4, layers=1, nodes=2, keep_prob=1.0)
# Each function runs a few times, so compile time dominates: spare XLA's optimisations.
FAST = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}


def parse(text: str) -> list[int]:
    return [int(t) for t in text.replace("|", " ").split()]


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


def assert_same_training_step(ours, xla) -> None:
    """Two ``train_step`` results (CPU forms, XLA's ops) agree: loss, logits, batch statistics, grads."""
    (loss, outputs), grads = ours
    (xla_loss, xla_outputs), xla_grads = xla
    # Tolerances on each tree's scale: some gradients are zero but for rounding (a bias before a
    # BatchNorm), so their own scale is noise.
    for tree, xla_tree in ((loss, xla_loss), (outputs, xla_outputs), (grads, xla_grads)):
        scale = max(float(jnp.max(jnp.abs(leaf))) for leaf in jax.tree.leaves(xla_tree))
        for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(xla_tree)):
            np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4 * scale)
