"""Markdown model cards of the checkpoints this project ships: a controller fitted on a table, and a
trained language model."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from nao.pretrained import PRETRAINED, LmCheckpoint

TARGET_WORDS = {"minmax": "min-max normalised to [0, 1]", "rank": "as ranks scaled to [0, 1]"}


def device_description() -> str:
    """The devices this process computes on, in words."""
    device = jax.devices()[0]
    if device.platform == "cpu":
        return f"CPU ({os.cpu_count()} cores)"
    return f"{jax.device_count()} x {device.device_kind}"


def package_versions() -> dict[str, str]:
    """The versions of nao and the packages its checkpoints depend on."""
    from importlib import metadata

    versions = {}
    for package in ("nao", "jax", "flax", "optax", "orbax-checkpoint", "numpy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())



def controller_model_card(meta: dict[str, Any], out: Path) -> str:
    """A Markdown model card for a controller checkpoint written by ``fit_table_controller``."""
    cfg, split, train, targets = meta["controller"], meta["split"], meta["training"], meta["targets"]
    held = meta["metrics"].get("holdout")
    name = out.name
    lines = [
        f"# Model card: `{name}`, a NAO controller fitted on the {meta['space']} table",
        "",
        ("One NAO encoder-predictor-decoder" if cfg["ensemble"] == 1 else
         f"An ensemble of {cfg['ensemble']} NAO encoder-predictor-decoders") + " (Luo et al., 2018, NAO) "
        f"trained on "
        f"{split['train_size']:,} of the {meta['benchmark']['architectures']:,} architectures of "
        f"`{meta['benchmark']['file']}` ({meta['dataset']}), with their validation accuracy "
        f"(`{targets['metric']}`) as the target. It scores any {meta['space']} cell in milliseconds, "
        "without training it: a surrogate for ranking cells, warm-starting a search, or gradient-ascent "
        "generation (`Controller.generate`).",
        "",
        "## Use",
        "",
        "```python",
        "from nao import load_checkpoint",
        "",
        f"ckpt = load_checkpoint(\"{name}\")  # a shipped name, or the path of this folder"
        if name in PRETRAINED else f"ckpt = load_checkpoint(\"{out}\")",
        "scores = ckpt.predict([\"|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|"
        "nor_conv_3x3~1|nor_conv_3x3~2|\"])  # higher is better" if meta["space"] == "nb201" else
        "scores = ckpt.predict(arch_strings)  # higher is better",
        "ckpt.rank(arch_strings)  # best predicted first; ckpt.predict_accuracy(...): on the accuracy scale",
        "```",
        "",
        "## Training",
        "",
        f"- Command: `{meta['command']}`" if meta.get("command") else "- Command: (called from Python)",
        f"- Data: every architecture of `{meta['benchmark']['file']}` but a held-out {split['holdout']:.0%} "
        f"({split['holdout_size']:,} architectures, drawn with seed {split['seed']}; their table rows are "
        "`meta['split']['holdout_indices']`).",
        f"- Targets: `{targets['metric']}` {TARGET_WORDS[targets['normalisation']]} (min "
        f"{targets['low']:.2f}, max {targets['high']:.2f} on the training set; its percentiles are in the "
        "meta, so `predict_accuracy` maps scores back to accuracies).",
        f"- Controller: emb {cfg['emb_size']}, LSTM {cfg['hidden_size']}, MLP {cfg['mlp_layers']}x"
        f"{cfg['mlp_hidden']}, lambda {cfg['trade_off']}, Adam {cfg['learning_rate']}, weight decay "
        f"{cfg['weight_decay']}, batch {cfg['batch_size']}, ensemble {cfg['ensemble']}.",
        f"- {train['epochs']} epochs, {train['steps']:,} steps, {train['seconds']:.0f} s wall-clock on "
        f"{train.get('device', 'an unrecorded device')} "
        f"(final training MSE {train['final_mse']:.5f}, reconstruction NLL {train['final_nll']:.4f}).",
        f"- Software: {', '.join(f'{k} {v}' for k, v in meta['versions'].items())}.",
        "",
        "## Evaluation",
        "",
    ]
    if held:
        lines += [
            f"On the {held['count']:,} held-out architectures (never seen in training):",
            "",
            "| metric | value |",
            "|---|---|",
            f"| Kendall tau (predicted score vs validation accuracy) | {held['kendall_tau']:.4f} |",
        ]
        lines += [f"| top-{k} overlap (share of the true top {k} among the predicted top {k}) | "
                  f"{held[f'top{k}_overlap']:.2f} |" for k in (10, 50, 100) if f"top{k}_overlap" in held]
        lines += [
            f"| validation accuracy of the predicted best (its true rank) | "
            f"{held['predicted_best_valid']:.2f} (#{held['predicted_best_rank']}) |",
            f"| best validation accuracy among the predicted top 10 | "
            f"{held['best_of_predicted_top10_valid']:.2f} |",
            f"| best validation accuracy held out | {held['best_valid']:.2f} |",
        ]
        lines += [
            f"| `predict_accuracy` error: median (90th percentile), accuracy points | "
            f"{held['metric_median_abs_error']:.2f} ({held['metric_abs_error_p90']:.2f}) |",
        ]
        if "predicted_best_test" in held:
            lines.append(f"| test accuracy of the predicted best (best held out) | "
                         f"{held['predicted_best_test']:.2f} ({held['best_test']:.2f}) |")
        lines.append("")
    sample = meta["metrics"]["train_sample"]
    lines += [
        f"Kendall tau on {sample['count']:,} training architectures: {sample['kendall_tau']:.4f}.",
        "",
        "## Limits",
        "",
        f"- It predicts the {meta['dataset']} validation accuracy of the table's training recipe; on other "
        "datasets or recipes, rankings transfer only as far as the tables agree.",
        f"- It has seen {split['train_size'] / meta['benchmark']['architectures']:.0%} of the space: on "
        "those architectures the table itself is exact; the held-out figures are what to expect of unseen "
        "cells.",
        "- Kendall tau weighs every pair alike, and most of the space lies within a few points of accuracy: "
        "small differences of score between good cells mean little.",
        *(["- Cells far below the bulk (the few percent that barely train, near 10% accuracy) are ranked "
           "last, but `predict_accuracy` puts them far too high: rank targets leave them a sliver at the "
           "bottom of [0, 1]."] if targets["normalisation"] == "rank" else []),
        "",
        "## Files",
        "",
        f"`checkpoints/{train['epochs']}/state` (Orbax, the ensemble's parameters only: no optimizer state), "
        f"`checkpoints/{train['epochs']}/meta` (JSON: everything on this card), `metrics.json`; "
        f"{_size(out / 'checkpoints') / 1e6:.2f} MB in all. Format: `docs/checkpoints.md`.",
        "",
    ]
    return "\n".join(lines)


def lm_model_card(ckpt: LmCheckpoint, command: str, notes: Sequence[str] = ()) -> str:
    """A Markdown model card for a language-model checkpoint: its cell, data, recipe, per-epoch
    perplexities and final figures (from the run's ``metrics.json``), and the ``command`` that trained it.
    The trainer does not record its command line, so the caller passes it."""
    meta, cfg = ckpt.meta, ckpt.config
    metrics = json.loads((ckpt.run_dir / "metrics.json").read_text())
    history = meta["progress"]["history"]
    params = sum(int(np.prod(np.shape(leaf))) for leaf in jax.tree.leaves(ckpt.params))
    name = ckpt.run_dir.name
    lines = [
        f"# Model card: `{name}`, a {cfg.hidden_size}-unit recurrent-cell language model trained on "
        f"{meta['dataset']}",
        "",
        f"The recurrent cell `{meta['arch_string']}` as a word-level language model (tied embedding and "
        f"softmax, {cfg.hidden_size} units, vocabulary {meta['vocab_size']:,}, {params:,} parameters), "
        f"trained with this project's `--mode=train`. Best validation perplexity "
        f"{metrics['valid_ppl']:.1f}, test perplexity {metrics['test_ppl']:.1f}.",
        "",
        "## Use",
        "",
        "```python",
        "from nao import load_checkpoint",
        "",
        f"lm = load_checkpoint(\"{name if name in PRETRAINED else ckpt.run_dir}\")",
        "lm.next_words(\"the company said\", k=5)  # [(word, probability), ...]",
        "lm.perplexity(text)  # the words of text, <eos> after each line, unknown words as <unk>",
        "lm.model, lm.params, lm.vocab  # the Flax RecurrentLM, its weights, the vocabulary",
        "```",
        "",
        "## Training",
        "",
        f"- Command: `{command}`",
        f"- Data: {meta['dataset']} token files (train / valid / test); the vocabulary is the training "
        f"file's {meta['vocab_size']:,} words (`vocab.txt`, fingerprint `{meta['vocab_fingerprint']}`).",
        f"- Recipe: SGD lr {cfg.lr} (scaled by window length / bptt), batch {cfg.batch_size}, bptt "
        f"{cfg.bptt}, clip {cfg.clip}, weight decay {cfg.weight_decay}, TAR {cfg.tar_beta}, dropout "
        f"{cfg.dropout}, dropout_h {cfg.dropout_h}, dropout_x {cfg.dropout_x}, dropout_i {cfg.dropout_i}, "
        f"dropout_e {cfg.dropout_e}, NT-ASGD after {cfg.nonmono} non-improving epochs, seed {cfg.seed}.",
        f"- {meta['progress']['epoch']} epoch{'s' * (meta['progress']['epoch'] != 1)}, "
        f"{meta['progress']['step']:,} steps, "
        f"{sum(row['seconds'] for row in history) / 60:.1f} minutes of training on {device_description()}.",
        f"- Software: {', '.join(f'{k} {v}' for k, v in package_versions().items())}.",
        "",
        "## Evaluation",
        "",
        "| epoch | train ppl | valid ppl | averaged SGD | minutes | tokens/s |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {r['epoch']} | {r['train_ppl']:.1f} | {r['valid_ppl']:.1f} | "
              f"{'yes' if r['asgd'] else 'no'} | {r['seconds'] / 60:.1f} | {r['tokens_per_s']:.0f} |"
              for r in history]
    lines += [
        "",
        f"The weights of the best validation epoch (`state['best']`, what `lm.params` holds): validation "
        f"perplexity {metrics['valid_ppl']:.2f}, test perplexity {metrics['test_ppl']:.2f} (the whole test "
        f"set, batch {cfg.test_batch_size}).",
        "",
        "## Limits",
        "",
        "- A small model trained briefly on a CPU, for trying the API: the paper's model of this kind has "
        "850 units and trains for 4000 epochs on a GPU (NAO's rnn/train.py recipe).",
        *[f"- {note}" for note in notes],
        "",
        "## Files",
        "",
        f"`checkpoints/{ckpt.step}/` (state: `params`, `avg`, `best`, `count`; meta: everything above), "
        f"`vocab.txt`, `metrics.json`, `metrics.csv`, `cell.png`; {_size(ckpt.run_dir) / 1e6:.2f} MB in all. "
        "Format: `docs/checkpoints.md`. This card: `nao.model_cards.lm_model_card`.",
        "",
    ]
    return "\n".join(lines)
