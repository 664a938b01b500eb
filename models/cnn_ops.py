"""Operations of the convolutional cell spaces as NAO_V1 builds them (reference §1.2, §1.3), NHWC, Linen.

Every op is a module called as ``op(x, train)``, mapping C channels to C channels: ``train`` makes
BatchNorm use batch statistics (and update its running averages when ``batch_stats`` is mutable).
Convolutions are ReLU-conv-BN, separable convolutions are stacked twice, 1xk+kx1 convolutions are
factorised, pools have no BatchNorm, and a stride-2 identity is a factorised reduction. Weights are
initialised as NAO_V1 does (kaiming-normal kernels, BatchNorm scale 1 and bias 0).
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# Op names in id order: the NAO-WS space (reference §1.2) and the full NAO space (§1.3, PyTorch ids - 5).
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


class BatchNorm(nn.Module):
    """BatchNorm over N, H, W with PyTorch's defaults (momentum 0.1, eps 1e-5, unbiased running var)."""

    momentum: float = 0.9
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        features = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (features,))
        bias = self.param("bias", nn.initializers.zeros, (features,))
        running_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,))
        running_var = self.variable("batch_stats", "var", jnp.ones, (features,))
        if train:
            n = x.size // features
            mean, var = jnp.mean(x, axis=(0, 1, 2)), jnp.var(x, axis=(0, 1, 2))
            if self.is_mutable_collection("batch_stats") and not self.is_initializing():
                running_mean.value = self.momentum * running_mean.value + (1 - self.momentum) * mean
                running_var.value = (self.momentum * running_var.value
                                     + (1 - self.momentum) * var * (n / max(n - 1, 1)))
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
        return jax.lax.conv_general_dilated(
            x, kernel, self.stride, (((kh - 1) // 2,) * 2, ((kw - 1) // 2,) * 2),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=in_features if self.depthwise else 1)


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
        window, strides = (self.size, self.size), (self.stride, self.stride)
        if self.size == 2:
            x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
            padding = "VALID"
        else:
            padding = ((self.size // 2,) * 2,) * 2
        if self.kind == "max":
            return nn.max_pool(x, window, strides, padding)
        return nn.avg_pool(x, window, strides, padding, count_include_pad=False)


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


def drop_path(x: jax.Array, keep_prob: jax.Array | float, rng: jax.Array) -> jax.Array:
    """Zero whole examples of a branch with probability ``1 - keep_prob``, rescaling the kept ones."""
    keep = jax.random.bernoulli(rng, keep_prob, (x.shape[0], 1, 1, 1))
    return x * (keep / keep_prob)
