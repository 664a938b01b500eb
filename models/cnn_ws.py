"""The NAO-WS CIFAR supernet: train with one uniformly sampled cell per step, score cells.

NAO_V1's ``train_search.py``: 3 normal cells per stage, 20 channels, 5 nodes, the 5 ops of the
``cifar_ws`` space, batch 64, SGD with momentum 0.9, a cosine learning rate from 0.025 to 0.001 over
150 epochs, weight decay 3e-4, gradient clipped to norm 5, drop-path keep 0.9, no final dropout, no
auxiliary head, no cutout. The weights train on 45000 CIFAR-10 training images and cells are scored
on the other 5000 (the caller's split: ``nao.evaluators.supernet`` draws it from a seed).

A cell's score is its accuracy (%) with the shared weights, BatchNorm normalising with batch
statistics (as NAO-WS does). The original scored every cell on a different random batch of 500, so
scores carried the batches' noise; here every cell is scored on the same ``score_batches`` batches
(one of 500 by default, 0 = the whole validation split), so scores are comparable.

Training and scoring are the final trainer's pmapped steps (``nao.models.cnn_train``) with the cell as an
argument: one compilation serves every cell.
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Sequence
from typing import Any

import jax
import numpy as np

from nao.data.cifar import CHANNEL_STATS, Pair
from nao.data.image_input import batches_per_epoch, epoch_batches, prefetch
from nao.models import parallel
from nao.models.cnn import init_variables
from nao.models.cnn_ops import WS_OPS
from nao.models.cnn_supernet import make_supernet
from nao.models.cnn_train import CnnTrainConfig, make_eval_step, make_train_step, num_classes, train_state
from nao.models.training import Ticker, check_batch, device_multiple

SUPERNET_PRESETS: dict[str, CnnTrainConfig] = {
    "paper": CnnTrainConfig(channels=20, layers=3, keep_prob=1.0, drop_path_keep_prob=0.9, use_aux_head=False,
                            batch_size=64, eval_batch_size=500, epochs=150, lr=0.025, lr_min=0.001,
                            weight_decay=3e-4, cutout_size=0),
    # Tiny, for tests and CPU smoke runs.
    "smoke": CnnTrainConfig(channels=4, layers=1, keep_prob=1.0, drop_path_keep_prob=0.9, use_aux_head=False,
                            batch_size=8, eval_batch_size=16, epochs=2, lr=0.05, lr_min=0.001, cutout_size=0),
}


class CifarSupernet:
    """Weights shared by every cell of the ``cifar_ws`` space; ``state`` is what a checkpoint holds."""

    score_name = "valid_acc"
    higher_is_better = True

    def __init__(self, config: CnnTrainConfig, train: Pair, valid: Pair, seed: int, score_batches: int = 1,
                 dataset: str = "cifar10", ops: Sequence[str] = WS_OPS):
        devices = check_batch(config.batch_size)
        self.config, self.train, self.seed = config, train, seed
        self.model = make_supernet(config=config.model_config(num_classes(dataset), ops))
        stats = CHANNEL_STATS[dataset]
        step_options = dict(aux_weight=config.aux_weight, clip=config.clip, weight_decay=config.weight_decay,
                            momentum=config.momentum, crop_padding=config.crop_padding, flip=config.flip,
                            cutout_size=config.cutout_size, sync_bn=config.sync_bn)
        self.train_step = make_train_step(self.model, stats, **step_options)
        self.eval_step = make_eval_step(self.model, stats)
        self.steps_per_epoch = batches_per_epoch(len(train[0]), config.batch_size)
        # The score batches, on the devices once: every cell is scored on the same images.
        batch = device_multiple(config.eval_batch_size)  # e.g. 504 images on 8 devices
        count = batches_per_epoch(len(valid[0]), batch)
        if count == 0:
            raise ValueError(f"the validation split has {len(valid[0])} images, fewer than one score batch "
                             f"of {batch}")
        count = min(count, score_batches) if score_batches else count
        mask = np.ones(batch, np.float32)
        self.score_data = [parallel.shard_to_devices((x, y, mask), devices) for x, y in
                           epoch_batches(*valid, batch, 0, 0, shuffle=False)][:count]
        self.score_images = count * batch
        # Any valid cell (here every node reads the two cell inputs through op 0) initialises every op.
        arch = np.tile(np.array([0, 0, 1, 0], np.int32), 2 * self.model.config.nodes)
        dummy = np.zeros((2, 32, 32, 3), np.float32)
        variables = init_variables(self.model, jax.random.key(seed), dummy, arch)
        self.state = train_state(jax.tree.map(np.asarray, variables), config)

    @property
    def state(self) -> dict[str, Any]:
        return parallel.unreplicate(self._replicated)

    @state.setter
    def state(self, value: dict[str, Any]) -> None:
        self._replicated = parallel.replicate(value)

    def train_epoch(self, archs: Sequence[Hashable], epoch: int) -> dict[str, float]:
        """One pass over the training split (epoch ``epoch`` from 0), each step with a cell drawn
        uniformly from ``archs``."""
        cfg, devices = self.config, jax.local_device_count()
        rng = np.random.default_rng([self.seed, epoch])
        table = np.asarray(archs, np.int32)
        lr = np.float32(cfg.lr_at(epoch + 1))
        total_steps = self.steps_per_epoch * cfg.epochs
        key = jax.random.key(self.seed)
        start, metrics = time.perf_counter(), []
        ticker = Ticker(f"supernet epoch {epoch + 1}/{cfg.epochs}", self.steps_per_epoch, "images")
        batches = prefetch(parallel.shard_to_devices(b, devices)
                           for b in epoch_batches(*self.train, cfg.batch_size, self.seed, epoch))
        try:
            for b, (images, labels) in enumerate(batches):
                step = epoch * self.steps_per_epoch + b + 1
                self._replicated, m = self.train_step(
                    self._replicated, images, labels, lr, np.float32(step / total_steps), np.int32(step), key,
                    table[rng.integers(len(table))])
                metrics.append(m)
                if ticker.due():
                    ticker.log(b + 1, (b + 1) * cfg.batch_size, {"loss": float(m["loss"][0])})
        finally:
            batches.close()
        values = jax.device_get(metrics)
        seconds = time.perf_counter() - start
        steps = max(len(values), 1)
        return {"train_loss": sum(float(v["loss"][0]) for v in values) / steps,
                "train_acc": 100.0 * sum(int(v["correct"][0]) for v in values) / (steps * cfg.batch_size),
                "images_per_s": len(values) * cfg.batch_size / seconds, "seconds": seconds}

    def score(self, archs: Sequence[Hashable]) -> list[float]:
        """Accuracy (%) of every cell on the score batches with the shared weights (higher is better)."""
        variables = {"params": self._replicated["params"], "batch_stats": self._replicated["batch_stats"]}
        sums = [[self.eval_step(variables, *batch, np.asarray(arch, np.int32)) for batch in self.score_data]
                for arch in archs]
        return [100.0 * float(sum(s[0][0] for s in per_arch)) / self.score_images
                for per_arch in jax.device_get(sums)]
