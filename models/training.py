"""One training loop for every task family, and the interface a family implements for it.

A ``Task`` (CIFAR networks in ``cnn_train.CnnTask``, language models in ``lm_train.LmTask``; by name in
``nao.models.tasks.TASKS``) says what to train and how to score it: its initial state, the train steps
of an epoch, an evaluation on a data split, which evaluation selects the result weights, and the hooks
it needs at the end of an epoch. ``train(task, output_dir)`` does the rest, the same way for all:

* a run directory holds ``checkpoints/`` (a ``CheckpointStore``, one step an epoch), ``metrics.csv``
  (one row an epoch) and ``metrics.json``; a run starts fresh, or continues its newest checkpoint with
  ``resume``; a directory that holds a run is never overwritten;
* the result weights (``state["best"]``) are those of the best epoch by the task's ``selection``, a
  validation metric, or the last epoch's when the task has no validation split: a test split is only
  reported, never used to choose;
* a NaN or infinite loss stops the run with ``TrainingDivergedError`` before anything is saved, so the
  last checkpoint is a good one; a full disk stops it with an ``OSError`` (ENOSPC) naming the file or
  checkpoint it was writing, with the checkpoints before kept for a resume;
* progress is logged at most every ``log_seconds`` and at each epoch's end, with the rate and an ETA.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import logging
import math
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, NamedTuple, Protocol

import jax
import numpy as np

from nao.models import parallel
from nao.models.checkpoint import CheckpointStore
from nao.models.files import is_primary, write_json, writing

log = logging.getLogger("nao")


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


# ---------------------------------------------------------------------------------------------
# The task interface


class TrainConfig(Protocol):
    """The fields of a family's config that the loop reads (each family's dataclass has more)."""

    epochs: int
    max_steps: int  # > 0: stop after this many steps in all
    batch_size: int  # global, over all devices
    seed: int


@dataclasses.dataclass(frozen=True)
class Selection:
    """Which evaluation chooses the result weights: ``metric`` on ``split``, higher or lower better."""

    split: str
    metric: str
    higher_is_better: bool

    @property
    def key(self) -> str:
        """The metric's name in an evaluation, e.g. ``valid_acc``."""
        return f"{self.split}_{self.metric}"

    def better(self, value: float, best: float | None) -> bool:
        return best is None or (value > best if self.higher_is_better else value < best)


class Step(NamedTuple):
    """What one train step reports to the loop."""

    state: Any  # the replicated train state after the step
    sums: dict[str, jax.Array]  # totals over the step's examples (pmapped, the same on every device);
    # "loss" is required: the loop stops on a non-finite one
    examples: int  # the images or tokens it trained on
    waited: float  # seconds it waited for its input


class Task(Protocol):
    """A task family's part of a training run. Class attributes and static methods describe the family
    (what ``nao.models.tasks`` and the search package use before there is a run); the instance methods
    are one run's, with its config, architecture and data."""

    kind: ClassVar[str]  # the checkpoint kind, and the family's name in nao.models.tasks.TASKS
    unit: ClassVar[str]  # what the rate and the cost count: "images" or "tokens"
    datasets: ClassVar[tuple[str, ...]]  # those it trains on, the default first
    config_type: ClassVar[type]  # the family's config dataclass
    presets: ClassVar[dict[str, Any]]  # named configs
    sizes: ClassVar[tuple[str, ...]]  # config fields a weight transfer keeps (the weights' shapes)
    renewed: ClassVar[tuple[tuple[str, ...], ...]]  # weight paths that depend on the dataset's classes
    # or vocabulary: a weight transfer draws them afresh

    config: TrainConfig
    model: Any  # the Flax module
    start_weights: Any  # the weights a fresh run starts from; None: drawn with init_weights (a transfer
    # sets them before training)
    selection: Selection | None  # None: no validation split, the last epoch is the result
    epoch_splits: tuple[str, ...]  # evaluated after every epoch (the selection's split, if any)
    final_splits: tuple[str, ...]  # reported for the result weights

    @classmethod
    def for_space(cls, space: Any, arch: Sequence[int], dataset: str, data: Any, config: Any) -> Task:
        """The run of ``arch``, a cell of the search space ``space``, on ``data`` (from ``load_data``)."""

    @staticmethod
    def load_data(dataset: str, data_dir: str | None, config: Any) -> Any:
        """The train / valid / test data of ``dataset``, split as ``config`` says."""

    @staticmethod
    def rebuild(meta: dict[str, Any]) -> tuple[Any, Any]:
        """(model, config) from the meta of a checkpoint of this kind."""

    @staticmethod
    def init_weights(model: Any, arch: Sequence[int], seed: int) -> Any:
        """Fresh weights of ``model`` as NumPy."""

    @staticmethod
    def train_state(weights: Any, config: Any) -> dict[str, Any]:
        """The state the train step carries, starting from ``weights`` (a dict of NumPy pytrees)."""

    def meta(self) -> dict[str, Any]:
        """The checkpoint fields that fix the weights' meaning (arch, dataset...): a resumed run must
        have the same."""

    def write_run_files(self, output_dir: Path) -> None:
        """Files the run directory needs besides checkpoints and metrics (a vocabulary...)."""

    def initial_state(self) -> dict[str, Any]:
        """The train state of a fresh run (NumPy)."""

    def initial_progress(self) -> dict[str, Any]:
        """The task's own fields of the resumable progress (JSON values)."""

    def weights(self, state: Any, progress: dict[str, Any]) -> Any:
        """The part of ``state`` that is evaluated and kept as the result (replicated or not)."""

    def steps_in_epoch(self, epoch: int) -> int:
        """How many steps ``train_epoch(..., epoch, ...)`` yields."""

    def train_epoch(self, state: Any, epoch: int, step: int, progress: dict[str, Any]) -> Iterator[Step]:
        """The steps of epoch ``epoch`` (from 1) from the replicated ``state``, the first numbered
        ``step + 1``; the loop closes it early to stop mid-epoch."""

    def evaluate(self, weights: Any, split: str) -> dict[str, float]:
        """Metrics (``loss`` and the family's own) of the replicated ``weights`` on ``split``."""

    def train_fields(self, means: dict[str, float]) -> dict[str, float]:
        """Row fields from the means of the steps' ``sums`` per example."""

    def end_epoch(self, epoch: int, evaluation: dict[str, float], progress: dict[str, Any]) -> dict[str, Any]:
        """The epoch-end hook: may change the task's progress fields; returns the row fields it adds."""


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """A finished run: its metrics (as ``metrics.json``) and where its checkpoints are."""

    metrics: dict[str, Any]
    checkpoint: Path  # the checkpoints folder; its newest step's state["best"] holds the result weights

    @property
    def score(self) -> float | None:
        """The selection metric of the result weights (a validation figure); None without one."""
        key = self.metrics["selection"]["metric"]
        return None if key is None else self.metrics[key]

    @property
    def seconds(self) -> float:
        """Wall time of the epochs, evaluations included, over every resume."""
        return self.metrics["seconds"]

    @property
    def examples(self) -> int:
        """The images or tokens trained on."""
        return self.metrics[self.metrics["unit"]]


# ---------------------------------------------------------------------------------------------
# The loop


def train(task: Task, output_dir: str | os.PathLike, *, resume: bool = False,
          meta: dict[str, Any] | None = None, log_seconds: float = 5.0) -> TrainResult:
    """Train ``task``, checkpointing every epoch into ``output_dir``; returns the result.

    ``meta``: more fields for every checkpoint (space, arch string, flags...). A search evaluator that
    trains each candidate for real is a thin call: ``train(task, out).score`` (its validation figure),
    ``.seconds`` and ``.examples`` (its cost) and ``.checkpoint``.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = task.config
    devices = check_batch(config.batch_size)
    weight_meta = task.meta()
    meta = {**(meta or {}), **weight_meta, "kind": task.kind, "config": dataclasses.asdict(config)}
    store = CheckpointStore(out / "checkpoints")
    state = task.initial_state()
    fresh_progress = {"epoch": 0, "step": 0, "seconds": 0.0, task.unit: 0, "result": None, "history": [],
                      **task.initial_progress()}
    like = {**state, "best": task.weights(state, fresh_progress)}
    state, saved = start_or_resume(store, like, weight_meta, resume, out)
    progress = saved or fresh_progress
    best = state.pop("best")
    with writing(out):
        task.write_run_files(out)
    # The checkpoint's history is the record: rows of epochs after it (a run killed while saving) go.
    write_csv(out / "metrics.csv", progress["history"])
    replicated = parallel.replicate(state)
    step_limit = config.max_steps or math.inf
    size = sum(int(np.size(leaf)) for leaf in jax.tree.leaves(best))
    log.info("%s: %s task, %s weights, %d epochs of %d steps on %d device(s)", out, task.kind, f"{size:,}",
             config.epochs, task.steps_in_epoch(1), devices)
    clock = _Clock()
    while progress["epoch"] < config.epochs and progress["step"] < step_limit:
        epoch = progress["epoch"] + 1
        epoch_start = time.perf_counter()
        replicated, meter = _train_epoch(task, replicated, epoch, progress, step_limit, clock, store,
                                         log_seconds)
        epoch_summary = meter.epoch_summary(time.perf_counter() - epoch_start)
        eval_start = time.perf_counter()
        weights = task.weights(replicated, progress)
        evaluation = {f"{split}_{name}": value for split in task.epoch_splits
                      for name, value in task.evaluate(weights, split).items()}
        for value in evaluation.values():
            check_finite(value, epoch, progress["step"], store)
        eval_seconds = time.perf_counter() - eval_start
        clock.eval_seconds = eval_seconds
        selection = task.selection
        previous = progress["result"]
        if selection is None or selection.better(evaluation[selection.key],
                                                 previous and previous[selection.key]):
            best, progress["result"] = parallel.unreplicate(weights), {"epoch": epoch, **evaluation}
        added = task.end_epoch(epoch, evaluation, progress)
        seconds = time.perf_counter() - epoch_start
        row = {"epoch": epoch, "step": progress["step"], **added, **epoch_summary, **evaluation,
               "seconds": round(seconds - eval_seconds, 2), "eval_seconds": round(eval_seconds, 2)}
        progress["epoch"] = epoch
        progress["seconds"] = round(progress["seconds"] + seconds, 2)
        progress[task.unit] += meter.examples
        progress["history"].append(row)
        store.save(epoch, {**parallel.unreplicate(replicated), "best": best}, {**meta, "progress": progress})
        append_csv(out / "metrics.csv", row)  # after the save: no row of an epoch a resume redoes
        so_far = {key: value for key, value in progress["result"].items() if key != "epoch"}
        write_json(out / "metrics.json", _metrics(task, progress, so_far))
        eta = clock.eta(0, config.epochs - epoch, meter.planned, step_limit - progress["step"])
        log.info("epoch %d/%d done in %s: %s  %s  result: epoch %d  ETA %s", epoch, config.epochs,
                 duration(seconds), _text(epoch_summary), _text(evaluation), progress["result"]["epoch"],
                 duration(eta))
    final = _final_evaluation(task, best, progress)
    metrics = _metrics(task, progress, final)
    write_json(out / "metrics.json", metrics)
    log.info("%s", result_line(metrics))
    return TrainResult(metrics, store.directory)


def _train_epoch(task: Task, replicated: Any, epoch: int, progress: dict[str, Any], step_limit: float,
                 clock: _Clock, store: CheckpointStore, log_seconds: float) -> tuple[Any, _Meter]:
    """Epoch ``epoch``'s steps (up to ``step_limit`` in all), a progress line every ``log_seconds``:
    (the replicated state after them, their meter)."""
    epochs = task.config.epochs
    steps = int(min(task.steps_in_epoch(epoch), step_limit - progress["step"]))
    meter = _Meter(task, store, epoch, steps)
    with contextlib.closing(task.train_epoch(replicated, epoch, progress["step"], progress)) as stepper:
        for done, step in zip(range(1, steps + 1), stepper):
            replicated = step.state
            progress["step"] += 1
            meter.add(step)
            if meter.seconds() >= log_seconds:
                interval = meter.flush(progress["step"])
                clock.add(interval, meter.interval_seconds)
                eta = clock.eta(steps - done, epochs - epoch, steps, step_limit - progress["step"])
                log.info("epoch %d/%d  step %d/%d  %s  %s %s/s  input wait %.0f%%  ETA %s", epoch, epochs,
                         done, steps, _text(task.train_fields(interval.means)), _rate(interval.rate),
                         task.unit, 100 * interval.wait, duration(eta))
    clock.add(meter.flush(progress["step"]), meter.interval_seconds)
    return replicated, meter


def _final_evaluation(task: Task, best: Any, progress: dict[str, Any]) -> dict[str, float]:
    """The result weights' metrics on every final split; those evaluated at their epoch are reused."""
    known = {key: value for key, value in (progress["result"] or {}).items() if key != "epoch"}
    missing = [split for split in task.final_splits if split not in task.epoch_splits]
    replicated = parallel.replicate(best) if missing else None
    for split in missing:
        known.update({f"{split}_{name}": value for name, value in task.evaluate(replicated, split).items()})
    return known


def _metrics(task: Task, progress: dict[str, Any], final: dict[str, float]) -> dict[str, Any]:
    """metrics.json: which split selected the result weights, their figures, the cost, the history."""
    result, selection = progress["result"], task.selection
    chosen: dict[str, Any] = {"epoch": result and result["epoch"]}
    if selection is None:
        chosen.update(split=None, metric=None, rule="no validation split: the last epoch is the result")
    else:
        chosen.update(split=selection.split, metric=selection.key,
                      rule=f"the epoch with the {'highest' if selection.higher_is_better else 'lowest'} "
                           f"{selection.key}")
    return {"selection": chosen, **final, "epochs": progress["epoch"], "steps": progress["step"],
            "seconds": progress["seconds"], "unit": task.unit, task.unit: progress[task.unit],
            "history": progress["history"]}


def result_line(metrics: dict[str, Any]) -> str:
    """One line: which epoch's weights are the result, chosen how, and their figures."""
    chosen = metrics["selection"]
    figures = {key: value for key, value in metrics.items() if isinstance(value, float)
               and key.split("_")[0] in ("train", "valid", "test")}
    return f"result: the weights of epoch {chosen['epoch']} ({chosen['rule']}): {_text(figures)}"


class _Interval(NamedTuple):
    means: dict[str, float]  # the step sums per example
    steps: int
    rate: float  # examples per second
    wait: float  # the share of the time spent waiting for input


class _Meter:
    """The steps of an epoch, and of those since the last flush. Step metrics stay on the device until
    a flush, so that logging does not stall the pipeline of dispatched steps."""

    def __init__(self, task: Task, store: CheckpointStore, epoch: int, planned: int) -> None:
        self.task, self.store, self.epoch = task, store, epoch
        self.planned = planned  # the epoch's steps
        self.totals: dict[str, float] = {}  # the flushed steps' sums
        self.examples, self.waited = 0, 0.0
        self._pending: list[Step] = []
        self._start = time.perf_counter()
        self.interval_seconds = 0.0

    def add(self, step: Step) -> None:
        self._pending.append(step._replace(state=None))

    def seconds(self) -> float:
        return time.perf_counter() - self._start

    def flush(self, step: int) -> _Interval:
        """The steps since the last flush, which it waits for; raises if their loss is not finite."""
        values = jax.device_get([s.sums for s in self._pending])  # each (devices,), the same on all
        keys = values[0] if values else ()
        sums = {key: sum(float(np.asarray(v[key])[0]) for v in values) for key in keys}
        if sums:
            check_finite(sums["loss"], self.epoch, step, self.store)
        examples = sum(s.examples for s in self._pending)
        waited = sum(s.waited for s in self._pending)
        seconds = self.interval_seconds = max(self.seconds(), 1e-9)
        for key, value in sums.items():
            self.totals[key] = self.totals.get(key, 0.0) + value
        self.examples += examples
        self.waited += waited
        interval = _Interval({k: v / max(examples, 1) for k, v in sums.items()}, len(self._pending),
                             examples / seconds, waited / seconds)
        self._pending, self._start = [], time.perf_counter()
        return interval

    def epoch_summary(self, seconds: float) -> dict[str, float]:
        """The epoch's train fields, rate and input wait (row fields)."""
        means = {k: v / max(self.examples, 1) for k, v in self.totals.items()}
        return {**(self.task.train_fields(means) if means else {}),
                f"{self.task.unit}_per_s": round(self.examples / seconds, 1),
                "input_wait": round(self.waited / seconds, 4)}


class _Clock:
    """The ETA: seconds per step of the steady state (the run's first interval, which compiles, is left
    out) and of the latest evaluation."""

    def __init__(self) -> None:
        self.seconds, self.steps, self.warm = 0.0, 0, False
        self.eval_seconds = 0.0

    def add(self, interval: _Interval, seconds: float) -> None:
        if self.warm:
            self.seconds, self.steps = self.seconds + seconds, self.steps + interval.steps
        self.warm = self.warm or interval.steps > 0

    def eta(self, left_in_epoch: int, epochs_left: int, steps_per_epoch: int, step_budget: float) -> float:
        if not self.steps:
            return math.nan
        later = min(epochs_left * steps_per_epoch, step_budget - left_in_epoch)
        evaluations = (left_in_epoch > 0) + math.ceil(later / max(steps_per_epoch, 1))
        return (left_in_epoch + later) * self.seconds / self.steps + evaluations * self.eval_seconds


def _rate(per_second: float) -> str:
    return f"{per_second:,.0f}" if per_second >= 100 else f"{per_second:.3g}"


def _text(fields: dict[str, Any]) -> str:
    return "  ".join(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}"
                     for key, value in fields.items())


# ---------------------------------------------------------------------------------------------
# Helpers of every trainer (the NAO-WS search uses them too)


def start_or_resume(store: CheckpointStore, state: Any, expect: dict[str, Any], resume: bool,
                    out: Path) -> tuple[Any, dict[str, Any] | None]:
    """(state, saved progress) of the newest checkpoint with ``resume``, else (``state``, None).

    ``expect``: the meta fields that fix the weights' meaning (architecture, dataset...); the
    optimiser settings may change on resume (a lower lr after a divergence).
    """
    if store.latest_step() is None:
        return state, None
    if not resume:
        raise ValueError(f"{out} already holds a training run: resume it (resume=True), or choose another "
                         "output directory")
    state, saved = store.restore(state, expect=expect)
    progress = saved["progress"]
    log.info("resumed from epoch %d (step %d) in %s", progress["epoch"], progress["step"], out)
    return state, progress


def check_finite(loss: float, epoch: int, step: int, store: CheckpointStore) -> None:
    """Raise TrainingDivergedError (one line) unless ``loss`` is finite."""
    if not math.isfinite(loss):
        last = store.latest_step()
        kept = f"the last good checkpoint (epoch {last}) is kept" if last else "no checkpoint was written yet"
        raise TrainingDivergedError(f"the loss became {loss} at epoch {epoch}, step {step}; {kept} in "
                                    f"{store.directory}: lower the config's lr and resume")


def device_multiple(batch_size: int) -> int:
    """``batch_size`` rounded up to a multiple of the job's device count (evaluation batches)."""
    devices = jax.device_count()
    return -(-batch_size // devices) * devices


def check_batch(batch_size: int) -> int:
    """The local device count; the job's device count (all hosts) must divide the global batch."""
    if batch_size % jax.device_count():
        raise ValueError(f"batch_size={batch_size} must be divisible by the {jax.device_count()} devices "
                         f"({jax.process_count()} process(es)): choose a multiple of {jax.device_count()}")
    return jax.local_device_count()


def timed(iterator: Iterable[Any]) -> Iterator[tuple[Any, float]]:
    """(item, seconds spent waiting for it) of each item."""
    iterator = iter(iterator)
    while True:
        start = time.perf_counter()
        try:
            item = next(iterator)
        except StopIteration:
            return
        yield item, time.perf_counter() - start


def append_csv(path: Path, row: dict[str, Any]) -> None:
    """One row more in a CSV file (written by process 0 of a multi-host job only)."""
    if not is_primary():
        return
    new = not path.exists()
    with writing(path), path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """A CSV file holding exactly ``rows`` (none: no file), replaced in one rename so that a kill
    leaves the old file or the new one; process 0 only."""
    if not is_primary():
        return
    partial = path.with_name(path.name + ".partial")
    partial.unlink(missing_ok=True)
    for row in rows:
        append_csv(partial, row)
    if rows:
        os.replace(partial, path)
    else:
        path.unlink(missing_ok=True)


def read_csv(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV file this module wrote (none if it does not exist)."""
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


class Ticker:
    """Progress of a long loop that has no trainer of its own (a supernet's epoch): a log line at
    most every ``every`` seconds with the steps done, a figure, the rate and the ETA of the loop.
    The rate leaves out the steps before the first line, which hold the compilation."""

    def __init__(self, what: str, total: int, unit: str, every: float = 5.0, approximate: bool = False):
        self.what, self.total, self.unit, self.every = what, total, unit, every
        self.mark = "~" if approximate else ""  # the total is an estimate (random window lengths)
        self.last = time.perf_counter()
        self.warm: tuple[float, int, int] | None = None  # (time, steps, examples) at the first line

    def due(self) -> bool:
        """Whether a line is due: callers fetch the figure from the device only then."""
        return time.perf_counter() - self.last >= self.every

    def log(self, done: int, examples: int, figures: dict[str, float], total: int | None = None) -> None:
        """One line: ``done`` steps of ``total`` (``examples`` in all) and ``figures`` (e.g. the loss);
        ``total`` updates an estimate made at the start."""
        self.total = total or self.total
        now = self.last = time.perf_counter()
        if self.warm is None:
            self.warm = (now, done, examples)
            rate, eta = math.nan, math.nan
        else:
            start, steps, seen = self.warm
            elapsed = max(now - start, 1e-9)
            rate = (examples - seen) / elapsed
            eta = max(self.total - done, 0) * elapsed / max(done - steps, 1)
        log.info("%s  step %d/%s%d  %s  %s %s/s  ETA %s", self.what, done, self.mark, self.total,
                 _text(figures), "?" if math.isnan(rate) else _rate(rate), self.unit, duration(eta))


def config_from_meta(config_type: type, fields: dict[str, Any]) -> Any:
    """A config dataclass from a checkpoint's ``config`` field: fields this version does not know are
    ignored and missing ones take their defaults (the format policy of docs/checkpoints.md)."""
    known = {field.name for field in dataclasses.fields(config_type)}
    return config_type(**{name: value for name, value in fields.items() if name in known})
