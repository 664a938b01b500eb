"""The NAO-WS language-model supernet: train with one uniformly sampled cell per step, score cells.

NAO-WS RNN (``rnn/train_search.py``, ``model_search.py``): one recurrent layer of 300 units, tied
softmax, the final model's dropouts, plain SGD (lr 0.25, clip 10, weight decay 5e-7) with batch
256 and AWD-LSTM windows. The original scored each cell on one random minibatch, and used the
random batch index as a token offset, which confined the scores to the first ~3% of the
validation stream; here every cell is scored on the same windows: the first ``score_windows``
of the batchified validation stream rotated to start at an offset drawn from ``split_seed`` (all
of it when 0), so scores are comparable, and the same for every search seed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Hashable, Sequence
from typing import Any

import jax
import numpy as np

from nao.data.text import Corpus, batchify, windows
from nao.models import parallel
from nao.models.lm_train import (
    LmTrainConfig,
    evaluate,
    init_params,
    make_eval_step,
    make_supernet_step,
    perplexity,
)
from nao.models.rnn import NUM_NODES, RecurrentLM, init_bank
from nao.models.training import Ticker

log = logging.getLogger("nao")

SUPERNET_PRESETS: dict[str, LmTrainConfig] = {
    "paper": LmTrainConfig(emb_size=300, hidden_size=300, batch_size=256, eval_batch_size=64, lr=0.25,
                           clip=10.0, weight_decay=5e-7, epochs=1000),
    "smoke": LmTrainConfig(emb_size=16, hidden_size=16, dropout=0.1, dropout_h=0.1, dropout_x=0.1,
                           dropout_i=0.1, batch_size=8, eval_batch_size=8, bptt=8, length_bucket=16,
                           lr=2.0, clip=1.0, epochs=2),
}


class LmSupernet:
    """Weights shared by every cell of the PTB space; ``state`` is what a checkpoint holds."""

    score_name = "valid_ppl"
    higher_is_better = False

    def __init__(self, config: LmTrainConfig, corpus: Corpus, seed: int, score_windows: int = 10,
                 split_seed: int = 0):
        devices = jax.local_device_count()
        for name in ("batch_size", "eval_batch_size"):
            if getattr(config, name) % devices:
                raise ValueError(f"supernet {name}={getattr(config, name)} must be divisible by the "
                                 f"{devices} local devices")
        self.config, self.corpus, self.seed, self.score_windows = config, corpus, seed, score_windows
        offset = int(np.random.default_rng(split_seed).integers(len(corpus.valid))) if score_windows else 0
        self.score_stream = np.concatenate([corpus.valid[offset:], corpus.valid[:offset]])
        self.model = RecurrentLM(config.model_config(len(corpus.vocab)))
        self.train_step = make_supernet_step(self.model, config.clip, config.weight_decay, config.tar_beta)
        self.eval_step = make_eval_step(self.model, supernet=True)
        self.stream = batchify(corpus.train, config.batch_size)
        key = jax.random.key(seed)
        params = init_params(self.model, np.zeros(2 * NUM_NODES, np.int32), key)
        params = {k: v for k, v in params.items() if k != "cell"}
        params["cell_bank"] = init_bank(jax.random.fold_in(key, 1), config.hidden_size)
        self.state = {"params": jax.tree.map(np.asarray, params)}

    @property
    def state(self) -> dict[str, Any]:
        return {"params": parallel.unreplicate(self._replicated["params"])}

    @state.setter
    def state(self, value: dict[str, Any]) -> None:
        self._replicated = parallel.replicate({"params": value["params"]})

    def train_epoch(self, archs: Sequence[Hashable], epoch: int) -> dict[str, float]:
        """One pass over the training stream, each window with a cell drawn uniformly from ``archs``."""
        cfg, devices = self.config, jax.local_device_count()
        rng = np.random.default_rng([self.seed, epoch])
        key = jax.random.fold_in(jax.random.key(self.seed), epoch)
        hidden = parallel.shard(np.zeros((cfg.batch_size, cfg.hidden_size), np.float32), devices)
        table = np.asarray(archs, np.int32)
        ce_total, count, start = 0.0, 0, time.perf_counter()
        # Window lengths are random around bptt: the step count is an estimate, refined as it goes.
        positions = self.stream.shape[1] - 1
        ticker = Ticker(f"supernet epoch {epoch + 1}/{cfg.epochs}", -(-positions // cfg.bptt), "tokens",
                        approximate=True)
        for step, window in enumerate(windows(self.stream, cfg.bptt, rng, cfg.length_bucket)):
            arch = table[rng.integers(len(table))]
            lr = np.float32(cfg.lr * window.length / cfg.bptt)
            batch = parallel.shard((window.inputs, window.targets), devices)
            self._replicated, hidden, ce, _ = self.train_step(
                self._replicated, *batch, np.int32(window.length), hidden, arch, lr,
                jax.random.fold_in(key, step))
            ce_total += ce[0] * window.length
            count += window.length
            if ticker.due():
                ticker.log(step + 1, count * cfg.batch_size, {"loss": float(ce[0])},
                           total=round((step + 1) * positions / count))
        mean = float(ce_total) / max(count, 1)
        seconds = time.perf_counter() - start
        return {"train_loss": mean, "train_ppl": perplexity(mean), "seconds": seconds,
                "tokens_per_s": count * cfg.batch_size / seconds}

    def score(self, archs: Sequence[Hashable]) -> list[float]:
        """Validation perplexity of every cell with the shared weights (lower is better)."""
        cfg = self.config
        params = self._replicated["params"]
        out = []
        for arch in archs:
            loss = evaluate(self.eval_step, params, self.score_stream, cfg.eval_batch_size, cfg.bptt,
                            cfg.hidden_size, arch=np.asarray(arch, np.int32), max_windows=self.score_windows)
            out.append(perplexity(loss))
        return out
