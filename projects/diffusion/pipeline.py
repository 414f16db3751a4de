"""The one sampling loop: a diffusers pipeline for (class-conditional) character UNets with classifier-free guidance.

``CharacterDiffusionPipeline`` registers its parts (``unet``, ``scheduler``) like every diffusers pipeline and
runs the loop ``DDPMPipeline.__call__`` runs (same noise draw, same ``scheduler.step`` calls), plus class labels
and guidance. The Lightning module samples through it, ``export.py`` saves it with ``save_pretrained`` and
copies this file next to it, so stock diffusers loads the directory with
``DiffusionPipeline.from_pretrained(path, custom_pipeline=path)`` and draws the same samples. This file
imports nothing but torch and diffusers for that reason.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    UNet2DModel,
)
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor

SAMPLERS = ("ddpm", "ddim", "dpmsolver++")

# What an inference scheduler takes from the training scheduler: the noise schedule and what the UNet predicts.
# Everything else a sampler does is set below on purpose, never inherited from the training config.
SCHEDULE_KEYS = (
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "trained_betas",
    "prediction_type",
)

# Sampling settings, one place, each with its reason (``make_scheduler``):
SAMPLER_SETTINGS: dict[str, dict] = {
    # Ancestral DDPM: the posterior mean q(x_{t-1} | x_t, x0) is computed FROM the clipped x0, so clipping is
    # consistent by construction. "trailing" starts at t = T-1 (pure noise) for any step count; at 1000 steps
    # every spacing gives 999..0.
    "ddpm": {
        "clip_sample": True,
        "clip_sample_range": 1.0,
        "thresholding": False,
        "variance_type": "fixed_small",
        "timestep_spacing": "trailing",
        "steps_offset": 0,
    },
    # DDIM (Song et al. 2021). clip_sample + use_clipped_model_output=True (passed to step() by the pipeline):
    # the noise estimate is recomputed from the clipped x0, so each step moves along ONE consistent
    # (x0, eps) pair. diffusers' default keeps the unclipped eps next to the clipped x0; every step is then
    # inconsistent and more steps compound it (DDIM-100 worse than DDIM-25, issue 24).
    # "trailing" (Lin et al. 2024, "Common diffusion noise schedules and sample steps are flawed"): the first
    # step is t = T-1, the pure-noise level the sampler starts from; "leading" with steps_offset 0 starts at
    # T - T/n (960 of 1000 for 25 steps), a noise level the N(0, I) start does not match.
    # set_alpha_to_one: the last step lands on alpha_bar = 1, i.e. returns the clean x0 estimate.
    "ddim": {
        "clip_sample": True,
        "clip_sample_range": 1.0,
        "thresholding": False,
        "set_alpha_to_one": True,
        "timestep_spacing": "trailing",
        "steps_offset": 0,
    },
    # DPM-Solver++ (2M) works on the data prediction x0 itself, so bounding x0 is consistent. It has no
    # clip_sample: dynamic thresholding with sample_max_value 1 clamps the per-image threshold to exactly 1,
    # i.e. clips x0 to [-1, 1]; without it x0 = (x_t - sigma eps) / alpha explodes at the first,
    # almost pure-noise steps of this pixel-space model (alpha_T ~ 0.006) and most pixels saturate.
    # "linspace" (diffusers' default) starts at t = T-1; final_sigmas_type "zero" makes the last step return
    # x0; lower_order_final keeps the last steps first-order (stable below 15 steps).
    "dpmsolver++": {
        "algorithm_type": "dpmsolver++",
        "solver_order": 2,
        "solver_type": "midpoint",
        "thresholding": True,
        "dynamic_thresholding_ratio": 0.995,
        "sample_max_value": 1.0,
        "timestep_spacing": "linspace",
        "steps_offset": 0,
        "lower_order_final": True,
        "euler_at_final": False,
        "final_sigmas_type": "zero",
    },
}
SCHEDULER_CLASSES = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler, "dpmsolver++": DPMSolverMultistepScheduler}


def make_scheduler(
    kind: str, train_scheduler_config
) -> DDPMScheduler | DDIMScheduler | DPMSolverMultistepScheduler:
    """A fresh inference scheduler: the training noise schedule (``SCHEDULE_KEYS``) + ``SAMPLER_SETTINGS[kind]``.

    Nothing else is taken from the training config, so a sampler never silently inherits a training-time
    choice (the DDPM training scheduler's ``timestep_spacing="leading"``, say)."""
    if kind not in SAMPLER_SETTINGS:
        raise ValueError(f"unknown sampler '{kind}', expected one of {SAMPLERS}")
    schedule = {key: train_scheduler_config[key] for key in SCHEDULE_KEYS if key in train_scheduler_config}
    return SCHEDULER_CLASSES[kind](**schedule, **SAMPLER_SETTINGS[kind])


def step_kwargs(scheduler, eta: float) -> dict:
    """Per-step arguments: DDIM's ``eta`` (0 deterministic, 1 = DDPM-like noise) and consistent clipping."""
    if isinstance(scheduler, DDIMScheduler):
        return {"eta": eta, "use_clipped_model_output": True}
    return {}


class CharacterDiffusionPipeline(DiffusionPipeline):
    """UNet + scheduler; ``class_labels`` (one per image) for class-conditional UNets, guidance weight ``w``
    mixing conditional and null-label noise predictions as ``eps_u + w (eps_c - eps_u)`` (Ho & Salimans 2022).

    ``null_label`` (the "no class" index, = number of classes), ``guidance_scale`` and ``class_names`` are
    stored in ``model_index.json`` by ``save_pretrained``.
    """

    model_cpu_offload_seq = "unet"

    def __init__(
        self,
        unet: UNet2DModel,
        scheduler,
        null_label: int | None = None,
        guidance_scale: float = 1.0,
        class_names: list[str] | None = None,
    ) -> None:
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)
        self.register_to_config(null_label=null_label, guidance_scale=guidance_scale, class_names=class_names)

    def _check_labels(self, labels: torch.Tensor | None, batch_size: int) -> None:
        num_embeds = self.unet.config.num_class_embeds
        if labels is None:
            if num_embeds is not None:
                raise ValueError("this model is class-conditional: pass one label per sample (class_labels)")
            return
        if num_embeds is None:
            raise ValueError("class_labels given but the UNet is unconditional (num_class_embeds is None)")
        limit = num_embeds - 1 if self.config.null_label is not None else num_embeds
        if len(labels) != batch_size or labels.min() < 0 or labels.max() >= limit:
            shown = labels.tolist()[:10]
            raise ValueError(
                f"class_labels must be {batch_size} class indices in [0, {limit}), got "
                f"{shown}{' ...' if len(labels) > 10 else ''}"
            )

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        class_labels: torch.Tensor | list[int] | None = None,
        num_inference_steps: int = 1000,
        generator: torch.Generator | None = None,
        guidance_scale: float | None = None,
        output_type: str = "pt",
        return_dict: bool = True,
        eta: float = 0.0,
        step_callback: Callable[[int, int], None] | None = None,
    ) -> ImagePipelineOutput | tuple:
        """Draw ``batch_size`` images (``len(class_labels)`` when labels are given).

        ``eta``: DDIM's noise weight (0 deterministic, 1 stochastic like DDPM); other samplers ignore it.
        ``step_callback(i, t)`` runs after every sampler step: the Lightning module checks for SIGTERM there, so
        a pre-empted job stops within one UNet call, not after a whole sampling batch.

        ``output_type``: ``"pt"`` -> ``N x C x H x W`` tensor in [-1, 1] (what the Lightning module uses),
        ``"np"`` -> ``N x H x W x C`` in [0, 1], ``"pil"`` -> PIL images, as ``DDPMPipeline``.
        """
        device = self._execution_device
        if class_labels is not None:
            class_labels = torch.as_tensor(class_labels, device=device, dtype=torch.long)
            batch_size = len(class_labels)
        self._check_labels(class_labels, batch_size)
        scale = self.config.guidance_scale if guidance_scale is None else guidance_scale
        guided = class_labels is not None and scale != 1.0
        if guided and self.config.null_label is None:
            raise ValueError("classifier-free guidance needs null_label (the model's 'no class' index)")
        size = self.unet.config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        shape = (batch_size, self.unet.config.in_channels, *size)
        image = randn_tensor(shape, generator=generator, device=device, dtype=self.unet.dtype)
        self.scheduler.set_timesteps(num_inference_steps)
        for i, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
            if guided:
                null = torch.full_like(class_labels, self.config.null_label)
                both = self.unet(
                    torch.cat([image, image]), t, class_labels=torch.cat([class_labels, null])
                ).sample
                conditional, unconditional = both.chunk(2)
                noise_pred = unconditional + scale * (conditional - unconditional)
            else:
                noise_pred = self.unet(image, t, class_labels=class_labels).sample
            image = self.scheduler.step(
                noise_pred, t, image, generator=generator, **step_kwargs(self.scheduler, eta)
            ).prev_sample
            if step_callback is not None:
                step_callback(i, int(t))
        image = image.clamp(-1, 1)
        if output_type != "pt":
            image = (image / 2 + 0.5).cpu().permute(0, 2, 3, 1).numpy()
            if output_type == "pil":
                image = self.numpy_to_pil(image)
        if not return_dict:
            return (image,)
        return ImagePipelineOutput(images=image)
