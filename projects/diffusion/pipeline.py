"""Sampling loops over stock diffusers schedulers: DDPM (fidelity), DDIM and DPM-Solver++ (few steps).

The loop is the one ``DDPMPipeline.__call__`` runs (same noise draw, same ``scheduler.step`` calls), plus
classifier-free guidance when class labels are given, so an exported pipeline reproduces these samples exactly.
"""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, UNet2DModel
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor

SAMPLERS = ("ddpm", "ddim", "dpmsolver++")


def make_sampler(kind: str, train_scheduler: DDPMScheduler):
    """A fresh inference scheduler sharing the training noise schedule (betas, prediction type)."""
    config = train_scheduler.config
    if kind == "ddpm":
        return DDPMScheduler.from_config(config)
    if kind == "ddim":
        return DDIMScheduler.from_config(config)
    if kind == "dpmsolver++":
        # Pixel-space model: without thresholding the data prediction (x_t - sigma eps) / alpha explodes at the
        # first steps (alpha_T ~ 0.006) and most pixels saturate; diffusers recommends thresholding here.
        return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", solver_order=2,
                                                       thresholding=True, sample_max_value=1.0)
    raise ValueError(f"unknown sampler '{kind}', expected one of {SAMPLERS}")


@torch.no_grad()
def sample(
    unet: UNet2DModel,
    scheduler,
    num_samples: int,
    num_inference_steps: int,
    generator: torch.Generator | None = None,
    labels: Tensor | None = None,
    null_label: int | None = None,
    guidance_scale: float = 1.0,
) -> Tensor:
    """Draw ``num_samples`` images in [-1, 1] (``N x C x H x W``).

    With ``labels`` the UNet is class-conditional; ``guidance_scale`` w != 1 mixes conditional and
    unconditional (``null_label``) noise predictions as ``eps_u + w * (eps_c - eps_u)`` (Ho & Salimans 2022).
    """
    config = unet.config
    size = config.sample_size if isinstance(config.sample_size, int) else config.sample_size[0]
    device = unet.device
    if labels is not None:
        if config.num_class_embeds is None:
            raise ValueError("labels given but the UNet is unconditional (num_class_embeds is None)")
        labels = labels.to(device)
        limit = config.num_class_embeds - 1 if null_label is not None else config.num_class_embeds
        if len(labels) != num_samples or labels.min() < 0 or labels.max() >= limit:
            raise ValueError(f"labels must be {num_samples} class indices in [0, {limit}), got "
                             f"{labels.tolist()[:10]}{' ...' if len(labels) > 10 else ''}")
    image = randn_tensor((num_samples, config.in_channels, size, size), generator=generator, device=device,
                         dtype=unet.dtype)
    scheduler.set_timesteps(num_inference_steps)
    guided = labels is not None and guidance_scale != 1.0
    if guided and null_label is None:
        raise ValueError("classifier-free guidance needs null_label (the model's 'no class' index)")
    for t in scheduler.timesteps:
        if guided:
            both = unet(torch.cat([image, image]), t,
                        class_labels=torch.cat([labels, torch.full_like(labels, null_label)])).sample
            conditional, unconditional = both.chunk(2)
            noise_pred = unconditional + guidance_scale * (conditional - unconditional)
        else:
            noise_pred = unet(image, t, class_labels=labels).sample
        image = scheduler.step(noise_pred, t, image, generator=generator).prev_sample
    return image.clamp(-1, 1)
