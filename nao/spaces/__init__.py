"""Search spaces behind one interface, looked up by name."""

from __future__ import annotations

from nao.spaces.base import InvalidArchitectureError, SearchSpace
from nao.spaces.cifar import CifarSpace, CifarWsSpace
from nao.spaces.nasbench101 import NasBench101Space
from nao.spaces.nasbench201 import NasBench201Space
from nao.spaces.ptb import PtbSpace, PtbWsSpace

SPACES: dict[str, type[SearchSpace]] = {
    NasBench201Space.name: NasBench201Space,
    NasBench101Space.name: NasBench101Space,
    PtbSpace.name: PtbSpace,
    PtbWsSpace.name: PtbWsSpace,
    CifarWsSpace.name: CifarWsSpace,
    CifarSpace.name: CifarSpace,
}


def get_space(name: str) -> SearchSpace:
    """The space registered as ``name``; a ValueError lists the known names."""
    if name not in SPACES:
        raise ValueError(f"unknown space {name!r}: choose one of {', '.join(sorted(SPACES))}")
    return SPACES[name]()


__all__ = ["SPACES", "CifarSpace", "CifarWsSpace", "InvalidArchitectureError", "NasBench101Space",
           "NasBench201Space", "PtbSpace", "PtbWsSpace", "SearchSpace", "get_space"]
