"""Pictures: search curves of a run, and a cell drawn as a graph."""

from __future__ import annotations

import math
import os
import textwrap
from collections import defaultdict
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

from nao.spaces.base import Edge, SearchSpace  # noqa: E402


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
    low = [v for v in low if math.isfinite(v)]  # -inf: no candidate trained yet (failed ones)
    if low:
        ax.set_ylim(min(low) - 0.3, (optimum or max(low)) + 0.15)
    ax.set_xlabel("queries (architectures evaluated)")
    ax.set_ylabel(f"{metric} accuracy of best-by-validation arch (%)")
    ax.set_title(f"{_searched(summary)}: mean best-so-far over seeds")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _searched(summary: dict[str, Any]) -> str:
    """The space and what scored it (the table's file, or the dataset), for plot titles."""
    source = summary.get("dataset") or (Path(summary["table"]).name if summary.get("table") else None)
    return f"{summary['space']} on {source}" if source else summary["space"]


def plot_round_curves(summary: dict[str, Any], path: str | os.PathLike) -> None:
    """A search whose scores change between rounds (a supernet's): per strategy, the pool's best score
    at each round's epoch, mean over seeds (band: +- one std)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    score = summary["score_name"]
    for name, entry in summary["strategies"].items():
        mean, std = entry["mean_best_curve"], entry["std_best_curve"]
        epochs = [r["epoch"] for r in entry["seeds"][0]["rounds"]][:len(mean)]
        ax.plot(epochs, mean, "o-", label=f"{name} ({len(entry['seeds'])} seeds): {mean[-1]:.4g}")
        ax.fill_between(epochs, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                        alpha=0.15)
    ax.set_xlabel("supernet epochs")
    ax.set_ylabel(f"best {score} of the pool, shared weights")
    ax.set_title(f"{_searched(summary)}: the pool after each round, mean over seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# Cell drawings are laid out in inches: every cell's axes maps one data unit to one inch, so font
# sizes (points) and positions share one scale and the figure is sized to fit the layout exactly.
_DPI = 120
_NODE_FONT, _EDGE_FONT, _TITLE_FONT = 9.0, 7.5, 8.0
_CHAR = 0.62 / 72  # inches per character per point of font size: a generous DejaVu Sans average
_NODE_HEIGHT = 0.34
_ROW_GAP = 0.5
_MIN_COLUMN_GAP = 0.7
_BOW = 0.2  # arc3 rad step tried to route an edge around the nodes in its way
_CLEARANCE = 0.08  # how far a routed edge keeps from the boxes it passes
_PARALLEL_SPREAD = 0.4  # rad between edges with the same two ends (a CIFAR node reading one input twice)
_LABEL_HEIGHT = 0.2
# Where along its edge a label may sit, best first: the middle unless another label or a node is there.
_LABEL_TS = (0.5, 0.4, 0.6, 0.3, 0.7, 0.25, 0.75)
_MARGIN = 0.15
_CELL_TITLE_HEIGHT = 0.35
_LINE_HEIGHT = 0.2  # of the figure title, fontsize _TITLE_FONT


@dataclass
class _Layout:
    """Where one cell's nodes, edges and edge labels go, in inches."""

    positions: np.ndarray  # (nodes, 2) box centres
    widths: np.ndarray  # (nodes,) box widths
    rads: list[float]  # arc3 curvature per edge
    label_points: np.ndarray  # (edges, 2) label centres (zeros for unlabelled edges)
    limits: tuple[float, float, float, float]  # x0, x1, y0, y1 enclosing all of the above

    @property
    def width(self) -> float:
        return self.limits[1] - self.limits[0]

    @property
    def height(self) -> float:
        return self.limits[3] - self.limits[2]


def _text_width(text: str, fontsize: float) -> float:
    return len(text) * fontsize * _CHAR


def _curve(start: np.ndarray, end: np.ndarray, rad: float, ts: np.ndarray) -> np.ndarray:
    """(len(ts), 2) points of matplotlib's arc3 curve: control point at the middle + rad * (dy, -dx)."""
    dx, dy = end - start
    control = (start + end) / 2 + rad * np.array([dy, -dx])
    ts = ts[:, None]
    return (1 - ts) ** 2 * start + 2 * ts * (1 - ts) * control + ts ** 2 * end


def _overlap(box: np.ndarray, boxes: np.ndarray) -> float:
    """Total area that ``box`` (x0, y0, x1, y1) shares with the rows of ``boxes``."""
    low, high = np.maximum(box[:2], boxes[:, :2]), np.minimum(box[2:], boxes[:, 2:])
    return float(np.clip(high - low, 0, None).prod(axis=1).sum())


def _layout(labels: list[str], edges: list[Edge]) -> _Layout:
    """Columns by longest path from the cell's inputs, nodes of a column stacked vertically."""
    n = len(labels)
    depth = [0] * n
    for _ in range(n):  # n rounds of relaxation reach the longest path of any DAG on n nodes
        for source, target, _label in edges:
            depth[target] = max(depth[target], depth[source] + 1)
    widths = np.array([max(0.5, _text_width(label, _NODE_FONT) + 0.3) for label in labels])
    column_gap = max([_MIN_COLUMN_GAP] + [_text_width(label, _EDGE_FONT) + 0.4 for *_, label in edges])
    columns: dict[int, list[int]] = defaultdict(list)
    for node in range(n):
        columns[depth[node]].append(node)
    predecessors: dict[int, list[int]] = defaultdict(list)
    for source, target, _label in edges:
        predecessors[target].append(source)

    positions = np.zeros((n, 2))
    x = 0.0
    for column in sorted(columns):
        column_width = max(widths[node] for node in columns[column])
        x += column_width / 2
        # Top to bottom by the mean height of each node's inputs (the barycentre heuristic), which
        # keeps edges from crossing where it can; nodes without inputs keep their index order.
        order = sorted(columns[column], key=lambda v: (-np.mean([positions[p, 1] for p in predecessors[v]])
                                                        if predecessors[v] else 0.0, v))
        for row, node in enumerate(order):
            positions[node] = x, ((len(order) - 1) / 2 - row) * (_NODE_HEIGHT + _ROW_GAP)
        x += column_width / 2 + column_gap
    half = np.stack([widths / 2, np.full(n, _NODE_HEIGHT / 2)], axis=1)
    boxes = np.concatenate([positions - half, positions + half], axis=1)

    rads = _route(edges, positions, boxes)
    label_points = np.zeros((len(edges), 2))
    placed: list[np.ndarray] = []
    for index, ((source, target, label), rad) in enumerate(zip(edges, rads)):
        if not label:
            continue
        size = np.array([_text_width(label, _EDGE_FONT) / 2 + 0.05, _LABEL_HEIGHT / 2])
        points = _curve(positions[source], positions[target], rad, np.array(_LABEL_TS))
        obstacles = np.concatenate([boxes, *[box[None] for box in placed]])
        # min keeps the first (most central) point among equally free ones.
        point = min(points, key=lambda p: _overlap(np.concatenate([p - size, p + size]), obstacles))
        label_points[index] = point
        placed.append(np.concatenate([point - size, point + size]))

    ts = np.linspace(0, 1, 21)
    extent = [boxes[:, :2], boxes[:, 2:], *[box.reshape(2, 2) for box in placed]]
    extent += [_curve(positions[s], positions[t], rad, ts) for (s, t, _label), rad in zip(edges, rads)]
    low, high = np.concatenate(extent).min(axis=0) - _MARGIN, np.concatenate(extent).max(axis=0) + _MARGIN
    return _Layout(positions, widths, rads, label_points, (low[0], high[0], low[1], high[1]))


def _hits(start: np.ndarray, end: np.ndarray, rads: list[float], boxes: np.ndarray) -> int:
    """How many points sampled along the arc3 curves from ``start`` to ``end`` fall in ``boxes``."""
    ts = np.linspace(0.05, 0.95, 19)
    points = np.concatenate([_curve(start, end, rad, ts) for rad in rads])
    inside = (points[:, None] >= boxes[None, :, :2]) & (points[:, None] <= boxes[None, :, 2:])
    return int(inside.all(axis=2).sum())


def _route(edges: list[Edge], positions: np.ndarray, boxes: np.ndarray) -> list[float]:
    """arc3 rad per edge: the least bent curve that misses the other nodes' boxes, where one does.

    Edges with the same two ends are spread apart around that curve.
    """
    twins: dict[tuple[int, int], list[int]] = defaultdict(list)
    for index, (source, target, _label) in enumerate(edges):
        twins[source, target].append(index)
    rads = [0.0] * len(edges)
    flip = 1.0
    for (source, target), indices in twins.items():
        others = np.delete(boxes, [source, target], axis=0) + np.array([-1, -1, 1, 1]) * _CLEARANCE
        offsets = [_PARALLEL_SPREAD * (j - (len(indices) - 1) / 2) for j in range(len(indices))]
        # A negative rad bows a left-to-right edge upwards: try bowing away from the middle of the
        # cell first, and alternate between edges along the middle row.
        middle = positions[source, 1] + positions[target, 1]
        if middle == 0:
            flip = -flip
        away = -1.0 if (middle or flip) > 0 else 1.0
        candidates = [0.0, away * _BOW, -away * _BOW, 2 * away * _BOW, -2 * away * _BOW]
        base = min(candidates, key=lambda rad: _hits(positions[source], positions[target],
                                                       [rad + offset for offset in offsets], others))
        for index, offset in zip(indices, offsets):
            rads[index] = base + offset
    return rads


def _draw_cell_axes(ax: plt.Axes, labels: list[str], edges: list[Edge], layout: _Layout) -> None:
    boxes = []
    for (x, y), width, label in zip(layout.positions, layout.widths, labels):
        box = FancyBboxPatch((x - width / 2, y - _NODE_HEIGHT / 2), width, _NODE_HEIGHT, zorder=2,
                             boxstyle="round,pad=0,rounding_size=0.08", fc="#dde8f5", ec="#335")
        ax.add_patch(box)
        boxes.append(box)
        ax.text(x, y, label, ha="center", va="center", fontsize=_NODE_FONT, zorder=3)
    # Where ops sit on edges, an unlabelled edge only gathers outputs (CIFAR's concat, PTB's mean):
    # drawn light, it stays out of the way of the ops.
    has_ops = any(label for *_, label in edges)
    for (source, target, label), rad, (lx, ly) in zip(edges, layout.rads, layout.label_points):
        light = has_ops and not label
        ax.add_patch(FancyArrowPatch(layout.positions[source], layout.positions[target], arrowstyle="-|>",
                                     connectionstyle=f"arc3,rad={rad}", patchA=boxes[source],
                                     patchB=boxes[target], shrinkA=0, shrinkB=1, mutation_scale=9,
                                     color="#bbb" if light else "#444", lw=0.8 if light else 1.1, zorder=1))
        if label:
            ax.text(lx, ly, label, ha="center", va="center", fontsize=_EDGE_FONT, color="#a22", zorder=4,
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.85})
    ax.set_xlim(*layout.limits[:2])
    ax.set_ylim(*layout.limits[2:])
    ax.axis("off")


def cell_figure(space: SearchSpace, arch: Hashable, title: str = "") -> Figure | None:
    """``space.graph(arch)``, one cell per row, each left to right; None if the space has no graph form."""
    graph = space.graph(arch)
    if graph is None:
        return None
    cells = [("", *graph)] if isinstance(graph, tuple) else graph
    layouts = [_layout(labels, edges) for _, labels, edges in cells]
    width = max([4.0] + [layout.width for layout in layouts])
    heading = textwrap.wrap(title, int(width / _text_width("x", _TITLE_FONT)))
    heights = [layout.height + (_CELL_TITLE_HEIGHT if name else 0.0)
               for (name, *_), layout in zip(cells, layouts)]
    heading_height = _LINE_HEIGHT * len(heading) + (0.15 if heading else 0.0)
    total = heading_height + sum(heights)
    fig = plt.figure(figsize=(width, total))
    if heading:
        fig.text(0.5, 1 - 0.1 / total, "\n".join(heading), ha="center", va="top", fontsize=_TITLE_FONT)
    top = total - heading_height
    for (name, labels, edges), layout, height in zip(cells, layouts, heights):
        top -= height
        # Axes exactly as large in inches as their data range: one data unit is one inch.
        ax = fig.add_axes(((width - layout.width) / 2 / width, top / total, layout.width / width,
                           layout.height / total))
        _draw_cell_axes(ax, labels, edges, layout)
        if name:
            ax.set_title(name, fontsize=_NODE_FONT, fontweight="bold")
    return fig


def draw_cell(space: SearchSpace, arch: Hashable, path: str | os.PathLike, title: str = "") -> bool:
    """Save ``cell_figure`` (PNG, SVG, ... by the extension of ``path``); False if the space cannot draw."""
    fig = cell_figure(space, arch, title)
    if fig is None:
        return False
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)
    return True
