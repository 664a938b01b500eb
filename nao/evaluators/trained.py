"""The ``train`` evaluator: full NAO (Luo et al., 2018), every candidate trained from scratch.

Each candidate cell is trained with a short search schedule, on workers (``nao.executors``), and
scored on a validation split held apart from its training data; the test set is never read (the
data of a search are the CIFAR training batches, 5,000 of them held out, or PTB's train and valid
files). Each candidate's run is a training run directory, ``searches/<strategy>/seed_<s>/candidates/
<id>/`` (checkpoints every epoch, ``metrics.json``), named in its history row (``checkpoint``), so the
best candidates can be trained further (``--mode=train --from_checkpoint=<it>``) or transferred
(``--mode=transfer --from_checkpoint=<it>``) without training them again; a candidate killed mid-way
continues from its last epoch when the search is resumed.

The history row of a candidate: ``valid`` (higher is better: the validation accuracy, or minus the
validation perplexity), the score in its own units (``valid_acc`` / ``valid_ppl``), its cost
(``cost``: seconds; ``images`` or ``tokens`` trained on), ``checkpoint``. A candidate whose loss
diverged (NaN), or whose worker died twice, is a failed row: ``valid`` = -inf, ``failed`` true and
``error`` why; the strategies never see it (it ranks below every trained candidate), and the search
goes on.

Schedules (``SEARCH_RECIPES``) per preset:

* CIFAR ``paper``: NAO's ``cnn/train_cifar10_search.sh`` (TF full NAO): N=3, F=32, 25 epochs, batch 128,
  cosine lr from 0.024, drop-path keep 0.7, auxiliary head, weight decay 5e-4, on 45k/5k. Its lr
  follows a cosine of T_0 = 100 epochs over 25 (it only falls to ~0.020); ours decays to 0 over the
  25 epochs, as the recipe of the final training does.
* PTB ``paper``: the original code ships no short schedule (its ``train_ptb_search.sh`` is the final
  600-epoch training). Ours is NAO's final PTB recipe (``rnn/train.py``: SGD lr 20, batch 64, bptt 35,
  clip 0.25, the AWD-LSTM dropouts, NT-ASGD) shrunk as the CIFAR proxy shrinks its network: 300 units
  (NAO-WS's search size) instead of 850 and 30 epochs instead of 4000, so that candidates are ranked
  under the optimiser that trains the final cell. Cost: 28M tokens a candidate (30 passes over PTB's
  930k training words); per token a 300-unit model costs a third (softmax) to an eighth (cell) of the
  850-unit one, so a candidate is ~1/400-1/1000 of the final training (4 V100-days in NAO's README):
  ~6-15 V100-minutes, 4-10 V100-days for 1000 candidates (an estimate: no GPU measured it here).
* ``cpu``: one candidate in one to two minutes on 2 CPU cores (the README's "Full NAO on many
  workers" has the figures); ``smoke``: seconds, for tests.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Hashable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nao.controller import PRESETS
from nao.evaluators.base import (
    Evaluation,
    EvaluatorKind,
    EvaluatorSetup,
    SearchPreset,
    StreamingEvaluator,
)
from nao.executors import EXECUTORS, Executor, Outcome, WorkerTask
from nao.models.cnn_train import CnnTask, CnnTrainConfig
from nao.models.lm_train import LmTask, LmTrainConfig
from nao.search import SearchSettings
from nao.spaces import get_space
from nao.strategies.nao import NAO_PRESETS

if TYPE_CHECKING:
    from nao.experiment import ExperimentConfig

# The spaces whose cells train for real, and the task family that trains them.
SPACE_FAMILIES = {"cifar": "cnn", "cifar_ws": "cnn", "ptb": "lm", "ptb_ws": "lm"}
SCORE_NAMES = {"cnn": "valid_acc", "lm": "valid_ppl"}
HIGHER_IS_BETTER = {"cnn": True, "lm": False}
CIFAR_VALID_IMAGES = 5000  # held out of the training images (NAO's 45k/5k split); a tenth of fewer

SEARCH_RECIPES: dict[str, dict[str, CnnTrainConfig | LmTrainConfig]] = {
    "cnn": {
        "paper": CnnTrainConfig(channels=32, layers=3, epochs=25, batch_size=128, lr=0.024,
                                drop_path_keep_prob=0.7, use_aux_head=True, weight_decay=5e-4),
        # F=8, N=1, batch 32: 400 steps and the 5,000 hold-out images in about two minutes on 2 cores.
        "cpu": CnnTrainConfig(channels=8, layers=1, epochs=1, batch_size=32, max_steps=400),
        "smoke": CnnTrainConfig(channels=4, layers=1, epochs=1, batch_size=8, eval_batch_size=16,
                                max_steps=20),
    },
    "lm": {
        "paper": LmTrainConfig(emb_size=300, hidden_size=300, epochs=30),
        # 64 units, lighter dropouts, 500 steps (60% of a pass over PTB): about a minute on 2 quiet cores.
        "cpu": LmTrainConfig(emb_size=64, hidden_size=64, dropout=0.2, dropout_h=0.1, dropout_x=0.1,
                             dropout_i=0.1, batch_size=32, eval_batch_size=32, test_batch_size=32, epochs=1,
                             max_steps=500),
        "smoke": LmTrainConfig(emb_size=16, hidden_size=16, dropout=0.1, dropout_h=0.1, dropout_x=0.1,
                               dropout_i=0.1, batch_size=4, eval_batch_size=4, test_batch_size=4, bptt=8,
                               length_bucket=16, epochs=1, max_steps=20),
    },
}

# Full NAO's rounds: 400 random cells, then 300 a round decoded from the best 100 (eta 1..100), 1000
# in all (the paper's M = 1000; NAO's epd/generate.sh decodes up to 300 a round).
_PAPER_NAO = dataclasses.replace(NAO_PRESETS["paper"], init_size=400, per_iteration=300)
_SEARCHES = {
    "paper": SearchPreset(SearchSettings(queries=1000), PRESETS["paper"], _PAPER_NAO),
    # A worker starts a new candidate as soon as it is free (the paper's rounds wait for the slowest).
    # NAO's default (pre-trained controller ensemble) from 4 random cells: 8 of the 12 are its picks.
    "cpu": SearchPreset(SearchSettings(queries=12, top=3, schedule="async"), PRESETS["default"],
                        dataclasses.replace(NAO_PRESETS["default"], init_size=4, per_iteration=2, top_k=4,
                                            local_slots=1)),
    "smoke": SearchPreset(SearchSettings(queries=4, top=3), PRESETS["smoke"],
                          dataclasses.replace(NAO_PRESETS["smoke"], init_size=2, per_iteration=2, top_k=2)),
}


def trained_presets(space: str) -> dict[str, SearchPreset]:
    if space not in SPACE_FAMILIES:
        raise ValueError(f"evaluator 'train' trains cells of {', '.join(SPACE_FAMILIES)}; space {space!r} is "
                         "not one of them (tables: evaluator='table')")
    family = SPACE_FAMILIES[space]
    return {name: dataclasses.replace(preset, candidate=SEARCH_RECIPES[family][name])
            for name, preset in _SEARCHES.items()}


def candidate_id(key: str) -> str:
    """A folder name for the candidate of canonical key ``key`` (keys hold spaces and brackets)."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _exit_with_parent() -> None:
    """End this worker when the process that started it dies: a killed search must not leave workers
    training into its folders while a resumed one trains there too."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


class CandidateTraining(WorkerTask):
    """A worker's task: train one candidate from scratch into its folder and score it (``nao.executors``).

    ``setup`` loads the search's data once per worker, never the test split."""

    def __init__(self, space: str, dataset: str, data_dir: str | None, recipe: Any):
        self.space_name, self.dataset, self.data_dir, self.recipe = space, dataset, data_dir, recipe
        self.family_name = SPACE_FAMILIES[space]
        self._data: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_data": None}  # data are loaded in each worker

    def setup(self) -> None:
        _exit_with_parent()
        # The training loop's progress lines (a candidate's folder, then a line a minute and per epoch).
        logging.basicConfig(level=logging.INFO, format=f"%(asctime)s worker {os.getpid()}: %(message)s",
                            force=True)
        self._data, self.recipe = load_search_data(self.family_name, self.dataset, self.data_dir, self.recipe)

    def __call__(self, payload: tuple[str, str]) -> dict[str, Any]:
        from nao.models.training import TrainingDivergedError, train

        arch_text, folder = payload
        space = get_space(self.space_name)
        arch = space.from_string(arch_text)
        family = SEARCH_TASKS[self.family_name]
        task = family.for_space(space, arch, self.dataset, self._data, self.recipe)
        task.final_splits = ("valid",)  # a search never scores the test split
        meta = {"space": self.space_name, "arch_string": space.to_string(arch), "flags": {"search": True}}
        start = time.perf_counter()
        try:
            result = train(task, folder, resume=True, meta=meta, log_seconds=60.0)
        except TrainingDivergedError as err:
            return {"failed": True, "error": str(err), "seconds": time.perf_counter() - start}
        score_name = SCORE_NAMES[self.family_name]
        return {"failed": False, score_name: result.metrics[score_name], "seconds": result.seconds,
                family.unit: result.examples}


class SearchLmTask(LmTask):
    """A candidate language model: its cell is an argument of the steps, so a worker compiles them once
    for every candidate (its checkpoints are ``lm`` ones, as a final training's)."""

    fixed_cell = False


# The task class that trains a candidate of each family; a CIFAR network is built around its cells,
# so each candidate compiles its own steps.
SEARCH_TASKS = {"cnn": CnnTask, "lm": SearchLmTask}


def load_search_data(family: str, dataset: str, data_dir: str | None, recipe: Any) -> tuple[Any, Any]:
    """(data, recipe) of a search: the training data with a validation split held apart, no test split
    (its arrays are empty). CIFAR holds out its last 5,000 training images (NAO's TF ``read_data``),
    which is what ``--mode=train --child_valid_images=5000`` holds out too, so a candidate trained
    further is scored on the images its search scored it on; its recipe learns how many."""
    if family == "lm":
        from nao.data.text import load_corpus

        if not data_dir:
            raise ValueError(f"evaluator 'train' on {dataset} needs data_dir: a folder with the train and "
                             "valid token files")
        return load_corpus(dataset, data_dir, splits=("train", "valid")), recipe
    from nao.data.cifar import load_cifar, search_split
    from nao.models.cnn_train import CnnData

    images, labels = load_cifar(dataset, data_dir, "train")
    train, valid = search_split(images, labels, min(CIFAR_VALID_IMAGES, len(images) // 10))
    empty = (images[:0], labels[:0])
    return CnnData(train, valid, empty), dataclasses.replace(recipe, valid_images=len(valid[0]))


class TrainedEvaluator(StreamingEvaluator):
    """Trains every candidate it is given on an executor's workers; yields each score as it arrives.

    The workers start with the first candidate and serve every later one, round after round, until
    ``close``: each compiles its training steps once."""

    def __init__(self, space: Any, task: CandidateTraining, make_executor: Callable[[WorkerTask], Executor]):
        self.space, self.task, self.make_executor = space, task, make_executor
        self.family = task.family_name
        self.score_name = SCORE_NAMES[self.family]
        self.folder: Path | None = None
        self._executor: Executor | None = None
        self._folders: dict[int, Path] = {}  # ticket -> candidate folder, while in flight

    def use_folder(self, folder: Path) -> None:
        self.folder = Path(folder)

    def candidate_folder(self, arch: Hashable) -> Path:
        if self.folder is None:
            raise ValueError("evaluator 'train' writes every candidate's checkpoints: call "
                             "use_folder(FOLDER) first (run_experiment does)")
        return self.folder / "candidates" / candidate_id(self.space.key(arch))

    @property
    def executor(self) -> Executor:
        if self._executor is None:
            self._executor = self.make_executor(self.task)
        return self._executor

    @property
    def workers(self) -> int:  # what the executor resolved (one per GPU of a Ray cluster, say)
        return self.executor.workers

    def submit(self, ticket: int, arch: Hashable) -> None:
        folder = self.candidate_folder(arch)
        self._folders[ticket] = folder
        self.executor.submit(ticket, (self.space.to_string(arch), str(folder)))

    def completed(self) -> Iterator[tuple[int, Evaluation]]:
        if self._executor is None:
            return
        for outcome in self._executor.results():
            yield outcome.job_id, self._evaluation(outcome, self._folders.pop(outcome.job_id))

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown()
            self._executor = None

    def _evaluation(self, outcome: Outcome, folder: Path) -> Evaluation:
        facts = {"checkpoint": str(folder), "attempts": outcome.attempts}
        value = outcome.value or {"failed": True, "error": outcome.error, "seconds": 0.0}
        if value["failed"]:
            return Evaluation(-math.inf, None, value["seconds"],
                              {**facts, self.score_name: None, "failed": True, "error": value["error"]})
        score = value[self.score_name]
        sign = 1.0 if HIGHER_IS_BETTER[self.family] else -1.0
        unit = "images" if self.family == "cnn" else "tokens"
        return Evaluation(sign * score, None, value["seconds"],
                          {**facts, self.score_name: score, unit: value[unit]})


def build_trained(config: ExperimentConfig) -> EvaluatorSetup:
    """Check the data and the workers now (one line each), then one evaluator per search seed."""
    from nao.child_training import SPACE_DATASETS

    family = SPACE_FAMILIES[config.space]
    dataset = config.dataset or SPACE_DATASETS[config.space][0]
    if dataset not in SPACE_DATASETS[config.space]:
        raise ValueError(f"dataset={dataset} does not fit space={config.space}: choose one of "
                         f"{', '.join(SPACE_DATASETS[config.space])}")
    recipe = config.candidate
    data, recipe = load_search_data(family, dataset, config.data_dir, recipe)
    executor_type = EXECUTORS[config.executor]
    workers = config.workers
    executor_type.check_workers(workers)
    executor_type.preflight(config.ray_address)
    where = {"address": config.ray_address} if config.ray_address else {}
    task = CandidateTraining(config.space, dataset, config.data_dir, config.candidate)
    facts = {"dataset": dataset, "recipe": dataclasses.asdict(recipe), **_data_sizes(family, data)}
    space = get_space(config.space)
    return EvaluatorSetup(space, facts, lambda seed: TrainedEvaluator(
        space, task, lambda worker_task: executor_type(worker_task, workers, **where)))


def _data_sizes(family: str, data: Any) -> dict[str, int]:
    if family == "lm":
        return {"train_tokens": int(np.size(data.train)), "valid_tokens": int(np.size(data.valid))}
    return {"train_images": len(data.train[0]), "valid_images": len(data.valid[0])}


TRAINED = EvaluatorKind(presets=trained_presets, default_preset="paper", build=build_trained,
                        default_strategies=("nao",))
