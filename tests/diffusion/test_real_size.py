"""The original 6-level UNet config (configs/diffusion/original.yaml, 113.7 M parameters, 47 classes, batch 64)
with random weights, nothing downloaded: two training steps, one validation batch (4 samples, 2 DDIM steps), one
prediction batch. Slow on CPU (a minute or more a step on a shared 2-core machine): ``make test-slow``.

Prints parameters, peak RSS and seconds per training step (``pytest -s``) for the README's real-size table.
"""

from __future__ import annotations

import resource
import time
from pathlib import Path

import lightning.pytorch as pl
import pytest

from common.cli import run_cli

ROOT = Path(__file__).resolve().parents[2]
ORIGINAL = str(ROOT / "configs/diffusion/original.yaml")
CSV = str(ROOT / "configs/logger/csv.yaml")


class StepTimer(pl.Callback):
    """Wall time of each training batch (forward, backward, optimiser step, EMA)."""

    seconds: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.began = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        StepTimer.seconds.append(time.perf_counter() - self.began)


@pytest.mark.slow
def test_original_unet_trains_validates_and_predicts(tmp_path):
    callbacks = tmp_path / "callbacks.yaml"
    callbacks.write_text(
        "trainer:\n  callbacks:\n    - class_path: tests.diffusion.test_real_size.StepTimer\n"
        "    - class_path: projects.diffusion.writer.DiffusionImageWriter\n"
        f"      init_args: {{output_dir: {tmp_path / 'predictions'}}}\n"
    )
    small_data = [
        "--data.init_args.data_dir",
        str(tmp_path / "glyphs"),
        "--data.init_args.generated.train_per_class",
        "3",
        "--data.init_args.generated.test_per_class",
        "2",
        "--data.init_args.val_per_class",
        "1",
        "--data.init_args.val_batch_size",
        "4",
        "--data.init_args.predict_per_class",
        "1",
        "--data.init_args.num_workers",
        "0",
        "--data.init_args.judge.max_epochs",
        "1",
        "--data.init_args.judge_cache_dir",
        str(tmp_path / "cache"),
    ]
    folders = [
        "--trainer.default_root_dir",
        str(tmp_path),
        "--trainer.logger.init_args.save_dir",
        str(tmp_path / "csv"),
        "--checkpoint.dirpath",
        str(tmp_path / "ckpt"),
        "--trainer.accelerator",
        "cpu",
        "--trainer.devices",
        "1",
    ]
    StepTimer.seconds = []
    began = time.perf_counter()
    cli = run_cli(
        [
            "fit",
            "--config",
            ORIGINAL,
            "--config",
            CSV,
            "--config",
            str(callbacks),
            *folders,
            *small_data,
            "--trainer.max_steps",
            "2",
            "--trainer.limit_train_batches",
            "2",
            "--trainer.limit_val_batches",
            "1",
            "--trainer.num_sanity_val_steps",
            "0",
            "--data.init_args.batch_size",
            "64",
            "--model.init_args.validation.steps",
            "2",
            "--model.init_args.final_eval.num_samples",
            "0",
            "--model.init_args.grid_per_class",
            "1",
        ]
    )
    fit_seconds = time.perf_counter() - began
    params = sum(p.numel() for p in cli.model.unet.parameters())
    assert 110e6 < params < 118e6 and cli.model.num_classes == 47
    assert cli.trainer.global_step == 2 and len(StepTimer.seconds) == 2
    run = Path(cli.trainer.logger.log_dir)
    assert (run / "evaluation_metrics_epoch_0.csv").is_file()
    predicted = run_cli(
        [
            "predict",
            "--config",
            ORIGINAL,
            "--config",
            CSV,
            "--config",
            str(callbacks),
            *folders,
            *small_data,
            "--ckpt_path",
            str(tmp_path / "ckpt" / "last.ckpt"),
            "--trainer.limit_predict_batches",
            "1",
            "--model.init_args.predict.sampler",
            "ddim",
            "--model.init_args.predict.steps",
            "2",
        ]
    )
    assert predicted.trainer.state.finished
    assert len(list((tmp_path / "predictions").glob("*.png"))) == 4
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"\n[real size] original UNet: {params / 1e6:.1f} M parameters, batch 64 at 32x32, "
        f"s/step {StepTimer.seconds[0]:.1f} / {StepTimer.seconds[1]:.1f} (first / second), fit incl. judge and "
        f"one validation batch {fit_seconds:.0f} s, peak RSS of the test process {peak_mb:.0f} MB"
    )
