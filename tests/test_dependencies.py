"""environment.yml (conda) and pyproject.toml (pip) must list the same packages and versions."""

from __future__ import annotations

import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_environment_yml_pip_list_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = set(project["dependencies"]) | set(project["optional-dependencies"]["dev"])
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_lists = [entry["pip"] for entry in environment["dependencies"] if isinstance(entry, dict)]
    assert len(pip_lists) == 1
    assert set(pip_lists[0]) == wanted, (
        f"only in pyproject: {sorted(wanted - set(pip_lists[0]))}; only in environment.yml: {sorted(set(pip_lists[0]) - wanted)}"
    )
    assert "pytorch3d=0.7.8" in environment["dependencies"]  # the API version common/geometry.py matches


def test_torch_is_pinned():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "torch==2.13.0" in project["dependencies"]
