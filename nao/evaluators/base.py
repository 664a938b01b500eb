"""What every evaluator promises the search loop."""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Hashable, Iterator, Sequence


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """One architecture's scores. ``valid`` drives the search (higher is better);
    ``test`` is only reported; ``cost`` is the seconds the evaluation took."""

    valid: float
    test: float | None
    cost: float


class Evaluator(abc.ABC):
    """Scores batches of architectures, yielding each result as it is ready, in any order.

    That is the seam where expensive evaluations fan out to workers: the loop
    records every result as it arrives and never assumes an order.
    """

    @abc.abstractmethod
    def evaluate(self, archs: Sequence[Hashable]) -> Iterator[tuple[int, Evaluation]]:
        """Yield (position in ``archs``, evaluation) pairs."""
