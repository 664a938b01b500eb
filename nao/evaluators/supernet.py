"""The ``supernet`` evaluator: weight sharing (NAO-WS, Luo et al., 2018) for the ``ptb_ws`` and
``cifar_ws`` spaces.

One supernet holds the weights of every cell of its space. Between rounds it trains on the search's
working pool, each step with one cell drawn uniformly from it; a cell's score is its validation
perplexity (PTB, lower is better) or accuracy (CIFAR) with the shared weights, and since the weights
keep training, the loop scores the whole pool again every round. Each search seed gets its own
supernet, initialised and fed from that seed; which data scores the cells (the CIFAR hold-out split,
the PTB validation windows) is fixed by the run's ``split_seed`` instead, so every strategy and seed
is scored on the same data.

Presets per space: ``paper``, the original schedules (NAO-WS RNN ``rnn/train_search.py``: a pool of
1000 cells, a round every 200 of 1000 epochs, 300 new cells from the controller and 50 random ones,
eta <= 30; NAO_V1 ``train_search.py``: 600 cells, a round every 30 of 150 epochs, 300 new and no
random ones, eta <= 50, its top 5 retrained) with the paper's controller; and ``smoke``, a few
minutes on a CPU. The supernets' training recipes, under the same names, are ``SUPERNET_PRESETS``
of ``nao.models.lm_ws`` and ``nao.models.cnn_ws``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from nao.controller import PRESETS
from nao.data.cifar import Pair, load_cifar, search_split
from nao.data.text import load_corpus
from nao.evaluators.base import Evaluation, Evaluator, EvaluatorKind, EvaluatorSetup, SearchPreset
from nao.models import cnn_ws, lm_ws
from nao.search import SearchSettings
from nao.spaces import get_space
from nao.strategies.nao import NaoOptions

if TYPE_CHECKING:
    from nao.experiment import ExperimentConfig

# Cells scored between two history writes: a kill while scoring a large pool loses at most these.
SCORE_CHUNK = 32


class Supernet(Protocol):
    """What ``nao.models.lm_ws.LmSupernet`` and ``nao.models.cnn_ws.CifarSupernet`` offer."""

    score_name: str
    higher_is_better: bool
    state: Any

    def train_epoch(self, archs: Sequence[Hashable], epoch: int) -> dict[str, float]: ...

    def score(self, archs: Sequence[Hashable]) -> list[float]: ...


class SupernetEvaluator(Evaluator):
    """Scores cells with a supernet's shared weights and trains it between rounds."""

    rescores = True

    def __init__(self, supernet: Supernet):
        self.supernet = supernet
        self.score_name = supernet.score_name
        self.epoch = 0  # epochs trained

    def train_round(self, archs: Sequence[Hashable], until_epoch: int) -> Iterator[dict[str, float]]:
        archs = list(archs)
        while self.epoch < until_epoch:
            stats = self.supernet.train_epoch(archs, self.epoch)
            self.epoch += 1
            yield {"epoch": self.epoch, **stats}

    def evaluate(self, archs: Sequence[Hashable]) -> Iterator[tuple[int, Evaluation]]:
        sign = 1.0 if self.supernet.higher_is_better else -1.0
        for start in range(0, len(archs), SCORE_CHUNK):
            chunk = list(archs[start:start + SCORE_CHUNK])
            begin = time.perf_counter()
            scores = self.supernet.score(chunk)
            cost = (time.perf_counter() - begin) / len(chunk)
            for offset, score in enumerate(scores):
                yield start + offset, Evaluation(sign * score, None, cost,
                                                 {self.score_name: score, "epoch": self.epoch})

    def save_state(self) -> tuple[Any, dict[str, Any]]:
        return {"supernet": self.supernet.state}, {"epoch": self.epoch}

    def load_state(self, arrays: Any, facts: dict[str, Any]) -> None:
        self.supernet.state = arrays["supernet"]
        self.epoch = facts["epoch"]


def _nao(per_round: int, top_k: int, max_eta: int) -> NaoOptions:
    """NAO as NAO-WS runs it: no initial pool of its own (the loop's is random), the step-size ladder
    eta = 1..max_eta from the top_k cells, min-max targets, decoded cells taken in order."""
    return NaoOptions(init_size=0, per_iteration=per_round, top_k=top_k, max_eta=max_eta, acquisition="none",
                      targets="minmax", neighbor_seeds=0, local_slots=0)


_SMOKE = SearchPreset(SearchSettings(queries=0, epochs=2, round_epochs=1, pool_size=8, per_round=3,
                                     random_per_round=1, top=3), PRESETS["smoke"], _nao(3, 4, 8))
WS_PRESETS: dict[str, dict[str, SearchPreset]] = {
    "ptb_ws": {"paper": SearchPreset(SearchSettings(queries=0, epochs=1000, round_epochs=200, pool_size=1000,
                                                    per_round=300, random_per_round=50, top=10),
                                     PRESETS["paper"], _nao(300, 100, 30)),
               "smoke": _SMOKE},
    "cifar_ws": {"paper": SearchPreset(SearchSettings(queries=0, epochs=150, round_epochs=30, pool_size=600,
                                                      per_round=300, random_per_round=0, top=5),
                                       PRESETS["paper"], _nao(300, 100, 50)),
                 "smoke": _SMOKE},
}


def supernet_presets(space: str) -> dict[str, SearchPreset]:
    if space not in WS_PRESETS:
        raise ValueError(f"evaluator 'supernet' searches {', '.join(WS_PRESETS)}: space {space!r} has no "
                         "supernet (tables: evaluator='table')")
    return WS_PRESETS[space]


def holdout_split(images: np.ndarray, labels: np.ndarray, num_valid: int, seed: int) -> tuple[Pair, Pair]:
    """((train images, labels), (valid images, labels)): ``num_valid`` training images drawn at random
    with ``seed`` are held out to score cells on, as NAO_V1's ``train_search.py`` splits (random
    indices, 10% held out)."""
    order = np.random.default_rng(seed).permutation(len(images))
    return search_split(images[order], labels[order], num_valid)


def _recipe(presets: dict[str, Any], config: ExperimentConfig) -> Any:
    """The supernet's training recipe of the run's preset, with its epochs and learning rate."""
    overrides: dict[str, Any] = {"epochs": config.search.epochs}
    if config.supernet_lr is not None:
        overrides["lr"] = config.supernet_lr
    return dataclasses.replace(presets[config.preset], **overrides)


def _ptb_supernets(config: ExperimentConfig) -> tuple[dict[str, Any], Callable[[int], Supernet]]:
    dataset = config.dataset or "ptb"
    if not config.data_dir:
        raise ValueError("space='ptb_ws' with evaluator='supernet' needs data_dir: a folder with the "
                         f"{dataset} token files (train.txt, valid.txt, test.txt)")
    corpus = load_corpus(dataset, config.data_dir)
    recipe = _recipe(lm_ws.SUPERNET_PRESETS, config)
    facts = {"dataset": dataset, "vocab_fingerprint": corpus.vocab.fingerprint}
    return facts, lambda seed: lm_ws.LmSupernet(recipe, corpus, seed, score_windows=config.score_windows,
                                                split_seed=config.split_seed)


def _cifar_supernets(config: ExperimentConfig) -> tuple[dict[str, Any], Callable[[int], Supernet]]:
    dataset = config.dataset or "cifar10"
    images, labels = load_cifar(dataset, config.data_dir, "train")
    # NAO-WS's 5000 validation images; a tenth of a smaller training set.
    train, valid = holdout_split(images, labels, min(5000, len(images) // 10), config.split_seed)
    recipe = _recipe(cnn_ws.SUPERNET_PRESETS, config)
    facts = {"dataset": dataset, "train_images": len(train[0]), "valid_images": len(valid[0])}
    return facts, lambda seed: cnn_ws.CifarSupernet(recipe, train, valid, seed,
                                                    score_batches=config.score_batches, dataset=dataset)


_SUPERNETS = {"ptb_ws": _ptb_supernets, "cifar_ws": _cifar_supernets}


def build_supernet(config: ExperimentConfig) -> EvaluatorSetup:
    """Load the space's data once; each search seed then gets a supernet initialised from it."""
    if config.search.epochs < 1:
        raise ValueError(f"search.epochs={config.search.epochs}: evaluator 'supernet' trains between rounds; "
                         "set search.epochs and search.round_epochs")
    facts, make_supernet = _SUPERNETS[config.space](config)
    return EvaluatorSetup(get_space(config.space), facts, lambda seed: SupernetEvaluator(make_supernet(seed)))


SUPERNET = EvaluatorKind(presets=supernet_presets, default_preset="paper", build=build_supernet,
                         default_strategies=("nao",))
