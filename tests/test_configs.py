"""Every project config parses, and every tiny config runs one fast_dev_run batch through `tgm fit`."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from common.cli import run_cli
from tests.helpers import run_folders

ROOT = Path(__file__).resolve().parents[1]
PROJECT_CONFIGS = sorted(
    p for p in (ROOT / "configs").glob("*/*.yaml") if p.parent.name not in ("trainer", "logger")
)
TINY_CONFIGS = [p for p in PROJECT_CONFIGS if p.name == "tiny.yaml"]
CSV = str(ROOT / "configs" / "logger" / "csv.yaml")


def ids(paths: list[Path]) -> list[str]:
    return [f"{p.parent.name}/{p.name}" for p in paths]


def config_stack(config: Path) -> list[str]:
    """A file without ``model.class_path`` is an overlay (``real.yaml``, ``original.yaml`` ...) meant to be
    stacked on its project's ``default.yaml``, as its header says."""
    content = yaml.safe_load(config.read_text()) or {}
    is_overlay = "class_path" not in (content.get("model") or {})
    base = ["--config", str(config.parent / "default.yaml")] if is_overlay else []
    return base + ["--config", str(config)]


@pytest.mark.parametrize("config", PROJECT_CONFIGS, ids=ids(PROJECT_CONFIGS))
def test_config_parses(config: Path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["fit", *config_stack(config), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"].startswith(f"projects.{config.parent.name}.")


@pytest.mark.parametrize("config", TINY_CONFIGS, ids=ids(TINY_CONFIGS))
def test_tiny_config_fast_dev_run(config: Path, tmp_path: Path):
    cli = run_cli(
        [
            "fit",
            "--config",
            str(config),
            "--config",
            CSV,
            "--trainer.fast_dev_run",
            "true",
            *run_folders(tmp_path),
        ]
    )
    assert cli.trainer.state.finished
    assert cli.trainer.global_step >= 1
