"""Operations of the convolutional cell spaces as NAO_V1 builds them (reference §1.2, §1.3), NHWC, Linen.

Every op is a module called as ``op(x, train)``, mapping C channels to C channels: ``train`` makes
BatchNorm use batch statistics (and update its running averages when ``batch_stats`` is mutable).
Convolutions are ReLU-conv-BN, separable convolutions are stacked twice, 1xk+kx1 convolutions are
factorised, pools have no BatchNorm, and a stride-2 identity is a factorised reduction. Weights are
initialised as NAO_V1 does (kaiming-normal kernels, BatchNorm scale 1 and bias 0).

On the CPU backend convolutions, pools and BatchNorm's training gradient take forms that XLA:CPU runs
several times faster (``conv``, ``depthwise_conv``, ``pool``: shifted slices and matrix products);
the parameters, values and gradients are the same, so checkpoints move freely between backends.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator

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


def _on_cpu() -> bool:
    return jax.default_backend() == "cpu"


def _batch_moments(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    return jnp.mean(x, axis=(0, 1, 2)), jnp.var(x, axis=(0, 1, 2))


def _batch_norm_fwd(x: jax.Array, scale: jax.Array, bias: jax.Array,
                    epsilon: float) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    mean, var = _batch_moments(x)
    inv = jax.lax.rsqrt(var + epsilon)
    return (x - mean) * (scale * inv) + bias, (x, mean, inv, scale)


def _batch_norm_bwd(epsilon: float, residuals: tuple[jax.Array, ...],
                    g: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    # The textbook gradient: both sums in one pass over (x, g), then one pass for dx. Autodiff of the
    # forward reduces through the mean and the variance separately, 1.6x slower on CPU.
    x, mean, inv, scale = residuals
    n = x.size // x.shape[-1]
    x_hat = (x - mean) * inv
    d_bias, d_scale = jnp.sum(g, axis=(0, 1, 2)), jnp.sum(g * x_hat, axis=(0, 1, 2))
    return (scale * inv) * (g - d_bias / n - x_hat * (d_scale / n)), d_scale, d_bias


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _batch_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float) -> jax.Array:
    """BatchNorm with batch statistics, with a hand-written gradient."""
    return _batch_norm_fwd(x, scale, bias, epsilon)[0]


_batch_norm.defvjp(_batch_norm_fwd, _batch_norm_bwd)


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
    On the CPU backend its training gradient is hand-written (``_batch_norm``); across devices see
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
            mean, var = _batch_moments(x)  # the same ops as in _batch_norm's: XLA computes them once
            if self.is_mutable_collection("batch_stats") and not self.is_initializing():
                running_mean.value = self.momentum * running_mean.value + (1 - self.momentum) * mean
                running_var.value = (self.momentum * running_var.value
                                     + (1 - self.momentum) * var * (n / max(n - 1, 1)))
            if _on_cpu():
                return _batch_norm(x, scale, bias, self.epsilon)
        else:
            mean, var = running_mean.value, running_var.value
        return (x - mean) * (scale * jax.lax.rsqrt(var + self.epsilon)) + bias


# -- Convolutions and pools as shifted slices -------------------------------------------------------
# XLA:CPU runs grouped (depthwise) convolutions, convolutions inside loops (the scanned cells, the whole
# supernet) and pool gradients through slow generic code. On the CPU backend the ops below are built
# from the kh * kw shifted slices ("taps") of the padded input instead, which XLA fuses into a few
# loops, with hand-written gradients. GPUs and TPUs keep XLA's convolutions and reduce-windows. The
# choice is made when tracing, from ``jax.default_backend()``; both give the same values and gradients
# up to float rounding, with the same parameters.

Pads = tuple[tuple[int, int], tuple[int, int]]


def _padding(kernel: tuple[int, ...]) -> Pads:
    """PyTorch-style symmetric padding ``(k - 1) // 2`` per side, for (kh, kw, ...) kernels."""
    return (((kernel[0] - 1) // 2,) * 2, ((kernel[1] - 1) // 2,) * 2)


def _out_hw(in_hw: tuple[int, ...], window: tuple[int, int], stride: tuple[int, int],
            pads: Pads) -> tuple[int, int]:
    return tuple((n + lo + hi - k) // s + 1 for n, k, s, (lo, hi) in zip(in_hw, window, stride, pads))


def _taps(x: jax.Array, window: tuple[int, int], stride: tuple[int, int], pads: Pads,
          fill: float = 0.0) -> list[jax.Array]:
    """For each window offset (a, b), row-major, the (N, Ho, Wo, C) array of the inputs it covers:
    ``x_padded[:, a + sh * i, b + sw * j]`` with ``fill`` as the padding."""
    x = jax.lax.pad(x, jnp.asarray(fill, x.dtype), ((0, 0, 0), (*pads[0], 0), (*pads[1], 0), (0, 0, 0)))
    (kh, kw), (sh, sw) = window, stride
    ho, wo = _out_hw(x.shape[1:3], window, stride, ((0, 0), (0, 0)))
    n, c = x.shape[0], x.shape[-1]
    return [jax.lax.slice(x, (0, a, b, 0), (n, a + sh * (ho - 1) + 1, b + sw * (wo - 1) + 1, c),
                          (1, sh, sw, 1))
            for a in range(kh) for b in range(kw)]


def _transposed_taps(y: jax.Array, in_hw: tuple[int, int], window: tuple[int, int], stride: tuple[int, int],
                     pads: Pads, fill: float = 0.0) -> list[jax.Array]:
    """The transpose of ``_taps`` for a per-output ``y`` (N, Ho, Wo, C): for each offset (a, b), the
    (N, H, W, C) array whose pixel (v, u) holds ``y[:, i, j]`` where ``a + sh * i = v + pad_h`` and
    ``b + sw * j = u + pad_w``, else ``fill``. Summing ``taps[t]`` weighted per tap gives the
    gradient of a sum of weighted ``_taps``, in one fused loop."""
    (kh, kw), (sh, sw), (ho, wo) = window, stride, y.shape[1:3]
    # Dilate by the stride, then pad so that pixel v of tap (a, b) sits at v + kh - 1 - a.
    config = [(0, 0, 0), (0, 0, 0), (0, 0, 0), (0, 0, 0)]
    for axis, size, k, s, out in ((1, in_hw[0], kh, sh, ho), (2, in_hw[1], kw, sw, wo)):
        low = k - 1 - pads[axis - 1][0]
        config[axis] = (low, size + k - 1 - low - (s * (out - 1) + 1), s - 1)
    y = jax.lax.pad(y, jnp.asarray(fill, y.dtype), config)
    n, c = y.shape[0], y.shape[-1]
    return [jax.lax.slice(y, (0, kh - 1 - a, kw - 1 - b, 0),
                          (n, kh - 1 - a + in_hw[0], kw - 1 - b + in_hw[1], c))
            for a in range(kh) for b in range(kw)]


def _weighted_sum(taps: list[jax.Array], weights: list[jax.Array]) -> jax.Array:
    out = taps[0] * weights[0]
    for tap, weight in zip(taps[1:], weights[1:]):
        out = out + tap * weight
    return out


def _depthwise_fwd(x: jax.Array, kernel: jax.Array,
                   stride: tuple[int, int]) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    weights = list(kernel.reshape(-1, kernel.shape[-1]))
    return _weighted_sum(_taps(x, kernel.shape[:2], stride, _padding(kernel.shape)), weights), (x, kernel)


def _depthwise_bwd(stride: tuple[int, int], residuals: tuple[jax.Array, jax.Array],
                   g: jax.Array) -> tuple[jax.Array, jax.Array]:
    # Autodiff of the slices would add kh * kw padded copies of g one by one, and reduce the kernel's
    # gradient in kh * kw passes that XLA fuses poorly.
    x, kernel = residuals
    window, pads = kernel.shape[:2], _padding(kernel.shape)
    dx = _weighted_sum(_transposed_taps(g, x.shape[1:3], window, stride, pads),
                       list(kernel.reshape(-1, kernel.shape[-1])))
    # Kernel gradient: one tap per scan step, so each reduction streams x and g once and XLA compiles
    # one reduction loop, not kh * kw of them.
    x_padded = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    (sh, sw), (ho, wo) = stride, g.shape[1:3]
    extent = (x.shape[0], sh * (ho - 1) + 1, sw * (wo - 1) + 1, x.shape[-1])

    def tap_grad(_, tap: jax.Array) -> tuple[None, jax.Array]:
        covered = jax.lax.dynamic_slice(x_padded, (0, tap // window[1], tap % window[1], 0), extent)
        return None, jnp.sum(covered[:, ::sh, ::sw] * g, axis=(0, 1, 2))

    _, dk = jax.lax.scan(tap_grad, None, jnp.arange(window[0] * window[1]))
    return dx, dk.reshape(kernel.shape).astype(kernel.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _shifted_depthwise(x: jax.Array, kernel: jax.Array, stride: tuple[int, int]) -> jax.Array:
    return _depthwise_fwd(x, kernel, stride)[0]


_shifted_depthwise.defvjp(_depthwise_fwd, _depthwise_bwd)


def _max_pool_fwd(x: jax.Array, window: tuple[int, int], stride: tuple[int, int],
                  pads: Pads) -> tuple[jax.Array, tuple[jax.Array, tuple[int, int]]]:
    taps = _taps(x, window, stride, pads, -jnp.inf)
    best, first = taps[0], jnp.zeros(taps[0].shape, jnp.int8)  # int8: windows have at most 127 taps
    for t, tap in enumerate(taps[1:], 1):
        better = tap > best  # strict, so ties go to the first maximum, as XLA's and PyTorch's gradients
        best, first = jnp.where(better, tap, best), jnp.where(better, jnp.int8(t), first)
    return best, (first, x.shape[1:3])


def _max_pool_bwd(window: tuple[int, int], stride: tuple[int, int], pads: Pads,
                  residuals: tuple[jax.Array, tuple[int, int]], g: jax.Array) -> tuple[jax.Array]:
    first, in_hw = residuals
    grads = _transposed_taps(g, in_hw, window, stride, pads)
    owners = _transposed_taps(first, in_hw, window, stride, pads, -1)
    dx = jnp.where(owners[0] == 0, grads[0], 0.0)
    for t in range(1, len(grads)):
        dx = dx + jnp.where(owners[t] == t, grads[t], 0.0)
    return (dx,)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _shifted_max_pool(x: jax.Array, window: tuple[int, int], stride: tuple[int, int],
                      pads: Pads) -> jax.Array:
    return _max_pool_fwd(x, window, stride, pads)[0]


_shifted_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def _valid_counts(in_hw: tuple[int, int], window: tuple[int, int], stride: tuple[int, int],
                  pads: Pads) -> np.ndarray:
    """(1, Ho, Wo, 1): how many unpadded pixels each window covers (NumPy, so a constant when traced)."""
    ones = np.pad(np.ones(in_hw), pads)
    (kh, kw), (sh, sw), (ho, wo) = window, stride, _out_hw(in_hw, window, stride, pads)
    counts = sum(ones[a:a + sh * (ho - 1) + 1:sh, b:b + sw * (wo - 1) + 1:sw]
                 for a in range(kh) for b in range(kw))
    return counts[None, :, :, None]


def _avg_pool_fwd(x: jax.Array, window: tuple[int, int], stride: tuple[int, int],
                  pads: Pads) -> tuple[jax.Array, tuple[int, int]]:
    taps = _taps(x, window, stride, pads)
    total = functools.reduce(jnp.add, taps)
    return total / _valid_counts(x.shape[1:3], window, stride, pads).astype(x.dtype), x.shape[1:3]


def _avg_pool_bwd(window: tuple[int, int], stride: tuple[int, int], pads: Pads, in_hw: tuple[int, int],
                  g: jax.Array) -> tuple[jax.Array]:
    g = g / _valid_counts(in_hw, window, stride, pads).astype(g.dtype)
    return (functools.reduce(jnp.add, _transposed_taps(g, in_hw, window, stride, pads)),)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _shifted_avg_pool(x: jax.Array, window: tuple[int, int], stride: tuple[int, int],
                      pads: Pads) -> jax.Array:
    return _avg_pool_fwd(x, window, stride, pads)[0]


_shifted_avg_pool.defvjp(_avg_pool_fwd, _avg_pool_bwd)


def conv(x: jax.Array, kernel: jax.Array, stride: tuple[int, int] = (1, 1),
         matmul: bool | None = None) -> jax.Array:
    """Convolution of NHWC ``x`` with an HWIO kernel, symmetric padding ``(k - 1) // 2`` per side.

    ``matmul`` computes it as one matrix product of the taps (im2col; a 1x1 kernel needs no copy).
    XLA:CPU runs convolutions inside loops 5-30x slower than that product, and the kernel gradients
    of 1x1 convolutions slower even outside them. ``None``: ``matmul`` on the CPU backend.
    """
    if matmul is None:
        matmul = _on_cpu()
    pads = _padding(kernel.shape)
    if not matmul:
        return jax.lax.conv_general_dilated(x, kernel, stride, pads,
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))
    taps = _taps(x, kernel.shape[:2], stride, pads)
    columns = taps[0] if len(taps) == 1 else jnp.concatenate(taps, axis=-1)
    # As a 2D product: the kernel gradient then contracts one axis, which XLA:CPU transposes 3x faster
    # than the three (N, H, W) of the 4D form.
    out = columns.reshape(-1, columns.shape[-1]) @ kernel.reshape(-1, kernel.shape[-1])
    return out.reshape(*columns.shape[:3], kernel.shape[-1])


def depthwise_conv(x: jax.Array, kernel: jax.Array, stride: tuple[int, int] = (1, 1),
                   shifted: bool | None = None) -> jax.Array:
    """Depthwise convolution of NHWC ``x`` with a ``(kh, kw, 1, C)`` kernel, padded as ``conv``.

    ``shifted`` sums the kh * kw taps scaled per channel: XLA:CPU's grouped convolution is 5-15x
    slower than that. ``None``: ``shifted`` on the CPU backend.
    """
    if shifted is None:
        shifted = _on_cpu()
    if shifted:
        return _shifted_depthwise(x, kernel, tuple(stride))
    return jax.lax.conv_general_dilated(x, kernel, stride, _padding(kernel.shape),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        feature_group_count=x.shape[-1])


def pool(x: jax.Array, kind: str, window: tuple[int, int], stride: tuple[int, int], pads: Pads,
         shifted: bool | None = None) -> jax.Array:
    """Max or average (``kind``) pool of NHWC ``x``; the average excludes the padding.

    ``shifted`` takes the max or mean of the taps: XLA:CPU's pool gradients (select-and-scatter, and
    reduce-windows in loops) are several times slower. ``None``: ``shifted`` on the CPU backend.
    """
    if shifted is None:
        shifted = _on_cpu()
    window, stride, pads = tuple(window), tuple(stride), tuple(map(tuple, pads))
    if shifted:
        return (_shifted_max_pool if kind == "max" else _shifted_avg_pool)(x, window, stride, pads)
    if kind == "max":
        return nn.max_pool(x, window, stride, pads)
    return nn.avg_pool(x, window, stride, pads, count_include_pad=False)


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
