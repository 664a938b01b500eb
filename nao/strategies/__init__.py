"""Search strategies, built by name from a registry; all share ``Strategy.propose``.

A new strategy is its own module and one line in ``STRATEGIES``: a factory
``(space, seed, options) -> Strategy``, where ``options`` (``StrategyOptions``) carries what a run
configures of its strategies (NAO's controller and options, BANANAS' options); a strategy reads
only its own part, or none.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from nao.controller import ControllerConfig, get_preset
from nao.spaces.base import SearchSpace
from nao.strategies.bananas import BananasOptions, BananasStrategy
from nao.strategies.base import Pool, Strategy, sample_unseen
from nao.strategies.evolution import RegularizedEvolution
from nao.strategies.local_search import LocalSearch
from nao.strategies.nao import NAO_PRESETS, NaoOptions, NaoStrategy
from nao.strategies.random_search import RandomSearch


@dataclasses.dataclass(frozen=True)
class StrategyOptions:
    """What a run configures of its strategies, handed to every factory."""

    controller: ControllerConfig = get_preset("default")
    nao: NaoOptions = NAO_PRESETS["default"]
    bananas: BananasOptions = BananasOptions()


StrategyFactory = Callable[[SearchSpace, int, StrategyOptions], Strategy]


def _seeded(cls: Callable[[SearchSpace, int], Strategy]) -> StrategyFactory:
    """The factory of a strategy that needs only the space and its seed."""
    return lambda space, seed, options: cls(space, seed)


STRATEGIES: dict[str, StrategyFactory] = {
    "nao": lambda space, seed, options: NaoStrategy(space, seed, options.controller, options.nao),
    "random": _seeded(RandomSearch),
    "evolution": _seeded(RegularizedEvolution),
    "local": _seeded(LocalSearch),
    "bananas": lambda space, seed, options: BananasStrategy(space, seed, options.bananas),
}
# What a run searches with when it names no strategies: NAO and the three classic baselines.
DEFAULT_STRATEGIES = ("nao", "random", "evolution", "local")


def make_strategy(name: str, space: SearchSpace, seed: int, controller: ControllerConfig | None = None,
                  nao_options: NaoOptions | None = None,
                  bananas_options: BananasOptions | None = None) -> Strategy:
    """A fresh strategy; options left out are the defaults of ``StrategyOptions``."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}: choose from {', '.join(STRATEGIES)}")
    defaults = StrategyOptions()
    return STRATEGIES[name](space, seed, StrategyOptions(controller or defaults.controller,
                                                         nao_options or defaults.nao,
                                                         bananas_options or defaults.bananas))


__all__ = ["DEFAULT_STRATEGIES", "NAO_PRESETS", "STRATEGIES", "BananasOptions", "BananasStrategy",
           "NaoOptions", "NaoStrategy", "Pool", "Strategy", "StrategyFactory", "StrategyOptions",
           "make_strategy", "sample_unseen"]
