"""End to end through ``tgm``: fit on the tiny config, then ``predict`` over a folder into COCO results JSON;
the frozen-GPT-2 variant trains only the mapper."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from PIL import Image

from common.cli import run_cli

TINY = "configs/caption/tiny.yaml"
CSV = "configs/logger/csv.yaml"


def fit_args(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "fit",
        "--config",
        TINY,
        "--config",
        CSV,
        "--trainer.default_root_dir",
        str(tmp_path),
        "--trainer.logger.init_args.save_dir",
        str(tmp_path / "csv"),
        "--checkpoint.dirpath",
        str(tmp_path / "ckpt"),
        *extra,
    ]


def test_fit_then_predict_writes_coco_results(tiny_fit):
    tmp_path, cli = tiny_fit
    metrics = cli.trainer.callback_metrics
    assert {"val/bleu1_13a", "val/bleu4_13a", "val/loss"} <= set(metrics)
    summary = json.loads(next(tmp_path.glob("csv/**/metric_summary.json")).read_text())
    assert "val/bleu4_13a" in summary["before"] and "val/bleu4_13a" in summary["after"]
    assert (
        next(tmp_path.glob("csv/**/media/epoch_0000/val_captions.csv"))
        .read_text("utf-8")
        .startswith("image,prediction,references")
    )
    ckpt = tmp_path / "ckpt" / "last.ckpt"
    assert "caption_tokenizer" in torch.load(ckpt, map_location="cpu", weights_only=False)

    tested = run_cli(
        [
            "test",
            "--config",
            TINY,
            "--config",
            CSV,
            "--trainer.default_root_dir",
            str(tmp_path),
            "--trainer.logger.init_args.save_dir",
            str(tmp_path / "csv"),
            "--ckpt_path",
            str(ckpt),
        ]
    )
    assert {"test/bleu4_13a", "test/loss"} <= set(tested.trainer.callback_metrics)

    folder = tmp_path / "images"
    folder.mkdir()
    for name, colour in (("12.png", (220, 30, 30)), ("kedi.jpg", (30, 60, 220))):
        Image.new("RGB", (40, 48), colour).save(folder / name)
    (folder / "readme.txt").write_text("not an image")
    output = tmp_path / "out" / "captions.json"
    run_cli(
        [
            "predict",
            "--config",
            TINY,
            "--config",
            CSV,
            "--trainer.default_root_dir",
            str(tmp_path),
            "--trainer.logger.init_args.save_dir",
            str(tmp_path / "csv"),
            "--ckpt_path",
            str(ckpt),
            "--data.init_args.predict_dir",
            str(folder),
            "--trainer.callbacks.init_args.output",
            str(output),
        ]
    )
    results = json.loads(output.read_text("utf-8"))
    assert [r["image_id"] for r in results] == [12, "kedi"]
    assert all(set(r) == {"image_id", "caption"} and isinstance(r["caption"], str) for r in results)


def test_frozen_gpt2_variant_trains_only_the_mapper(tmp_path):
    cli = run_cli(
        fit_args(
            tmp_path,
            "--config",
            "configs/caption/frozen_gpt2.yaml",
            "--model.init_args.mapper.layers",
            "1",
            "--model.init_args.mapper.heads",
            "2",
            "--model.init_args.mapper.clip_length",
            "2",
            "--trainer.fast_dev_run",
            "true",
        )
    )
    model = cli.model
    assert type(model.mapper).__name__ == "TransformerMapper"
    assert not any(p.requires_grad for p in model.decoder.parameters())
    assert all(p.requires_grad for p in model.mapper.parameters())
    optimised = {id(p) for group in cli.trainer.optimizers[0].param_groups for p in group["params"]}
    assert optimised == {id(p) for p in model.mapper.parameters()}
