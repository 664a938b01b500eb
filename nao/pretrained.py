"""Pretrained checkpoints: load any checkpoint this project writes.

``load_checkpoint(path)`` reads what the trainers and searches save (the format is described in
``docs/checkpoints.md``) and returns a ``Checkpoint``: ``kind``, ``step``, ``meta`` (the JSON
description), ``state`` (the saved pytree, NumPy arrays) and, by kind, what it takes to use it:

* ``controller`` (``run_nao.py --mode=fit_controller``): the space, the controller, ``predict(archs)``;
* ``cnn`` (``--mode=train`` of a CIFAR cell): the Flax ``model``, ``variables``, ``predict(images)``;
* ``lm`` (``--mode=train`` of a PTB cell): ``model``, ``params``, ``vocab``, ``perplexity(text)``;
* ``ws_search`` (a NAO-WS search): the space, the last pool and its rounds.

Every problem with the input (no checkpoint there, another format version, a truncated or damaged
state, found by the SHA-256 of every state file its meta records, another kind, space or dataset than
the caller expects, weights that do not fit the model) raises ``CheckpointError`` with one line naming
what was found and what was expected. Trained models are rebuilt from their meta by their task
family (``nao.models.tasks.rebuild``), as the trainer built them.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Hashable, Iterable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from nao.models.checkpoint import FORMAT_VERSION, CheckpointError, CheckpointStore, check_meta
from nao.ranking import scores_to_metric

# Checkpoints shipped as package data (nao/checkpoints/): load_checkpoint(name) finds them.
PRETRAINED = {name: Path(__file__).resolve().parent / "checkpoints" / name
              for name in ("nb201_controller", "ptb_small")}

__all__ = ["PRETRAINED", "Checkpoint", "CheckpointError", "CnnCheckpoint", "ControllerCheckpoint",
           "LmCheckpoint", "WsSearchCheckpoint", "load_checkpoint"]


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
    """A trained CIFAR cell network: ``model`` (Flax ``CellNetwork``), ``variables`` (the result
    {params, batch_stats}: of the best validation epoch, or of the last epoch when the run had no
    validation split; those ``metrics.json``'s figures are of), ``last_variables`` (after the last
    epoch), ``predict(uint8 NHWC images) -> logits``."""

    def _build(self) -> None:
        from nao.data.cifar import cifar_class_names
        from nao.models.tasks import rebuild

        self.model, self.config = rebuild(self.meta)
        self.arch = tuple(self.meta["arch"])
        self.dataset = self.meta["dataset"]
        self.class_names = cifar_class_names(self.dataset)
        like = jax.eval_shape(functools.partial(self.model.init, train=False), jax.random.key(0),
                              jax.ShapeDtypeStruct((2, 32, 32, 3), np.float32))
        self.variables = self.state["best"]
        _check_fits(self, self.variables, like, "the network its meta describes")
        self.last_variables = {"params": self.state["params"], "batch_stats": self.state["batch_stats"]}

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
        from nao.models.lm_train import init_params
        from nao.models.tasks import rebuild

        self.model, self.config = rebuild(self.meta)
        self.arch = tuple(int(v) for v in self.meta["arch"])
        self.dataset = self.meta["dataset"]
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
        ``batch_size`` rows (the trainer's validation figures use ``config.eval_batch_size``, its test
        figures ``config.test_batch_size``; 1 keeps every token)."""
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
    store = CheckpointStore(folder, create=False)
    steps = store.steps()
    if not steps:
        entries = sorted(p.name for p in folder.iterdir())[:5]
        found = f"found {', '.join(entries)}" if entries else "found an empty folder"
        raise CheckpointError(f"no checkpoint in {folder}: {found}; expected numbered step folders holding "
                              "state/ and meta/ (the checkpoints/ folder of a training or search run)")
    step = folder_step if step is None else step
    step = steps[-1] if step is None else step
    if step not in steps:
        raise CheckpointError(f"{folder} has no step {step}: found steps {steps}")
    where = folder / str(step)
    meta = store.read_meta(step)
    wanted = {"kind": expect_kind, "space": expect_space, "dataset": expect_dataset, **(expect or {})}
    check_meta(meta, {k: v for k, v in wanted.items() if v is not None}, where)
    state = _restore(store, step, meta)
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


def _restore(store: CheckpointStore, step: int, meta: dict[str, Any]) -> Any:
    """The saved pytree as NumPy arrays (its files verified by the store), checked against every leaf
    shape the meta lists."""
    listed = {_normal_key(k): v for k, v in meta.get("shapes", {}).items()}
    state = store.read_state(step)
    found = _shape_table(state)
    if found != listed:
        missing = sorted(set(listed) - set(found))
        differing = missing or sorted(k for k in found if listed.get(k) != found[k])
        name = differing[0]
        raise CheckpointError(f"checkpoint {store.directory / str(step)} is truncated or damaged: {name} is "
                              f"{found.get(name, 'missing')} in its state, its meta lists "
                              f"{listed.get(name, 'nothing')}")
    return state


def _check_fits(checkpoint: Checkpoint, tree, like, what: str) -> None:
    """Refuse weights whose shapes are not those of the model built from the meta."""
    found, wanted = _shape_table(tree), _shape_table(like)
    if found != wanted:
        name = sorted(k for k in set(found) | set(wanted) if found.get(k) != wanted.get(k))[0]
        raise checkpoint._fail(f"does not fit {what}: {name} is {found.get(name, 'missing')} there, "
                               f"{wanted.get(name, 'absent')} in the model")
