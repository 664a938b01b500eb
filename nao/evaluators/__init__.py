"""Evaluators: score architectures for the search loop."""

from nao.evaluators.base import Evaluation, Evaluator
from nao.evaluators.tabular import Nb201TableEvaluator

__all__ = ["Evaluation", "Evaluator", "Nb201TableEvaluator"]
