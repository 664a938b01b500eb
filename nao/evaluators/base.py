"""What every evaluator promises the search loop, and what a run's config builds one from."""

from __future__ import annotations

import abc
import collections
import dataclasses
from collections.abc import Callable, Hashable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nao.controller import ControllerConfig
from nao.search import SearchSettings
from nao.spaces.base import SearchSpace
from nao.strategies.nao import NaoOptions

if TYPE_CHECKING:
    from nao.experiment import ExperimentConfig


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """One architecture's scores. ``valid`` drives the search (higher is better); ``test`` is only
    reported; ``cost`` is the seconds the evaluation took; ``extra`` goes into the history row as it
    is (a supernet's score in its own units, such as ``valid_ppl``)."""

    valid: float
    test: float | None
    cost: float
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


class Evaluator(abc.ABC):
    """Scores batches of architectures, yielding each result as it is ready, in any order.

    That is the seam where expensive evaluations fan out to workers: the loop records every result
    as it arrives and never assumes an order. An evaluator that learns as the search goes (a
    weight-sharing supernet) also trains between rounds (``train_round``), says that its scores
    change meanwhile (``rescores``, so the loop scores the whole pool again every round) and has
    state that the loop checkpoints (``save_state`` / ``load_state``). A table does none of that.
    """

    score_name: str = "valid"  # the row field summaries rank by, in the evaluator's own units
    rescores: bool = False  # scores change between rounds: the working pool is scored every round
    workers: int = 1  # evaluations the asynchronous schedule keeps in flight at once

    @abc.abstractmethod
    def evaluate(self, archs: Sequence[Hashable]) -> Iterator[tuple[int, Evaluation]]:
        """Yield (position in ``archs``, evaluation) pairs."""

    def submit(self, ticket: int, arch: Hashable) -> None:
        """Start evaluating ``arch`` (the asynchronous schedule); ``completed`` yields its result under
        ``ticket``. The default queues it, and ``completed`` evaluates it when it gets there."""
        self._submitted().append((ticket, arch))

    def completed(self) -> Iterator[tuple[int, Evaluation]]:
        """(ticket, evaluation) of the submitted architectures as they end, in any order. It ends when
        none is in flight; architectures submitted between two results join the stream."""
        queue = self._submitted()
        while queue:
            ticket, arch = queue.popleft()
            for _, evaluation in self.evaluate([arch]):
                yield ticket, evaluation

    def _submitted(self) -> collections.deque:
        if "_queue" not in self.__dict__:
            self._queue: collections.deque = collections.deque()
        return self._queue

    def close(self) -> None:
        """Release what the evaluator holds (workers) when its search ends; the default holds nothing."""
        return None

    def train_round(self, archs: Sequence[Hashable], until_epoch: int) -> Iterator[dict[str, float]]:
        """Train on ``archs`` up to epoch ``until_epoch``, yielding each epoch's statistics (``epoch``,
        the epochs done, and ``train_loss`` among them). Epochs already done are not trained again, so
        after ``load_state`` it trains only what is missing. The default trains nothing."""
        return iter(())

    def use_folder(self, folder: Path) -> None:
        """The search's own folder (``searches/<strategy>/seed_<s>/``), for what the evaluator writes
        (trained candidates' checkpoints); the default writes nothing."""
        return None

    def save_state(self) -> tuple[Any, dict[str, Any]] | None:
        """(arrays, facts) to checkpoint: a pytree of arrays and JSON values; None: no state (the
        loop then resumes by replaying the history)."""
        return None

    def load_state(self, arrays: Any, facts: dict[str, Any]) -> None:
        """Continue from what ``save_state`` returned."""
        raise NotImplementedError(f"{type(self).__name__} has no state to load")


class StreamingEvaluator(Evaluator):
    """An evaluator whose evaluations run elsewhere (workers): it implements ``submit`` and
    ``completed``, and a round's ``evaluate`` is built on them."""

    _batches = 0  # architectures ``evaluate`` has submitted, under negative tickets apart from the loop's

    @abc.abstractmethod
    def submit(self, ticket: int, arch: Hashable) -> None: ...

    @abc.abstractmethod
    def completed(self) -> Iterator[tuple[int, Evaluation]]: ...

    def evaluate(self, archs: Sequence[Hashable]) -> Iterator[tuple[int, Evaluation]]:
        first = self._batches + 1
        self._batches += len(archs)
        for position, arch in enumerate(archs):
            self.submit(-(first + position), arch)
        for ticket, evaluation in self.completed():
            yield -ticket - first, evaluation


@dataclasses.dataclass(frozen=True)
class SearchPreset:
    """A named set of search settings for one evaluator: the loop's, the controller's and NAO's."""

    search: SearchSettings
    controller: ControllerConfig
    nao: NaoOptions
    candidate: Any = None  # evaluators that train each candidate: its training recipe


@dataclasses.dataclass(frozen=True)
class EvaluatorSetup:
    """What a run builds once: the space, facts for its summary, and one evaluator per search seed
    (a table is shared; a supernet is a new one, initialised from the seed)."""

    space: SearchSpace
    facts: dict[str, Any]
    make: Callable[[int], Evaluator]


@dataclasses.dataclass(frozen=True)
class EvaluatorKind:
    """A registry entry: the presets per space (``presets(space)``; a ValueError for a space the
    evaluator cannot score), the default preset's name, and the factory from a run's config."""

    presets: Callable[[str], dict[str, SearchPreset]]
    default_preset: str
    build: Callable[[ExperimentConfig], EvaluatorSetup]
    # The strategies a run searches with when it names none (None: all of them); a supernet search
    # is long, so it runs NAO alone unless asked for more.
    default_strategies: tuple[str, ...] | None = None
