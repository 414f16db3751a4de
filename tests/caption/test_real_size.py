"""Issue 21: the published-size config (configs/caption/published.yaml: CLIP ViT-B/32 + GPT-2 124M + MLP mapper)
builds from local ``save_pretrained`` folders with random weights (nothing downloaded), trains two steps,
validates one batch and predicts. ``make test-slow``: ~2-4 min on 2 CPU cores."""

from __future__ import annotations

import json
import resource
import time

import pytest
import torch
from PIL import Image
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
    GPT2Config,
    GPT2LMHeadModel,
)

from common.cli import run_cli
from projects.caption.data import train_tokenizer
from tests.caption.conftest import CSV
from tests.helpers import checkpoint_run, run_folders

pytestmark = pytest.mark.slow
CONFIGS = ["--config", "configs/caption/default.yaml", "--config", "configs/caption/published.yaml"]


def write_pretrained(root) -> tuple[str, str]:
    """Random-weight folders shaped like the published models: ViT-B/32 (CLIPVisionConfig() is ViT-B/32) and
    GPT-2 124M (GPT2Config()), with a byte-level BPE saved as the decoder's tokenizer."""
    torch.manual_seed(0)
    clip = root / "clip-vit-base-patch32"
    CLIPVisionModelWithProjection(CLIPVisionConfig()).save_pretrained(clip)
    gpt2 = root / "gpt2-turkish-cased"
    GPT2LMHeadModel(GPT2Config()).save_pretrained(gpt2)
    captions = ["kırmızı bir kare", "mavi bir daire", "sarı bir üçgen", "yeşil bir yıldız"] * 10
    train_tokenizer(captions, 300, root, root / "bpe.json")
    from projects.caption.data import load_bpe_file

    load_bpe_file(root / "bpe.json").save_pretrained(gpt2)
    return str(clip), str(gpt2)


def write_coco(root, split: str, ids: list[int]) -> str:
    images, annotations = [], []
    for image_id in ids:
        name = f"{image_id:012d}.jpg"
        Image.new("RGB", (640, 480), (image_id * 40 % 255, 90, 160)).save(root / name)
        images.append({"id": image_id, "file_name": name})
        for k in range(2):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "caption": f"bir kare {k}"})
    path = root / f"captions_{split}.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations}), "utf-8")
    return str(path)


def test_published_size_fits_validates_and_predicts(tmp_path):
    clip, gpt2 = write_pretrained(tmp_path)
    data = tmp_path / "coco"
    data.mkdir()
    sizes = [
        "--model.init_args.decoder", gpt2,
        "--data.init_args.clip.name", clip,
        "--data.init_args.tokenizer.name", gpt2,
        "--data.init_args.train_file", write_coco(data, "train", list(range(1, 9))),
        "--data.init_args.val_file", write_coco(data, "val", [101, 102]),
        "--data.init_args.batch_size", "4",
        "--data.init_args.eval_batch_size", "2",
        "--model.init_args.decoding.max_new_tokens", "4",
        "--model.init_args.evaluation.meteor_in_test", "false",
    ]  # fmt: skip
    start = time.perf_counter()
    cli = run_cli(
        ["fit", *CONFIGS, "--config", CSV, *run_folders(tmp_path), *sizes]
        + [
            "--trainer.max_epochs",
            "1",
            "--trainer.limit_train_batches",
            "2",
            "--trainer.limit_val_batches",
            "1",
            "--trainer.num_sanity_val_steps",
            "0",
        ]
    )
    seconds = time.perf_counter() - start
    model = cli.model
    counts = {
        name: sum(p.numel() for p in getattr(model, name).parameters())
        for name in ("image_encoder", "mapper", "decoder")
    }
    assert counts["image_encoder"] == pytest.approx(87.8e6, rel=0.01)  # ViT-B/32 + projection
    assert counts["decoder"] == pytest.approx(124.4e6, rel=0.01)  # GPT-2 small
    assert counts["mapper"] == 512 * 3840 + 3840 + 3840 * 7680 + 7680  # 31.5M
    assert cli.trainer.global_step == 2 and "val/cider_d_tr" in cli.trainer.callback_metrics
    ckpt = tmp_path / "ckpt" / "last.ckpt"
    stored = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert not any(k.startswith("image_encoder.") for k in stored["state_dict"])  # a hash instead

    output = tmp_path / "predictions.json"
    run_cli(
        ["predict", *CONFIGS, "--config", CSV, *checkpoint_run(tmp_path, ckpt), *sizes]
        + ["--data.init_args.predict_dir", str(data), "--trainer.callbacks.init_args.output", str(output)]
    )
    results = json.loads(output.read_text("utf-8"))
    assert len(results) == 10 and all(isinstance(r["caption"], str) for r in results)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"published size: params {counts}, fit (2 steps of 4 + 1 val batch, incl. start-up and CLIP features) "
        f"{seconds:.0f} s, checkpoint {ckpt.stat().st_size / 1e6:.0f} MB, peak RSS {peak:.0f} MB"
    )
