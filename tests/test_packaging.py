"""Packaging: the type-hint marker (PEP 561) ships with the package."""

import importlib.resources
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_py_typed_marker_is_package_data():
    assert importlib.resources.files("mmdflow").joinpath("py.typed").is_file()
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "py.typed" in cfg["tool"]["setuptools"]["package-data"]["mmdflow"]
