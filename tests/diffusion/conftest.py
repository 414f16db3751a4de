"""Shared fixtures: a small generated glyph set (3 classes) in a session temp dir and a tiny UNet config."""

from __future__ import annotations

import pytest

from projects.diffusion.generate import ensure_generated

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
