"""The one sampling loop: a diffusers pipeline for (class-conditional) character UNets with classifier-free guidance.

``CharacterDiffusionPipeline`` registers its parts (``unet``, ``scheduler``) like every diffusers pipeline and
runs the loop ``DDPMPipeline.__call__`` runs (same noise draw, same ``scheduler.step`` calls), plus class labels
and guidance. The Lightning module samples through it, ``export.py`` saves it with ``save_pretrained`` and
copies this file next to it, so stock diffusers loads the directory with
``DiffusionPipeline.from_pretrained(path, custom_pipeline=path)`` and draws the same samples. This file
imports nothing but torch and diffusers for that reason.
"""

from __future__ import annotations

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


def make_scheduler(
    kind: str, train_scheduler_config
) -> DDPMScheduler | DDIMScheduler | DPMSolverMultistepScheduler:
    """A fresh inference scheduler sharing the training noise schedule (betas, prediction type)."""
    if kind == "ddpm":
        return DDPMScheduler.from_config(train_scheduler_config)
    if kind == "ddim":
        return DDIMScheduler.from_config(train_scheduler_config)
    if kind == "dpmsolver++":
        # Pixel-space model: without thresholding the data prediction (x_t - sigma eps) / alpha explodes at the
        # first steps (alpha_T ~ 0.006) and most pixels saturate; diffusers recommends thresholding here.
        return DPMSolverMultistepScheduler.from_config(
            train_scheduler_config,
            algorithm_type="dpmsolver++",
            solver_order=2,
            thresholding=True,
            sample_max_value=1.0,
        )
    raise ValueError(f"unknown sampler '{kind}', expected one of {SAMPLERS}")


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
    ) -> ImagePipelineOutput | tuple:
        """Draw ``batch_size`` images (``len(class_labels)`` when labels are given).

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
        for t in self.progress_bar(self.scheduler.timesteps):
            if guided:
                null = torch.full_like(class_labels, self.config.null_label)
                both = self.unet(
                    torch.cat([image, image]), t, class_labels=torch.cat([class_labels, null])
                ).sample
                conditional, unconditional = both.chunk(2)
                noise_pred = unconditional + scale * (conditional - unconditional)
            else:
                noise_pred = self.unet(image, t, class_labels=class_labels).sample
            image = self.scheduler.step(noise_pred, t, image, generator=generator).prev_sample
        image = image.clamp(-1, 1)
        if output_type != "pt":
            image = (image / 2 + 0.5).cpu().permute(0, 2, 3, 1).numpy()
            if output_type == "pil":
                image = self.numpy_to_pil(image)
        if not return_dict:
            return (image,)
        return ImagePipelineOutput(images=image)
