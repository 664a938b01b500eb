"""Final training of CIFAR cell networks (NAONet recipes), data-parallel over the local devices.

The recipe is NAO_V1's ``train_cifar.py`` (reference §5.2): SGD with momentum 0.9, a cosine learning
rate from 0.025 to 0 stepped once an epoch (PyTorch's ``CosineAnnealingLR`` as NAO_V1 drives it),
cross-entropy plus 0.4 x the auxiliary head's, the gradient clipped to global norm 5, then L2 weight
decay 3e-4 added to it as PyTorch's ``SGD(weight_decay=...)`` does: on every parameter, BatchNorm
scales and biases included. Augmentation (crop after 4-pixel padding, flip, cutout 16,
normalisation) runs inside the jitted step; drop path follows ``progress = step / total steps``
(NAO_V1's ``(global_step + 1) / steps``). The test set is scored after every epoch.

Steps are pmapped over the ``batch`` axis: gradients are averaged across devices before clipping.
BatchNorm normalises each device's share of the batch with that share's statistics (as NAO_V1's
``nn.DataParallel`` and NAO's TF multi-GPU towers do); the running averages are then averaged across
devices so that the replicas stay identical. On one device this is exactly NAO_V1's step; on N it is
the same update whenever the N shares have the same statistics.

One compilation per run: the train step sees fixed shapes (the last partial batch of an epoch is
dropped: 390 steps of 128, NAO_V1 runs a 391st of 80) and takes the learning rate, drop-path
progress and step number as arguments; evaluation pads its last batch and masks it out.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from nao.data.cifar import CHANNEL_STATS, cifar_class_names
from nao.data.image_input import augment, batches_per_epoch, epoch_batches, normalize, prefetch
from nao.models import parallel
from nao.models.checkpoint import CheckpointError, CheckpointStore
from nao.models.cnn import (
    CellNetwork,
    CellNetworkConfig,
    init_variables,
    make_cell_network,
    param_count,
)
from nao.models.cnn_ops import synced_batch_norm
from nao.models.cnn_supernet import Supernet
from nao.models.files import write_json
from nao.models.training import (
    append_csv,
    check_batch,
    check_finite,
    device_multiple,
    duration,
    start_or_resume,
)

log = logging.getLogger("nao")

Pair = tuple[np.ndarray, np.ndarray]  # (uint8 NHWC images, int labels)


@dataclasses.dataclass(frozen=True)
class CnnTrainConfig:
    """Network sizes and the optimisation recipe; the defaults are NAO_V1's NAONet-36 CIFAR-10 training."""

    channels: int = 36  # F
    layers: int = 6  # N normal cells per stage
    keep_prob: float = 0.6  # of the dropout before the classifier
    drop_path_keep_prob: float = 0.8
    use_aux_head: bool = True
    aux_weight: float = 0.4
    batch_size: int = 128  # global, over all devices
    eval_batch_size: int = 500
    epochs: int = 600
    lr: float = 0.025
    lr_min: float = 0.0
    momentum: float = 0.9
    weight_decay: float = 3e-4
    clip: float = 5.0  # global gradient norm
    sync_bn: bool = False  # BatchNorm statistics over all devices' images (NAO_V1: each device's own)
    crop_padding: int = 4  # 0: no random crop
    flip: bool = True
    cutout_size: int = 16  # 0: no cutout
    max_steps: int = 0  # > 0: stop after this many steps in all (benchmarks, smoke runs)
    log_every: int = 100  # steps between log lines
    seed: int = 0

    def model_config(self, num_classes: int, ops: Sequence[str]) -> CellNetworkConfig:
        return CellNetworkConfig(channels=self.channels, layers=self.layers, num_classes=num_classes,
                                 keep_prob=self.keep_prob, drop_path_keep_prob=self.drop_path_keep_prob,
                                 use_aux_head=self.use_aux_head, ops=tuple(ops))

    def lr_at(self, epoch: int) -> float:
        """The learning rate of epoch ``epoch`` (from 1): cosine from ``lr`` to ``lr_min`` over the run."""
        return self.lr_min + (self.lr - self.lr_min) * (1 + math.cos(math.pi * (epoch - 1) / self.epochs)) / 2


CNN_PRESETS: dict[str, CnnTrainConfig] = {
    # Reference §5.2: NAO_V1 train_cifar.py's defaults with its NAONet scripts' --use_aux_head
    # --cutout_size=16 (NAONet-A-36 2.48%, NAONet-B-36 2.93% test error); a GPU job.
    "paper": CnnTrainConfig(),
    # Reference §5.1: TF NAO's train_cifar100_final.sh differs from its CIFAR-10 script only in drop-path
    # keep 0.6 and FC keep 0.8 (NAO_V1 ships no CIFAR-100 script); the rest is the "paper" recipe.
    "paper_cifar100": CnnTrainConfig(keep_prob=0.8, drop_path_keep_prob=0.6),
    # A net a 2-core laptop trains in minutes an epoch (F=8, N=1: 5 cells instead of 20).
    "cpu": CnnTrainConfig(channels=8, layers=1, batch_size=32, epochs=10, log_every=200),
    # Tiny, for tests.
    "smoke": CnnTrainConfig(channels=4, layers=1, batch_size=8, eval_batch_size=16, epochs=2, log_every=4),
}


def get_cnn_preset(name: str) -> CnnTrainConfig:
    if name not in CNN_PRESETS:
        raise ValueError(f"unknown CIFAR training preset {name!r}: choose one of {', '.join(CNN_PRESETS)}")
    return CNN_PRESETS[name]


def num_classes(dataset: str) -> int:
    return len(cifar_class_names(dataset))


# ---------------------------------------------------------------------------------------------
# Steps


def _optimizer(lr: jax.Array | float, clip: float, weight_decay: float, momentum: float
               ) -> optax.GradientTransformation:
    """NAO_V1's update: clip_grad_norm_, then torch SGD, which adds the decay to the clipped gradient
    before the momentum buffer (no Nesterov; the lr multiplies the buffer)."""
    return optax.chain(optax.clip_by_global_norm(clip), optax.add_decayed_weights(weight_decay),
                       optax.sgd(lr, momentum))


def _cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


_STEP_AXES = (0, 0, 0, None, None, None, None)  # state, images, labels, lr, progress, step, rng


@functools.lru_cache(maxsize=16)  # runs of one process (tests, resumes) reuse the compiled step
def make_train_step(model: CellNetwork | Supernet, channel_stats: tuple[tuple[float, ...], tuple[float, ...]],
                    *, aux_weight: float, clip: float, weight_decay: float, momentum: float,
                    crop_padding: int, flip: bool, cutout_size: int, sync_bn: bool = False) -> Callable:
    """Pmapped SGD step: (state, uint8 images, labels, lr, progress, step, rng) -> (state, metrics), and
    for a ``Supernet`` one more argument, the cell (an int array, the same on every device).

    ``state`` is {params, batch_stats, opt_state}; ``metrics`` {loss: the objective averaged over the
    global batch, correct: how many of its images the (dropout-perturbed) logits got right}.
    ``sync_bn``: BatchNorm statistics over the global batch (``cnn_ops.synced_batch_norm``).
    """
    mean, std = channel_stats
    supernet = isinstance(model, Supernet)

    def step(state, images, labels, lr, progress, step, rng, *arch):
        key = parallel.device_rng(jax.random.fold_in(rng, step))
        k_augment, k_dropout, k_droppath = jax.random.split(key, 3)
        x = augment(k_augment, images, mean, std, padding=crop_padding, flip=flip, cutout_size=cutout_size)

        def loss_fn(params):
            (logits, aux_logits), updates = model.apply(
                {"params": params, "batch_stats": state["batch_stats"]}, x, *arch, train=True,
                progress=progress, mutable=["batch_stats"],
                rngs={"dropout": k_dropout, "droppath": k_droppath})
            loss = jnp.mean(_cross_entropy(logits, labels))
            if aux_logits is not None:
                loss = loss + aux_weight * jnp.mean(_cross_entropy(aux_logits, labels))
            return loss, (logits, updates["batch_stats"])

        with synced_batch_norm(parallel.AXIS if sync_bn else None):
            (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        grads = jax.lax.pmean(grads, parallel.AXIS)
        updates, opt_state = _optimizer(lr, clip, weight_decay, momentum).update(
            grads, state["opt_state"], state["params"])
        new_state = {"params": optax.apply_updates(state["params"], updates),
                     "batch_stats": jax.lax.pmean(batch_stats, parallel.AXIS), "opt_state": opt_state}
        correct = jnp.sum(jnp.argmax(logits, -1) == labels)
        return new_state, {"loss": jax.lax.pmean(loss, parallel.AXIS),
                           "correct": jax.lax.psum(correct, parallel.AXIS)}

    return jax.pmap(step, axis_name=parallel.AXIS, in_axes=_STEP_AXES + (None,) * supernet,
                    donate_argnums=(0,))


@functools.lru_cache(maxsize=16)
def make_eval_step(model: CellNetwork | Supernet, channel_stats: tuple[tuple[float, ...], tuple[float, ...]]
                   ) -> Callable:
    """Pmapped: (variables, uint8 images, labels, mask) -> [correct, summed cross-entropy] over the
    images of all devices whose mask is 1. BatchNorm uses its running averages; a ``Supernet`` takes
    the cell as a fifth argument and normalises with each device's batch statistics, as NAO-WS scores
    cells (its running averages mix every cell it trained), so its batches must be unpadded."""
    mean, std = channel_stats
    supernet = isinstance(model, Supernet)

    def step(variables, images, labels, mask, *arch):
        logits, _ = model.apply(variables, normalize(images, mean, std), *arch, train=False,
                                bn_train=supernet)
        correct = jnp.sum((jnp.argmax(logits, -1) == labels) * mask)
        return jax.lax.psum(jnp.stack([correct, jnp.sum(_cross_entropy(logits, labels) * mask)]),
                            parallel.AXIS)

    return jax.pmap(step, axis_name=parallel.AXIS, in_axes=(0, 0, 0, 0) + (None,) * supernet)


def evaluate(eval_step: Callable, variables, images: np.ndarray, labels: np.ndarray, batch_size: int
             ) -> tuple[float, float]:
    """(accuracy in %, mean cross-entropy) of the replicated ``variables`` on all the images.

    ``batch_size`` must be a multiple of the device count; the last batch is padded to it.
    """
    devices = jax.local_device_count()

    def batches() -> Iterator:
        for x, y in epoch_batches(images, labels, batch_size, 0, 0, drop_remainder=False, shuffle=False):
            mask = (np.arange(batch_size) < len(x)).astype(np.float32)
            pad = batch_size - len(x)
            if pad:
                x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
                y = np.concatenate([y, np.zeros(pad, y.dtype)])
            yield parallel.shard_to_devices((x, y, mask), devices)

    sums = [eval_step(variables, *batch) for batch in prefetch(batches())]
    correct, ce = np.sum([s[0] for s in jax.device_get(sums)], axis=0)
    return 100.0 * float(correct) / len(images), float(ce) / len(images)


# ---------------------------------------------------------------------------------------------
# Final training


@dataclasses.dataclass
class CnnRun:
    """What a training run needs besides the config: the cell, the data, where to write."""

    arch: tuple[int, ...]  # 40 ints: normal cell, then reduction cell
    ops: tuple[str, ...]  # the space's op names, indexed by the arch's op ids
    dataset: str  # cifar10 or cifar100: the class count and the normalisation
    train: Pair
    test: Pair
    output_dir: Path
    meta: dict[str, Any]  # written into every checkpoint (space, arch string, flags...)
    init_variables: Any = None  # transfer: start from these instead of a fresh initialisation


def build_model(config: CnnTrainConfig, arch: Sequence[int], ops: Sequence[str], classes: int) -> CellNetwork:
    return make_cell_network(arch, ops, config.model_config(classes, ops))


def initial_variables(model: CellNetwork, seed: int) -> dict:
    """Fresh {params, batch_stats} as NumPy (NAO_V1's kaiming-normal kernels)."""
    images = jnp.zeros((2, 32, 32, 3), jnp.float32)
    return jax.tree.map(np.asarray, init_variables(model, jax.random.key(seed), images))


def train_state(variables: dict, config: CnnTrainConfig) -> dict:
    """What the train step carries, {params, batch_stats, opt_state}, starting from ``variables``."""
    opt_state = _optimizer(config.lr, config.clip, config.weight_decay, config.momentum).init(
        variables["params"])
    return {"params": variables["params"], "batch_stats": variables["batch_stats"],
            "opt_state": jax.tree.map(np.asarray, opt_state)}


# The layers whose shapes follow the class count: the classifier and the auxiliary head's last layer.
HEADS = (("classifier",), ("aux_head", "Dense_0"))


def transfer_variables(store: CheckpointStore, model: CellNetwork, seed: int) -> dict:
    """``model``'s starting point for a weight transfer: the final weights and BatchNorm statistics of
    the CIFAR training checkpoint in ``store`` (the same architecture and sizes), with the ``HEADS``
    (and anything else the checkpoint lacks) drawn afresh for ``model``'s classes."""
    meta = store.read_meta()
    config = CnnTrainConfig(**meta["config"])
    source_model = build_model(config, meta["arch"], meta["ops"], meta["num_classes"])
    like = initial_variables(source_model, config.seed)
    state, _ = store.restore({**train_state(like, config), "best": like})
    fresh = initial_variables(model, seed)
    out = {}
    for collection in ("params", "batch_stats"):
        source = traverse_util.flatten_dict(state[collection])
        merged = {}
        for path, value in traverse_util.flatten_dict(fresh[collection]).items():
            if path in source and not any(path[:len(head)] == head for head in HEADS):
                if source[path].shape != value.shape:
                    raise CheckpointError(f"{store.directory}: {'/'.join(path)} is {source[path].shape} "
                                          f"there, {value.shape} here: a weight transfer keeps the sizes")
                value = source[path]
            merged[path] = value
        out[collection] = traverse_util.unflatten_dict(merged)
    return out


def train_cnn(config: CnnTrainConfig, run: CnnRun, resume: bool = False) -> dict[str, Any]:
    """Train the fixed network ``run.arch``; checkpoints every epoch; returns the final metrics."""
    out = run.output_dir
    out.mkdir(parents=True, exist_ok=True)
    devices = check_batch(config.batch_size)
    classes = num_classes(run.dataset)
    model = build_model(config, run.arch, run.ops, classes)
    channel_stats = CHANNEL_STATS[run.dataset]
    train_step = make_train_step(model, channel_stats, aux_weight=config.aux_weight, clip=config.clip,
                                 weight_decay=config.weight_decay, momentum=config.momentum,
                                 crop_padding=config.crop_padding, flip=config.flip,
                                 cutout_size=config.cutout_size, sync_bn=config.sync_bn)
    eval_step = make_eval_step(model, channel_stats)
    variables = initial_variables(model, config.seed) if run.init_variables is None else run.init_variables
    meta = {**run.meta, "kind": "cnn", "arch": [int(v) for v in run.arch], "ops": list(run.ops),
            "dataset": run.dataset, "num_classes": classes, "config": dataclasses.asdict(config)}
    store = CheckpointStore(out / "checkpoints")
    expect = {"arch": meta["arch"], "ops": meta["ops"], "dataset": run.dataset}
    variables = jax.tree.map(np.asarray, variables)
    state, saved = start_or_resume(store, {**train_state(variables, config), "best": variables}, expect,
                                   resume, out)
    progress = saved or {"epoch": 0, "step": 0, "best_test_acc": None, "best_epoch": None, "history": []}
    best = state.pop("best")
    replicated = parallel.replicate(state)
    images, labels = run.train
    steps_per_epoch = batches_per_epoch(len(images), config.batch_size)
    total_steps = steps_per_epoch * config.epochs  # the drop-path schedule's length
    step_limit = min(config.max_steps or total_steps, total_steps)
    eval_batch = device_multiple(config.eval_batch_size)
    rng = jax.random.key(config.seed)
    log.info("%s: %d parameters, %d steps of %d images per epoch on %d device(s)", out,
             param_count(state["params"]), steps_per_epoch, config.batch_size, devices)
    start_time, start_step = time.perf_counter(), progress["step"]
    while progress["epoch"] < config.epochs and progress["step"] < step_limit:
        epoch = progress["epoch"] + 1
        lr = np.float32(config.lr_at(epoch))
        # The batches depend only on (seed, epoch): a resumed run sees what an uninterrupted one does.
        batches = prefetch(parallel.shard_to_devices(batch, devices) for batch in
                           epoch_batches(images, labels, config.batch_size, config.seed, epoch))
        epoch_start, meter = time.perf_counter(), _Meter(config.batch_size)
        try:
            while progress["step"] < step_limit:
                waiting = time.perf_counter()
                batch = next(batches, None)
                waited = time.perf_counter() - waiting
                if batch is None:
                    break
                progress["step"] += 1
                replicated, metrics = train_step(replicated, *batch, lr,
                                                 np.float32(progress["step"] / total_steps),
                                                 np.int32(progress["step"]), rng)
                meter.add(metrics, waited)
                if progress["step"] % config.log_every == 0:
                    interval = meter.flush(epoch, progress["step"], store)
                    done = progress["step"] - start_step
                    eta = (time.perf_counter() - start_time) / done * (step_limit - progress["step"])
                    log.info("epoch %d step %d/%d  loss %.3f  train acc %.1f%%  lr %.4f  %.0f images/s  "
                             "input wait %.0f%%  ETA %s", epoch, progress["step"], step_limit,
                             interval["train_loss"], interval["train_acc"], lr, interval["images_per_s"],
                             100 * interval["input_wait"], duration(eta))
        finally:
            batches.close()
        meter.flush(epoch, progress["step"], store)
        seconds = time.perf_counter() - epoch_start
        eval_start = time.perf_counter()
        variables = {"params": replicated["params"], "batch_stats": replicated["batch_stats"]}
        test_acc, test_loss = evaluate(eval_step, variables, *run.test, eval_batch)
        check_finite(test_loss, epoch, progress["step"], store)
        if progress["best_test_acc"] is None or test_acc > progress["best_test_acc"]:
            progress["best_test_acc"], progress["best_epoch"] = test_acc, epoch
            best = parallel.unreplicate(variables)
        progress["epoch"] = epoch
        row = {"epoch": epoch, "step": progress["step"], "lr": config.lr_at(epoch),
               **meter.summary(meter.totals, seconds), "test_loss": test_loss, "test_acc": test_acc,
               "best_test_acc": progress["best_test_acc"], "seconds": round(seconds, 2),
               "eval_seconds": round(time.perf_counter() - eval_start, 2)}
        progress["history"].append(row)
        append_csv(out / "metrics.csv", row)
        store.save(epoch, {**parallel.unreplicate(replicated), "best": best}, {**meta, "progress": progress})
        log.info("epoch %d done in %s: train loss %.3f, test acc %.2f%% (best %.2f%%, epoch %d)", epoch,
                 duration(seconds), row["train_loss"], test_acc, progress["best_test_acc"],
                 progress["best_epoch"])
        write_json(out / "metrics.json", _metrics(progress))
    metrics = _metrics(progress)
    write_json(out / "metrics.json", metrics)
    return metrics


class _Meter:
    """The training metrics of an epoch, and of the steps since the last log line. Step metrics stay
    on the device until a flush, so that logging does not stall the pipeline of dispatched steps."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.totals = np.zeros(4)  # the epoch's flushed steps: summed loss, correct, steps, seconds waited
        self._pending: list[dict[str, jax.Array]] = []
        self._waited, self._start = 0.0, time.perf_counter()

    def add(self, metrics: dict[str, jax.Array], waited: float) -> None:
        """One step's metrics, and how long the loop waited for the host pipeline to hand it a batch."""
        self._pending.append(metrics)
        self._waited += waited

    def flush(self, epoch: int, step: int, store: CheckpointStore) -> dict[str, float]:
        """``summary`` of the steps since the last flush, which it waits for; raises if the loss is not
        finite."""
        values = jax.device_get(self._pending)
        seconds = time.perf_counter() - self._start
        sums = np.array([sum(float(v["loss"][0]) for v in values), sum(int(v["correct"][0]) for v in values),
                         len(values), self._waited])
        check_finite(sums[0], epoch, step, store)
        self.totals += sums
        self._pending, self._waited, self._start = [], 0.0, time.perf_counter()
        return self.summary(sums, seconds)

    def summary(self, sums: np.ndarray, seconds: float) -> dict[str, float]:
        """Mean loss, train accuracy (%), images/s and the share of the time spent waiting for input."""
        loss, correct, steps, waited = sums.tolist()
        steps = max(steps, 1)
        return {"train_loss": loss / steps, "train_acc": 100 * correct / (steps * self.batch_size),
                "images_per_s": round(steps * self.batch_size / seconds, 1),
                "input_wait": round(waited / seconds, 4)}


def _metrics(progress: dict[str, Any]) -> dict[str, Any]:
    metrics = {"epochs": progress["epoch"], "steps": progress["step"], "history": progress["history"]}
    if progress["history"]:
        last = progress["history"][-1]
        metrics.update(test_acc=last["test_acc"], test_loss=last["test_loss"],
                       best_test_acc=progress["best_test_acc"], best_epoch=progress["best_epoch"])
    return metrics
