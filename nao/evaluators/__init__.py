"""Evaluators: score architectures for the search loop."""

from nao.evaluators.base import Evaluation, Evaluator
from nao.evaluators.nb101_table import Nb101TableEvaluator
from nao.evaluators.tabular import Nb201TableEvaluator

__all__ = ["Evaluation", "Evaluator", "Nb101TableEvaluator", "Nb201TableEvaluator"]
