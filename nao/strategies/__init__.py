"""Search strategies, built by name from a registry; all share ``Strategy.propose``.

A new strategy is its own module and one line in ``STRATEGIES``: a factory
``(space, seed, controller, nao_options) -> Strategy`` (only NAO reads the last two).
"""

from __future__ import annotations

from collections.abc import Callable

from nao.controller import ControllerConfig, get_preset
from nao.spaces.base import SearchSpace
from nao.strategies.base import Pool, Strategy, sample_unseen
from nao.strategies.evolution import RegularizedEvolution
from nao.strategies.local_search import LocalSearch
from nao.strategies.nao import NAO_PRESETS, NaoOptions, NaoStrategy
from nao.strategies.random_search import RandomSearch

StrategyFactory = Callable[[SearchSpace, int, ControllerConfig, NaoOptions], Strategy]


def _seeded(cls: Callable[[SearchSpace, int], Strategy]) -> StrategyFactory:
    """The factory of a strategy that needs only the space and its seed."""
    return lambda space, seed, controller, nao_options: cls(space, seed)


STRATEGIES: dict[str, StrategyFactory] = {
    "nao": NaoStrategy,
    "random": _seeded(RandomSearch),
    "evolution": _seeded(RegularizedEvolution),
    "local": _seeded(LocalSearch),
}


def make_strategy(name: str, space: SearchSpace, seed: int, controller: ControllerConfig | None = None,
                  nao_options: NaoOptions | None = None) -> Strategy:
    """A fresh strategy; ``controller``/``nao_options`` default to the ``default`` presets."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}: choose from {', '.join(STRATEGIES)}")
    return STRATEGIES[name](space, seed, controller or get_preset("default"),
                            nao_options or NAO_PRESETS["default"])


__all__ = ["NAO_PRESETS", "STRATEGIES", "NaoOptions", "NaoStrategy", "Pool", "Strategy", "StrategyFactory",
           "make_strategy", "sample_unseen"]
