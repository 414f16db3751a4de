"""End to end through ``tgm``: fit on the tiny config, then ``predict`` over a folder into COCO results JSON;
the frozen-GPT-2 variant trains only the mapper."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from common.cli import run_cli
from common.errors import InputError
from tests.caption.conftest import CSV, TINY, fit_args, predict_args
from tests.helpers import checkpoint_run


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

    tested = run_cli(["test", "--config", TINY, "--config", CSV, *checkpoint_run(tmp_path, ckpt)])
    assert {"test/bleu4_13a", "test/loss"} <= set(tested.trainer.callback_metrics)

    folder = tmp_path / "images"
    folder.mkdir()
    for name, colour in (("12.png", (220, 30, 30)), ("kedi.jpg", (30, 60, 220))):
        Image.new("RGB", (40, 48), colour).save(folder / name)
    (folder / "readme.txt").write_text("not an image")
    output = tmp_path / "out" / "captions.json"
    run_cli(predict_args(tmp_path, ckpt, output, "--data.init_args.predict_dir", str(folder)))
    results = json.loads(output.read_text("utf-8"))
    assert [r["image_id"] for r in results] == [12]  # COCO ids only: COCO.loadRes accepts the file
    other = json.loads((output.parent / "captions.non_coco.json").read_text("utf-8"))
    assert [r["image_id"] for r in other] == ["kedi"]
    assert all(set(r) == {"image_id", "caption"} and isinstance(r["caption"], str) for r in results + other)


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


def test_shared_scalars_come_from_the_datamodule_by_link(tiny_fit):
    _, cli = tiny_fit
    model, data = cli.model, cli.datamodule
    for arg, attribute in type(model).linked_from_data.items():
        assert model.hparams[arg] == getattr(data, attribute), arg
    assert (
        model.decoder.config.vocab_size == data.vocab_size == 300
    )  # tiny.yaml: data.init_args.tokenizer.vocab_size
    assert model.mapper.net[0].in_features == data.clip_dim == 32
    assert model.image_encoder.identity()["weights_sha256"] == data.encoder().identity()["weights_sha256"]
    with pytest.raises(InputError, match="model.init_args.vocab_size is set in the config"):
        run_cli(fit_args(Path(cli.trainer.default_root_dir), "--model.init_args.vocab_size", "999"))


def test_predict_needs_only_the_checkpoint_and_prepares_nothing(tiny_fit, tmp_path):
    root, _ = tiny_fit
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (40, 48), (220, 30, 30)).save(folder / "000000000012.png")
    empty = tmp_path / "no_data_here"  # no generated set, no tiny CLIP, no tokenizer: a fresh machine
    output = tmp_path / "out.json"
    args = predict_args(
        root,
        root / "ckpt" / "last.ckpt",
        output,
        "--data.init_args.predict_dir",
        str(folder),
        "--data.init_args.generated.root",
        str(empty),
    )
    run_cli(args)
    assert not empty.exists(), sorted(str(p) for p in empty.rglob("*"))
    fresh = json.loads(output.read_text("utf-8"))
    run_cli(
        predict_args(
            root,
            root / "ckpt" / "last.ckpt",
            tmp_path / "same.json",
            "--data.init_args.predict_dir",
            str(folder),
        )
    )
    assert fresh == json.loads((tmp_path / "same.json").read_text("utf-8"))  # same weights, same tokenizer
    assert fresh[0]["image_id"] == 12 and fresh[0]["caption"]


def test_decoding_is_chosen_at_predict_time(tiny_fit, tmp_path):
    root, _ = tiny_fit
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (40, 48), (30, 60, 220)).save(folder / "1.png")
    cli = run_cli(
        predict_args(
            root,
            root / "ckpt" / "last.ckpt",
            tmp_path / "beams.json",
            "--data.init_args.predict_dir",
            str(folder),
            "--model.init_args.decoding.num_beams",
            "3",
            "--model.init_args.decoding.max_new_tokens",
            "5",
        )
    )
    assert (cli.model.decoding.num_beams, cli.model.decoding.max_new_tokens) == (
        3,
        5,
    )  # not the checkpoint's 1, 8
    assert len(json.loads((tmp_path / "beams.json").read_text("utf-8"))[0]["caption"].split()) <= 5
