"""The LightningModule: one training step, label checks, EMA, each sampler, guidance, the label-aligned grid,
and the original project's large UNet config."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from lightning.pytorch.utilities.exceptions import SIGTERMException

from common.errors import InputError
from common.media import Image
from projects.diffusion.module import DiffusionModule
from projects.diffusion.pipeline import SAMPLERS, make_scheduler
from tests.diffusion.conftest import TINY_UNET

ROOT = Path(__file__).resolve().parents[2]


def tiny_module(num_classes: int | None = 3, **kwargs) -> DiffusionModule:
    torch.manual_seed(0)
    return DiffusionModule(unet=dict(TINY_UNET), num_classes=num_classes, **kwargs)


def batch(n: int = 6, num_classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.rand(n, 1, 16, 16, generator=generator) * 2 - 1, torch.arange(n) % num_classes


def test_one_training_step_reduces_loss_on_a_fixed_batch():
    module = tiny_module()
    optimizer = torch.optim.Adam(module.unet.parameters(), lr=3e-3)
    images, labels = batch()
    losses = []
    for _ in range(12):
        torch.manual_seed(5)  # same noise and timesteps every step: only the weights change
        loss = module.training_step((images, labels), 0)
        optimizer.zero_grad()
        loss.backward()
        assert all(p.grad is not None for p in module.unet.parameters() if p.requires_grad)
        optimizer.step()
        losses.append(float(loss))
    assert losses[0] > 0.3 and losses[-1] < 0.7 * losses[0], losses


def test_out_of_range_label_is_named():
    module = tiny_module()
    images, labels = batch()
    labels[2] = 3  # == num_classes: the null label is not a valid training label
    with pytest.raises(ValueError, match="label 3 is out of range for model.init_args.num_classes=3"):
        module.training_step((images, labels), 0)
    with pytest.raises(ValueError, match="label -1 is out of range"):
        module.generate(torch.tensor([0, -1]), 2, "ddim", 2)


def test_label_dropout_uses_the_null_label(monkeypatch):
    module = tiny_module(label_dropout=1.0)
    seen = []
    original = module.unet.forward

    def spy(sample, timestep, class_labels=None, **kwargs):
        seen.append(class_labels.clone())
        return original(sample, timestep, class_labels=class_labels, **kwargs)

    monkeypatch.setattr(module.unet, "forward", spy)
    module.training_step(batch(), 0)
    assert seen[0].tolist() == [3] * 6  # every label dropped to the null index num_classes


def test_ema_follows_weights_and_swaps_back():
    module = tiny_module(
        optim={"ema_decay": 0.9, "ema_power": 1.0}
    )  # warm-up decay 1 - 1/(1 + step): 0, then 0.5, ...
    first = next(module.unet.parameters()).detach().clone()
    for _ in range(2):
        with torch.no_grad():
            for p in module.unet.parameters():
                p.add_(1.0)
        module.ema.step(module.unet.parameters())
    shadow = module.ema.shadow_params[0]
    assert torch.allclose(shadow, first + 1.5)  # 0.5 * (w + 1) + 0.5 * (w + 2): lags the live weights (w + 2)
    live = [p.detach().clone() for p in module.unet.parameters()]
    with module.ema_weights() as unet:
        assert torch.equal(next(unet.parameters()), shadow)
    assert all(torch.equal(a, b) for a, b in zip(live, module.unet.parameters(), strict=True))


@pytest.mark.parametrize("kind", SAMPLERS)
def test_each_sampler_is_seeded_and_in_range(kind):
    module = tiny_module()
    labels = torch.tensor([0, 1, 2, 0])
    a = module.generate(labels, 4, kind, 4, torch.Generator().manual_seed(7))
    b = module.generate(labels, 4, kind, 4, torch.Generator().manual_seed(7))
    c = module.generate(labels, 4, kind, 4, torch.Generator().manual_seed(8))
    assert a.shape == (4, 1, 16, 16) and a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)
    scheduler = make_scheduler(kind, module.noise_scheduler.config)
    scheduler.set_timesteps(4)
    assert len(scheduler.timesteps) == 4  # the configured number of steps, not the 1000 training steps
    assert scheduler.config.num_train_timesteps == 1000 and scheduler.config.prediction_type == "epsilon"
    if (
        kind == "dpmsolver++"
    ):  # pixel space: unthresholded DPM-Solver++ saturates most pixels (see sampling.py)
        assert scheduler.config.thresholding and scheduler.config.sample_max_value == 1.0
    else:
        assert scheduler.config.clip_sample


def test_guidance_changes_samples_and_needs_labels():
    module = tiny_module()
    with torch.no_grad():  # make the class embedding matter for an untrained net
        module.unet.class_embedding.weight.normal_(0, 3)
    labels = torch.tensor([0, 1])
    pipe = module.pipeline("ddim")
    plain = pipe(
        class_labels=labels,
        num_inference_steps=3,
        generator=torch.Generator().manual_seed(0),
        guidance_scale=1.0,
    ).images
    guided = pipe(
        class_labels=labels,
        num_inference_steps=3,
        generator=torch.Generator().manual_seed(0),
        guidance_scale=4.0,
    ).images
    assert not torch.allclose(plain, guided)
    with pytest.raises(ValueError, match="class-conditional: pass one label per sample"):
        module.generate(None, 2, "ddim", 2)


def test_unconditional_model_samples_without_labels():
    module = tiny_module(num_classes=None)
    assert module.unet.config.num_class_embeds is None
    loss = module.training_step(batch(), 0)
    assert torch.isfinite(loss)
    assert module.generate(None, 3, "dpmsolver++", 3).shape == (3, 1, 16, 16)


def test_media_grid_has_one_row_per_class():
    module = tiny_module(
        grid_per_class=4, validation={"sampler": "ddim", "steps": 2}, class_names=["A", "B", "0"]
    )
    media = module.media_samples()
    grid = media["samples_by_label"]
    assert isinstance(grid, Image)
    assert grid.pixels.shape == (3 * 16, 16 + 4 * 16)  # a label margin, then 4 samples per class row
    assert "AB0" in grid.caption
    # row k is class k: regenerating class 1 alone with the same noise gives row 1's tiles
    assert grid.pixels.dtype.name == "uint8"


def test_original_architecture_config_instantiates():
    config = yaml.safe_load((ROOT / "configs/diffusion/original.yaml").read_text())
    args = config["model"]["init_args"]
    module = DiffusionModule(**args, num_classes=47)  # linked from the data module in `tgm fit`
    unet = module.unet
    assert list(unet.config.block_out_channels) == [128, 128, 256, 256, 512, 512]
    assert unet.config.layers_per_block == 2
    assert [type(b).__name__ for b in unet.down_blocks] == ["DownBlock2D"] * 4 + [
        "AttnDownBlock2D",
        "DownBlock2D",
    ]
    assert [type(b).__name__ for b in unet.up_blocks] == ["UpBlock2D", "AttnUpBlock2D"] + ["UpBlock2D"] * 4
    assert unet.config.num_class_embeds == 48  # 47 EMNIST-balanced classes + the null label
    with torch.no_grad():
        out = unet(torch.zeros(1, 1, 32, 32), torch.tensor([10]), class_labels=torch.tensor([5])).sample
        assert out.shape == (1, 1, 32, 32)
        with pytest.raises(RuntimeError):  # why the data is padded: 28 x 28 breaks the skip connections
            unet(torch.zeros(1, 1, 28, 28), torch.tensor([10]), class_labels=torch.tensor([5]))


def test_sigterm_stops_sampling_between_steps(monkeypatch):
    """A SIGTERM the trainer received stops a sampling batch after the current sampler step (SLURM's 90 s
    window), not after all its steps; the live weights are swapped back from the EMA ones."""
    module = tiny_module()
    trainer = SimpleNamespace(received_sigterm=False)
    module._trainer = trainer
    calls = []
    original = module.unet.forward

    def spy(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            trainer.received_sigterm = True  # the signal arrives during the third UNet call
        return original(*args, **kwargs)

    monkeypatch.setattr(module.unet, "forward", spy)
    live = [p.detach().clone() for p in module.unet.parameters()]
    with pytest.raises(SIGTERMException):
        module.generate(torch.tensor([0, 1]), 2, "ddim", 50)
    assert len(calls) == 3  # of 50
    assert all(torch.equal(a, b) for a, b in zip(live, module.unet.parameters(), strict=True))


def test_inception_without_weights_fails_at_construction_in_one_line():
    """Before the judge is trained or any data prepared: an InputError naming the key (tgm: one line, exit 2)."""
    with pytest.raises(
        InputError, match="model.init_args.inception_weights: Inception weights 'None' not found"
    ):
        tiny_module(extractor="inception")
