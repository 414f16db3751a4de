"""Test helpers: RunIf, tiny modules, the `tgm` command line for subprocess tests."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def tgm_command(subcommand: str, *configs: str, args: Sequence[str] = ()) -> list[str]:
    """``python -m common.cli SUBCOMMAND --config C ... ARGS``: the `tgm` command line for subprocess tests."""
    command = [sys.executable, "-m", "common.cli", subcommand]
    for config in configs:
        command += ["--config", str(config)]
    return [*command, *map(str, args)]
