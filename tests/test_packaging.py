"""The distribution claims one import name (``nao``) and carries the shipped tables and checkpoints."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"nao": "nao", "nao.models": "models", "nao.data": "data"}


def test_every_package_folder_is_listed_under_its_import_name():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = set()
    for name, folder in FOLDERS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            parts = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((name, *parts)))
    assert found == listed


def test_the_wheel_installs_nao_alone_with_its_data(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                    "-w", str(tmp_path), str(ROOT)], check=True, capture_output=True, timeout=300)
    wheel, = tmp_path.glob("nao-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"nao"}
    assert "nao/models/training.py" in names and "nao/data/nasbench/nb201_cifar10_200ep.npz" in names
    for shipped in ("nb201_controller", "ptb_small"):
        assert f"nao/checkpoints/{shipped}/MODEL_CARD.md" in names
        assert any(n.startswith(f"nao/checkpoints/{shipped}/checkpoints/") and "/state/" in n for n in names)
