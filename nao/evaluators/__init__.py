"""Evaluators: score architectures for the search loop; built by name from a run's config.

A new evaluator is its own module with an
``EvaluatorKind`` (presets per space, default preset, factory) and one line in ``EVALUATORS``.
"""

from nao.evaluators.base import Evaluation, Evaluator, EvaluatorKind, EvaluatorSetup, SearchPreset
from nao.evaluators.nb101_table import Nb101TableEvaluator
from nao.evaluators.supernet import SUPERNET, SupernetEvaluator
from nao.evaluators.tabular import TABLE, Nb201TableEvaluator
from nao.evaluators.trained import TRAINED, TrainedEvaluator

EVALUATORS: dict[str, EvaluatorKind] = {
    "table": TABLE,
    "supernet": SUPERNET,
    "train": TRAINED,
}


def get_evaluator(name: str) -> EvaluatorKind:
    """The evaluator registered as ``name``; a ValueError lists the known names."""
    if name not in EVALUATORS:
        raise ValueError(f"unknown evaluator {name!r}: choose one of {', '.join(EVALUATORS)}")
    return EVALUATORS[name]


__all__ = ["EVALUATORS", "Evaluation", "Evaluator", "EvaluatorKind", "EvaluatorSetup", "Nb101TableEvaluator",
           "Nb201TableEvaluator", "SearchPreset", "SupernetEvaluator", "TrainedEvaluator", "get_evaluator"]
