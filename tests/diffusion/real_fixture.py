"""Where the real-digits test data lives and how fast the tests train a judge on it (shared by conftest and tests)."""

from __future__ import annotations

from pathlib import Path

from projects.diffusion.judge import JudgeConfig

REAL = (
    Path(__file__).parent / "fixtures" / "real_digits"
)  # 400 + 120 real digits (projects/diffusion/real_digits.py)
FAST_JUDGE = JudgeConfig(max_epochs=60, patience=100, batch_size=64)
