"""Image batches: augmentation on the device, batching and prefetching on the host.

The augmentation functions are pure jax on a whole (N, H, W, C) batch with an explicit
PRNG key, so they run inside the jitted train step; their int arguments (padding, cutout
size) are static. ``augment`` follows the NAO recipes (NAO_V1 `train_cifar.py` and `train_search.py`):

    normalise with the per-channel mean/std -> pad 4 and crop -> horizontal flip -> cutout

Padding and cutout both write zeros after the normalisation, so they show the mean colour,
as NAO-WS (TF) does (NAO_V1's cutout also acts on the normalised tensor; its crop pads the
raw image with black instead).

On the host, ``epoch_batches`` gives the batches of one epoch in an order fixed by
(seed, epoch), so a resumed run re-creates epoch k exactly; ``prefetch`` produces them in
a background thread (``nao.models.parallel.shard`` then lays a global batch out for pmap).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np

T = TypeVar("T")


def normalize(images: jax.Array, mean: Sequence[float], std: Sequence[float],
              dtype: jnp.dtype = jnp.float32) -> jax.Array:
    """(images / 255 - mean) / std per channel; uint8 in, ``dtype`` out."""
    scale = 1.0 / (255.0 * jnp.asarray(std, jnp.float32))
    shift = jnp.asarray(mean, jnp.float32) / jnp.asarray(std, jnp.float32)
    return (images.astype(jnp.float32) * scale - shift).astype(dtype)


def random_crop(key: jax.Array, images: jax.Array, padding: int = 4) -> jax.Array:
    """Pad each image with ``padding`` zeros on every side, then cut a window of the original
    size at an offset drawn per image (uniform over the 2*padding+1 positions per axis)."""
    if padding == 0:
        return images
    n, h, w, c = images.shape
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    offsets = jax.random.randint(key, (n, 2), 0, 2 * padding + 1)
    window = jax.vmap(lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, c)))
    return window(padded, offsets)


def random_flip(key: jax.Array, images: jax.Array) -> jax.Array:
    """Mirror each image left-right with probability 1/2."""
    flip = jax.random.bernoulli(key, 0.5, (images.shape[0],))
    return jnp.where(flip[:, None, None, None], images[:, :, ::-1], images)


def cutout(key: jax.Array, images: jax.Array, size: int = 16) -> jax.Array:
    """Zero one size x size square per image, centred on a uniformly drawn pixel and clipped
    at the borders (DeVries & Taylor's Cutout as NAO uses it: an odd size cuts size - 1)."""
    if size == 0:
        return images
    n, h, w, _ = images.shape
    ky, kx = jax.random.split(key)
    cy = jax.random.randint(ky, (n, 1), 0, h)
    cx = jax.random.randint(kx, (n, 1), 0, w)
    rows, cols = jnp.arange(h)[None], jnp.arange(w)[None]
    in_rows = (rows >= cy - size // 2) & (rows < cy + size // 2)  # (n, h)
    in_cols = (cols >= cx - size // 2) & (cols < cx + size // 2)  # (n, w)
    hole = in_rows[:, :, None] & in_cols[:, None, :]
    return jnp.where(hole[..., None], jnp.zeros((), images.dtype), images)


def augment(key: jax.Array, images: jax.Array, mean: Sequence[float], std: Sequence[float], *,
            padding: int = 4, flip: bool = True, cutout_size: int = 16,
            dtype: jnp.dtype = jnp.float32) -> jax.Array:
    """The training transform of a uint8 batch: normalise, random crop, flip, cutout (0 = off)."""
    k_crop, k_flip, k_cut = jax.random.split(key, 3)
    x = random_crop(k_crop, normalize(images, mean, std, dtype), padding)
    if flip:
        x = random_flip(k_flip, x)
    return cutout(k_cut, x, cutout_size)


def batches_per_epoch(num_examples: int, batch_size: int, drop_remainder: bool = True) -> int:
    """How many batches ``epoch_batches`` yields."""
    return num_examples // batch_size if drop_remainder else -(-num_examples // batch_size)


def epoch_batches(images: np.ndarray, labels: np.ndarray, batch_size: int, seed: int, epoch: int,
                  drop_remainder: bool = True, *, shuffle: bool = True,
                  start_batch: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The (images, labels) batches of one epoch, from any two arrays of the same length.

    The order depends only on (seed, epoch), so a resumed run gets the same batches;
    ``start_batch`` skips the batches a checkpoint taken mid-epoch has already seen. With
    ``drop_remainder`` every batch has ``batch_size`` rows (one compiled step shape);
    without it the last batch is smaller. ``shuffle=False`` keeps the stored order (eval).
    """
    n = len(images)
    if len(labels) != n:
        raise ValueError(f"{n} images but {len(labels)} labels")
    if batch_size <= 0 or (drop_remainder and batch_size > n):
        raise ValueError(f"batch_size={batch_size} must be between 1 and the number of examples ({n})")
    # One generator per (seed, epoch): epoch k's order does not depend on how many epochs ran before.
    order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
    for b in range(start_batch, batches_per_epoch(n, batch_size, drop_remainder)):
        idx = order[b * batch_size:(b + 1) * batch_size]
        yield images[idx], labels[idx]


_END, _ERROR = object(), object()


def prefetch(iterator: Iterable[T], size: int = 2) -> Iterator[T]:
    """Run ``iterator`` in a background thread, keeping up to ``size`` items ready.

    Items come out in order; an exception in the producer is raised in the consumer.
    Whatever work ``iterator`` does per item (gathering a batch, ``jax.device_put``)
    overlaps with the consumer's step. Closing the returned generator stops the thread.
    """
    if size < 1:
        raise ValueError(f"prefetch size must be at least 1, got {size}")
    items: queue.Queue = queue.Queue(maxsize=size)
    stop = threading.Event()

    def put(item: tuple[Any, Any]) -> bool:
        # A bounded wait, so that the thread notices when the consumer has gone away.
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in iterator:
                if not put((None, item)):
                    return
            put((_END, None))
        except Exception as err:  # handed to the consumer, which re-raises it
            put((_ERROR, err))

    threading.Thread(target=produce, name="prefetch", daemon=True).start()

    def consume() -> Iterator[T]:
        try:
            while True:
                kind, value = items.get()
                if kind is _END:
                    return
                if kind is _ERROR:
                    raise value
                yield value
        finally:
            stop.set()

    return consume()
