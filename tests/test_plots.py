"""Cell drawings: every space's cells fit their figure, each label on it, as PNG and as SVG."""

from __future__ import annotations

import struct

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

from nao import plots  # noqa: E402
from nao.spaces import get_space  # noqa: E402

# (space, published cell or None for a sampled one, titles of the cells drawn)
CASES = [
    ("nb201", None, [""]),
    ("nb101", None, [""]),
    ("cifar_ws", "naonet_ws", ["normal cell", "reduction cell"]),
    ("cifar", "naonet", ["normal cell", "reduction cell"]),
    ("ptb", "naonet", [""]),
]


def _arch(name: str, published: str | None):
    space = get_space(name)
    return space, space.from_string(published) if published else space.sample(np.random.default_rng(1))


def _cells(space, arch) -> list[tuple[str, list[str], list[tuple[int, int, str]]]]:
    graph = space.graph(arch)
    return [("", *graph)] if isinstance(graph, tuple) else graph


def _png_size(path) -> tuple[int, int]:
    with open(path, "rb") as f:
        header = f.read(24)
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", header[16:24])


@pytest.mark.parametrize("name, published, titles", CASES, ids=[c[0] for c in CASES])
def test_cells_fit_their_axes_and_their_figure(name, published, titles):
    space, arch = _arch(name, published)
    cells = _cells(space, arch)
    fig = plots.cell_figure(space, arch, title=f"best found (nao): {space.to_string(arch)}")
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        figure_box = fig.bbox
        assert [ax.get_title() for ax in fig.axes] == titles
        for ax, (_title, labels, edges) in zip(fig.axes, cells, strict=True):
            axes_box = ax.get_window_extent(renderer)
            assert figure_box.x0 - 0.5 <= axes_box.x0 and axes_box.x1 <= figure_box.x1 + 0.5
            assert figure_box.y0 - 0.5 <= axes_box.y0 and axes_box.y1 <= figure_box.y1 + 0.5
            drawn = [text.get_text() for text in ax.texts]
            assert sorted(drawn) == sorted(labels + [label for *_, label in edges if label])
            # Node boxes, arrows and every label lie inside the axes, so nothing is clipped.
            for artist in [*ax.texts, *ax.patches]:
                box = artist.get_window_extent(renderer)
                assert axes_box.x0 - 1 <= box.x0 and box.x1 <= axes_box.x1 + 1, artist
                assert axes_box.y0 - 1 <= box.y0 and box.y1 <= axes_box.y1 + 1, artist
            assert len(ax.patches) == len(labels) + len(edges)  # a box per node, an arrow per edge
        for text in fig.texts:  # the wrapped figure title
            box = text.get_window_extent(renderer)
            assert figure_box.x0 <= box.x0 and box.x1 <= figure_box.x1 and box.y1 <= figure_box.y1
    finally:
        plt.close(fig)


@pytest.mark.parametrize("name, published, titles", CASES, ids=[c[0] for c in CASES])
def test_draw_cell_writes_png_and_svg(tmp_path, name, published, titles):
    space, arch = _arch(name, published)
    png, svg = tmp_path / "cell.png", tmp_path / "cell.svg"
    assert plots.draw_cell(space, arch, png, title=space.to_string(arch))
    assert plots.draw_cell(space, arch, svg)
    width, height = _png_size(png)
    assert 300 < width < 3000 and 50 < height < 3000
    text = svg.read_text()
    # matplotlib writes each text into the SVG (as a comment above its glyph paths, by default).
    for title, labels, edges in _cells(space, arch):
        for label in [title, *labels, *(label for *_, label in edges)]:
            assert label in text
    assert all(t in text for t in titles)


def test_cifar_cells_are_drawn_apart_and_ptb_cell_fits_one_row():
    cifar, arch = _arch("cifar", "naonet")
    cells = cifar.graph(arch)
    assert [title for title, *_ in cells] == ["normal cell", "reduction cell"]
    for _title, labels, edges in cells:
        assert len(labels) == 8 and labels[-1] == "out = concat"
        assert sum(1 for *_, label in edges if label) == 10  # two ops per node 2..6
    # Wide but not huge: the old one-row drawing of both cells was about 30 inches across.
    fig = plots.cell_figure(cifar, arch)
    assert fig.get_figwidth() < 10
    plt.close(fig)


def test_spaces_without_a_graph_draw_nothing(tmp_path):
    class NoGraph:
        def graph(self, arch):
            return None

    assert plots.cell_figure(NoGraph(), ()) is None
    assert not plots.draw_cell(NoGraph(), (), tmp_path / "cell.png")
    assert not (tmp_path / "cell.png").exists()


@pytest.mark.parametrize("facts, title", [
    ({"table": "/data/my_nb201_cifar100.npz"}, "nb201 on my_nb201_cifar100.npz: mean best-so-far over seeds"),
    ({"dataset": "cifar100"}, "nb201 on cifar100: mean best-so-far over seeds"),
    ({}, "nb201: mean best-so-far over seeds"),
])
def test_search_curves_name_what_was_searched(tmp_path, monkeypatch, facts, title):
    titles = []
    real_savefig = matplotlib.figure.Figure.savefig
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, *a, **k: (
        titles.extend(ax.get_title() for ax in fig.axes), real_savefig(fig, *a, **k)))
    summary = {"space": "nb201", **facts, "strategies": {"random": {
        "seeds": [{}], "mean_test_curve": [90.0, 91.0], "std_test_curve": [0.0, 0.0]}}}
    plots.plot_search_curves(summary, tmp_path / "curves.png")
    assert titles == [title] and (tmp_path / "curves.png").stat().st_size > 1000
