"""Pretrained checkpoints: load any checkpoint this project writes, and fit a controller on a whole table.

``load_checkpoint(path)`` reads what the trainers and searches save (the format is described in
``docs/checkpoints.md``) and returns a ``Checkpoint``: ``kind``, ``step``, ``meta`` (the JSON
description), ``state`` (the saved pytree, NumPy arrays) and, by kind, what it takes to use it:

* ``controller`` (``run_nao.py --mode=fit_controller``): the space, the controller, ``predict(archs)``;
* ``cnn`` (``--mode=train`` of a CIFAR cell): the Flax ``model``, ``variables``, ``predict(images)``;
* ``lm`` (``--mode=train`` of a PTB cell): ``model``, ``params``, ``vocab``, ``perplexity(text)``;
* ``ws_search`` (a NAO-WS search): the space, the last pool and its rounds.

Every problem with the input (no checkpoint there, another format version, a truncated or damaged
state, another kind, space or dataset than the caller expects, weights that do not fit the model)
raises ``CheckpointError`` with one line naming what was found and what was expected.

``fit_table_controller`` trains the NAO controller on every architecture of a benchmark table but a
seeded held-out share, reports how well it ranks the held-out ones, and saves it with a model card.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import logging
import os
import re
import time
from collections.abc import Hashable, Iterable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from nao.models.checkpoint import FORMAT_VERSION, CheckpointError, CheckpointStore, check_meta

log = logging.getLogger("nao")

# Checkpoints shipped as package data (nao/checkpoints/): load_checkpoint(name) finds them.
PRETRAINED = {name: Path(__file__).resolve().parent / "checkpoints" / name
              for name in ("nb201_controller", "ptb_small")}
TARGET_WORDS = {"minmax": "min-max normalised to [0, 1]", "rank": "as ranks scaled to [0, 1]"}
TABLE_SPACES = ("nb201", "nb101")

__all__ = ["PRETRAINED", "Checkpoint", "CheckpointError", "CnnCheckpoint", "ControllerCheckpoint",
           "LmCheckpoint", "WsSearchCheckpoint", "fit_table_controller", "kendall_tau", "load_checkpoint"]


# ---------------------------------------------------------------------------------------------
# Loading


@dataclasses.dataclass(repr=False)
class Checkpoint:
    """One saved step: its folder, kind, step number, JSON description and state (NumPy pytree)."""

    path: Path  # the step folder, <run>/checkpoints/<step>
    kind: str | None
    step: int
    meta: dict[str, Any]
    state: Any

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kind={self.kind!r}, step={self.step}, path='{self.path}')"

    @property
    def run_dir(self) -> Path | None:
        """The run directory (the folder holding ``checkpoints/``), where run files such as vocab.txt lie."""
        folder = self.path.parent
        return folder.parent if folder.name == "checkpoints" else None

    def _fail(self, message: str) -> CheckpointError:
        return CheckpointError(f"checkpoint {self.path} {message}")


class ControllerCheckpoint(Checkpoint):
    """A NAO controller (an ensemble of encoder-predictor-decoders) and the space it reads.

    ``predict(archs)`` scores architecture strings (or the space's arch values): the ensemble's mean
    of the normalised target it was trained on (higher is better: ``rank`` sorts by it, and
    ``predict_accuracy`` maps it back to the table's accuracy scale). ``controller`` is a
    ``nao.controller.Controller`` holding the weights, so ``controller.generate(tokens, etas)``
    decodes new architectures by gradient ascent.
    """

    def _build(self) -> None:
        from nao.controller import Controller, ControllerConfig
        from nao.controller.training import _init_members
        from nao.spaces import get_space

        self.space = get_space(self.meta["space"])
        self.config = ControllerConfig(**self.meta["controller"])
        self.targets: dict[str, Any] = self.meta.get("targets", {})
        params = self.state["params"] if self.kind == "controller" else self.state["controller"]
        self.controller = Controller(self.space, self.config, jax.random.key(0))
        like = jax.eval_shape(functools.partial(_init_members, self.controller.model, self.space.seq_len),
                              jax.random.key(0))[0]
        _check_fits(self, params, like, "the controller its meta describes")
        self.controller.params = jax.tree.map(np.asarray, params)

    @property
    def params(self):
        return self.controller.params

    def archs(self, archs: Iterable) -> list[Hashable]:
        """The space's arch values of ``archs`` (strings are parsed; InvalidArchitectureError if bad)."""
        out = []
        for arch in archs:
            arch = self.space.from_string(arch) if isinstance(arch, str) else arch
            if not self.space.is_valid(arch):
                from nao.spaces import InvalidArchitectureError
                raise InvalidArchitectureError(f"{arch!r} is not an architecture of space {self.space.name}")
            out.append(arch)
        return out

    def predict_members(self, archs: Iterable) -> np.ndarray:
        """(members, n) predicted normalised scores."""
        archs = self.archs(archs)
        if not archs:
            return np.zeros((self.config.ensemble, 0), np.float32)
        return self.controller.predict(self.space.tokens_batch(archs))

    def predict(self, archs: Iterable) -> np.ndarray:
        """(n,) scores, the ensemble's mean: higher is better."""
        return self.predict_members(archs).mean(axis=0)

    def predict_accuracy(self, archs: Iterable) -> np.ndarray:
        """(n,) scores mapped back to the table's metric (the validation accuracy): min-max targets
        linearly, rank targets through the quantiles of the training architectures' metric."""
        if self.targets.get("normalisation") != "minmax" and "quantiles" not in self.targets:
            raise ValueError(f"{self.path}: its meta records no quantiles of the targets, so its scores do "
                             "not map back to accuracies: use predict() to rank")
        return scores_to_metric(self.predict(archs), self.targets)

    def rank(self, archs: Iterable) -> list[str]:
        """The architectures as strings, best predicted first."""
        archs = self.archs(archs)
        order = np.argsort(-self.predict(archs), kind="stable")
        return [self.space.to_string(archs[i]) for i in order]


class CnnCheckpoint(Checkpoint):
    """A trained CIFAR cell network: ``model`` (Flax ``CellNetwork``), ``variables`` ({params,
    batch_stats} after the last epoch, those ``metrics.json``'s test_acc is of), ``best_variables``
    (the epoch with the best test accuracy), ``predict(uint8 NHWC images) -> logits``."""

    def _build(self) -> None:
        from nao.data.cifar import cifar_class_names
        from nao.models.cnn_train import CnnTrainConfig, build_model

        self.config = CnnTrainConfig(**self.meta["config"])
        self.arch = tuple(self.meta["arch"])
        self.dataset = self.meta["dataset"]
        self.class_names = cifar_class_names(self.dataset)
        self.model = build_model(self.config, self.arch, self.meta["ops"], self.meta["num_classes"])
        like = jax.eval_shape(functools.partial(self.model.init, train=False), jax.random.key(0),
                              jax.ShapeDtypeStruct((2, 32, 32, 3), np.float32))
        self.variables = {"params": self.state["params"], "batch_stats": self.state["batch_stats"]}
        _check_fits(self, self.variables, like, "the network its meta describes")
        self.best_variables = self.state.get("best", self.variables)

    @functools.cached_property
    def _apply(self):
        from nao.data.cifar import CHANNEL_STATS
        from nao.data.image_input import normalize

        mean, std = CHANNEL_STATS[self.dataset]
        model = self.model

        @jax.jit
        def apply(variables, images):
            logits, _ = model.apply(variables, normalize(images, mean, std), train=False)
            return logits

        return apply

    def predict(self, images: np.ndarray, batch_size: int = 256, variables: dict | None = None) -> np.ndarray:
        """(N, classes) logits of (N, 32, 32, 3) uint8 images (BatchNorm with its running averages)."""
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (32, 32, 3):
            raise ValueError(f"predict takes (N, 32, 32, 3) uint8 images, got {images.shape} {images.dtype}")
        variables = self.variables if variables is None else variables
        size = min(batch_size, 1 << max(0, int(np.ceil(np.log2(max(len(images), 1))))))
        out = []
        for start in range(0, len(images), size):
            chunk = images[start:start + size]
            padded = np.concatenate([chunk, np.zeros((size - len(chunk), 32, 32, 3), np.uint8)])
            out.append(np.asarray(self._apply(variables, padded))[:len(chunk)])
        return np.concatenate(out) if out else np.zeros((0, len(self.class_names)), np.float32)


class LmCheckpoint(Checkpoint):
    """A trained recurrent-cell language model: ``model`` (Flax ``RecurrentLM``), ``params`` (the
    best-validation weights, those ``metrics.json``'s test_ppl is of), ``vocab`` (from the run's
    vocab.txt, checked against the checkpoint; None when that file is not there), ``arch``."""

    def _build(self) -> None:
        from nao.models.lm_train import LmTrainConfig, init_params
        from nao.models.rnn import RecurrentLM

        self.config = LmTrainConfig(**self.meta["config"])
        self.arch = tuple(int(v) for v in self.meta["arch"])
        self.dataset = self.meta["dataset"]
        self.model = RecurrentLM(self.config.model_config(self.meta["vocab_size"]))
        like = jax.eval_shape(functools.partial(init_params, self.model, self.arch), jax.random.key(0))
        self.params = self.state["best"]
        _check_fits(self, self.params, like, "the language model its meta describes")
        self.vocab = self._read_vocab()

    def _read_vocab(self):
        from nao.data.text import Vocabulary

        path = self.run_dir / "vocab.txt" if self.run_dir else None
        if path is None or not path.is_file():
            return None
        vocab = Vocabulary(tuple(path.read_text().split("\n")[:-1]))
        if vocab.fingerprint != self.meta["vocab_fingerprint"]:
            raise CheckpointError(f"{path} has vocabulary fingerprint {vocab.fingerprint} ({len(vocab)} "
                                  f"words), the checkpoint expects {self.meta['vocab_fingerprint']} "
                                  f"({self.meta['vocab_size']} words): restore that run's own vocab.txt")
        return vocab

    def encode(self, text: str) -> np.ndarray:
        """Token ids of ``text``: words split on white space, <eos> after each line, unknown words <unk>."""
        from nao.data.text import EOS

        if self.vocab is None:
            raise ValueError(f"no vocab.txt beside {self.path.parent}: the words of the embedding rows are "
                             "unknown, so text cannot be encoded")
        words = [w for line in text.splitlines() if line.split() for w in line.split() + [EOS]]
        return self.vocab.encode(words)

    def perplexity(self, text_or_ids: str | np.ndarray, batch_size: int = 1, bptt: int | None = None
                   ) -> float:
        """Perplexity on ``text`` (or token ids), evaluated as the trainer does: the stream cut into
        ``batch_size`` rows (the trainer's figures use ``config.eval_batch_size``; 1 keeps every token)."""
        from nao.models import parallel
        from nao.models.lm_train import evaluate, make_eval_step, perplexity
        from nao.models.training import device_multiple

        ids = self.encode(text_or_ids) if isinstance(text_or_ids, str) else np.asarray(text_or_ids, np.int32)
        if len(ids) < 2:
            raise ValueError("perplexity needs at least two tokens")
        step = make_eval_step(self.model, fixed_arch=self.arch)
        loss = evaluate(step, parallel.replicate(self.params), ids, device_multiple(batch_size),
                        bptt or self.config.bptt, self.config.hidden_size)
        return perplexity(loss)

    def next_words(self, text: str, k: int = 5) -> list[tuple[str, float]]:
        """The ``k`` likeliest next words after ``text`` (a line end is <eos>), with their probabilities."""
        ids = self.encode(text)
        if text and not text.endswith("\n"):
            ids = ids[:-1]  # the text goes on: drop the <eos> of its unfinished last line
        logits, _, _ = self.model.apply({"params": self.params}, ids[None], self.model.initial_hidden(1),
                                        np.asarray(self.arch, np.int64))
        probs = np.asarray(jax.nn.softmax(logits[0, -1]))
        top = np.argsort(-probs)[:k]
        return [(self.vocab.words[i], float(probs[i])) for i in top]


class WsSearchCheckpoint(Checkpoint):
    """One search of a run with a weight-sharing evaluator (NAO-WS, or another strategy with a
    supernet), saved in ``<run>/searches/<strategy>/seed_<s>/checkpoints``: ``space``, ``strategy``,
    ``pool`` (the architecture strings of the last pool), ``rounds`` (per round the pool's best and
    mean score), ``supernet_state``, and for NAO the controller's ``controller_params`` and
    ``predict(cells)``."""

    def _build(self) -> None:
        from nao.spaces import get_space

        self.space = get_space(self.meta["space"])
        self.strategy = self.meta["strategy"]
        self.pool = list(self.meta["pool"])
        self.rounds = list(self.meta["rounds"])
        self.supernet_state = self.state["evaluator"]["supernet"]
        controller = self.meta["strategy_state"].get("controller")
        self.controller_params = self.state["strategy"]["params"] if controller else None
        self._predictor = None
        if controller:
            self._predictor = ControllerCheckpoint(self.path, self.kind, self.step,
                                                   {**self.meta, "controller": controller},
                                                   {"controller": self.controller_params})
            self._predictor._build()

    def predict(self, archs: Iterable) -> np.ndarray:
        if self._predictor is None:
            raise ValueError(f"{self.path}: a {self.strategy!r} search has no controller to predict with")
        return self._predictor.predict(archs)


_CLASSES = {"controller": ControllerCheckpoint, "cnn": CnnCheckpoint, "lm": LmCheckpoint,
            "ws_search": WsSearchCheckpoint}


def resolve(path: str | Path) -> tuple[Path, int | None]:
    """(checkpoints folder, step or None for the newest) of a run directory, its ``checkpoints/``
    folder, one step folder, or the name of a shipped checkpoint (``PRETRAINED``)."""
    given = Path(path).expanduser()
    if not given.exists() and str(path) in PRETRAINED:
        given = PRETRAINED[str(path)]
        if not given.exists():
            raise CheckpointError(f"no checkpoint at {given}: the shipped checkpoint {str(path)!r} is "
                                  "missing from this installation; reinstall nao, or pass a path")
    if not given.exists():
        shipped = f", or a shipped name ({', '.join(PRETRAINED)})" if PRETRAINED else ""
        raise CheckpointError(f"no checkpoint at {given}: the path does not exist; expected a run directory, "
                              f"its checkpoints/ folder or one step folder{shipped}")
    if not given.is_dir():
        raise CheckpointError(f"no checkpoint at {given}: found a file, expected a run directory, its "
                              "checkpoints/ folder or one step folder")
    if (given / "checkpoints").is_dir():
        return given / "checkpoints", None
    if given.name.isdigit() and ((given / "meta").exists() or (given / "state").exists()):
        return given.parent, int(given.name)
    return given, None


def load_checkpoint(path: str | Path, step: int | None = None, *, expect_kind: str | None = None,
                    expect_space: str | None = None, expect_dataset: str | None = None,
                    expect: dict[str, Any] | None = None) -> Checkpoint:
    """Load a checkpoint (the newest step unless ``path`` is a step folder or ``step`` is given).

    ``expect_kind`` / ``expect_space`` / ``expect_dataset`` / ``expect`` (any meta fields): refuse a
    checkpoint whose meta says otherwise. Raises ``CheckpointError`` (one line) on every bad input.
    """
    folder, folder_step = resolve(path)
    steps = sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit() and p.is_dir())
    if not steps:
        entries = sorted(p.name for p in folder.iterdir())[:5]
        found = f"found {', '.join(entries)}" if entries else "found an empty folder"
        raise CheckpointError(f"no checkpoint in {folder}: {found}; expected numbered step folders holding "
                              "state/ and meta/ (the checkpoints/ folder of a training or search run)")
    step = folder_step if step is None else step
    step = max(steps) if step is None else step
    if step not in steps:
        raise CheckpointError(f"{folder} has no step {step}: found steps {sorted(steps)}")
    where = folder / str(step)
    meta = CheckpointStore(folder, create=False).read_meta(step)
    wanted = {"kind": expect_kind, "space": expect_space, "dataset": expect_dataset, **(expect or {})}
    check_meta(meta, {k: v for k, v in wanted.items() if v is not None}, where)
    state = _restore(where, meta)
    cls = _CLASSES.get(meta.get("kind"), Checkpoint)
    checkpoint = cls(where, meta.get("kind"), step, meta, state)
    if cls is not Checkpoint:
        try:
            checkpoint._build()
        except KeyError as err:
            raise CheckpointError(f"checkpoint {where} is a {meta.get('kind')!r} checkpoint without {err} in "
                                  "its meta or state: expected the fields docs/checkpoints.md lists for that "
                                  f"kind (format version {FORMAT_VERSION})") from None
        except CheckpointError:
            raise
        except (TypeError, ValueError) as err:
            reason = " ".join(str(err).split())
            raise CheckpointError(f"checkpoint {where}: its meta describes no {meta.get('kind')} model this "
                                  f"nao builds ({type(err).__name__}: {reason})") from None
    return checkpoint


def _normal_key(key: str) -> str:
    """A keystr path as Orbax gives it back without a target: attributes become dict keys."""
    return re.sub(r"\.(\w+)", r"['\1']", key)


def _shape_table(tree) -> dict[str, list[int]]:
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return {_normal_key(jax.tree_util.keystr(p)): list(np.shape(leaf)) for p, leaf in leaves}


def _restore(where: Path, meta: dict[str, Any]) -> Any:
    """The saved pytree as NumPy arrays, checked against every leaf shape the meta lists."""
    listed = {_normal_key(k): v for k, v in meta.get("shapes", {}).items()}
    try:
        manager = ocp.CheckpointManager(where.parent, options=ocp.CheckpointManagerOptions(create=False))
        state = manager.restore(int(where.name), args=ocp.args.Composite(state=ocp.args.StandardRestore()))
        state = state["state"]
    except Exception as err:  # Orbax and TensorStore raise many types for missing or cut files
        reason = " ".join(str(err).split())
        reason = re.sub(r" \[tensorstore_spec=.*", "", reason)[:160]
        raise CheckpointError(f"checkpoint {where} is truncated or damaged: reading its state failed "
                              f"({type(err).__name__}: {reason}); expected the {len(listed)} arrays its "
                              "meta lists. Copy it again, or delete that step folder to fall back to the "
                              "previous one") from None
    found = _shape_table(state)
    if found != listed:
        missing = sorted(set(listed) - set(found))
        differing = missing or sorted(k for k in found if listed.get(k) != found[k])
        name = differing[0]
        raise CheckpointError(f"checkpoint {where} is truncated or damaged: {name} is "
                              f"{found.get(name, 'missing')} in its state, its meta lists "
                              f"{listed.get(name, 'nothing')}")
    return jax.tree.map(np.asarray, state)


def _check_fits(checkpoint: Checkpoint, tree, like, what: str) -> None:
    """Refuse weights whose shapes are not those of the model built from the meta."""
    found, wanted = _shape_table(tree), _shape_table(like)
    if found != wanted:
        name = sorted(k for k in set(found) | set(wanted) if found.get(k) != wanted.get(k))[0]
        raise checkpoint._fail(f"does not fit {what}: {name} is {found.get(name, 'missing')} there, "
                               f"{wanted.get(name, 'absent')} in the model")


# ---------------------------------------------------------------------------------------------
# A controller fitted on a benchmark table


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b (ties counted as scipy.stats.kendalltau does), exact, O(n^2) in blocks."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n = len(x)
    if n != len(y) or n < 2:
        raise ValueError(f"kendall_tau needs two equally long sequences of at least 2 values ({n}, {len(y)})")
    score = 0
    for start in range(0, n, 1024):
        dx = np.sign(x[start:start + 1024, None] - x[None, :])
        dy = np.sign(y[start:start + 1024, None] - y[None, :])
        score += int(np.sum(dx * dy))
    pairs = n * (n - 1) / 2
    ties = [sum(c * (c - 1) / 2 for c in np.unique(v, return_counts=True)[1]) for v in (x, y)]
    denominator = np.sqrt((pairs - ties[0]) * (pairs - ties[1]))
    return float(score / 2 / denominator) if denominator else float("nan")


def scores_to_metric(scores: np.ndarray, targets: dict[str, Any]) -> np.ndarray:
    """Predicted normalised scores -> the table's metric: min-max targets linearly, rank targets through
    the percentiles of the training architectures' metric (``targets`` as a controller meta holds it)."""
    if targets["normalisation"] == "minmax":
        return targets["low"] + np.asarray(scores) * (targets["high"] - targets["low"])
    quantiles = np.asarray(targets["quantiles"])
    return np.interp(scores, np.linspace(0, 1, len(quantiles)), quantiles)


def ranking_metrics(predicted: np.ndarray, valid: np.ndarray, test: np.ndarray | None) -> dict[str, Any]:
    """How well ``predicted`` ranks architectures whose true ``valid`` (and ``test``) metrics are known."""
    order, truth = np.argsort(-predicted, kind="stable"), np.argsort(-valid, kind="stable")
    metrics: dict[str, Any] = {"count": len(valid), "kendall_tau": round(kendall_tau(predicted, valid), 4)}
    for k in (10, 50, 100):
        if k < len(valid):
            metrics[f"top{k}_overlap"] = round(len(set(order[:k]) & set(truth[:k])) / k, 4)
    best = int(order[0])
    metrics["predicted_best_valid"] = float(valid[best])
    metrics["predicted_best_rank"] = int(np.sum(valid > valid[best])) + 1
    metrics["best_valid"] = float(valid.max())
    metrics["best_of_predicted_top10_valid"] = float(valid[order[:10]].max())
    if test is not None:
        metrics["predicted_best_test"] = float(test[best])
        metrics["best_test"] = float(test.max())
    return metrics


def _table(space_name: str, benchmark_file: str | None, valid_key: str | None, test_key: str | None):
    """(space, archs, valid, test or None, facts) of every architecture of the space's table."""
    from nao.spaces import get_space

    if space_name == "nb201":
        from nao.data.nasbench import load_nb201_table

        table = load_nb201_table(benchmark_file, valid_key or "cifar10_valid_acc",
                                 test_key or "cifar10_test_acc")
        archs = [tuple(int(o) for o in row) for row in table.ops]
        dataset = table.valid_key.split("_valid")[0]
        facts = {"file": Path(table.path).name, "valid_key": table.valid_key, "test_key": table.test_key}
        return get_space("nb201"), archs, table.valid, table.test, dataset, facts
    if space_name == "nb101":
        from nao.evaluators.nb101_table import DEFAULT_VALID_KEY, nb101_table_space_and_evaluator

        space, evaluator = nb101_table_space_and_evaluator(benchmark_file, valid_key or DEFAULT_VALID_KEY,
                                                           test_key)
        archs = list(evaluator.archs)
        scores = [evaluator.lookup(a) for a in archs]
        test = None if scores[0][1] is None else np.array([s[1] for s in scores])
        facts = {"file": Path(evaluator.table.path).name, "valid_key": valid_key or DEFAULT_VALID_KEY,
                 "test_key": test_key}
        return get_space("nb101"), archs, np.array([s[0] for s in scores]), test, "cifar10", facts
    raise ValueError(f"--mode=fit_controller fits a benchmark table: choose --space="
                     f"{' or '.join(TABLE_SPACES)}, not {space_name}")


def fit_table_controller(space_name: str, config, output_dir: str | Path, *, holdout: float = 0.1,
                         seed: int = 0, targets: str = "minmax", benchmark_file: str | None = None,
                         valid_key: str | None = None, test_key: str | None = None,
                         flags: dict[str, Any] | None = None, command: str | None = None,
                         log_every: int | None = None) -> dict[str, Any]:
    """Train the controller ``config`` on every architecture of the table but a seeded ``holdout``
    share, with the targets of the search (``normalize_targets``) from the validation metric; report
    Kendall tau and top-k overlap on the held-out share; save ``<output_dir>/checkpoints/<epochs>``,
    ``metrics.json`` and ``MODEL_CARD.md``. Returns the metrics."""
    from nao.controller import Controller
    from nao.models.files import write_json
    from nao.strategies.nao import TARGETS, normalize_targets

    if targets not in TARGETS:
        raise ValueError(f"unknown --targets={targets}: choose one of {', '.join(TARGETS)}")
    if not 0 <= holdout < 1:
        raise ValueError(f"--holdout={holdout} is the held-out share of the table: choose 0 <= holdout < 1")
    if config.epochs < 1:
        raise ValueError(f"--epochs={config.epochs}: the controller needs at least one epoch")
    out = Path(output_dir)
    if (out / "checkpoints").is_dir() and any((out / "checkpoints").iterdir()):
        raise ValueError(f"{out} already holds a checkpoint: choose another --output_dir")
    space, archs, valid, test, dataset, facts = _table(space_name, benchmark_file, valid_key, test_key)
    order = np.random.default_rng(seed).permutation(len(archs))
    held = np.sort(order[:round(holdout * len(archs))])
    train = np.sort(order[round(holdout * len(archs)):])
    if len(train) < 2:
        raise ValueError(f"--holdout={holdout} leaves {len(train)} architectures to train on")
    tokens = space.tokens_batch(archs)
    low, high = float(valid[train].min()), float(valid[train].max())
    y = normalize_targets(valid[train], targets)
    quantiles = np.quantile(valid[train], np.linspace(0, 1, 101))  # rank scores -> accuracies
    target_info = {"normalisation": targets, "metric": facts["valid_key"], "low": low, "high": high,
                   "quantiles": [round(float(q), 4) for q in quantiles]}
    key = jax.random.key(seed)
    controller = Controller(space, config, jax.random.fold_in(key, 0))
    chunk = log_every or max(1, config.epochs // 10)
    log.info("fitting a %s controller on %d %s architectures (%d held out), %d epochs", space.name,
             len(train), facts["file"], len(held), config.epochs)
    start, done, steps, fit = time.perf_counter(), 0, 0, {}
    while done < config.epochs:
        epochs = min(chunk, config.epochs - done)
        fit = controller.fit(tokens[train], y, jax.random.fold_in(key, done + 1), epochs=epochs)
        done, steps = done + epochs, steps + fit["steps"]
        elapsed = time.perf_counter() - start
        line = f"epoch {done}/{config.epochs}  mse {fit['mse']:.5f}  nll {fit['nll']:.4f}"
        if len(held) > 1:
            predicted = controller.predict(tokens[held]).mean(0)
            line += f"  held-out Kendall tau {kendall_tau(predicted, valid[held]):.4f}"
        log.info("%s  %.0f s, ETA %.0f s", line, elapsed, elapsed / done * (config.epochs - done))
    seconds = time.perf_counter() - start
    metrics: dict[str, Any] = {}
    if len(held) > 1:
        predicted = controller.predict(tokens[held]).mean(0)
        metrics["holdout"] = ranking_metrics(predicted, valid[held], None if test is None else test[held])
        error = np.abs(scores_to_metric(predicted, target_info) - valid[held])
        metrics["holdout"]["metric_median_abs_error"] = round(float(np.median(error)), 4)
        metrics["holdout"]["metric_abs_error_p90"] = round(float(np.percentile(error, 90)), 4)
    sample = np.random.default_rng([seed, 1]).choice(train, min(len(train), 2000), replace=False)
    metrics["train_sample"] = {"count": len(sample), "kendall_tau": round(
        kendall_tau(controller.predict(tokens[sample]).mean(0), valid[sample]), 4)}
    meta = {
        "kind": "controller", "space": space.name, "dataset": dataset,
        "controller": dataclasses.asdict(config),
        "targets": target_info,
        "benchmark": {**facts, "architectures": len(archs)},
        "split": {"seed": seed, "holdout": holdout, "train_size": len(train), "holdout_size": len(held),
                  "holdout_indices": [int(i) for i in held]},
        "training": {"epochs": config.epochs, "steps": steps, "seconds": round(seconds, 1),
                     "device": _device(),
                     "final_mse": fit["mse"], "final_nll": fit["nll"]},
        "metrics": metrics, "flags": flags or {}, "command": command,
        "versions": _versions(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    store = CheckpointStore(out / "checkpoints", max_to_keep=1)
    store.save(config.epochs, {"params": controller.params}, meta)
    write_json(out / "metrics.json", {**metrics, "training": meta["training"]})
    (out / "MODEL_CARD.md").write_text(model_card(meta, out))
    log.info("saved %s", out / "checkpoints" / str(config.epochs))
    return metrics


def _device() -> str:
    device = jax.devices()[0]
    if device.platform == "cpu":
        return f"CPU ({os.cpu_count()} cores)"
    return f"{jax.device_count()} x {device.device_kind}"


def _versions() -> dict[str, str]:
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


def model_card(meta: dict[str, Any], out: Path) -> str:
    """A Markdown model card for a controller checkpoint written by ``fit_table_controller``."""
    cfg, split, train, targets = meta["controller"], meta["split"], meta["training"], meta["targets"]
    held = meta["metrics"].get("holdout")
    name = out.name
    lines = [
        f"# Model card: `{name}`, a NAO controller fitted on the {meta['space']} table",
        "",
        ("One NAO encoder-predictor-decoder" if cfg["ensemble"] == 1 else
         f"An ensemble of {cfg['ensemble']} NAO encoder-predictor-decoders") + " (reference §2) trained on "
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
        f"{sum(row['seconds'] for row in history) / 60:.1f} minutes of training on {_device()}.",
        f"- Software: {', '.join(f'{k} {v}' for k, v in _versions().items())}.",
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
        "850 units and trains for 4000 epochs on a GPU (reference §5.4).",
        *[f"- {note}" for note in notes],
        "",
        "## Files",
        "",
        f"`checkpoints/{ckpt.step}/` (state: `params`, `avg`, `best`, `count`; meta: everything above), "
        f"`vocab.txt`, `metrics.json`, `metrics.csv`, `cell.png`; {_size(ckpt.run_dir) / 1e6:.2f} MB in all. "
        "Format: `docs/checkpoints.md`. This card: `nao.pretrained.lm_model_card`.",
        "",
    ]
    return "\n".join(lines)
