"""Pictures: search curves of a run, and a cell drawn as a graph."""

from __future__ import annotations

import os
from collections.abc import Hashable
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

from nao.spaces.base import SearchSpace  # noqa: E402


def plot_search_curves(summary: dict[str, Any], path: str | os.PathLike) -> None:
    """Mean best-so-far test accuracy per query (band: +- one std over seeds).

    Tables without test figures are plotted on their validation figure instead."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    low = []
    metric = "test" if all("mean_test_curve" in e for e in summary["strategies"].values()) else "valid"
    for name, entry in summary["strategies"].items():
        mean = entry[f"mean_{metric}_curve"]
        std = entry[f"std_{metric}_curve"]
        queries = range(1, len(mean) + 1)
        ax.plot(queries, mean, label=f"{name} ({len(entry['seeds'])} seeds): {mean[-1]:.2f}")
        ax.fill_between(queries, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                        alpha=0.15)
        low.append(mean[min(len(mean) - 1, max(9, len(mean) // 10))])
    optimum = summary.get(f"optimum_{metric}")
    if optimum is not None:
        ax.axhline(optimum, color="k", ls="--", lw=0.8, label=f"optimum {optimum:.2f}")
    if low:
        ax.set_ylim(min(low) - 0.3, (optimum or max(low)) + 0.15)
    ax.set_xlabel("queries (architectures evaluated)")
    ax.set_ylabel(f"{metric} accuracy of best-by-validation arch (%)")
    ax.set_title(f"{summary['space']}: mean best-so-far over seeds")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def draw_cell(space: SearchSpace, arch: Hashable, path: str | os.PathLike, title: str = "") -> bool:
    """Draw ``space.graph(arch)`` left to right; False if the space has no graph form."""
    graph = space.graph(arch)
    if graph is None:
        return False
    nodes, edges = graph
    fig, ax = plt.subplots(figsize=(1.8 * len(nodes) + 1, 3.2))
    for i, label in enumerate(nodes):
        ax.text(i, 0, label, ha="center", va="center", fontsize=9,
                bbox={"boxstyle": "round", "fc": "#dde8f5", "ec": "#335"})
    for source, target, label in edges:
        span = target - source
        rad = 0.0 if span == 1 else -0.25 - 0.1 * span
        ax.annotate("", xy=(target, 0), xytext=(source, 0),
                    arrowprops={"arrowstyle": "->", "connectionstyle": f"arc3,rad={rad}", "color": "#444",
                                "shrinkA": 30, "shrinkB": 30})
        if label:
            height = 0.0 if span == 1 else 0.5 * abs(rad) * span
            ax.text((source + target) / 2, height + 0.06, label, ha="center", fontsize=8, color="#a22")
    ax.set_xlim(-0.6, len(nodes) - 0.4)
    ax.set_ylim(-0.6, 0.4 + 0.25 * len(nodes))
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
