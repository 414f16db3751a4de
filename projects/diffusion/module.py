"""DDPM on characters: ``diffusers.UNet2DModel`` + ``DDPMScheduler`` (epsilon prediction, MSE) in Lightning.

Read top to bottom: construction, training step (noise, optional label dropout), EMA, validation (loss, SSIM
of one-step reconstructions, FID / IS / conditional accuracy of generated samples), media, predict, optimiser.
"""

from __future__ import annotations

import csv
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel
from diffusers.training_utils import EMAModel
from PIL import Image as PILImage
from PIL import ImageDraw
from torch import Tensor

from common.errors import InputError
from common.loggers import run_dir
from common.media import Image
from common.metrics.image_quality import (
    ConditionalAccuracy,
    ExtractorFID,
    ExtractorIS,
    InceptionExtractor,
    ReconstructionSSIM,
    metric_names,
)
from projects.diffusion.classifier import classifier_path, ensure_classifier, load_classifier
from projects.diffusion.sampling import SAMPLERS, make_sampler, sample

# A tiny UNet for CPU runs; configs/diffusion/original.yaml holds the original project's large one.
DEFAULT_UNET: dict[str, Any] = {
    "sample_size": 32,
    "in_channels": 1,
    "out_channels": 1,
    "layers_per_block": 1,
    "block_out_channels": [32, 64, 64],
    "down_block_types": ["DownBlock2D", "DownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "UpBlock2D", "UpBlock2D"],
    "norm_num_groups": 8,
}


class DiffusionModule(pl.LightningModule):
    """Denoising diffusion on character images, optionally class-conditional with classifier-free guidance.

    Args:
        unet: ``UNet2DModel`` keyword arguments (``num_class_embeds`` is set from ``num_classes``).
        num_classes: number of character classes for conditioning; ``null`` trains an unconditional model.
            Index ``num_classes`` is the "no label" token used for label dropout and guidance.
        label_dropout: probability of replacing a label with the null label during training.
        guidance_scale: classifier-free guidance weight at sampling (1 = plain conditional).
        num_train_timesteps / beta_schedule: the DDPM noise schedule (epsilon prediction).
        lr / weight_decay / warmup_steps: AdamW with linear warm-up, then constant.
        ema_decay / ema_power: diffusers ``EMAModel`` (with warm-up: decay grows as 1 - (1 + step)^-power up to
            ``ema_decay``); the EMA weights are used for all sampling, validation and export.
        val_sampler / val_steps: fast sampler for validation samples and the media grid.
        ssim_timestep: noise level t at which validation images are noised and reconstructed for SSIM.
        grid_per_class: columns of the label-aligned sample grid (one row per class).
        extractor: ``charclf`` (a small classifier trained on the same data, the default) or ``inception``
            (standard FID network, needs ``inception_weights`` and torch-fidelity).
        classifier_ckpt: the classifier checkpoint; ``null`` = cached under ``classifier_cache_dir``, trained on
            first use if missing.
        predict_sampler / predict_steps / predict_dir: what ``tgm predict`` uses and where it writes PNGs. Not
            saved as hyperparameters: with ``--ckpt_path`` LightningCLI overrides the command line's model
            arguments with the checkpoint's, and these must stay settable at predict time.
        seed: seed of the fixed noise used for validation samples, grids and predictions.
    """

    def __init__(
        self,
        unet: dict[str, Any] | None = None,
        num_classes: int | None = None,
        label_dropout: float = 0.1,
        guidance_scale: float = 2.0,
        num_train_timesteps: int = 1000,
        beta_schedule: str = "linear",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        warmup_steps: int = 100,
        ema_decay: float = 0.999,
        ema_power: float = 2 / 3,
        val_sampler: str = "ddim",
        val_steps: int = 20,
        ssim_timestep: int = 200,
        grid_per_class: int = 8,
        extractor: str = "charclf",
        inception_weights: str | None = None,
        classifier_ckpt: str | None = None,
        classifier_cache_dir: str = "data/generated/diffusion",
        classifier_epochs: int = 4,
        predict_sampler: str = "ddpm",
        predict_steps: int = 1000,
        predict_dir: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["predict_sampler", "predict_steps", "predict_dir"])
        self.predict_sampler, self.predict_steps, self.predict_dir = predict_sampler, predict_steps, predict_dir
        for key, value in (("val_sampler", val_sampler), ("predict_sampler", predict_sampler)):
            if value not in SAMPLERS:
                raise InputError(f"model.init_args.{key} must be one of {SAMPLERS}, got '{value}'")
        if extractor not in ("charclf", "inception"):
            raise InputError(f"model.init_args.extractor must be 'charclf' or 'inception', got '{extractor}'")
        if num_classes is not None and num_classes < 1:
            raise InputError(f"model.init_args.num_classes must be >= 1 or null, got {num_classes}")
        config = {**DEFAULT_UNET, **(unet or {})}
        config["num_class_embeds"] = None if num_classes is None else num_classes + 1  # + the null label
        self.unet = UNet2DModel(**config)
        self.noise_scheduler = DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule,
                                             prediction_type="epsilon", clip_sample=True)
        self.ema = EMAModel(self.unet.parameters(), decay=ema_decay, use_ema_warmup=True, power=ema_power)
        self.num_classes = num_classes
        self.null_label = num_classes  # None when unconditional
        self.class_names: list[str] = [str(i) for i in range(num_classes or 0)]
        self.extractor_net = None  # set in setup; kept out of the module tree (not in the checkpoint)

    # ---------------------------------------------------------------- setup
    def setup(self, stage: str) -> None:
        data = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if data is not None and getattr(data, "class_names", None):
            if self.num_classes is not None and data.num_classes != self.num_classes:
                raise InputError(f"model.init_args.num_classes={self.num_classes} but the data has "
                                 f"{data.num_classes} classes ('{''.join(data.class_names)}'); set them equal")
            self.class_names = list(data.class_names)
        if stage in ("fit", "validate", "test") and data is not None:
            self._build_metrics(data)

    def _build_metrics(self, data) -> None:
        hp = self.hparams
        if hp.extractor == "inception":
            extractor = InceptionExtractor(hp.inception_weights or "")
        else:
            path = hp.classifier_ckpt or classifier_path(hp.classifier_cache_dir, data.data_dir, data.class_names,
                                                         data.image_size)
            if self.trainer.is_global_zero and not Path(path).is_file():
                ensure_classifier(path, data.train_set, data.val_set, data.class_names, hp.classifier_epochs)
            self.trainer.strategy.barrier()
            extractor = load_classifier(path, data.class_names)
        object.__setattr__(self, "extractor_net", extractor)  # not a submodule: stays out of the checkpoint
        self.metric_keys = metric_names(extractor)
        self.val_fid = ExtractorFID(extractor)
        self.val_is = ExtractorIS(extractor)
        self.val_ssim = ReconstructionSSIM()
        self.val_acc = ConditionalAccuracy(extractor) if self.num_classes is not None else None

    # ---------------------------------------------------------------- training
    def _check_labels(self, labels: Tensor) -> None:
        if self.num_classes is not None and (labels.min() < 0 or labels.max() >= self.num_classes):
            bad = labels[(labels < 0) | (labels >= self.num_classes)][0]
            raise InputError(f"label {int(bad)} is out of range for model.init_args.num_classes={self.num_classes}")

    def _class_labels(self, labels: Tensor) -> Tensor | None:
        return labels if self.num_classes is not None else None

    def diffusion_loss(self, images: Tensor, labels: Tensor) -> Tensor:
        """The DDPM objective: noise x0 to a random t, predict the noise, MSE. Labels are dropped to the null
        label with probability ``label_dropout`` so the same net also learns the unconditional model."""
        self._check_labels(labels)
        noise = torch.randn_like(images)
        timesteps = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (len(images),), device=images.device)
        noisy = self.noise_scheduler.add_noise(images, noise, timesteps)
        class_labels = self._class_labels(labels)
        if class_labels is not None and self.hparams.label_dropout > 0:
            drop = torch.rand(len(labels), device=images.device) < self.hparams.label_dropout
            class_labels = torch.where(drop, torch.full_like(labels, self.null_label), labels)
        return F.mse_loss(self.unet(noisy, timesteps, class_labels=class_labels).sample, noise)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, labels = batch
        loss = self.diffusion_loss(images, labels)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.ema.step(self.unet.parameters())

    def on_fit_start(self) -> None:
        self.ema.to(self.device)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["ema"] = self.ema.state_dict()
        checkpoint["class_names"] = list(self.class_names)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "ema" not in checkpoint:
            raise KeyError("checkpoint has no 'ema' entry: it was not written by DiffusionModule")
        self.ema.load_state_dict(checkpoint["ema"])
        self.class_names = list(checkpoint.get("class_names", self.class_names))

    @contextmanager
    def ema_weights(self):
        """Swap the EMA weights into the UNet for the duration (exactly restored afterwards)."""
        self.ema.to(self.device)
        self.ema.store(self.unet.parameters())
        self.ema.copy_to(self.unet.parameters())
        try:
            yield self.unet
        finally:
            self.ema.restore(self.unet.parameters())

    # ---------------------------------------------------------------- sampling
    def generate(self, labels: Tensor | None, num_samples: int, sampler: str, steps: int,
                 generator: torch.Generator | None = None) -> Tensor:
        """EMA samples in [-1, 1]; ``labels`` (class-conditional models) picks the character of each."""
        if self.num_classes is not None and labels is None:
            raise InputError("this model is class-conditional: pass one label per sample")
        if labels is not None:
            self._check_labels(labels)
        with self.ema_weights() as unet:
            return sample(unet, make_sampler(sampler, self.noise_scheduler), num_samples, steps, generator,
                          labels=self._class_labels(labels) if labels is not None else None,
                          null_label=self.null_label, guidance_scale=self.hparams.guidance_scale)

    def _generator(self, offset: int) -> torch.Generator:
        rank = self.trainer.global_rank if self._trainer is not None else 0
        world = self.trainer.world_size if self._trainer is not None else 1
        return torch.Generator(device=self.device).manual_seed(self.hparams.seed + offset * world + rank)

    # ---------------------------------------------------------------- validation
    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        images, labels = batch
        self._check_labels(labels)
        generator = self._generator(batch_idx)
        class_labels = self._class_labels(labels)
        with self.ema_weights() as unet:
            # 1. the training objective on held-out images (fixed noise and timesteps per batch)
            noise = torch.randn(images.shape, generator=generator, device=self.device)
            steps = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (len(images),),
                                  generator=generator, device=self.device)
            noisy = self.noise_scheduler.add_noise(images, noise, steps)
            loss = F.mse_loss(unet(noisy, steps, class_labels=class_labels).sample, noise)
            self.log("val/loss", loss, prog_bar=True, sync_dist=True)
            # 2. SSIM protocol: noise x0 to x_t at t = ssim_timestep, predict eps once, reconstruct
            #    x0_hat = (x_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t), compare with x0
            t = torch.full((len(images),), self.hparams.ssim_timestep, device=self.device, dtype=torch.long)
            noise = torch.randn(images.shape, generator=generator, device=self.device)
            noisy = self.noise_scheduler.add_noise(images, noise, t)
            abar = self.noise_scheduler.alphas_cumprod.to(self.device)[self.hparams.ssim_timestep]
            eps = unet(noisy, t, class_labels=class_labels).sample
            self.val_ssim.update((noisy - (1 - abar).sqrt() * eps) / abar.sqrt(), images)
        # 3. samples for the same labels as the real batch: FID / IS / conditional accuracy
        fake = self.generate(labels if self.num_classes is not None else None, len(images),
                             self.hparams.val_sampler, self.hparams.val_steps, generator)
        self.val_fid.update(images, real=True)
        self.val_fid.update(fake, real=False)
        self.val_is.update(fake)
        if self.val_acc is not None:
            self.val_acc.update(fake, labels)

    def on_validation_epoch_end(self) -> None:
        with torch.random.fork_rng(devices=[]):  # IS shuffles its splits with the global RNG; keep training's intact
            values = {
                self.metric_keys["fid"]: self.val_fid.compute(),
                self.metric_keys["is"]: self.val_is.compute()[0],
                f"val/ssim_x0_t{self.hparams.ssim_timestep}": self.val_ssim.compute(),
            }
            if self.val_acc is not None:
                values[self.metric_keys["cond_acc"]] = self.val_acc.compute()
        for metric in (self.val_fid, self.val_is, self.val_ssim, self.val_acc):
            if metric is not None:
                metric.reset()
        self.log_dict({k: v.float() for k, v in values.items()}, prog_bar=True)
        if self.trainer.is_global_zero:
            self._write_csv(values)

    def _write_csv(self, values: dict[str, Tensor]) -> None:
        """``evaluation_metrics_epoch_<N>.csv`` in the run directory, as the original project kept them
        (``evaluation_metrics_before_training.csv`` for the sanity-check pass)."""
        name = ("evaluation_metrics_before_training.csv" if self.trainer.sanity_checking
                else f"evaluation_metrics_epoch_{self.current_epoch}.csv")
        loss = self.trainer.callback_metrics.get("val/loss")
        row = {"epoch": self.current_epoch, "global_step": self.global_step,
               **({"val/loss": float(loss)} if loss is not None else {}),
               **{k: float(v) for k, v in values.items()}}
        path = run_dir(self.trainer) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(row))
            writer.writeheader()
            writer.writerow(row)

    # ---------------------------------------------------------------- media
    def sample_grid(self, per_row: int | None = None, sampler: str | None = None, steps: int | None = None) -> np.ndarray:
        """Label-aligned grid: row k holds ``per_row`` samples of class k, with the class drawn on the left.
        Same noise every call, so grids from different epochs are comparable. uint8 ``H x W``."""
        per_row = per_row or self.hparams.grid_per_class
        rows = self.num_classes or 1
        labels = (torch.arange(rows, device=self.device).repeat_interleave(per_row)
                  if self.num_classes is not None else None)
        generator = torch.Generator(device=self.device).manual_seed(self.hparams.seed + 10_000)
        images = self.generate(labels, rows * per_row, sampler or self.hparams.val_sampler,
                               steps or self.hparams.val_steps, generator)
        pixels = ((images[:, 0].float().cpu().numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
        size = pixels.shape[-1]
        tiles = pixels.reshape(rows, per_row, size, size).transpose(0, 2, 1, 3).reshape(rows * size, per_row * size)
        if self.num_classes is None:
            return tiles
        margin = PILImage.new("L", (size, rows * size), 40)
        draw = ImageDraw.Draw(margin)
        for row, name in enumerate(self.class_names):
            draw.text((size // 3, row * size + size // 4), name, fill=255)
        return np.concatenate([np.asarray(margin), tiles], axis=1)

    def media_samples(self) -> dict[str, Image]:
        caption = (f"one row per class ({''.join(self.class_names)}), {self.hparams.val_sampler} "
                   f"{self.hparams.val_steps} steps, guidance {self.hparams.guidance_scale}, EMA weights")
        return {"samples_by_label": Image(self.sample_grid(), caption=caption if self.num_classes else None)}

    # ---------------------------------------------------------------- predict
    def predict_step(self, batch: tuple[Tensor], batch_idx: int) -> Tensor:
        """Generate one image per label in the batch and write ``<predict_dir>/<class>_<n>.png``."""
        (labels,) = batch
        generator = self._generator(batch_idx)
        images = self.generate(labels if self.num_classes is not None else None, len(labels),
                               self.predict_sampler, self.predict_steps, generator)
        out_dir = Path(self.predict_dir or run_dir(self.trainer) / "predictions")
        out_dir.mkdir(parents=True, exist_ok=True)
        pixels = ((images[:, 0].float().cpu().numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
        for i, (label, picture) in enumerate(zip(labels.tolist(), pixels, strict=True)):
            name = self.class_names[label] if self.num_classes is not None else "sample"
            code = f"{ord(name):03d}" if len(name) == 1 else name  # 'a' and 'A' differ on case-blind disks
            PILImage.fromarray(picture).save(out_dir / f"{code}_{batch_idx:04d}_{i:03d}.png")
        return images

    # ---------------------------------------------------------------- optimiser
    def configure_optimizers(self):
        hp = self.hparams
        optimizer = torch.optim.AdamW(self.unet.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        warmup = max(1, hp.warmup_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
