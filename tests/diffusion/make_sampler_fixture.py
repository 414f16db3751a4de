"""Train the small UNet that ``test_samplers.py`` samples from (``tests/diffusion/fixtures/sampler_unet``).

    python -m tests.diffusion.make_sampler_fixture [OUT] [--steps N]

A real trained denoiser, not a closed form: an unconditional ``UNet2DModel`` (16/32 channels, 8 x 8) trained on
the 400 real handwritten training digits of ``fixtures/real_digits`` (averaged to 8 x 8, as
``data.prepare_images(..., 8)``) with the recipe the project used before issue 24 -- epsilon prediction,
linear betas, AdamW 2e-3, constant lr -- for a short budget. Like the runs of issue 24 it is good at low noise
and has not learned x0 at high noise (its x0 estimate at t = 999 lies far outside [-1, 1]), which is what made
deterministic DDIM with inherited settings worse as steps rose. Seeded; a few tens of seconds on one CPU core.
Saved with ``save_pretrained`` (fp32 safetensors + config.json) next to its training scheduler
(scheduler_config.json), so stock diffusers loads both.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from diffusers import DDPMScheduler, UNet2DModel

from projects.diffusion.data import prepare_images
from projects.diffusion.idx import read_emnist

HERE = Path(__file__).parent
REAL = HERE / "fixtures" / "real_digits"
OUT = HERE / "fixtures" / "sampler_unet"
SIDE = 8


def training_scheduler() -> DDPMScheduler:
    """The training noise schedule of the fixture (the project's pre-issue-24 default)."""
    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type="epsilon")


def digits(subset: str) -> torch.Tensor:
    """The fixture's real digits, N x 1 x 8 x 8 in [-1, 1]."""
    images, _ = read_emnist(REAL, "digits", subset)
    return prepare_images(images, SIDE)


def build_unet() -> UNet2DModel:
    return UNet2DModel(
        sample_size=SIDE,
        in_channels=1,
        out_channels=1,
        layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    )


def train(steps: int, batch_size: int = 64, lr: float = 2e-3, seed: int = 0) -> UNet2DModel:
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    data = digits("train")
    unet, scheduler = build_unet(), training_scheduler()
    optimiser = torch.optim.AdamW(unet.parameters(), lr=lr)
    unet.train()
    for _ in range(steps):
        x0 = data[torch.randint(0, len(data), (batch_size,), generator=generator)]
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.randint(0, 1000, (batch_size,), generator=generator)
        loss = torch.nn.functional.mse_loss(unet(scheduler.add_noise(x0, noise, t), t).sample, noise)
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimiser.step()
    return unet.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default=str(OUT))
    parser.add_argument("--steps", type=int, default=1500)
    args = parser.parse_args()
    torch.set_num_threads(1)
    train(args.steps).save_pretrained(args.out)
    training_scheduler().save_pretrained(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
