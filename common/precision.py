"""Pick a mixed-precision mode from the hardware, so one config runs well on CPU, old GPUs and new GPUs."""

from __future__ import annotations

import torch


def precision_for_hardware(accelerator: str | None = "auto") -> str:
    """Return the Lightning precision string that suits the machine.

    ``bf16-mixed`` on CUDA devices with bfloat16 support (Ampere and newer), ``16-mixed`` on older CUDA
    devices (fp16 with a gradient scaler), ``32-true`` on CPU, where autocast buys little and costs accuracy.
    """
    wants_gpu = accelerator in (None, "auto", "gpu", "cuda")
    if wants_gpu and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"
