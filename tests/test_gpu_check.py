"""scripts/gpu_check.sh: one line and exit 0 without a GPU; the measuring itself (throughput, FLOPs per step from
FlopCounterMode, the table) exercised on the CPU with a tiny config; the card table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import gpu_check  # noqa: E402


def test_without_a_gpu_it_says_so_in_one_line_and_exits_0():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable}
    done = subprocess.run([str(ROOT / "scripts" / "gpu_check.sh")], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == [
        "gpu_check: no CUDA GPU on this machine (torch.cuda.is_available() is False); nothing to measure"
    ]


@pytest.mark.parametrize(
    ("name", "tflops"),
    [("NVIDIA H100 80GB HBM3", 989.4), ("NVIDIA H100 PCIe", 756.0), ("NVIDIA H100 NVL", 835.0),
     ("NVIDIA H200", 989.4), ("NVIDIA A100-SXM4-80GB", 312.0), ("NVIDIA L40S", 362.1), ("NVIDIA L4", 121.0),
     ("Tesla T4", None)],
)  # fmt: skip
def test_peak_bf16_tflops_of_the_card(name, tflops):
    assert gpu_check.peak_tflops(name) == tflops


def test_measuring_on_a_tiny_config(tmp_path, one_torch_thread):
    """The GPU path's code on the CPU (``smoke``): steps timed after the warm-up, samples counted from the batch,
    FLOPs per step counted over a real training step (a UNet: convolutions and matmuls), one table row."""
    result = gpu_check.measure("diffusion", steps=2, warmup=1, folder=tmp_path, smoke=True)
    assert result["steps"] == 2 and result["batch"] > 0 and result["samples_per_s"] > 0
    assert result["flops_source"] == "FlopCounterMode" and result["flops_per_step"] > 0
    rows = gpu_check.table(
        [result, {"project": "pose", "error": "configs/pose/base.yaml not there"}], "cpu", 100.0
    )
    lines = rows.splitlines()
    assert lines[2].startswith("diffusion ") and lines[2].split()[-1] == "FlopCounterMode"
    assert lines[3] == "pose       configs/pose/base.yaml not there"
