"""Operations of the convolutional cell spaces as NAO_V1 builds them (its ``operations.py``), NHWC, Linen.

Every op is a module called as ``op(x, train)``, mapping C channels to C channels: ``train`` makes
BatchNorm use batch statistics (and update its running averages when ``batch_stats`` is mutable).
Convolutions are ReLU-conv-BN, separable convolutions are stacked twice, 1xk+kx1 convolutions are
factorised, pools have no BatchNorm, and a stride-2 identity is a factorised reduction. Weights are
initialised as NAO_V1 does (kaiming-normal kernels, BatchNorm scale 1 and bias 0).

The convolutions, pools and BatchNorm's training step run through ``nao.models.cpu_kernels``, which
picks forms that XLA:CPU runs fast on the CPU backend; parameters, values and gradients are the same
on every backend.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from nao.models.cpu_kernels import batch_norm_train, conv, depthwise_conv, pool

# Op names in id order: the NAO-WS space (NAO_V1's ``OPERATIONS``, NAO-WS's ``cnn/model_search.py``)
# and the full NAO space (NAO_V1's ``OPERATIONS_large``, whose ids are these plus 5).
WS_OPS = ("sep_conv_3x3", "sep_conv_5x5", "avg_pool_3x3", "max_pool_3x3", "identity")
FULL_OPS = ("identity", "conv_1x1", "conv_3x3", "conv_1x3_3x1", "conv_1x7_7x1", "max_pool_2x2",
            "max_pool_3x3", "max_pool_5x5", "avg_pool_2x2", "avg_pool_3x3", "avg_pool_5x5")


def fan_in(shape: tuple[int, ...]) -> int:
    """Fan-in of a kernel: (..., kh, kw, in, out) for a convolution, (in, out) for a dense layer.
    Leading axes stack independent copies (weight sharing, scanned cells) and do not count."""
    return int(np.prod(shape[-4:-1])) if len(shape) >= 4 else shape[-2]


def kaiming_normal(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    """PyTorch's kaiming_normal_ (fan-in, gain sqrt(2)), which NAO_V1 applies to every kernel."""
    return jax.random.normal(key, shape, dtype) * np.sqrt(2.0 / fan_in(shape)).astype(dtype)


_SYNC_AXIS: list[str | None] = [None]  # set while a step is traced inside ``synced_batch_norm``


@contextlib.contextmanager
def synced_batch_norm(axis_name: str | None) -> Iterator[None]:
    """While a pmapped step is traced inside this context, training BatchNorms normalise with the
    statistics of the whole batch across the devices of ``axis_name`` (cross-device BatchNorm), so the
    update does not depend on how the batch is split. ``None``: each device's own share (NAO_V1's)."""
    previous, _SYNC_AXIS[0] = _SYNC_AXIS[0], axis_name
    try:
        yield
    finally:
        _SYNC_AXIS[0] = previous


class BatchNorm(nn.Module):
    """BatchNorm over N, H, W with PyTorch's defaults (momentum 0.1, eps 1e-5, unbiased running var).
    With batch statistics it is ``cpu_kernels.batch_norm_train``; across devices see
    ``synced_batch_norm``."""

    momentum: float = 0.9
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        features = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (features,))
        bias = self.param("bias", nn.initializers.zeros, (features,))
        running_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,))
        running_var = self.variable("batch_stats", "var", jnp.ones, (features,))
        axis = _SYNC_AXIS[0] if train and not self.is_initializing() else None
        if axis:
            mean = jax.lax.pmean(jnp.mean(x, axis=(0, 1, 2)), axis)
            var = jax.lax.pmean(jnp.mean(jnp.square(x), axis=(0, 1, 2)), axis) - jnp.square(mean)
            if self.is_mutable_collection("batch_stats"):
                n = x.size // features * jax.lax.psum(1, axis)
                running_mean.value = self.momentum * running_mean.value + (1 - self.momentum) * mean
                running_var.value = (self.momentum * running_var.value
                                     + (1 - self.momentum) * var * (n / jnp.maximum(n - 1, 1)))
        elif train:
            n = x.size // features
            y, mean, var = batch_norm_train(x, scale, bias, self.epsilon)
            if self.is_mutable_collection("batch_stats") and not self.is_initializing():
                running_mean.value = self.momentum * running_mean.value + (1 - self.momentum) * mean
                running_var.value = (self.momentum * running_var.value
                                     + (1 - self.momentum) * var * (n / max(n - 1, 1)))
            return y
        else:
            mean, var = running_mean.value, running_var.value
        return (x - mean) * (scale * jax.lax.rsqrt(var + self.epsilon)) + bias


class Conv(nn.Module):
    """Bias-free convolution with PyTorch-style symmetric padding ``(k - 1) // 2`` per side."""

    features: int
    kernel: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    depthwise: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kh, kw = self.kernel
        in_features = x.shape[-1]
        shape = (kh, kw, 1, in_features) if self.depthwise else (kh, kw, in_features, self.features)
        kernel = self.param("kernel", kaiming_normal, shape)
        return depthwise_conv(x, kernel, self.stride) if self.depthwise else conv(x, kernel, self.stride)


class ReLUConvBN(nn.Module):
    channels: int
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        return BatchNorm()(Conv(self.channels, self.kernel, self.stride)(nn.relu(x)), train)


class SepConv(nn.Module):
    """(ReLU, depthwise kxk, pointwise, BN) twice; only the first depthwise conv is strided."""

    channels: int
    kernel: int
    stride: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        for stride in (self.stride, 1):
            x = Conv(x.shape[-1], (self.kernel, self.kernel), (stride, stride), depthwise=True)(nn.relu(x))
            x = BatchNorm()(Conv(self.channels, (1, 1))(x), train)
        return x


class FactorizedConv(nn.Module):
    """ReLU-conv(1xk)-BN then ReLU-conv(kx1)-BN; the stride is split between the two."""

    channels: int
    kernel: int
    stride: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        k, s = self.kernel, self.stride
        x = ReLUConvBN(self.channels, (1, k), (1, s))(x, train)
        return ReLUConvBN(self.channels, (k, 1), (s, 1))(x, train)


class FactorizedReduce(nn.Module):
    """Halve H and W: two strided 1x1 convs on pixel grids offset by one, concatenated, then BN."""

    channels: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        assert self.channels % 2 == 0, "factorized reduction needs an even channel count"
        shifted = jnp.pad(x[:, 1:, 1:], ((0, 0), (0, 1), (0, 1), (0, 0)))
        paths = [Conv(self.channels // 2, (1, 1), (2, 2))(inp) for inp in (x, shifted)]
        return BatchNorm()(jnp.concatenate(paths, axis=-1), train)


class Pool(nn.Module):
    """Max or average pool, no weights. Odd windows pad k // 2 (average excludes the padding);
    2x2 windows are zero-padded on the bottom and right first, as NAO_V1 does."""

    kind: str
    size: int
    stride: int = 1

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if self.size == 2:
            x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
            padding = ((0, 0), (0, 0))
        else:
            padding = ((self.size // 2,) * 2,) * 2
        return pool(x, self.kind, (self.size, self.size), (self.stride, self.stride), padding)


class Identity(nn.Module):
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        return x


def _identity(channels: int, stride: int, **kwargs) -> nn.Module:
    return Identity(**kwargs) if stride == 1 else FactorizedReduce(channels, **kwargs)


def _pool(kind: str, size: int) -> Callable[..., nn.Module]:
    return lambda channels, stride, **kwargs: Pool(kind, size, stride, **kwargs)


# name -> constructor(channels, stride, **module kwargs such as name or parent).
OPS: dict[str, Callable[..., nn.Module]] = {
    "identity": _identity,
    "sep_conv_3x3": lambda c, s, **kw: SepConv(c, 3, s, **kw),
    "sep_conv_5x5": lambda c, s, **kw: SepConv(c, 5, s, **kw),
    "conv_1x1": lambda c, s, **kw: ReLUConvBN(c, (1, 1), (s, s), **kw),
    "conv_3x3": lambda c, s, **kw: ReLUConvBN(c, (3, 3), (s, s), **kw),
    "conv_1x3_3x1": lambda c, s, **kw: FactorizedConv(c, 3, s, **kw),
    "conv_1x7_7x1": lambda c, s, **kw: FactorizedConv(c, 7, s, **kw),
    "max_pool_2x2": _pool("max", 2),
    "max_pool_3x3": _pool("max", 3),
    "max_pool_5x5": _pool("max", 5),
    "avg_pool_2x2": _pool("avg", 2),
    "avg_pool_3x3": _pool("avg", 3),
    "avg_pool_5x5": _pool("avg", 5),
}


def make_op(op: str, channels: int, stride: int = 1, **kwargs) -> nn.Module:
    """The op named ``op`` with ``channels`` outputs and ``stride``; ``kwargs`` go to the module."""
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}: choose from {', '.join(OPS)}")
    return OPS[op](channels, stride, **kwargs)


def drop_path_scale(keep_prob: jax.Array | float, rng: jax.Array, batch: int) -> jax.Array:
    """Drop path's (batch, 1, 1, 1) factors: 0 with probability ``1 - keep_prob``, else ``1 / keep_prob``."""
    return jax.random.bernoulli(rng, keep_prob, (batch, 1, 1, 1)) / keep_prob


def drop_path(x: jax.Array, keep_prob: jax.Array | float, rng: jax.Array) -> jax.Array:
    """Zero whole examples of a branch with probability ``1 - keep_prob``, rescaling the kept ones."""
    return x * drop_path_scale(keep_prob, rng, x.shape[0])
