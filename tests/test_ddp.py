"""Data-parallel training simulated on CPU: two gloo processes, one synced torchmetrics metric."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tests.helpers import run_folders, tgm_command

ROOT = Path(__file__).resolve().parents[1]


def test_two_process_ddp_counts_both_ranks(tmp_path):
    count_file = tmp_path / "count.json"
    command = tgm_command(
        "fit",
        "tests/configs/tiny.yaml",
        "configs/trainer/ddp.yaml",
        "configs/logger/csv.yaml",
        args=[
            "--trainer.accelerator",
            "cpu",
            "--trainer.devices",
            "2",
            "--trainer.sync_batchnorm",
            "false",
            "--trainer.max_epochs",
            "1",
            *run_folders(tmp_path),
            "--model.init_args.count_file",
            str(count_file),
            "--checkpoint.every_n_train_steps",  # step saves and the validation's ranking, on both ranks
            "2",
        ],
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    counted = json.loads(count_file.read_text())
    assert counted["world"] == 2
    assert counted["count"] == 64  # 32 validation samples per rank, summed across ranks by torchmetrics
    assert (tmp_path / "ckpt" / "last.ckpt").exists()
    best = [path for path in (tmp_path / "ckpt").glob("*.ckpt") if path.name != "last.ckpt"]
    assert len(best) == 1 and os.path.samefile(
        best[0], tmp_path / "ckpt" / "last.ckpt"
    )  # one file, two names
