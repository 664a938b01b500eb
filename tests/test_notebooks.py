"""The Colab notebooks in notebooks/: stored clean, and executed top to bottom as CI runs them.

Each notebook runs in a fresh kernel with the repository root as its working directory (so its setup
cell installs nothing), its ``parameters`` cell replaced by tiny CPU sizes and data folders generated
here: the PTB / WikiText-2 corpora of conftest, and CIFAR batches in the official python layout. Every
command the notebooks run goes through ``sh``, which fails the cell when the command fails.
"""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import nbformat
import pytest
from conftest import write_cifar
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from nao.models.checkpoint import CheckpointStore
from nao.spaces import get_space

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
NAMES = ("nb201_search", "ptb_ws", "transfer", "cifar_ws_tpu")
REPO_URL = "https://github.com/nao-jax/nao"
BADGE = "https://colab.research.google.com/github/nao-jax/nao/blob/main/notebooks/{}.ipynb"
# A cifar_ws cell of pools and identities: the quickest to compile (as in test_cnn_train).
CHEAP = "0 2 1 4 0 2 1 3 0 2 1 4 0 3 1 4 0 2 1 4 | 0 2 1 4 0 2 1 3 0 2 1 4 0 3 1 4 0 2 1 4"


def read(name: str) -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)


def parameters_cells(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [cell for cell in nb.cells if "parameters" in cell.metadata.get("tags", [])]


def assigned_names(source: str) -> set[str]:
    return {target.id for node in ast.parse(source).body if isinstance(node, ast.Assign)
            for target in node.targets if isinstance(target, ast.Name)}


def test_every_notebook_is_tested():
    assert sorted(path.stem for path in NOTEBOOKS.glob("*.ipynb")) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_stored_clean(name):
    nb = read(name)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, f"{name}: outputs stored in {cell.id}"
    intro = nb.cells[0]
    assert intro.cell_type == "markdown"
    assert "colab-badge.svg" in intro.source and f"({BADGE.format(name)})" in intro.source
    # The setup cell comes first and names the repository once; no other cell hard-codes it.
    assert f'REPO_URL = "{REPO_URL}"' in code[0].source
    assert sum(REPO_URL in cell.source for cell in code) == 1
    assert "jax.devices()" in code[0].source
    parameters = parameters_cells(nb)
    assert len(parameters) == 1 and parameters[0].cell_type == "code" and parameters[0] is code[1]
    assert assigned_names(parameters[0].source)


# ---------------------------------------------------------------------------------------- execution

@pytest.fixture(scope="module")
def cifar10_dir(tmp_path_factory) -> Path:
    return write_cifar(tmp_path_factory.mktemp("nb_c10"), "cifar10", 200, 32, 0)


@pytest.fixture(scope="module")
def cifar100_dir(tmp_path_factory) -> Path:
    return write_cifar(tmp_path_factory.mktemp("nb_c100"), "cifar100", 32, 16, 1)


def tiny_parameters(name: str, tmp: Path, data: dict[str, Path]) -> dict:
    if name == "nb201_search":
        return dict(STRATEGIES="nao,random,evolution,local", QUERIES=20, SEEDS=1, PRESET="smoke",
                    OUTPUT_DIR=str(tmp / "nb201"))
    if name == "ptb_ws":
        return dict(DATA_DIR=str(data["ptb"]), DOWNLOAD_DIR=str(tmp / "downloads"), SEARCH_PRESET="smoke",
                    SCORE_WINDOWS=10, SEARCH_DIR=str(tmp / "search"), CHILD_PRESET="smoke", CHILD_EPOCHS=1,
                    CHILD_MAX_STEPS=20, TRAIN_DIR=str(tmp / "train"))
    if name == "transfer":
        return dict(TRAIN_SOURCES=True, CIFAR10_CHECKPOINT=str(tmp / "c10"), PTB_CHECKPOINT=str(tmp / "ptb"),
                    CIFAR_ARCH=CHEAP, PTB_ARCH="naonet", SOURCE_PRESET="smoke", SOURCE_EPOCHS=1,
                    CIFAR100_PRESET="smoke", WT2_PRESET="smoke", FINETUNE=True, CIFAR100_EPOCHS=None,
                    WT2_EPOCHS=None, MAX_STEPS=4, CIFAR10_DIR=str(data["cifar10"]),
                    CIFAR100_DIR=str(data["cifar100"]), PTB_DIR=str(data["ptb"]), WT2_DIR=str(data["wt2"]),
                    DOWNLOAD_DIR=str(tmp / "downloads"), CIFAR100_OUT=str(tmp / "c100"),
                    WT2_OUT=str(tmp / "wt2"))
    assert name == "cifar_ws_tpu"
    return dict(DATA_DIR=str(data["cifar10"]), SEARCH_PRESET="smoke", SCORE_BATCHES=1,
                SEARCH_DIR=str(tmp / "search"), CHILD_PRESET="smoke", CHILD_EPOCHS=1, CHILD_MAX_STEPS=4,
                TRAIN_DIR=str(tmp / "train"))


def check_outputs(name: str, tmp: Path) -> None:
    """What each notebook's runs must have written."""
    def metrics(folder: str) -> dict:
        return json.loads((tmp / folder / "metrics.json").read_text())

    if name == "nb201_search":
        summary = json.loads((tmp / "nb201" / "summary.json").read_text())
        assert set(summary["strategies"]) == {"nao", "random", "evolution", "local"}
        assert all(len(e["mean_test_curve"]) == 20 for e in summary["strategies"].values())
        for png in ("search_curves.png", "gap_to_optimum.png", "nao_best_cell.png"):
            assert (tmp / "nb201" / png).stat().st_size > 5_000, png
    elif name in ("ptb_ws", "cifar_ws_tpu"):
        summary = json.loads((tmp / "search" / "summary.json").read_text())
        search = summary["strategies"]["nao"]["seeds"][0]
        assert [r["epoch"] for r in search["rounds"]] == [1, 2] and search["top"]
        trained = metrics("train")
        assert trained["epochs"] == 1
        assert math.isfinite(trained["test_ppl"] if name == "ptb_ws" else trained["test_acc"])
        # The cell trained is the search's best.
        space = get_space(summary["space"])
        meta = CheckpointStore(tmp / "train" / "checkpoints", create=False).read_meta()
        assert space.key(tuple(meta["arch"])) == space.key(space.from_string(search["top"][0]["arch"]))
    else:
        assert 0 <= metrics("c10")["test_acc"] <= 100 and 0 <= metrics("c100")["test_acc"] <= 100
        assert math.isfinite(metrics("ptb")["test_ppl"]) and math.isfinite(metrics("wt2")["test_ppl"])


IMAGES = {"nb201_search": 3, "ptb_ws": 3, "transfer": 2, "cifar_ws_tpu": 3}


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs(name, tmp_path, monkeypatch, ptb_dir, wt2_dir, cifar10_dir, cifar100_dir):
    nb = read(name)
    (cell,) = parameters_cells(nb)
    values = tiny_parameters(name, tmp_path, {"ptb": ptb_dir, "wt2": wt2_dir, "cifar10": cifar10_dir,
                                              "cifar100": cifar100_dir})
    assert set(values) == assigned_names(cell.source), "the test's parameters drifted from the notebook's"
    cell.source = "\n".join(f"{key} = {value!r}" for key, value in values.items())
    # The kernel and the commands it runs inherit these: CPU, and XLA's quickest compilation.
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
    client = NotebookClient(nb, timeout=600, startup_timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(ROOT)}})
    try:
        client.execute()
    except CellExecutionError as err:
        printed = "".join(out.get("text", "") for c in nb.cells if c.cell_type == "code" for out in c.outputs)
        pytest.fail(f"{name}: a cell failed:\n{err}\n--- output before it ---\n{printed[-4000:]}")
    check_outputs(name, tmp_path)
    outputs = [out for c in nb.cells if c.cell_type == "code" for out in c.outputs]
    printed = "".join(out.get("text", "") for out in outputs)
    assert "backend: CPU" in printed
    images = sum("image/png" in out.get("data", {}) for out in outputs)
    assert images >= IMAGES[name], f"{name}: {images} images shown"
