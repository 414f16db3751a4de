"""A tiny caption checkpoint trained once per test session (``tgm fit`` on configs/caption/tiny.yaml)."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.cli import run_cli
from tests.helpers import checkpoint_run, run_folders

TINY = "configs/caption/tiny.yaml"
CSV = "configs/logger/csv.yaml"
TINY_CLIP = {
    "image_size": 32,
    "patch_size": 8,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "projection_dim": 16,
}


def fit_args(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "fit",
        "--config",
        TINY,
        "--config",
        CSV,
        *run_folders(tmp_path),
        *extra,
    ]


def predict_args(tmp_path: Path, ckpt: Path, output: Path, *extra: str) -> list[str]:
    return [
        "predict",
        "--config",
        TINY,
        "--config",
        CSV,
        *checkpoint_run(tmp_path, ckpt),
        "--trainer.callbacks.init_args.output",
        str(output),
        *extra,
    ]


@pytest.fixture(scope="session")
def tiny_fit(tmp_path_factory):
    """``(run folder, fitted CLI)`` of one tiny ``tgm fit``."""
    root = tmp_path_factory.mktemp("caption_fit")
    return root, run_cli(fit_args(root))
