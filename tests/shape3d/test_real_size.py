"""Issue 21: ``configs/shape3d/mt5.yaml`` at its real size (mT5-small-sized encoder with random weights from its
config class, written by ``save_pretrained``; the design's 64^3 decoder) builds, trains two steps at 64^3, validates
one batch and predicts. Nothing is downloaded. Prints parameters, peak RSS and seconds per step."""

from __future__ import annotations

import resource
import time
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml

from common.callbacks import FreezeUnfreeze, ProgressiveResolution
from common.prepare import build_data, build_model
from projects.shape3d.text_encoder import TURKISH_ALPHABET, load_tokenizer, prepare_tokenizer
from tests.shape3d.test_data import write_splits

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = [str(ROOT / "configs" / "shape3d" / "default.yaml"), str(ROOT / "configs" / "shape3d" / "mt5.yaml")]
BATCH = 2


class StepTimer(pl.Callback):
    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.times.append(time.perf_counter() - self.start)


@pytest.mark.slow
def test_mt5_config_at_real_size_trains_validates_and_predicts(tmp_path):
    from transformers import MT5Config, MT5EncoderModel

    # google/mt5-small's encoder: 250,112 pieces, d_model 512, 8 layers, 6 heads (random weights)
    config = MT5Config(
        vocab_size=250112,
        d_model=512,
        d_kv=64,
        d_ff=1024,
        num_layers=8,
        num_heads=6,
        feed_forward_proj="gated-gelu",
    )
    MT5EncoderModel(config).save_pretrained(tmp_path / "mt5")
    prepare_tokenizer(
        ["bir küre", "bir kutu", "ince uzun bir silindir", TURKISH_ALPHABET], tmp_path / "tokenizer"
    )
    load_tokenizer(tmp_path / "tokenizer").save_pretrained(tmp_path / "mt5")
    write_splits(tmp_path / "data")
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(
        yaml.safe_dump(
            {
                "model": {"init_args": {"text_encoder": str(tmp_path / "mt5")}},
                "data": {
                    "init_args": {"data_dir": str(tmp_path / "data"), "batch_size": BATCH, "num_workers": 0},
                },
            }
        )
    )
    data = build_data([*CONFIGS, str(overlay)])
    model = build_model([*CONFIGS, str(overlay)], data)
    parameters = {
        name: sum(p.numel() for p in getattr(model, name).parameters())
        for name in ("text_encoder", "decoder")
    }
    total = sum(p.numel() for p in model.parameters())
    assert parameters["decoder"] > 20e6 and parameters["text_encoder"] > 140e6
    timer = StepTimer()
    trainer = pl.Trainer(
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        precision="32-true",
        default_root_dir=tmp_path,
        callbacks=[
            ProgressiveResolution(schedule={0: 64}),
            FreezeUnfreeze(["text_encoder"], unfreeze_at_epoch=30),
            timer,
        ],
    )
    trainer.fit(model, data)
    assert len(timer.times) == 2 and "val/iou" in trainer.callback_metrics
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    checkpoint_mb = (tmp_path / "last.ckpt").stat().st_size / 2**20
    assert checkpoint_mb < 4 * total * 4 / 2**20 - 500  # the frozen mT5 (590 MB) is not in it
    predictions = trainer.predict(model, datamodule=data)
    assert predictions[0]["prob"].shape[1:] == (64, 64, 64)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(
        f"\nshape3d mt5.yaml real size: {total / 1e6:.1f}M parameters (text encoder "
        f"{parameters['text_encoder'] / 1e6:.1f}M frozen, decoder {parameters['decoder'] / 1e6:.1f}M), "
        f"batch {BATCH} at 64^3 on CPU ({torch.get_num_threads()} threads): {timer.times[-1]:.1f} s/step "
        f"(first {timer.times[0]:.1f} s), peak RSS {peak_gb:.2f} GB, checkpoint {checkpoint_mb:.0f} MB"
    )
