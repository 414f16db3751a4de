"""Each shared callback shown acting on the tiny module."""

from __future__ import annotations

import json

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from common.callbacks import FreezeUnfreeze, GradNormLogger, MediaLogger, MetricSummary, ProgressiveResolution
from common.precision import precision_for_hardware
from tests.helpers.tiny import TinyDataModule, TinyModule


def make_trainer(tmp_path, callbacks, max_epochs=2, **kwargs) -> pl.Trainer:
    return pl.Trainer(
        default_root_dir=tmp_path,
        max_epochs=max_epochs,
        accelerator="cpu",
        logger=CSVLogger(tmp_path, name="t"),
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        log_every_n_steps=1,
        **kwargs,
    )


class RecordGrads(pl.Callback):
    """Runs after GradNormLogger in the same hook and recomputes the norm from the raw gradients."""

    def __init__(self) -> None:
        self.norms: list[float] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        grads = [p.grad.flatten() for p in pl_module.parameters() if p.grad is not None]
        self.norms.append(float(torch.linalg.vector_norm(torch.cat(grads))))


def test_grad_norm_logger_logs_raw_norm_before_clipping(tmp_path):
    recorder = RecordGrads()
    trainer = make_trainer(tmp_path, [GradNormLogger(), recorder], max_epochs=1, gradient_clip_val=1e-3)
    trainer.fit(TinyModule(), TinyDataModule())
    logged = float(trainer.callback_metrics["train/grad_norm"])
    assert logged == pytest.approx(recorder.norms[-1], rel=1e-5)
    assert logged > 1e-3  # the raw norm, not the clipped one


def test_gradient_clipping_limits_the_update(tmp_path):
    """With SGD(lr) and norm clipping at c, no step can move the weights by more than lr * c."""
    module = TinyModule(lr=0.05)
    before = torch.cat([p.detach().flatten().clone() for p in module.parameters()])
    trainer = make_trainer(tmp_path, [], max_steps=1, gradient_clip_val=0.01, gradient_clip_algorithm="norm")
    trainer.fit(module, TinyDataModule())
    after = torch.cat([p.detach().flatten() for p in module.parameters()])
    assert 0 < float(torch.linalg.vector_norm(after - before)) <= 0.05 * 0.01 * (1 + 1e-4)


def test_precision_follows_hardware(monkeypatch):
    assert precision_for_hardware("cpu") == "32-true"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert precision_for_hardware("auto") == "bf16-mixed"
    assert precision_for_hardware("cpu") == "32-true"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert precision_for_hardware("gpu") == "16-mixed"


def test_progressive_resolution_grows_module_and_data_and_fades(tmp_path):
    grow = ProgressiveResolution({0: 32, 1: 48, 2: 64}, fade_epochs=1.0)
    data, module = TinyDataModule(), TinyModule()
    trainer = make_trainer(tmp_path, [grow], max_epochs=3)
    trainer.fit(module, data)
    assert data.resolution_history == [32, 48, 64]
    assert module.resolution == 64
    assert 0.8 < module.fade_alpha < 1.0  # last batch of the stage that began at epoch 2: nearly faded in
    metrics = (tmp_path / "t" / "version_0" / "metrics.csv").read_text()
    assert "train/resolution" in metrics and "64.0" in metrics


def test_progressive_resolution_after_resume_starts_at_the_resumed_stage(tmp_path):
    """Lightning restores the epoch counter after on_fit_start; the sanity check of a resumed run must still
    validate at the resumed epoch's resolution, not at schedule[0]."""
    schedule = {0: 32, 1: 48, 2: 64}
    first = make_trainer(tmp_path, [ProgressiveResolution(schedule)], max_epochs=2, num_sanity_val_steps=0)
    first.fit(TinyModule(), TinyDataModule())
    first.save_checkpoint(tmp_path / "epoch2.ckpt")
    data, module = TinyDataModule(), TinyModule()
    seen_at_sanity = []

    class Probe(pl.Callback):
        def on_sanity_check_end(self, trainer, pl_module):
            seen_at_sanity.append((pl_module.resolution, data.resolution_history[-1]))

    resumed = make_trainer(tmp_path, [ProgressiveResolution(schedule), Probe()], max_epochs=3)
    resumed.fit(module, data, ckpt_path=tmp_path / "epoch2.ckpt")
    assert seen_at_sanity == [(64, 64)]
    assert 32 not in data.resolution_history


def test_progressive_resolution_rejects_bad_schedule():
    with pytest.raises(ValueError, match="epoch 0"):
        ProgressiveResolution({5: 32})
    assert ProgressiveResolution({0: 32, 10: 48}).resolution_at(12) == 48


class WeightsPerEpoch(pl.Callback):
    def __init__(self) -> None:
        self.encoder: list[torch.Tensor] = []
        self.groups: list[list[float]] = []

    def on_train_epoch_end(self, trainer, pl_module):
        self.encoder.append(pl_module.encoder.weight.detach().clone())
        self.groups.append([group["lr"] for group in trainer.optimizers[0].param_groups])


def test_freeze_unfreeze_keeps_encoder_fixed_then_trains_it_with_its_lr(tmp_path):
    module = TinyModule(lr=0.05)
    initial = module.encoder.weight.detach().clone()
    probe = WeightsPerEpoch()
    freeze = FreezeUnfreeze(modules=["encoder"], unfreeze_at_epoch=2, unfreeze_lr=0.0123)
    trainer = make_trainer(tmp_path, [freeze, probe], max_epochs=3)
    trainer.fit(module, TinyDataModule())
    assert torch.equal(probe.encoder[0], initial) and torch.equal(probe.encoder[1], initial)
    assert not torch.equal(probe.encoder[2], initial)
    assert probe.groups[1] == [0.05] and probe.groups[2] == [0.05, 0.0123]


class TiedEncoderModule(TinyModule):
    """``encoder`` holds one weight twice (as T5 and GPT-2 tie input and output embeddings)."""

    def __init__(self) -> None:
        super().__init__(lr=0.05, hidden=4)
        first, second = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)
        second.weight = first.weight
        self.encoder = torch.nn.Sequential(first, second)


def test_freeze_unfreeze_adds_a_shared_weight_once(tmp_path, recwarn):
    module = TiedEncoderModule()
    trainer = make_trainer(tmp_path, [FreezeUnfreeze(modules=["encoder"], unfreeze_at_epoch=1)], max_epochs=2)
    trainer.fit(module, TinyDataModule())
    added = trainer.optimizers[0].param_groups[1]["params"]
    assert len(added) == len({id(p) for p in added}) == 3  # shared weight + two biases
    assert not [w for w in recwarn if "duplicate" in str(w.message)]


def test_freeze_unfreeze_names_a_missing_module(tmp_path):
    trainer = make_trainer(tmp_path, [FreezeUnfreeze(modules=["decoder"])], max_epochs=1)
    with pytest.raises(AttributeError, match="no submodule 'decoder'.*encoder, head"):
        trainer.fit(TinyModule(), TinyDataModule())


def test_media_logger_writes_samples_every_n_epochs(tmp_path):
    media = MediaLogger(every_n_epochs=2)
    trainer = make_trainer(tmp_path, [media], max_epochs=3)
    trainer.fit(TinyModule(), TinyDataModule())
    names = sorted(p.relative_to(tmp_path / "t" / "version_0" / "media").as_posix() for p in media.written)
    assert names == [
        "epoch_0000/gradient.png",
        "epoch_0000/table.csv",
        "epoch_0002/gradient.png",
        "epoch_0002/table.csv",
    ]
    assert all(p.stat().st_size > 0 for p in media.written)


def test_media_logger_counts_validations_not_epochs(tmp_path):
    """Validation every 2nd epoch runs at epochs 1, 3, 5; every 2nd validation is then epochs 1 and 5."""
    media = MediaLogger(every_n_epochs=2)
    trainer = make_trainer(tmp_path, [media], max_epochs=6, check_val_every_n_epoch=2)
    trainer.fit(TinyModule(), TinyDataModule())
    epochs = sorted({p.parent.name for p in media.written})
    assert epochs == ["epoch_0001", "epoch_0005"]
    assert media.state_dict() == {"validations_seen": 3}


def test_metric_summary_records_before_and_after(tmp_path, capsys):
    summary = MetricSummary()
    trainer = make_trainer(tmp_path, [summary], max_epochs=3, num_sanity_val_steps=-1)
    trainer.fit(TinyModule(lr=0.05), TinyDataModule())
    assert summary.before["val/count"] == 64  # the sanity check covered the whole validation set
    assert summary.after["val/mse"] < summary.before["val/mse"]
    saved = json.loads((tmp_path / "t" / "version_0" / "metric_summary.json").read_text())
    assert saved["after"]["val/mse"] == pytest.approx(summary.after["val/mse"])
    assert "before / after" in capsys.readouterr().out
