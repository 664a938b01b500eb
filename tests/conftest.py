"""Shared fixtures: the NAS-Bench-201 space and table, and one small controller config.

Every controller test and the NAO strategy use ``small_controller``, so the jitted
fit / predict / generate functions compile once per pytest session.
"""

from __future__ import annotations

import pytest

from data.nasbench import Nb201Table, load_nb201_table
from nao.controller import ControllerConfig
from nao.evaluators import Nb201TableEvaluator
from nao.spaces import NasBench201Space

SMALL_CONTROLLER = ControllerConfig(emb_size=16, hidden_size=32, mlp_layers=1, mlp_hidden=32,
                                    ensemble=2, batch_size=32, epochs=5)


@pytest.fixture(scope="session")
def small_controller() -> ControllerConfig:
    return SMALL_CONTROLLER


@pytest.fixture(scope="session")
def nb201_space() -> NasBench201Space:
    return NasBench201Space()


@pytest.fixture(scope="session")
def nb201_table() -> Nb201Table:
    return load_nb201_table()


@pytest.fixture(scope="session")
def nb201_evaluator(nb201_table) -> Nb201TableEvaluator:
    return Nb201TableEvaluator(nb201_table)
