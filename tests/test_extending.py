"""The README's "Extending nao": a toy space and a toy strategy (docs/extending/), each its own file
plus one registry line, searched by the one loop and accepted by the run's configuration."""

from __future__ import annotations

from conftest import extending_example

from nao.config import assemble
from nao.evaluators import Evaluation, Evaluator
from nao.history import History
from nao.search import SearchSettings, search
from nao.spaces import SPACES, get_space
from nao.strategies import STRATEGIES, make_strategy


class OnesCount(Evaluator):
    """Scores a bit string by its number of ones."""

    def evaluate(self, archs):
        for position, arch in enumerate(archs):
            yield position, Evaluation(valid=float(sum(arch)), test=None, cost=0.0)


def test_a_space_and_a_strategy_are_a_file_and_a_registry_line_each(monkeypatch):
    BitSpace = extending_example("bit_space").BitSpace
    HillClimb = extending_example("hill_climb").HillClimb

    monkeypatch.setitem(SPACES, "bits", BitSpace)
    monkeypatch.setitem(STRATEGIES, "climb", lambda space, seed, options: HillClimb(space, seed))

    space = get_space("bits")
    rows = search(space, make_strategy("climb", space, seed=0), OnesCount(),
                  SearchSettings(queries=40, per_round=4), History(None))
    assert len(rows) == 40 and len({row["key"] for row in rows}) == 40
    assert max(row["valid"] for row in rows) == 8  # one flip at a time, it climbs to all ones
    assert space.from_string(space.to_string((1, 0) * 4)) == (1, 0) * 4
    # The run's configuration checks names against the live registries.
    config = assemble({"strategies": ["climb", "random"], "queries": 20})
    assert config.job.strategies == ("climb", "random")
