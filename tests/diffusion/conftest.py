"""Shared fixtures: a small generated glyph set (47 classes) and the real-digits fixture (400 + 120 real
handwritten digits, 16 x 16) with a judge trained on it, each built once per session; a tiny UNet config."""

from __future__ import annotations

import pytest
import torch

from projects.diffusion.data import CharacterDataModule
from projects.diffusion.generate import ensure_generated
from projects.diffusion.judge import train_judge
from projects.diffusion.model import CharClassifier
from tests.diffusion.real_fixture import FAST_JUDGE, REAL

TINY_UNET = {
    "sample_size": 16,
    "block_out_channels": [8, 16],
    "down_block_types": ["DownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "UpBlock2D"],
    "norm_num_groups": 4,
}


@pytest.fixture(scope="session")
def glyph_dir(tmp_path_factory):
    """47 classes x (30 train + 8 test) generated images, written in EMNIST's file format."""
    return ensure_generated(tmp_path_factory.mktemp("glyphs"), train_per_class=30, test_per_class=8)


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every diffusion test runs on one torch thread (fixture in tests/conftest.py)."""


@pytest.fixture(scope="session")
def real_data(tmp_path_factory) -> CharacterDataModule:
    """The real-digits fixture at 16 x 16 (set up for fit: train_set, heldout_set)."""
    cache = str(tmp_path_factory.mktemp("arrays"))
    data = CharacterDataModule(
        data_dir=str(REAL), source="emnist", split="digits", image_size=16, judge_cache_dir=cache
    )
    data.setup("fit")
    return data


@pytest.fixture(scope="session")
def real_judge_run(real_data) -> tuple[CharClassifier, int]:
    """(judge, step of its best held-out accuracy), trained on the fixture's 400 training digits (one thread:
    about 15 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train_judge(real_data.train_set, 10, FAST_JUDGE, log=False)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def real_judge(real_judge_run) -> CharClassifier:
    return real_judge_run[0]
