"""How well predicted scores rank architectures whose true metrics are known, and predicted scores
mapped back to a benchmark table's metric."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b (ties counted as scipy.stats.kendalltau does), exact, O(n^2) in blocks."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n = len(x)
    if n != len(y) or n < 2:
        raise ValueError(f"kendall_tau needs two equally long sequences of at least 2 values ({n}, {len(y)})")
    score = 0
    for start in range(0, n, 1024):
        dx = np.sign(x[start:start + 1024, None] - x[None, :])
        dy = np.sign(y[start:start + 1024, None] - y[None, :])
        score += int(np.sum(dx * dy))
    pairs = n * (n - 1) / 2
    ties = [sum(c * (c - 1) / 2 for c in np.unique(v, return_counts=True)[1]) for v in (x, y)]
    denominator = np.sqrt((pairs - ties[0]) * (pairs - ties[1]))
    return float(score / 2 / denominator) if denominator else float("nan")


def scores_to_metric(scores: np.ndarray, targets: dict[str, Any]) -> np.ndarray:
    """Predicted normalised scores -> the table's metric: min-max targets linearly, rank targets through
    the percentiles of the training architectures' metric (``targets`` as a controller meta holds it)."""
    if targets["normalisation"] == "minmax":
        return targets["low"] + np.asarray(scores) * (targets["high"] - targets["low"])
    quantiles = np.asarray(targets["quantiles"])
    return np.interp(scores, np.linspace(0, 1, len(quantiles)), quantiles)


def ranking_metrics(predicted: np.ndarray, valid: np.ndarray, test: np.ndarray | None) -> dict[str, Any]:
    """How well ``predicted`` ranks architectures whose true ``valid`` (and ``test``) metrics are known."""
    order, truth = np.argsort(-predicted, kind="stable"), np.argsort(-valid, kind="stable")
    metrics: dict[str, Any] = {"count": len(valid), "kendall_tau": round(kendall_tau(predicted, valid), 4)}
    for k in (10, 50, 100):
        if k < len(valid):
            metrics[f"top{k}_overlap"] = round(len(set(order[:k]) & set(truth[:k])) / k, 4)
    best = int(order[0])
    metrics["predicted_best_valid"] = float(valid[best])
    metrics["predicted_best_rank"] = int(np.sum(valid > valid[best])) + 1
    metrics["best_valid"] = float(valid.max())
    metrics["best_of_predicted_top10_valid"] = float(valid[order[:10]].max())
    if test is not None:
        metrics["predicted_best_test"] = float(test[best])
        metrics["best_test"] = float(test.max())
    return metrics
