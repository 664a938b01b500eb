"""Training and evaluation of recurrent-cell language models, data-parallel over local devices.

The recipe is the PTB final training of NAO's ``rnn/train.py`` and NAO-WS's ``rnn/train.py`` (Luo et
al., 2018, NAO): SGD with the learning rate scaled by each window's length over bptt, gradient clipping,
weight decay, temporal activation regularisation, AWD-LSTM variable-length windows, and NT-ASGD: once
the validation loss is worse than the best of all but the last ``nonmono`` epochs, training switches to
averaged SGD and is evaluated (and kept as the result when best) with the averaged weights.
``LmTask`` is this family's part of ``nao.models.training.train``: the best validation epoch is the
result, and the test set is scored once, on it.

Steps are pmapped over the ``batch`` axis: each device carries the hidden state of its
streams, gradients are averaged across devices before clipping, so N devices compute the
same update as one device on the same global batch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nao.data.image_input import prefetch
from nao.data.text import Corpus, batchify, load_corpus, window_lengths, windows
from nao.models import parallel
from nao.models.files import is_primary
from nao.models.rnn import LmConfig, RecurrentLM, bank_rows, gather_cell
from nao.models.training import Selection, Step, config_from_meta, device_multiple, timed

log = logging.getLogger("nao")


@dataclasses.dataclass(frozen=True)
class LmTrainConfig:
    """Model sizes and the optimisation recipe; defaults are the PTB final training's."""

    emb_size: int = 850
    hidden_size: int = 850
    dropout: float = 0.75
    dropout_h: float = 0.25
    dropout_x: float = 0.75
    dropout_i: float = 0.2
    dropout_e: float = 0.0
    batch_size: int = 64
    eval_batch_size: int = 10
    test_batch_size: int = 1
    bptt: int = 35
    lr: float = 20.0
    clip: float = 0.25
    weight_decay: float = 8e-7
    tar_beta: float = 1e-3
    epochs: int = 4000
    nonmono: int = 5
    max_steps: int = 0  # > 0: stop after this many steps in all (benchmarks, smoke runs)
    length_bucket: int = 5  # windows are padded to a multiple of this: one compilation per bucket
    seed: int = 0

    def model_config(self, vocab_size: int) -> LmConfig:
        return LmConfig(vocab_size=vocab_size, emb_size=self.emb_size, hidden_size=self.hidden_size,
                        dropout=self.dropout, dropout_h=self.dropout_h, dropout_x=self.dropout_x,
                        dropout_i=self.dropout_i, dropout_e=self.dropout_e)


LM_PRESETS: dict[str, LmTrainConfig] = {
    # PTB, both NAONet cells: NAO's rnn/train.py with its scripts' flags; needs a GPU.
    "paper": LmTrainConfig(),
    # The WikiText-2 transfer recipe, NAO's rnn/train_wt2_final.sh.
    "paper_wt2": LmTrainConfig(emb_size=700, hidden_size=700, dropout_h=0.15, weight_decay=5e-7, epochs=2000),
    # A size a 2-core CPU trains to a useful perplexity in half an hour (benchmarks/lm_throughput.py).
    "cpu": LmTrainConfig(emb_size=256, hidden_size=256, dropout=0.4, dropout_h=0.1, dropout_x=0.2,
                         dropout_i=0.1, batch_size=32, eval_batch_size=32, test_batch_size=32, epochs=6),
    # Tiny, for tests and notebooks on CPU.
    "smoke": LmTrainConfig(emb_size=16, hidden_size=16, dropout=0.1, dropout_h=0.1, dropout_x=0.1,
                           dropout_i=0.1, batch_size=4, eval_batch_size=4, test_batch_size=4, bptt=8,
                           length_bucket=16, epochs=2),
}


# ---------------------------------------------------------------------------------------------
# Steps


def _masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1)


def lm_loss(model: RecurrentLM, params, inputs, targets, length, hidden, arch, rng, train: bool,
            tar_beta: float = 0.0):
    """(loss to minimise, (mean cross-entropy, new hidden)) over the first ``length`` steps."""
    rngs = {"dropout": rng} if train else None
    logits, outputs, hidden = model.apply({"params": params}, inputs, hidden, arch, length, train=train,
                                          rngs=rngs)
    valid = (jnp.arange(inputs.shape[1]) < length)[None, :].astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    mean_ce = _masked_mean(ce, jnp.broadcast_to(valid, ce.shape))
    loss = mean_ce
    if tar_beta:
        pairs = (valid[:, 1:] * valid[:, :-1])[..., None]
        diffs = jnp.square(outputs[:, 1:] - outputs[:, :-1])
        loss = loss + tar_beta * _masked_mean(diffs, jnp.broadcast_to(pairs, diffs.shape))
    return loss, (mean_ce, hidden)


def _clipped_grads(model: RecurrentLM, params, inputs, targets, length, hidden, arch, rng, clip: float,
                   tar_beta: float):
    """Gradients averaged over devices and clipped by their global norm (the original's order)."""
    grad_fn = jax.value_and_grad(lm_loss, argnums=1, has_aux=True)
    (_, (ce, hidden)), grads = grad_fn(model, params, inputs, targets, length, hidden, arch,
                                       parallel.device_rng(rng), True, tar_beta)
    grads = jax.lax.pmean(grads, parallel.AXIS)
    norm = optax.tree.norm(grads)
    scale = jnp.minimum(1.0, clip / jnp.maximum(norm, 1e-12))
    return jax.tree.map(lambda g: g * scale, grads), hidden, jax.lax.pmean(ce, parallel.AXIS), norm


_STEP_AXES = (0, 0, 0, None, 0, None, None, None)  # state, inputs, targets, length, hidden, arch, lr, rng


@functools.lru_cache(maxsize=16)  # runs of one process (tests, resumes) reuse the compiled step
def make_train_step(model: RecurrentLM, clip: float, weight_decay: float, tar_beta: float,
                    fixed_arch: tuple[int, ...] | None = None) -> Callable:
    """Pmapped SGD step: (state, inputs, targets, length, hidden, arch, lr, rng, averaging).

    ``state`` is {params, avg, count}. With ``fixed_arch`` the cell is a compile-time
    constant and the ``arch`` argument is ignored; otherwise ``arch`` is traced.
    """
    constant = None if fixed_arch is None else np.asarray(fixed_arch, np.int64)

    def step(state, inputs, targets, length, hidden, arch, lr, rng, averaging):
        arch = constant if constant is not None else arch
        grads, hidden, ce, norm = _clipped_grads(model, state["params"], inputs, targets, length, hidden,
                                                 arch, rng, clip, tar_beta)
        params = jax.tree.map(lambda p, g: p - lr * (g + weight_decay * p), state["params"], grads)
        # Averaged SGD keeps the running mean of the iterates since the switch (t0 = 0, lambda = 0).
        count = state["count"] + averaging.astype(jnp.int32)
        avg = jax.tree.map(lambda a, p: jnp.where(averaging, a + (p - a) / jnp.maximum(count, 1), p),
                           state["avg"], params)
        return {"params": params, "avg": avg, "count": count}, hidden, ce, norm

    return jax.pmap(step, axis_name=parallel.AXIS, in_axes=_STEP_AXES + (None,), donate_argnums=(0,))


@functools.lru_cache(maxsize=16)
def make_supernet_step(model: RecurrentLM, clip: float, weight_decay: float, tar_beta: float) -> Callable:
    """Pmapped SGD step of the supernet: (state, inputs, targets, length, hidden, arch, lr, rng).

    ``state`` is {params} with a ``cell_bank``. The step gathers the 11 matrices of ``arch``,
    and writes back only those rows: weight decay, too, applies to the rows a step uses (lazily,
    as for sparse embeddings), so a step never sweeps the whole bank.
    """

    def step(state, inputs, targets, length, hidden, arch, lr, rng):
        params = state["params"]
        grads, hidden, ce, norm = _clipped_grads(model, gather_cell(params, arch), inputs, targets, length,
                                                 hidden, arch, rng, clip, tar_beta)
        cell_grads = grads.pop("cell")
        updated = {k: params[k] - lr * (g + weight_decay * params[k]) for k, g in grads.items()}
        rows = bank_rows(arch)
        bank = params["cell_bank"]
        cell = bank[rows]
        updated["cell_bank"] = bank.at[rows].set(cell - lr * (cell_grads + weight_decay * cell))
        return {"params": updated}, hidden, ce, norm

    return jax.pmap(step, axis_name=parallel.AXIS, in_axes=_STEP_AXES, donate_argnums=(0,))


@functools.lru_cache(maxsize=16)
def make_eval_step(model: RecurrentLM, fixed_arch: tuple[int, ...] | None = None,
                   supernet: bool = False) -> Callable:
    """Pmapped: (params, inputs, targets, length, hidden, arch) -> (summed cross-entropy, hidden).

    ``supernet``: ``params`` hold a ``cell_bank`` from which the cell ``arch`` is gathered.
    """
    constant = None if fixed_arch is None else np.asarray(fixed_arch, np.int64)

    def step(params, inputs, targets, length, hidden, arch):
        arch = constant if constant is not None else arch
        if supernet:
            params = gather_cell(params, arch)
        _, (ce, hidden) = lm_loss(model, params, inputs, targets, length, hidden, arch, None, False)
        return jax.lax.psum(ce * length * inputs.shape[0], parallel.AXIS), hidden

    return jax.pmap(step, axis_name=parallel.AXIS, in_axes=(0, 0, 0, None, 0, None))


def evaluate(eval_step: Callable, params_replicated, ids: np.ndarray, batch_size: int, bptt: int,
             hidden_size: int, arch=None, max_windows: int = 0) -> float:
    """Mean cross-entropy per token over the stream (all of it unless ``max_windows`` > 0)."""
    devices = jax.local_device_count()
    stream = batchify(ids, batch_size)
    hidden = parallel.shard(np.zeros((batch_size, hidden_size), np.float32), devices)
    total, tokens = 0.0, 0
    for index, window in enumerate(windows(stream, bptt)):
        if max_windows and index >= max_windows:
            break
        batch = parallel.shard((window.inputs, window.targets), devices)
        summed, hidden = eval_step(params_replicated, *batch, np.int32(window.length), hidden, arch)
        total += float(summed[0])
        tokens += window.length * batch_size
    return total / tokens


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 700.0))




# ---------------------------------------------------------------------------------------------
# Final training


def init_params(model: RecurrentLM, arch, key: jax.Array, batch: int = 2):
    tokens = jnp.zeros((batch, 5), jnp.int32)
    return model.init(key, tokens, model.initial_hidden(batch), jnp.asarray(arch, jnp.int32))["params"]


class LmTask:
    """A recurrent cell trained as a word-level language model (``nao.models.training.Task``)."""

    kind, unit, datasets = "lm", "tokens", ("ptb", "wikitext2")
    config_type, presets = LmTrainConfig, LM_PRESETS
    sizes = ("emb_size", "hidden_size")  # a weight transfer keeps them
    # The embedding (tied to the softmax) and the softmax bias follow the vocabulary.
    renewed = (("embedding",), ("softmax_bias",))
    # NT-ASGD's best validation epoch is the result; the test set is scored once, on it.
    selection = Selection("valid", "loss", higher_is_better=False)
    epoch_splits, final_splits = ("valid",), ("valid", "test")
    # The cell is a compile-time constant of the steps; False: an argument, so one compilation serves
    # every cell of the space (a search that trains many cells in one process).
    fixed_cell: ClassVar[bool] = True

    def __init__(self, config: LmTrainConfig, arch: Sequence[int], corpus: Corpus) -> None:
        """``arch``: the cell's 22 ints."""
        self.config, self.corpus = config, corpus
        self.arch = tuple(int(v) for v in arch)
        self.model = RecurrentLM(config.model_config(len(corpus.vocab)))
        fixed = self.arch if self.fixed_cell else None
        self.cell = None if self.fixed_cell else np.asarray(self.arch, np.int32)  # the steps' arch argument
        self.train_step = make_train_step(self.model, config.clip, config.weight_decay, config.tar_beta,
                                          fixed_arch=fixed)
        self.eval_step = make_eval_step(self.model, fixed_arch=fixed)
        self.key = jax.random.key(config.seed)
        self.start_weights: Any = None  # params
        self.stream = batchify(corpus.train, config.batch_size, corpus.files.get("train", "train split"))

    @classmethod
    def for_space(cls, space: Any, arch: Sequence[int], dataset: str, data: Corpus, config: LmTrainConfig
                  ) -> LmTask:
        """The task of ``arch``, a cell of ``space``, on the corpus ``data`` of ``dataset``."""
        if data.name != dataset:
            raise ValueError(f"the corpus is {data.name}, not dataset={dataset}: load it with "
                             "LmTask.load_data")
        return cls(config, arch, data)

    @staticmethod
    def load_data(dataset: str, data_dir: str | None, config: LmTrainConfig) -> Corpus:
        if not data_dir:
            raise ValueError(f"dataset={dataset} needs data_dir, a folder holding its train/valid/test token "
                             "files")
        return load_corpus(dataset, data_dir)

    @staticmethod
    def rebuild(meta: dict[str, Any]) -> tuple[RecurrentLM, LmTrainConfig]:
        config = config_from_meta(LmTrainConfig, meta["config"])
        return RecurrentLM(config.model_config(meta["vocab_size"])), config

    @staticmethod
    def init_weights(model: RecurrentLM, arch: Sequence[int], seed: int) -> Any:
        return jax.tree.map(np.asarray, init_params(model, arch, jax.random.key(seed)))

    @staticmethod
    def train_state(weights: Any, config: LmTrainConfig) -> dict[str, Any]:
        """{params, avg (the averaged-SGD iterate), count (averaging steps)}."""
        return {"params": weights, "avg": weights, "count": np.int32(0)}

    def meta(self) -> dict[str, Any]:
        vocab = self.corpus.vocab
        return {"arch": list(self.arch), "dataset": self.corpus.name, "vocab_fingerprint": vocab.fingerprint,
                "vocab_size": len(vocab)}

    def write_run_files(self, output_dir: Path) -> None:
        # The words behind the embedding rows, so a checkpoint is usable without the training files.
        if is_primary():
            (output_dir / "vocab.txt").write_text("\n".join(self.corpus.vocab.words) + "\n")

    def initial_state(self) -> dict[str, Any]:
        start = self.start_weights
        start = self.init_weights(self.model, self.arch, self.config.seed) if start is None else start
        return self.train_state(jax.tree.map(np.asarray, start), self.config)

    def initial_progress(self) -> dict[str, Any]:
        return {"asgd": False, "val_losses": []}

    def weights(self, state: Any, progress: dict[str, Any]) -> Any:
        return state["avg" if progress["asgd"] else "params"]

    def _window_rng(self, epoch: int) -> np.random.Generator:
        return np.random.default_rng([self.config.seed, epoch])  # the same windows when an epoch is redone

    def steps_in_epoch(self, epoch: int) -> int:
        return len(window_lengths(self.stream.shape[1], self.config.bptt, self._window_rng(epoch)))

    def train_epoch(self, state: Any, epoch: int, step: int, progress: dict[str, Any]) -> Iterator[Step]:
        config = self.config
        devices = jax.local_device_count()
        hidden = parallel.shard(np.zeros((config.batch_size, config.hidden_size), np.float32), devices)
        averaging = np.bool_(progress["asgd"])
        batches = prefetch_windows(self.stream, config.bptt, self._window_rng(epoch), config.length_bucket,
                                   devices)
        with contextlib.closing(batches):
            for (length, inputs, targets), waited in timed(batches):
                step += 1
                lr = np.float32(config.lr * length / config.bptt)
                key = jax.random.fold_in(jax.random.fold_in(self.key, epoch), step)
                state, hidden, ce, _ = self.train_step(state, inputs, targets, np.int32(length), hidden,
                                                       self.cell, lr, key, averaging)
                tokens = length * config.batch_size
                yield Step(state, {"loss": ce * np.float32(tokens)}, tokens, waited)

    def evaluate(self, weights: Any, split: str) -> dict[str, float]:
        config = self.config
        batch = config.test_batch_size if split == "test" else config.eval_batch_size
        loss = evaluate(self.eval_step, weights, getattr(self.corpus, split), device_multiple(batch),
                        config.bptt, config.hidden_size, arch=self.cell)
        return {"loss": loss, "ppl": perplexity(loss)}

    def train_fields(self, means: dict[str, float]) -> dict[str, float]:
        return {"train_ppl": perplexity(means["loss"])}

    def end_epoch(self, epoch: int, evaluation: dict[str, float], progress: dict[str, Any]) -> dict[str, Any]:
        """NT-ASGD: averaged SGD from the epoch whose validation loss is worse than the best of all but
        the last ``nonmono`` epochs."""
        losses, nonmono = progress["val_losses"], self.config.nonmono
        val_loss = evaluation["valid_loss"]
        if not progress["asgd"] and len(losses) > nonmono and val_loss > min(losses[:-nonmono]):
            progress["asgd"] = True
            log.info("epoch %d: validation stopped improving; switching to averaged SGD", epoch)
        losses.append(val_loss)
        return {"asgd": progress["asgd"]}


def prefetch_windows(stream: np.ndarray, bptt: int, rng: np.random.Generator, bucket: int, devices: int
                     ) -> Iterator[tuple[int, jax.Array, jax.Array]]:
    """(length, inputs, targets) of an epoch's windows, put on the devices by a background thread."""
    return prefetch((window.length, *parallel.shard_to_devices((window.inputs, window.targets), devices))
                    for window in windows(stream, bptt, rng, bucket))
