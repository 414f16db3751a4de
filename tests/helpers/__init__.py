"""Test helpers: RunIf, tiny modules, the `tgm` command line for subprocess tests."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path


def tgm_command(subcommand: str, *configs: str, args: Sequence[str] = ()) -> list[str]:
    """``python -m common.cli SUBCOMMAND --config C ... ARGS``: the `tgm` command line for subprocess tests."""
    command = [sys.executable, "-m", "common.cli", subcommand]
    for config in configs:
        command += ["--config", str(config)]
    return [*command, *map(str, args)]


def run_folders(tmp_path: str | Path) -> list[str]:
    """CLI flags that put a test run's folder, CSV log and checkpoints under ``tmp_path``."""
    tmp_path = Path(tmp_path)
    return [
        "--trainer.default_root_dir",
        str(tmp_path),
        "--trainer.logger.init_args.save_dir",
        str(tmp_path / "csv"),
        "--checkpoint.dirpath",
        str(tmp_path / "ckpt"),
    ]


def checkpoint_run(tmp_path: str | Path, ckpt: str | Path) -> list[str]:
    """CLI flags of a validate/test/predict run from ``ckpt`` with its folder and CSV log under ``tmp_path``."""
    tmp_path = Path(tmp_path)
    return [
        "--trainer.default_root_dir",
        str(tmp_path),
        "--trainer.logger.init_args.save_dir",
        str(tmp_path / "csv"),
        "--ckpt_path",
        str(ckpt),
    ]
