"""Training and evaluation of recurrent-cell language models, data-parallel over local devices.

The recipe is the PTB final training of reference §5.4: SGD with the learning rate scaled by
each window's length over bptt, gradient clipping, weight decay, temporal activation
regularisation, AWD-LSTM variable-length windows, and NT-ASGD: once the validation loss is
worse than the best of all but the last ``nonmono`` epochs, training switches to averaged SGD
and is evaluated (and checkpointed as best) with the averaged weights.

Steps are pmapped over the ``batch`` axis: each device carries the hidden state of its
streams, gradients are averaged across devices before clipping, so N devices compute the
same update as one device on the same global batch.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nao.data.text import Corpus, batchify, window_lengths, windows
from nao.models import parallel
from nao.models.checkpoint import CheckpointStore
from nao.models.files import is_primary, write_json
from nao.models.rnn import LmConfig, RecurrentLM, bank_rows, gather_cell
from nao.models.training import (
    TrainingDivergedError as TrainingDivergedError,  # raised here; callers catch it
)
from nao.models.training import (
    append_csv,
    check_batch,
    check_finite,
    device_multiple,
    duration,
    start_or_resume,
)

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
    log_every: int = 100  # steps between log lines
    seed: int = 0

    def model_config(self, vocab_size: int) -> LmConfig:
        return LmConfig(vocab_size=vocab_size, emb_size=self.emb_size, hidden_size=self.hidden_size,
                        dropout=self.dropout, dropout_h=self.dropout_h, dropout_x=self.dropout_x,
                        dropout_i=self.dropout_i, dropout_e=self.dropout_e)


LM_PRESETS: dict[str, LmTrainConfig] = {
    # Reference §5.4 (PTB, both NAONet cells); needs a GPU.
    "paper": LmTrainConfig(),
    # Reference §5.5: the WikiText-2 transfer recipe.
    "paper_wt2": LmTrainConfig(emb_size=700, hidden_size=700, dropout_h=0.15, weight_decay=5e-7, epochs=2000),
    # A size a 2-core CPU trains to a useful perplexity in half an hour (benchmarks/lm_throughput.py).
    "cpu": LmTrainConfig(emb_size=256, hidden_size=256, dropout=0.4, dropout_h=0.1, dropout_x=0.2,
                         dropout_i=0.1, batch_size=32, eval_batch_size=32, test_batch_size=32, epochs=6,
                         log_every=200),
    # Tiny, for tests and notebooks on CPU.
    "smoke": LmTrainConfig(emb_size=16, hidden_size=16, dropout=0.1, dropout_h=0.1, dropout_x=0.1,
                           dropout_i=0.1, batch_size=4, eval_batch_size=4, test_batch_size=4, bptt=8,
                           length_bucket=16, epochs=2, log_every=10),
}


def get_lm_preset(name: str) -> LmTrainConfig:
    if name not in LM_PRESETS:
        raise ValueError(f"unknown language-model preset {name!r}: choose one of {', '.join(LM_PRESETS)}")
    return LM_PRESETS[name]


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


@dataclasses.dataclass
class LmRun:
    """What a training run needs besides the config: the cell, the data, where to write."""

    arch: tuple[int, ...]
    corpus: Corpus
    output_dir: Path
    meta: dict[str, Any]  # written into every checkpoint (space, dataset, arch string, flags...)
    init_params: Any = None  # transfer: start from these instead of a fresh initialisation


def init_params(model: RecurrentLM, arch, key: jax.Array, batch: int = 2):
    tokens = jnp.zeros((batch, 5), jnp.int32)
    return model.init(key, tokens, model.initial_hidden(batch), jnp.asarray(arch, jnp.int32))["params"]



def train_lm(config: LmTrainConfig, run: LmRun, resume: bool = False) -> dict[str, Any]:
    """Train the fixed cell ``run.arch``; checkpoints every epoch; returns the final metrics."""
    corpus, out = run.corpus, run.output_dir
    out.mkdir(parents=True, exist_ok=True)
    devices = check_batch(config.batch_size)
    model = RecurrentLM(config.model_config(len(corpus.vocab)))
    arch = tuple(int(v) for v in run.arch)
    train_step = make_train_step(model, config.clip, config.weight_decay, config.tar_beta, fixed_arch=arch)
    eval_step = make_eval_step(model, fixed_arch=arch)
    key = jax.random.key(config.seed)
    params = run.init_params if run.init_params is not None else init_params(model, arch, key)
    params = jax.tree.map(np.asarray, params)
    meta = {**run.meta, "kind": "lm", "arch": list(run.arch), "dataset": corpus.name,
            "vocab_fingerprint": corpus.vocab.fingerprint, "vocab_size": len(corpus.vocab),
            "config": dataclasses.asdict(config)}
    store = CheckpointStore(out / "checkpoints")
    # The words behind the embedding rows, so a checkpoint is usable without the training files.
    if is_primary():
        (out / "vocab.txt").write_text("\n".join(corpus.vocab.words) + "\n")
    state = {"params": params, "avg": params, "count": np.int32(0), "best": params}
    state, saved = start_or_resume(store, state, {"arch": meta["arch"], "dataset": corpus.name,
                                                  "vocab_fingerprint": corpus.vocab.fingerprint}, resume, out)
    progress = saved or {"epoch": 0, "step": 0, "asgd": False, "val_losses": [], "best_val_loss": None,
                         "history": []}
    best = state.pop("best")
    replicated = parallel.replicate(state)
    stream = batchify(corpus.train, config.batch_size)
    hidden_size = config.hidden_size
    eval_batch = device_multiple(config.eval_batch_size)
    steps_per_epoch = len(window_lengths(stream.shape[1], config.bptt, np.random.default_rng(0)))
    # An estimate for the ETA (window lengths are random); only max_steps stops a run early.
    total_steps = config.max_steps or steps_per_epoch * config.epochs
    step_limit = config.max_steps or float("inf")
    csv_path = out / "metrics.csv"
    start_time, start_step = time.perf_counter(), progress["step"]
    while progress["epoch"] < config.epochs and progress["step"] < step_limit:
        epoch = progress["epoch"] + 1
        rng = np.random.default_rng([config.seed, epoch])  # the same windows when an epoch is redone
        hidden = parallel.shard(np.zeros((config.batch_size, hidden_size), np.float32), devices)
        ce_sum, ce_count, tokens, epoch_start = 0.0, 0, 0, time.perf_counter()
        interval = [0.0, 0, time.perf_counter()]
        for window in windows(stream, config.bptt, rng, config.length_bucket):
            if progress["step"] >= step_limit:
                break
            progress["step"] += 1
            lr = np.float32(config.lr * window.length / config.bptt)
            step_key = jax.random.fold_in(jax.random.fold_in(key, epoch), progress["step"])
            batch = parallel.shard((window.inputs, window.targets), devices)
            replicated, hidden, ce, _ = train_step(replicated, *batch, np.int32(window.length), hidden, None,
                                                   lr, step_key, np.bool_(progress["asgd"]))
            interval[0] += ce[0] * window.length
            interval[1] += window.length
            tokens += window.length * config.batch_size
            if progress["step"] % config.log_every == 0:
                mean_ce = float(interval[0]) / interval[1]
                check_finite(mean_ce, epoch, progress["step"], store)
                ce_sum, ce_count = ce_sum + mean_ce * interval[1], ce_count + interval[1]
                rate = interval[1] * config.batch_size / (time.perf_counter() - interval[2])
                done = progress["step"] - start_step
                eta = (time.perf_counter() - start_time) / done * max(total_steps - progress["step"], 0)
                log.info("epoch %d step %d/%d  train ppl %.1f  lr %.2f  %.0f tokens/s  ETA %s", epoch,
                         progress["step"], total_steps, perplexity(mean_ce), lr, rate, duration(eta))
                interval = [0.0, 0, time.perf_counter()]
        if interval[1]:
            mean_ce = float(interval[0]) / interval[1]
            check_finite(mean_ce, epoch, progress["step"], store)
            ce_sum, ce_count = ce_sum + mean_ce * interval[1], ce_count + interval[1]
        seconds = time.perf_counter() - epoch_start
        eval_params = parallel.unreplicate(replicated["avg" if progress["asgd"] else "params"])
        val_loss = evaluate(eval_step, parallel.replicate(eval_params), corpus.valid, eval_batch,
                            config.bptt, hidden_size)
        check_finite(val_loss, epoch, progress["step"], store)
        losses = progress["val_losses"]
        if (not progress["asgd"] and len(losses) > config.nonmono
                and val_loss > min(losses[:-config.nonmono])):
            progress["asgd"] = True
            log.info("epoch %d: validation stopped improving; switching to averaged SGD", epoch)
        losses.append(val_loss)
        if progress["best_val_loss"] is None or val_loss < progress["best_val_loss"]:
            progress["best_val_loss"], best = val_loss, eval_params
        progress["epoch"] = epoch
        row = {"epoch": epoch, "step": progress["step"], "train_ppl": perplexity(ce_sum / max(ce_count, 1)),
               "valid_ppl": perplexity(val_loss), "best_valid_ppl": perplexity(progress["best_val_loss"]),
               "asgd": progress["asgd"], "seconds": round(seconds, 2),
               "tokens_per_s": round(tokens / seconds, 1)}
        progress["history"].append(row)
        append_csv(csv_path, row)
        host_state = parallel.unreplicate(replicated)
        store.save(epoch, {**host_state, "best": best}, {**meta, "progress": progress})
        log.info("epoch %d done in %s: valid ppl %.2f (best %.2f)%s", epoch, duration(seconds),
                 row["valid_ppl"], row["best_valid_ppl"], "  [averaged SGD]" if progress["asgd"] else "")
        write_json(out / "metrics.json", _metrics(progress, None))
    best_replicated = parallel.replicate(best)
    test_loss = evaluate(eval_step, best_replicated, corpus.test, device_multiple(config.test_batch_size),
                         config.bptt, hidden_size)
    valid_loss = evaluate(eval_step, best_replicated, corpus.valid, eval_batch, config.bptt, hidden_size)
    metrics = _metrics(progress, (valid_loss, test_loss))
    write_json(out / "metrics.json", metrics)
    log.info("best checkpoint: valid ppl %.2f, test ppl %.2f", metrics["valid_ppl"], metrics["test_ppl"])
    return metrics


def _metrics(progress: dict[str, Any], final: tuple[float, float] | None) -> dict[str, Any]:
    metrics = {"epochs": progress["epoch"], "steps": progress["step"], "asgd": progress["asgd"],
               "history": progress["history"]}
    if progress["best_val_loss"] is not None:
        metrics["best_valid_ppl"] = perplexity(progress["best_val_loss"])
    if final is not None:
        metrics["valid_ppl"], metrics["test_ppl"] = perplexity(final[0]), perplexity(final[1])
    return metrics
