"""Search strategies, looked up by name; all share ``Strategy.propose``."""

from __future__ import annotations

from nao.controller import ControllerConfig, get_preset
from nao.spaces.base import SearchSpace
from nao.strategies.base import Pool, Strategy, sample_unseen
from nao.strategies.evolution import RegularizedEvolution
from nao.strategies.local_search import LocalSearch
from nao.strategies.nao import NAO_PRESETS, NaoOptions, NaoStrategy
from nao.strategies.random_search import RandomSearch

STRATEGIES = ("nao", "random", "evolution", "local")


def make_strategy(name: str, space: SearchSpace, seed: int, controller: ControllerConfig | None = None,
                  nao_options: NaoOptions | None = None) -> Strategy:
    """A fresh strategy; ``controller``/``nao_options`` default to the ``default`` presets."""
    if name == "nao":
        return NaoStrategy(space, seed, controller or get_preset("default"),
                           nao_options or NAO_PRESETS["default"])
    simple = {"random": RandomSearch, "evolution": RegularizedEvolution, "local": LocalSearch}
    if name not in simple:
        raise ValueError(f"unknown strategy {name!r}: choose from {', '.join(STRATEGIES)}")
    return simple[name](space, seed)


__all__ = ["NAO_PRESETS", "STRATEGIES", "NaoOptions", "NaoStrategy", "Pool", "Strategy",
           "make_strategy", "sample_unseen"]
