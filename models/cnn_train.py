"""Final training of CIFAR cell networks (NAONet recipes), data-parallel over the local devices.

The recipe is NAO_V1's ``train_cifar.py`` (Luo et al., 2018, NAO): SGD with momentum 0.9, a cosine
learning rate from 0.025 to 0 stepped once an epoch (PyTorch's ``CosineAnnealingLR`` as NAO_V1 drives
it), cross-entropy plus 0.4 x the auxiliary head's, the gradient clipped to global norm 5, then L2
weight decay 3e-4 added to it as PyTorch's ``SGD(weight_decay=...)`` does: on every parameter,
BatchNorm scales and biases included. Augmentation (crop after 4-pixel padding, flip, cutout 16,
normalisation) runs inside the jitted step; drop path follows ``progress = step / total steps``
(NAO_V1's ``(global_step + 1) / steps``).

``CnnTask`` is this family's part of ``nao.models.training.train``: with a validation split
(``CnnTrainConfig.valid_images``) the best epoch on it is the result; without one (the paper's
recipe) the last epoch is, and the test set is scored after every epoch as NAO_V1 does, for the
report only.

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

import contextlib
import dataclasses
import functools
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nao.data.cifar import CHANNEL_STATS, Pair, cifar_class_names, load_cifar, search_split
from nao.data.image_input import augment, batches_per_epoch, epoch_batches, normalize, prefetch
from nao.models import parallel
from nao.models.cnn import CellNetwork, CellNetworkConfig, init_variables, make_cell_network
from nao.models.cnn_ops import synced_batch_norm
from nao.models.cnn_supernet import Supernet
from nao.models.training import Selection, Step, config_from_meta, device_multiple, timed


@dataclasses.dataclass(frozen=True)
class CnnTrainConfig:
    """Network sizes, the optimisation recipe and the data split; the defaults are NAO_V1's NAONet-36
    CIFAR-10 training.

    ``valid_images``: the last this many training images are held out as a validation split
    (``nao.data.cifar.search_split``), and the epoch with the best validation accuracy is the
    result. 0, the default, keeps NAO_V1's final recipe: it trains on all 50,000 images, so nothing is
    selected (the last epoch is the result) and the test set is only reported. A search that trains
    candidates for real sets it (NAO-WS holds out 5,000).
    """

    channels: int = 36  # F
    layers: int = 6  # N normal cells per stage
    keep_prob: float = 0.6  # of the dropout before the classifier
    drop_path_keep_prob: float = 0.8
    use_aux_head: bool = True
    aux_weight: float = 0.4
    batch_size: int = 128  # global, over all devices
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
    eval_batch_size: int = 500
    valid_images: int = 0  # held out of the training images to select the result epoch on
    seed: int = 0

    def model_config(self, num_classes: int, ops: Sequence[str]) -> CellNetworkConfig:
        return CellNetworkConfig(channels=self.channels, layers=self.layers, num_classes=num_classes,
                                 keep_prob=self.keep_prob, drop_path_keep_prob=self.drop_path_keep_prob,
                                 use_aux_head=self.use_aux_head, ops=tuple(ops))

    def lr_at(self, epoch: int) -> float:
        """The learning rate of epoch ``epoch`` (from 1): cosine from ``lr`` to ``lr_min`` over the run."""
        return self.lr_min + (self.lr - self.lr_min) * (1 + math.cos(math.pi * (epoch - 1) / self.epochs)) / 2


CNN_PRESETS: dict[str, CnnTrainConfig] = {
    # NAO_V1's train_cifar.py defaults with its NAONet scripts' --use_aux_head --cutout_size=16
    # (NAONet-A-36 2.48%, NAONet-B-36 2.93% test error in NAO_V1's README); a GPU job.
    "paper": CnnTrainConfig(),
    # TF NAO's cnn/train_cifar100_final.sh differs from its CIFAR-10 script only in drop-path keep 0.6 and
    # FC keep 0.8 (NAO_V1 ships no CIFAR-100 script); the rest is the "paper" recipe.
    "paper_cifar100": CnnTrainConfig(keep_prob=0.8, drop_path_keep_prob=0.6),
    # A net a 2-core laptop trains in minutes an epoch (F=8, N=1: 5 cells instead of 20).
    "cpu": CnnTrainConfig(channels=8, layers=1, batch_size=32, epochs=10),
    # Tiny, for tests.
    "smoke": CnnTrainConfig(channels=4, layers=1, batch_size=8, eval_batch_size=16, epochs=2),
}


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


@dataclasses.dataclass(frozen=True)
class CnnData:
    """A CIFAR dataset's splits: (uint8 NHWC images, int labels) each; ``valid`` None without one."""

    train: Pair
    valid: Pair | None
    test: Pair


class CnnTask:
    """A fixed cell network trained on CIFAR (``nao.models.training.Task``)."""

    kind, unit, datasets = "cnn", "images", ("cifar10", "cifar100")
    config_type, presets = CnnTrainConfig, CNN_PRESETS
    sizes = ("channels", "layers")  # F and N: a weight transfer keeps them
    # The layers whose shapes follow the class count: the classifier and the auxiliary head's last layer.
    renewed = (("params", "classifier"), ("params", "aux_head", "Dense_0"))

    def __init__(self, config: CnnTrainConfig, arch: Sequence[int], ops: Sequence[str], dataset: str,
                 data: CnnData) -> None:
        """``arch``: 40 ints, the normal cell then the reduction cell, whose op ids index ``ops``."""
        if (data.valid is None) != (config.valid_images == 0):
            held = 0 if data.valid is None else len(data.valid[0])
            raise ValueError(f"the data hold {held} validation images but valid_images="
                             f"{config.valid_images}: load the data with CnnTask.load_data(..., config)")
        self.config, self.dataset, self.data = config, dataset, data
        self.arch, self.ops = tuple(int(v) for v in arch), tuple(ops)
        self.classes = num_classes(dataset)
        self.model = build_model(config, self.arch, self.ops, self.classes)
        self.channel_stats = CHANNEL_STATS[dataset]
        self.train_step = make_train_step(
            self.model, self.channel_stats, aux_weight=config.aux_weight, clip=config.clip,
            weight_decay=config.weight_decay, momentum=config.momentum, crop_padding=config.crop_padding,
            flip=config.flip, cutout_size=config.cutout_size, sync_bn=config.sync_bn)
        self.eval_step = make_eval_step(self.model, self.channel_stats)
        self.start_weights: dict | None = None  # {params, batch_stats}
        self.selection = None if data.valid is None else Selection("valid", "acc", higher_is_better=True)
        self.epoch_splits = ("test",) if data.valid is None else ("valid",)
        self.final_splits = ("test",) if data.valid is None else ("valid", "test")
        self.steps_per_epoch = batches_per_epoch(len(data.train[0]), config.batch_size)
        self.total_steps = self.steps_per_epoch * config.epochs  # the drop-path schedule's length

    @classmethod
    def for_space(cls, space: Any, arch: Sequence[int], dataset: str, data: CnnData, config: CnnTrainConfig
                  ) -> CnnTask:
        """The task of ``arch``, a cell of ``space`` (its ``ops`` name the arch's op ids)."""
        return cls(config, arch, space.ops, dataset, data)

    @staticmethod
    def load_data(dataset: str, data_dir: str | None, config: CnnTrainConfig) -> CnnData:
        """``dataset``'s train and test sets (``data_dir`` None: the tensorflow-datasets folder), the last
        ``config.valid_images`` training images held out as the validation split."""
        images, labels = load_cifar(dataset, data_dir, "train")
        train, valid = (images, labels), None
        if config.valid_images:
            train, valid = search_split(images, labels, config.valid_images)
        return CnnData(train, valid, load_cifar(dataset, data_dir, "test"))

    @staticmethod
    def rebuild(meta: dict[str, Any]) -> tuple[CellNetwork, CnnTrainConfig]:
        config = config_from_meta(CnnTrainConfig, meta["config"])
        return build_model(config, meta["arch"], meta["ops"], meta["num_classes"]), config

    @staticmethod
    def init_weights(model: CellNetwork, arch: Sequence[int], seed: int) -> dict:
        return initial_variables(model, seed)

    train_state = staticmethod(train_state)

    def meta(self) -> dict[str, Any]:
        return {"arch": list(self.arch), "ops": list(self.ops), "dataset": self.dataset,
                "num_classes": self.classes}

    def write_run_files(self, output_dir: Path) -> None:
        return None

    def initial_state(self) -> dict[str, Any]:
        start = self.start_weights
        start = initial_variables(self.model, self.config.seed) if start is None else start
        return train_state(jax.tree.map(np.asarray, start), self.config)

    def initial_progress(self) -> dict[str, Any]:
        return {}

    def weights(self, state: Any, progress: dict[str, Any]) -> dict:
        return {"params": state["params"], "batch_stats": state["batch_stats"]}

    def steps_in_epoch(self, epoch: int) -> int:
        return self.steps_per_epoch

    def train_epoch(self, state: Any, epoch: int, step: int, progress: dict[str, Any]) -> Iterator[Step]:
        config = self.config
        lr, rng, batch = np.float32(config.lr_at(epoch)), jax.random.key(config.seed), config.batch_size
        devices = jax.local_device_count()
        # The batches depend only on (seed, epoch): a resumed run sees what an uninterrupted one does.
        batches = prefetch(parallel.shard_to_devices(pair, devices) for pair in
                           epoch_batches(*self.data.train, batch, config.seed, epoch))
        with contextlib.closing(batches):
            for (images, labels), waited in timed(batches):
                step += 1
                done = np.float32(step / self.total_steps)  # the drop-path schedule's progress
                state, metrics = self.train_step(state, images, labels, lr, done, np.int32(step), rng)
                yield Step(state, {"loss": metrics["loss"] * batch, "correct": metrics["correct"]}, batch,
                           waited)

    def evaluate(self, weights: Any, split: str) -> dict[str, float]:
        images, labels = getattr(self.data, split)
        batch = device_multiple(self.config.eval_batch_size)
        acc, loss = evaluate(self.eval_step, weights, images, labels, batch)
        return {"acc": acc, "loss": loss}

    def train_fields(self, means: dict[str, float]) -> dict[str, float]:
        return {"train_loss": means["loss"], "train_acc": 100 * means["correct"]}

    def end_epoch(self, epoch: int, evaluation: dict[str, float], progress: dict[str, Any]) -> dict[str, Any]:
        return {"lr": self.config.lr_at(epoch)}
