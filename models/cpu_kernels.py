"""Convolutions, pools and BatchNorm's training step in the forms XLA:CPU runs fast, and the choice of form.

XLA:CPU runs grouped (depthwise) convolutions, convolutions inside loops (the scanned cells, the whole
supernet), pool gradients and autodiff of BatchNorm through slow generic code. On the CPU backend
``conv``, ``depthwise_conv`` and ``pool`` are built from the kh * kw shifted slices ("taps") of the
padded input instead, which XLA fuses into a few loops, and ``batch_norm_train`` has a hand-written
gradient. GPUs and TPUs keep XLA's convolutions, reduce-windows and autodiff. The choice is made when
tracing, from ``jax.default_backend()`` (``on_cpu``), unless a flag forces it; both forms give the same
values and gradients up to float rounding, with the same parameters, so checkpoints move freely
between backends.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Pads = tuple[tuple[int, int], tuple[int, int]]


def on_cpu() -> bool:
    """Whether the ops trace for the CPU backend, and so take their CPU forms."""
    return jax.default_backend() == "cpu"


# -- BatchNorm with batch statistics ------------------------------------------------------------------


def _batch_moments(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean and (biased) variance of NHWC ``x`` over N, H and W."""
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
    return _batch_norm_fwd(x, scale, bias, epsilon)[0]


_batch_norm.defvjp(_batch_norm_fwd, _batch_norm_bwd)


def batch_norm_train(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float,
                     hand_vjp: bool | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """BatchNorm of NHWC ``x`` with its own batch statistics: (output, mean, biased variance).

    ``hand_vjp`` gives the output a hand-written gradient, 1.6x faster than autodiff's on XLA:CPU.
    ``None``: ``hand_vjp`` on the CPU backend.
    """
    if hand_vjp is None:
        hand_vjp = on_cpu()
    mean, var = _batch_moments(x)
    if hand_vjp:  # it computes the moments again: the same ops, which XLA computes once
        return _batch_norm(x, scale, bias, epsilon), mean, var
    return (x - mean) * (scale * jax.lax.rsqrt(var + epsilon)) + bias, mean, var


# -- Convolutions and pools as shifted slices -------------------------------------------------------


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
        matmul = on_cpu()
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
        shifted = on_cpu()
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
        shifted = on_cpu()
    window, stride, pads = tuple(window), tuple(stride), tuple(map(tuple, pads))
    if shifted:
        return (_shifted_max_pool if kind == "max" else _shifted_avg_pool)(x, window, stride, pads)
    if kind == "max":
        return nn.max_pool(x, window, stride, pads)
    return nn.avg_pool(x, window, stride, pads, count_include_pad=False)
