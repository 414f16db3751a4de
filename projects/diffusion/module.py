"""DDPM on characters in Lightning: the UNet of ``model.py`` + ``DDPMScheduler`` (epsilon prediction, MSE).

Read top to bottom: settings, construction, set-up (the judge), training step (noise, optional label dropout),
EMA, sampling (through ``pipeline.CharacterDiffusionPipeline``, the one sampling loop), validation (loss, SSIM of
one-step reconstructions, FID / IS / conditional accuracy of generated samples, the judge's accuracy), the final
evaluation with enough samples, media, predict, optimiser. ``JudgeModule`` at the end trains the judge with
``tgm fit`` (optional: the data module trains and caches it by itself).
"""

from __future__ import annotations

import csv
import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from diffusers.training_utils import EMAModel
from lightning.pytorch.utilities.exceptions import SIGTERMException
from PIL import Image as PILImage
from PIL import ImageDraw
from torch import Tensor
from torchmetrics import MeanMetric
from typing_extensions import override

from common.errors import InputError, MissingInputError
from common.loggers import run_dir
from common.media import Image
from common.metrics.image_quality import (
    ConditionalAccuracy,
    ExtractorFID,
    ExtractorIS,
    ImageStatistics,
    InceptionExtractor,
    PixelFeatures,
    ReconstructionSSIM,
    metric_names,
)
from projects.diffusion.data import as_dataclass
from projects.diffusion.judge import JudgeConfig, JudgeReport, augment, load_judge, unreliable_warning
from projects.diffusion.model import CharClassifier, build_unet
from projects.diffusion.pipeline import SAMPLERS, CharacterDiffusionPipeline, make_scheduler


@dataclass
class Optimisation:
    """AdamW with linear warm-up, then ``schedule``: ``constant`` or ``cosine`` (decay to 0 at the last training
    step, diffusers' ``train_unconditional`` recipe); diffusers ``EMAModel`` with warm-up (decay grows as
    ``1 - (1 + step)^-power`` up to ``ema_decay``). The EMA weights are used for all sampling and export."""

    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 100
    schedule: str = "constant"
    ema_decay: float = 0.999
    ema_power: float = 2 / 3


@dataclass
class Sampling:
    """A sampler (``ddpm``, ``ddim``, ``dpmsolver++``; settings in ``pipeline.SAMPLER_SETTINGS``), its number of
    steps and DDIM's ``eta`` (0 deterministic, 1 stochastic; ignored by the others)."""

    sampler: str = "ddim"
    steps: int = 25
    eta: float = 0.0


@dataclass
class FinalEvaluation:
    """After ``fit``: FID / IS / conditional accuracy of ``num_samples`` generated images against every
    held-out image (the data module's test loader), printed with the counts and written to
    ``evaluation_metrics_final.csv``. ``num_samples: 0`` skips it."""

    num_samples: int = 1000
    sampler: str = "ddim"
    steps: int = 25
    batch_size: int = 250
    eta: float = 0.0


class DiffusionModule(pl.LightningModule):
    """Denoising diffusion on character images, optionally class-conditional with classifier-free guidance.

    Args:
        unet: ``UNet2DModel`` keyword arguments (``num_class_embeds`` is set from ``num_classes``).
        num_classes / class_names: linked from the data module (``linked_from_data``). ``num_classes: null``
            (Python callers) or ``conditional: false`` trains an unconditional model. Index ``num_classes`` is
            the "no label" token used for label dropout and guidance.
        label_dropout: probability of replacing a label with the null label during training.
        guidance_scale: classifier-free guidance weight at sampling (1 = plain conditional).
        num_train_timesteps / beta_schedule: the DDPM noise schedule (``linear``, ``squaredcos_cap_v2`` = cosine).
        prediction_type: what the UNet predicts: ``epsilon`` (the noise) or ``v_prediction``
            (v = sqrt(abar) eps - sqrt(1 - abar) x0, Salimans & Ho 2022: bounded x0 error at high noise).
        optim: optimiser, warm-up and EMA settings.
        validation: sampler for validation samples and the media grid.
        final_eval: the end-of-training evaluation (enough samples for FID to mean something).
        ssim_timestep: noise level t at which validation images are noised and reconstructed for SSIM.
        grid_per_class: columns of the label-aligned sample grid (one row per class).
        extractor: ``charclf`` (the judge the data module trains on the same data, the default) or
            ``inception`` (standard FID network, needs ``inception_weights`` and torch-fidelity).
        judge_path: the judge checkpoint, linked from the data module.
        predict: what ``tgm predict`` samples with. Not saved as a hyperparameter: with ``--ckpt_path``
            LightningCLI overrides the command line's model arguments with the checkpoint's, and it must stay
            settable at predict time. ``projects.diffusion.writer.DiffusionImageWriter`` writes the PNGs.
        seed: seed of the fixed noise used for validation samples, grids and predictions.
    """

    linked_from_data: ClassVar[dict[str, str]] = {
        "num_classes": "num_classes",
        "class_names": "class_names",
        "judge_path": "judge_path",
    }

    def __init__(
        self,
        unet: dict[str, Any] | None = None,
        num_classes: int | None = None,
        class_names: list[str] | None = None,
        conditional: bool = True,
        label_dropout: float = 0.1,
        guidance_scale: float = 2.0,
        num_train_timesteps: int = 1000,
        beta_schedule: str = "linear",
        prediction_type: str = "epsilon",
        optim: Optimisation | None = None,
        validation: Sampling | None = None,
        final_eval: FinalEvaluation | None = None,
        ssim_timestep: int = 200,
        grid_per_class: int = 8,
        extractor: str = "charclf",
        inception_weights: str | None = None,
        judge_path: str | None = None,
        predict: Sampling | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        # Plain dicts in the hyperparameters (readable hparams.yaml, weights-only checkpoints), dataclasses here.
        optim = asdict(as_dataclass(Optimisation, optim))
        validation = asdict(as_dataclass(Sampling, validation))
        final_eval = asdict(as_dataclass(FinalEvaluation, final_eval))
        if not conditional:
            num_classes, class_names = None, None
        self.save_hyperparameters(ignore=["predict"])
        self.optim = Optimisation(**optim)
        self.validation = Sampling(**validation)
        self.final_eval = FinalEvaluation(**final_eval)
        self.predict = as_dataclass(Sampling, predict) if predict is not None else Sampling("ddpm", 1000)
        for key, value in (
            ("validation.sampler", self.validation.sampler),
            ("final_eval.sampler", self.final_eval.sampler),
            ("predict.sampler", self.predict.sampler),
        ):
            if value not in SAMPLERS:
                raise InputError(f"model.init_args.{key} must be one of {SAMPLERS}, got '{value}'")
        if extractor not in ("charclf", "inception"):
            raise InputError(f"model.init_args.extractor must be 'charclf' or 'inception', got '{extractor}'")
        if extractor == "inception" and not (inception_weights and Path(inception_weights).is_file()):
            # before any preparation (the judge, the data): one line, exit 2
            raise MissingInputError(
                f"model.init_args.inception_weights: Inception weights '{inception_weights}' not found; use "
                "extractor: charclf or put pt_inception-2015-12-05-6726825d.pth there"
            )
        if num_classes is not None and num_classes < 1:
            raise InputError(f"model.init_args.num_classes must be >= 1 or null, got {num_classes}")
        if prediction_type not in ("epsilon", "v_prediction"):
            raise InputError(
                f"model.init_args.prediction_type must be 'epsilon' or 'v_prediction', got '{prediction_type}'"
            )
        if self.optim.schedule not in ("constant", "cosine"):
            raise InputError(
                f"model.init_args.optim.schedule must be 'constant' or 'cosine', got '{self.optim.schedule}'"
            )
        self.unet = build_unet(unet, num_classes)
        self.noise_scheduler = DDPMScheduler(
            num_train_timesteps=num_train_timesteps,
            beta_schedule=beta_schedule,
            prediction_type=prediction_type,
        )
        self.ema = EMAModel(
            self.unet.parameters(),
            decay=self.optim.ema_decay,
            use_ema_warmup=True,
            power=self.optim.ema_power,
        )
        self.num_classes = num_classes
        self.null_label = num_classes  # None when unconditional
        self.class_names: list[str] = list(class_names or [str(i) for i in range(num_classes or 0)])
        if num_classes is not None and len(self.class_names) != num_classes:
            raise InputError(
                f"model.init_args.num_classes={num_classes} but class_names has {len(self.class_names)} names"
            )
        self.extractor_net = None  # set in setup; kept out of the module tree (not in the checkpoint)
        self.judge_report: JudgeReport | None = None
        self.checkpoint_epoch: int | None = None  # of a loaded checkpoint: `tgm validate` names files by it

    # ---------------------------------------------------------------- setup: the judge (prepared by the data)
    @override
    def setup(self, stage: str) -> None:
        if stage in ("fit", "validate", "test"):
            self._build_metrics()

    def _build_metrics(self) -> None:
        hp = self.hparams
        if hp.extractor == "inception":
            extractor = InceptionExtractor(hp.inception_weights or "")
        else:
            if hp.judge_path is None:
                raise InputError(
                    "model.init_args.judge_path is not set: the data module prepares the judge and the CLI links "
                    "its path (data.init_args.prepare_judge: true), or give data.init_args.judge_ckpt"
                )
            extractor, self.judge_report = load_judge(
                hp.judge_path, self.class_names if self.num_classes else None
            )
        self.use_extractor(extractor, self.judge_report)

    def use_extractor(self, extractor, report: JudgeReport | None = None) -> None:
        """Judge samples with ``extractor`` (the benchmark calls this directly, without a trainer)."""
        object.__setattr__(self, "extractor_net", extractor)  # not a submodule: stays out of the checkpoint
        self.judge_report = report
        self.metric_keys = metric_names(extractor)
        self.val_fid = ExtractorFID(extractor)
        self.val_is = ExtractorIS(extractor)
        self.val_ssim = ReconstructionSSIM()
        self.val_acc = ConditionalAccuracy(extractor) if self.num_classes is not None else None
        # the second opinion: FID on pixels (no learned blind spots) and what a person sees at a glance
        self.pixels = PixelFeatures()
        self.val_fid_pixels = ExtractorFID(self.pixels)
        self.val_stats_fake, self.val_stats_real = ImageStatistics(), ImageStatistics()
        # x0 error per noise level: where the model has (not) learned to denoise
        self.val_x0_rmse = torch.nn.ModuleDict({str(t): MeanMetric() for t in self.x0_timesteps()})
        self.fid_floors: dict[str, float] | None = None  # real vs real at the validation count, once per run

    @property
    def judge_reliable(self) -> bool:
        report = self.judge_report
        return report is None or report.val_acc >= report.min_accuracy

    # ---------------------------------------------------------------- training
    def _check_labels(self, labels: Tensor) -> None:
        if self.num_classes is not None and (labels.min() < 0 or labels.max() >= self.num_classes):
            bad = labels[(labels < 0) | (labels >= self.num_classes)][0]
            raise InputError(
                f"label {int(bad)} is out of range for model.init_args.num_classes={self.num_classes}"
            )

    def _class_labels(self, labels: Tensor) -> Tensor | None:
        return labels if self.num_classes is not None else None

    def target(self, images: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """What the UNet is trained to output: the noise, or v."""
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            return self.noise_scheduler.get_velocity(images, noise, timesteps)
        return noise

    def diffusion_loss(self, images: Tensor, labels: Tensor) -> Tensor:
        """The DDPM objective: noise x0 to a random t, predict the noise (or v), MSE. Labels are dropped to the
        null label with probability ``label_dropout`` so the same net also learns the unconditional model."""
        self._check_labels(labels)
        noise = torch.randn_like(images)
        timesteps = torch.randint(
            0, self.noise_scheduler.config.num_train_timesteps, (len(images),), device=images.device
        )
        noisy = self.noise_scheduler.add_noise(images, noise, timesteps)
        class_labels = self._class_labels(labels)
        if class_labels is not None and self.hparams.label_dropout > 0:
            drop = torch.rand(len(labels), device=images.device) < self.hparams.label_dropout
            class_labels = torch.where(drop, torch.full_like(labels, self.null_label), labels)
        prediction = self.unet(noisy, timesteps, class_labels=class_labels).sample
        return F.mse_loss(prediction, self.target(images, noise, timesteps))

    @override
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, labels = batch
        loss = self.diffusion_loss(images, labels)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    @override
    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.ema.step(self.unet.parameters())

    @override
    def on_train_start(self) -> None:
        self.checkpoint_epoch = None  # fit names files by its own epochs, also when it resumed

    @override
    def on_fit_start(self) -> None:
        self.ema.to(self.device)

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["ema"] = self.ema.state_dict()
        checkpoint["class_names"] = list(self.class_names)

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "ema" not in checkpoint:
            raise KeyError("checkpoint has no 'ema' entry: it was not written by DiffusionModule")
        self.ema.load_state_dict(checkpoint["ema"])
        self.class_names = list(checkpoint.get("class_names", self.class_names))
        self.checkpoint_epoch = checkpoint.get("epoch")

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

    # ---------------------------------------------------------------- sampling: the pipeline's one loop
    def pipeline(self, sampler: str, unet=None) -> CharacterDiffusionPipeline:
        """The diffusers pipeline over ``unet`` (default: the live UNet) with a fresh ``sampler`` scheduler."""
        pipe = CharacterDiffusionPipeline(
            unet=unet if unet is not None else self.unet,
            scheduler=make_scheduler(sampler, self.noise_scheduler.config),
            null_label=self.null_label,
            guidance_scale=self.hparams.guidance_scale,
            class_names=list(self.class_names) if self.num_classes is not None else None,
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def generate(
        self,
        labels: Tensor | None,
        num_samples: int,
        sampler: str,
        steps: int,
        generator: torch.Generator | None = None,
        eta: float = 0.0,
    ) -> Tensor:
        """EMA samples in [-1, 1]; ``labels`` (class-conditional models) picks the character of each.

        Between sampler steps a SIGTERM the trainer received stops sampling (``SIGTERMException``, which
        Lightning and ``LatestCheckpoint`` turn into a saved ``last.ckpt`` and exit 143): a validation batch of
        the original UNet takes many minutes on a CPU, longer than SLURM's 90 s signal window."""
        if self.num_classes is not None and labels is None:
            raise InputError("this model is class-conditional: pass one label per sample")
        if labels is not None:
            self._check_labels(labels)
        with self.ema_weights() as unet:
            pipe = self.pipeline(sampler, unet)
            class_labels = self._class_labels(labels) if labels is not None else None
            return pipe(
                num_samples, class_labels, steps, generator, eta=eta, step_callback=self._stop_on_sigterm
            ).images

    def _stop_on_sigterm(self, step: int, timestep: int) -> None:
        if self._trainer is not None and getattr(self._trainer, "received_sigterm", False):
            raise SIGTERMException

    def _generator(self, offset: int) -> torch.Generator:
        rank = self.trainer.global_rank if self._trainer is not None else 0
        world = self.trainer.world_size if self._trainer is not None else 1
        return torch.Generator(device=self.device).manual_seed(self.hparams.seed + offset * world + rank)

    # ---------------------------------------------------------------- validation
    @override
    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        images, labels = batch
        self._check_labels(labels)
        generator = self._generator(batch_idx)
        class_labels = self._class_labels(labels)
        with self.ema_weights() as unet:
            # 1. the training objective on held-out images (fixed noise and timesteps per batch)
            noise = torch.randn(images.shape, generator=generator, device=self.device)
            steps = torch.randint(
                0,
                self.noise_scheduler.config.num_train_timesteps,
                (len(images),),
                generator=generator,
                device=self.device,
            )
            noisy = self.noise_scheduler.add_noise(images, noise, steps)
            loss = F.mse_loss(
                unet(noisy, steps, class_labels=class_labels).sample, self.target(images, noise, steps)
            )
            self.log("val/loss", loss, prog_bar=True, sync_dist=True)
            # 2. SSIM protocol: noise x0 to x_t at t = ssim_timestep, predict once, reconstruct x0_hat
            #    (= (x_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t) for epsilon), compare with x0
            t = torch.full((len(images),), self.hparams.ssim_timestep, device=self.device, dtype=torch.long)
            noise = torch.randn(images.shape, generator=generator, device=self.device)
            noisy = self.noise_scheduler.add_noise(images, noise, t)
            self.val_ssim.update(self.x0_estimate(unet, noisy, t, class_labels), images)
            # 3. x0 error per noise level (unclipped x0 estimate, RMSE in [-1, 1] units): the learning curve
            #    of each part of the schedule; samplers lean on clipping where it is large
            for level, metric in self.val_x0_rmse.items():
                t = torch.full((len(images),), int(level), device=self.device, dtype=torch.long)
                noise = torch.randn(images.shape, generator=generator, device=self.device)
                x0 = self.x0_estimate(unet, self.noise_scheduler.add_noise(images, noise, t), t, class_labels)
                metric.update(((x0 - images) ** 2).mean(dim=(1, 2, 3)).sqrt())
        # 4. samples for the same labels as the real batch: FID (judge and pixels) / IS / accuracy / statistics
        fake = self.generate(
            labels if self.num_classes is not None else None,
            len(images),
            self.validation.sampler,
            self.validation.steps,
            generator,
            self.validation.eta,
        )
        for fid in (self.val_fid, self.val_fid_pixels):
            fid.update(images, real=True)
            fid.update(fake, real=False)
        self.val_stats_real.update(images)
        self.val_stats_fake.update(fake)
        self.val_is.update(fake)
        if self.val_acc is not None:
            self.val_acc.update(fake, labels)

    def x0_timesteps(self) -> list[int]:
        """Noise levels of the x0-error curve: 10 %, 30 %, ..., 90 % of the schedule and its last step."""
        steps = self.noise_scheduler.config.num_train_timesteps
        return [round(f * steps) for f in (0.1, 0.3, 0.5, 0.7, 0.9)] + [steps - 1]

    def x0_estimate(self, unet, noisy: Tensor, t: Tensor, class_labels: Tensor | None) -> Tensor:
        """The UNet's x0, unclipped: (x_t - sqrt(1 - abar) eps) / sqrt(abar), or sqrt(abar) x_t - sqrt(1 - abar) v."""
        abar = self.noise_scheduler.alphas_cumprod.to(self.device)[t].view(-1, 1, 1, 1)
        output = unet(noisy, t, class_labels=class_labels).sample
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            return abar.sqrt() * noisy - (1 - abar).sqrt() * output
        return (noisy - (1 - abar).sqrt() * output) / abar.sqrt()

    def real_vs_real_floors(self, real: Tensor, other_real: Tensor) -> dict[str, float]:
        """FID of real images against as many other real images in both feature spaces: the best a generator
        can score at this sample count (FID's bias grows as the count shrinks)."""
        floors = {}
        for extractor in (self.extractor_net, self.pixels):
            fid = ExtractorFID(extractor).to(self.device)
            for start in range(0, len(real), 500):
                fid.update(real[start : start + 500].to(self.device), real=True)
            for start in range(0, len(other_real), 500):
                fid.update(other_real[start : start + 500].to(self.device), real=False)
            floors[f"fid_floor_{extractor.name}"] = float(fid.compute())
        return floors

    @override
    def on_validation_start(self) -> None:
        """The real-vs-real FID floors at the validation sample count, once per run (a few hundred images
        through the judge; needs the data module's ``floor_images``)."""
        datamodule = getattr(self.trainer, "datamodule", None)
        if self.fid_floors is not None or datamodule is None or not hasattr(datamodule, "floor_images"):
            return
        real, other = datamodule.floor_images(len(datamodule.val_set))
        self.fid_floors = self.real_vs_real_floors(real, other)

    @override
    def on_validation_epoch_end(self) -> None:
        with torch.random.fork_rng(
            devices=[]
        ):  # IS shuffles its splits with the global RNG; keep training's intact
            fake_stats, real_stats = self.val_stats_fake.compute(), self.val_stats_real.compute()
            values = {
                self.metric_keys["fid"]: self.val_fid.compute(),
                "val/fid_pixels": self.val_fid_pixels.compute(),
                self.metric_keys["is"]: self.val_is.compute()[0],
                f"val/ssim_x0_t{self.hparams.ssim_timestep}": self.val_ssim.compute(),
                "val/background": fake_stats["background"],
                "val/background_real": real_stats["background"],
                "val/saturation": fake_stats["saturation"],
                "val/saturation_real": real_stats["saturation"],
                **{f"val/x0_rmse_t{t}": m.compute() for t, m in self.val_x0_rmse.items()},
            }
            if self.val_acc is not None:
                values[self.metric_keys["cond_acc"]] = self.val_acc.compute()
        for metric in (
            self.val_fid,
            self.val_fid_pixels,
            self.val_is,
            self.val_ssim,
            self.val_acc,
            self.val_stats_fake,
            self.val_stats_real,
            *self.val_x0_rmse.values(),
        ):
            if metric is not None:
                metric.reset()
        for key, value in (self.fid_floors or {}).items():
            values[f"val/{key}"] = torch.tensor(value)
        if self.judge_report is not None:
            values["val/judge_acc"] = torch.tensor(self.judge_report.val_acc)
        self.log_dict({k: v.float() for k, v in values.items()}, prog_bar=True)
        if self.trainer.is_global_zero:
            if not self.judge_reliable:
                message = unreliable_warning(self.judge_report.val_acc, self.judge_report.min_accuracy)
                print(f"[diffusion] epoch {self.current_epoch}: {message}", flush=True)
            self._write_csv(values, self._epoch_name())

    def _epoch_name(self) -> str:
        """``before_training`` for the sanity check (``at_resume`` when fit resumed), else ``epoch_<N>``: the training epoch, or under
        ``tgm validate`` the epoch of the checkpoint being validated."""
        if self.trainer.sanity_checking:
            # a resumed run's sanity check scores the resumed model: never overwrite the untrained one's file
            return "before_training" if self.trainer.ckpt_path is None else "at_resume"
        epoch = self.current_epoch
        if self.trainer.state.fn != "fit" and self.checkpoint_epoch is not None:
            epoch = self.checkpoint_epoch
        return f"epoch_{epoch}"

    def _write_csv(self, values: dict[str, Tensor | float], name: str) -> None:
        """``evaluation_metrics_<name>.csv`` in the run directory, as the original project kept them; the
        ``judge_reliable`` column says whether FID / IS / accuracy can be trusted."""
        loss = self.trainer.callback_metrics.get("val/loss")
        row = {
            "epoch": self.current_epoch if self.checkpoint_epoch is None else self.checkpoint_epoch,
            "global_step": self.global_step,
            **({"val/loss": float(loss)} if loss is not None and name != "final" else {}),
            **{k: float(v) for k, v in values.items()},
            "judge_reliable": self.judge_reliable,
        }
        path = run_dir(self.trainer) / f"evaluation_metrics_{name}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(row))
            writer.writeheader()
            writer.writerow(row)

    # ---------------------------------------------------------------- final evaluation
    @torch.no_grad()
    def evaluate_samples(
        self,
        reference: Tensor,
        labels: Tensor,
        settings: FinalEvaluation,
        floor_images: Tensor | None = None,
    ) -> dict[str, float]:
        """FID (judge and pixels) / IS / conditional accuracy / background and saturation of
        ``settings.num_samples`` samples (labels cycled from ``labels``) against ``reference`` images, with fixed
        noise; with ``floor_images`` (other real images) also the real-vs-real floors at the same count and the
        real images' statistics. Works without a trainer (the benchmark uses it)."""
        extractor = self.extractor_net
        fid, inception = ExtractorFID(extractor).to(self.device), ExtractorIS(extractor).to(self.device)
        fid_pixels = ExtractorFID(PixelFeatures()).to(self.device)
        stats, real_stats = ImageStatistics().to(self.device), ImageStatistics().to(self.device)
        accuracy = ConditionalAccuracy(extractor).to(self.device) if self.num_classes is not None else None
        for start in range(0, len(reference), settings.batch_size):
            chunk = reference[start : start + settings.batch_size].to(self.device)
            fid.update(chunk, real=True)
            fid_pixels.update(chunk, real=True)
            real_stats.update(chunk)
        wanted = labels.repeat(-(-settings.num_samples // len(labels)))[: settings.num_samples]
        for start in range(0, settings.num_samples, settings.batch_size):
            chunk = wanted[start : start + settings.batch_size].to(self.device)
            generator = torch.Generator(device=self.device).manual_seed(self.hparams.seed + 20_000 + start)
            images = self.generate(
                chunk if self.num_classes is not None else None,
                len(chunk),
                settings.sampler,
                settings.steps,
                generator,
                settings.eta,
            )
            fid.update(images, real=False)
            fid_pixels.update(images, real=False)
            stats.update(images)
            inception.update(images)
            if accuracy is not None:
                accuracy.update(images, chunk)
        with torch.random.fork_rng(devices=[]):
            fake, real = stats.compute(), real_stats.compute()
            result = {
                self.metric_keys["fid"]: float(fid.compute()),
                "val/fid_pixels": float(fid_pixels.compute()),
                self.metric_keys["is"]: float(inception.compute()[0]),
                "val/background": float(fake["background"]),
                "val/background_real": float(real["background"]),
                "val/saturation": float(fake["saturation"]),
                "val/saturation_real": float(real["saturation"]),
            }
        if accuracy is not None:
            result[self.metric_keys["cond_acc"]] = float(accuracy.compute())
        if floor_images is not None:
            pick = torch.randperm(len(floor_images), generator=torch.Generator().manual_seed(0))
            other = floor_images[pick[: settings.num_samples]]
            result.update({f"val/{k}": v for k, v in self.real_vs_real_floors(reference, other).items()})
        return result

    @override
    def on_fit_end(self) -> None:
        settings = self.final_eval
        if settings.num_samples <= 0 or not self.trainer.is_global_zero or self.extractor_net is None:
            return
        datamodule = self.trainer.datamodule
        if datamodule is None:
            return
        reference, labels = (torch.cat(parts) for parts in zip(*datamodule.test_dataloader(), strict=True))
        floor_images = (
            datamodule.floor_images(settings.num_samples)[1] if hasattr(datamodule, "floor_images") else None
        )
        values = {
            k.replace("val/", "final/"): v
            for k, v in self.evaluate_samples(reference, labels, settings, floor_images).items()
        }
        if self.judge_report is not None:
            values["final/judge_acc"] = self.judge_report.val_acc
            values["final/fid_floor"] = self.judge_report.fid_floor
        for logger in self.trainer.loggers:
            logger.log_metrics(values, step=self.global_step)
        self._write_csv(values, "final")
        counts = f"{settings.num_samples} generated ({settings.sampler}-{settings.steps}) vs {len(reference)} held-out"
        lines = [f"  {k:<24} {v:10.4f}" for k, v in values.items()]
        reliable = "" if self.judge_reliable else "  (judge below its accuracy threshold: UNRELIABLE)"
        print("\n".join([f"\nFinal evaluation: {counts} real images{reliable}", *lines]), flush=True)

    # ---------------------------------------------------------------- media
    def sample_grid(
        self, per_row: int | None = None, sampler: str | None = None, steps: int | None = None
    ) -> np.ndarray:
        """Label-aligned grid: row k holds ``per_row`` samples of class k, with the class drawn on the left.
        Same noise every call, so grids from different epochs are comparable. uint8 ``H x W``."""
        per_row = per_row or self.hparams.grid_per_class
        rows = self.num_classes or 1
        labels = (
            torch.arange(rows, device=self.device).repeat_interleave(per_row)
            if self.num_classes is not None
            else None
        )
        generator = torch.Generator(device=self.device).manual_seed(self.hparams.seed + 10_000)
        images = self.generate(
            labels,
            rows * per_row,
            sampler or self.validation.sampler,
            steps or self.validation.steps,
            generator,
            self.validation.eta,
        )
        pixels = to_uint8(images)
        size = pixels.shape[-1]
        tiles = (
            pixels.reshape(rows, per_row, size, size)
            .transpose(0, 2, 1, 3)
            .reshape(rows * size, per_row * size)
        )
        if self.num_classes is None:
            return tiles
        margin = PILImage.new("L", (size, rows * size), 40)
        draw = ImageDraw.Draw(margin)
        for row, name in enumerate(self.class_names):
            draw.text((size // 3, row * size + size // 4), name, fill=255)
        return np.concatenate([np.asarray(margin), tiles], axis=1)

    def media_samples(self) -> dict[str, Image]:
        caption = (
            f"one row per class ({''.join(self.class_names)}), {self.validation.sampler} "
            f"{self.validation.steps} steps, guidance {self.hparams.guidance_scale}, EMA weights"
        )
        return {"samples_by_label": Image(self.sample_grid(), caption=caption if self.num_classes else None)}

    # ---------------------------------------------------------------- predict (the writer writes the PNGs)
    @override
    def predict_step(self, batch: tuple[Tensor], batch_idx: int) -> dict[str, Tensor]:
        """One image per label in the batch; ``DiffusionImageWriter`` saves them."""
        (labels,) = batch
        generator = self._generator(batch_idx)
        images = self.generate(
            labels if self.num_classes is not None else None,
            len(labels),
            self.predict.sampler,
            self.predict.steps,
            generator,
            self.predict.eta,
        )
        return {"images": images, "labels": labels}

    # ---------------------------------------------------------------- optimiser
    @override
    def configure_optimizers(self):
        optim = self.optim
        optimizer = torch.optim.AdamW(self.unet.parameters(), lr=optim.lr, weight_decay=optim.weight_decay)
        warmup = max(1, optim.warmup_steps)
        total = (
            max(warmup + 1, int(self.trainer.estimated_stepping_batches)) if optim.schedule == "cosine" else 0
        )

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            if optim.schedule == "constant":
                return 1.0
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / (total - warmup))))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def to_uint8(images: Tensor) -> np.ndarray:
    """``N x 1 x H x W`` in [-1, 1] -> uint8 ``N x H x W``."""
    return ((images[:, 0].float().cpu().numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)


class JudgeModule(pl.LightningModule):
    """The judge (``model.CharClassifier``) trained with ``tgm fit --config configs/diffusion/classifier.yaml``,
    with the same augmentation as the data module's own judge training; point ``data.init_args.judge_ckpt`` of
    a diffusion run at its checkpoint."""

    linked_from_data: ClassVar[dict[str, str]] = {"num_classes": "num_classes", "class_names": "class_names"}

    def __init__(
        self,
        num_classes: int,
        class_names: list[str] | None = None,
        lr: float = 2e-3,
        weight_decay: float = 1e-4,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = CharClassifier(num_classes)
        self.augment_settings = JudgeConfig()
        self.generator = torch.Generator().manual_seed(0)

    @override
    def training_step(self, batch, batch_idx):
        images, labels = batch
        loss = F.cross_entropy(self.net(augment(images, self.augment_settings, self.generator)), labels)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    @override
    def validation_step(self, batch, batch_idx):
        images, labels = batch
        logits = self.net(images)
        self.log("val/loss", F.cross_entropy(logits, labels))
        self.log("val/acc", (logits.argmax(1) == labels).float().mean(), prog_bar=True)

    @override
    def configure_optimizers(self):
        return torch.optim.AdamW(
            self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )
