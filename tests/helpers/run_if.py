"""``@RunIf(...)``: skip a test unless the machine has what it needs (lightning-hydra-template style)."""

from __future__ import annotations

import importlib.util

import pytest
import torch


def RunIf(  # noqa: N802 - reads like a decorator class, as in lightning-hydra-template
    min_gpus: int = 0,
    bf16_gpu: bool = False,
    pytorch3d: bool = False,
    wandb: bool = False,
    packages: tuple[str, ...] = (),
) -> pytest.MarkDecorator:
    """A ``skipif`` mark that lists every unmet requirement in its reason."""
    reasons = []
    if min_gpus and torch.cuda.device_count() < min_gpus:
        reasons.append(f"needs {min_gpus} GPU(s)")
    if bf16_gpu and not (torch.cuda.is_available() and torch.cuda.is_bf16_supported()):
        reasons.append("needs a bf16-capable GPU")
    wanted = list(packages) + (["pytorch3d"] if pytorch3d else []) + (["wandb"] if wandb else [])
    reasons += [f"needs {name}" for name in wanted if importlib.util.find_spec(name) is None]
    return pytest.mark.skipif(bool(reasons), reason=", ".join(reasons) or "all requirements met")
