"""`tgm fit` on the tiny config end to end: per-epoch CSVs, metric names, the judge's accuracy, the final
evaluation, exact resume, `tgm validate` file names, export + reload in a fresh process, `tgm predict`."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from common.cli import run_cli
from projects.diffusion.export import export_pipeline
from projects.diffusion.module import DiffusionModule
from tests.diffusion.conftest import TINY_UNET
from tests.helpers import checkpoint_run

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "configs/diffusion/tiny.yaml")
CSV = str(ROOT / "configs/logger/csv.yaml")


def fit(root: Path, *extra: str):
    return run_cli(
        [
            "fit",
            "--config",
            TINY,
            "--config",
            CSV,
            "--trainer.default_root_dir",
            str(root),
            "--trainer.logger.init_args.save_dir",
            str(root / "csv"),
            "--checkpoint.dirpath",
            str(root / "ckpt"),
            "--checkpoint.save_top_k",
            "-1",
            "--data.init_args.judge_cache_dir",
            str(root.parent / "clf"),
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """Two epochs of the tiny config, a checkpoint after each."""
    root = tmp_path_factory.mktemp("tiny_run")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the function-scoped fixture does for the resumed run: same float sums
    try:
        cli = fit(root)
    finally:
        torch.set_num_threads(threads)
    return root, cli


def test_fit_writes_per_epoch_csv_and_named_metrics(tiny_run):
    root, cli = tiny_run
    assert cli.trainer.current_epoch == 2
    run = Path(cli.trainer.logger.log_dir)
    for name in (
        "evaluation_metrics_before_training.csv",
        "evaluation_metrics_epoch_0.csv",
        "evaluation_metrics_epoch_1.csv",
    ):
        rows = list(csv.DictReader((run / name).open()))
        assert len(rows) == 1
        keys = set(rows[0])
        assert {
            "val/fid_charclf",
            "val/is_charclf",
            "val/ssim_x0_t200",
            "val/cond_acc_charclf",
            "val/judge_acc",
        } <= keys
        assert rows[0]["judge_reliable"] == "False"  # the tiny judge (20 steps) is below 0.95
        assert all(float(rows[0][k]) == float(rows[0][k]) for k in keys - {"judge_reliable"})  # no NaN
    summary = json.loads((run / "metric_summary.json").read_text())
    assert "val/fid_charclf" in summary["before"] and "val/fid_charclf" in summary["after"]
    assert (
        summary["after"]["val/judge_acc"] == pytest.approx(cli.model.judge_report.val_acc)
        and summary["after"]["val/judge_acc"] < 0.95
    )
    logged = list(csv.DictReader((run / "metrics.csv").open()))
    assert any(row.get("val/judge_acc") for row in logged)  # reaches the per-epoch logger too
    final = list(csv.DictReader((run / "evaluation_metrics_final.csv").open()))[0]
    assert {"final/fid_charclf", "final/cond_acc_charclf", "final/judge_acc", "final/fid_floor"} <= set(final)
    grids = sorted((run / "media").glob("epoch_*/samples_by_label.png"))
    assert len(grids) == 2
    assert sorted(p.name for p in (root / "ckpt").glob("*.ckpt")) == [
        "epoch000.ckpt",
        "epoch001.ckpt",
        "last.ckpt",
    ]


def test_resume_from_epoch_checkpoint_is_exact(tiny_run, tmp_path):
    root, _ = tiny_run
    resumed = fit(tmp_path / "resumed", "--ckpt_path", str(root / "ckpt" / "epoch000.ckpt"))
    assert resumed.trainer.current_epoch == 2
    full = torch.load(root / "ckpt" / "epoch001.ckpt", map_location="cpu", weights_only=False)
    again = torch.load(
        tmp_path / "resumed" / "ckpt" / "epoch001.ckpt", map_location="cpu", weights_only=False
    )
    assert full["global_step"] == again["global_step"]
    for key, value in full["state_dict"].items():
        assert torch.equal(value, again["state_dict"][key]), key
    assert full["ema"]["optimization_step"] == again["ema"]["optimization_step"]
    for a, b in zip(full["ema"]["shadow_params"], again["ema"]["shadow_params"], strict=True):
        assert torch.equal(a, b)


def test_export_loads_in_fresh_process_with_the_same_samples(tiny_run, tmp_path):
    """Class-conditional export (from the tiny run's checkpoint) loaded by stock diffusers with
    ``custom_pipeline``, and an unconditional export sampled with plain ``DDPMPipeline``; one fresh Python
    process for both, with nothing of this repository on its path."""
    root, _ = tiny_run
    module = DiffusionModule.load_from_checkpoint(root / "ckpt" / "last.ckpt", map_location="cpu")
    assert module.class_names == ["A", "B", "0"]
    conditional = export_pipeline(module, tmp_path / "cond")
    labels = [0, 1, 2, 1]
    expected_cond = module.generate(torch.tensor(labels), 4, "ddim", 5, torch.Generator().manual_seed(3))

    torch.manual_seed(0)
    uncond_module = DiffusionModule(unet=dict(TINY_UNET), num_classes=None)
    with torch.no_grad():  # make the EMA differ from the live weights, so the test sees which one is exported
        for p in uncond_module.unet.parameters():
            p.add_(0.01 * torch.randn_like(p))
    uncond_module.ema.step(uncond_module.unet.parameters())
    with torch.no_grad():
        for p in uncond_module.unet.parameters():
            p.add_(0.05)
    unconditional = export_pipeline(uncond_module, tmp_path / "uncond")
    expected_uncond = uncond_module.generate(None, 2, "ddpm", 4, torch.Generator().manual_seed(11))

    script = (
        "import numpy, torch\nfrom diffusers import DDIMScheduler, DDPMPipeline, DiffusionPipeline\n"
        f"pipe = DiffusionPipeline.from_pretrained({str(conditional)!r}, custom_pipeline={str(conditional)!r},"
        " trust_remote_code=True)\n"
        "pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)\n"
        f"x = pipe(class_labels={labels}, num_inference_steps=5, generator=torch.Generator().manual_seed(3))\n"
        f"torch.save(x.images, {str(tmp_path / 'c.pt')!r})\n"
        f"pipe = DDPMPipeline.from_pretrained({str(unconditional)!r})\n"
        "x = pipe(batch_size=2, num_inference_steps=4, generator=torch.Generator().manual_seed(11), output_type='np')\n"
        f"numpy.save({str(tmp_path / 'u.npy')!r}, x.images)\n"
    )
    subprocess.run(
        [sys.executable, "-c", script],
        check=True,
        cwd=tmp_path,
        timeout=600,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
    )
    got = torch.load(tmp_path / "c.pt")
    assert got.shape == (4, 1, 16, 16)
    torch.testing.assert_close(got, expected_cond, atol=1e-5, rtol=0)
    meta = json.loads((conditional / "model_index.json").read_text())
    assert (
        meta["class_names"] == ["A", "B", "0"] and meta["null_label"] == 3 and meta["guidance_scale"] == 2.0
    )
    images = np.load(tmp_path / "u.npy")  # N x H x W x C in [0, 1]
    np.testing.assert_allclose(images[..., 0], ((expected_uncond[:, 0] + 1) / 2).numpy(), atol=1e-5)


def test_predict_writes_images_per_class(tiny_run, tmp_path):
    root, _ = tiny_run
    run_cli(
        [
            "predict",
            "--config",
            TINY,
            "--config",
            CSV,
            *checkpoint_run(tmp_path, root / "ckpt" / "last.ckpt"),
            "--trainer.callbacks.init_args.output_dir",
            str(tmp_path / "png"),
        ]
    )
    names = sorted(p.name for p in (tmp_path / "png").glob("*.png"))
    assert len(names) == 6  # 3 classes x predict_per_class 2
    assert [n.split("_")[0] for n in names] == ["048", "048", "065", "065", "066", "066"]  # '0', 'A', 'B'


def test_validate_names_files_by_the_checkpoint_epoch(tiny_run, tmp_path):
    """`tgm validate` of the epoch-1 checkpoint writes ``evaluation_metrics_epoch_1.csv`` and ``media/epoch_0001``
    (Lightning's loops restart at epoch 0 outside fit, which named them epoch_0)."""
    root, _ = tiny_run
    cli = run_cli(
        [
            "validate",
            "--config",
            TINY,
            "--config",
            CSV,
            *checkpoint_run(tmp_path, root / "ckpt" / "epoch001.ckpt"),
            "--data.init_args.judge_cache_dir",
            str(root.parent / "clf"),
        ]
    )
    run = Path(cli.trainer.logger.log_dir)
    assert sorted(p.name for p in run.glob("evaluation_metrics_*.csv")) == ["evaluation_metrics_epoch_1.csv"]
    assert [p.name for p in (run / "media").iterdir()] == ["epoch_0001"]
    row = list(csv.DictReader((run / "evaluation_metrics_epoch_1.csv").open()))[0]
    assert row["epoch"] == "1" and float(row["val/judge_acc"]) == pytest.approx(
        cli.model.judge_report.val_acc
    )


def test_resume_keeps_the_before_training_csv(tmp_path):
    """The sanity check of a resumed run scores the resumed model (saved after epoch 0): it goes to
    evaluation_metrics_at_resume.csv, and the untrained model's evaluation_metrics_before_training.csv is kept
    (it used to be overwritten)."""
    first = fit(tmp_path, "--trainer.max_epochs", "1", "--model.init_args.final_eval.num_samples", "0")
    run = Path(first.trainer.logger.log_dir)
    before = (run / "evaluation_metrics_before_training.csv").read_text()
    resumed = fit(
        tmp_path,
        "--trainer.max_epochs",
        "2",
        "--model.init_args.final_eval.num_samples",
        "0",
        "--ckpt_path",
        "last",
    )
    assert Path(resumed.trainer.logger.log_dir) == run
    assert (run / "evaluation_metrics_before_training.csv").read_text() == before
    at_resume = list(csv.DictReader((run / "evaluation_metrics_at_resume.csv").open()))[0]
    assert at_resume["epoch"] == "0" and float(at_resume["val/loss"]) != float(
        list(csv.DictReader(before.splitlines()))[0]["val/loss"]
    )
