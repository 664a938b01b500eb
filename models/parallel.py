"""Data parallelism over the local devices, and several hosts; the CPU cores this process may use.

Train and eval steps are ``jax.pmap``-ed over one axis named ``batch``: parameters
are replicated, every device takes its slice of the global batch, and gradients
and metrics are averaged with ``lax.pmean``. (pmap rather than jit over a mesh
because collectives over forced CPU devices can deadlock on 2-core machines;
jax-notes.md.) On several hosts, ``initialize_multihost`` joins the processes
first; every process reads the same global batches and ``shard`` hands each its
devices' share, collectives span all devices of the job, and only process 0
writes run files (``nao.models.files.is_primary``); the code is otherwise the same.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXIS = "batch"


def available_cores() -> list[int]:
    """The CPU cores this process may run on."""
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(
        range(os.cpu_count() or 1))


def initialize_multihost(coordinator_address: str | None = None, num_processes: int | None = None,
                         process_id: int | None = None) -> None:
    """Join the other processes of a multi-host job.

    Unset arguments are detected by JAX where the cluster says them (TPU pods, SLURM, ...); plain
    machines pass all three. CPU processes talk through gloo.
    """
    # Only CPU backends read this; asking which backend runs would start one too early.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)


def _leading_axis(count: int) -> NamedSharding:
    """Axis 0 split over the first ``count`` local devices: the layout of a pmap argument."""
    return NamedSharding(Mesh(np.array(jax.local_devices()[:count]), (AXIS,)), PartitionSpec(AXIS))


def replicate(tree, count: int | None = None):
    """One copy of every leaf per local device (or the first ``count``), placed as pmap expects."""
    count = count or jax.local_device_count()
    sharding = _leading_axis(count)

    def put(x):
        x = np.asarray(x)
        return jax.device_put(np.broadcast_to(x[None], (count,) + x.shape), sharding)

    return jax.tree.map(put, tree)


def unreplicate(tree):
    """The first device's copy, on the host, as NumPy."""
    return jax.tree.map(lambda x: np.asarray(x[0]), tree)


def shard(tree, devices: int | None = None):
    """This process's share of each leaf's leading (global batch) axis, as (local devices, per-device
    batch): the global batch is split evenly over every device of the job, and each process keeps the
    rows of its own devices. Every process passes the same global batch (the input pipelines are
    seeded alike), so the job trains on it once, whatever the number of hosts."""
    devices = devices or jax.local_device_count()
    total, first = devices * jax.process_count(), devices * jax.process_index()

    def split(x):
        x = np.asarray(x) if not isinstance(x, jax.Array) else x
        if x.shape[0] % total:
            raise ValueError(f"a batch of {x.shape[0]} cannot be split evenly over {total} devices: "
                             f"use a batch size divisible by {total}")
        return x.reshape((total, x.shape[0] // total) + x.shape[1:])[first:first + devices]

    return jax.tree.map(split, tree)


def shard_to_devices(tree, devices: int | None = None):
    """``shard``, then each device's slice put on it: a pmap argument already in place, so that a
    prefetching thread can do the host-to-device copy ahead of the step."""
    devices = devices or jax.local_device_count()
    return jax.device_put(shard(tree, devices), _leading_axis(devices))


def unshard(tree):
    """Inverse of ``shard``: (devices, per-device, ...) -> (global, ...)."""
    return jax.tree.map(lambda x: jnp.reshape(x, (-1,) + x.shape[2:]), tree)


def device_rng(rng: jax.Array) -> jax.Array:
    """Inside a pmapped step: a different key on every device."""
    return jax.random.fold_in(rng, jax.lax.axis_index(AXIS))
