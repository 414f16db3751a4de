"""Benchmark for projects/diffusion (`make bench-diffusion`).

1. Training throughput (images/s) of the config's UNet, inside Lightning and in a bare PyTorch loop over the
   same module, batch and optimiser (AdamW, grad-norm clipping 1.0, EMA update): the ratio is the framework
   overhead per step.
2. Samplers on the trained checkpoint (``--ckpt``; by default the last checkpoint of the config's run):
   DDPM-1000, DDIM-25/50/100 with eta 0 and 1, DPM-Solver++-25/50 (settings: ``pipeline.SAMPLER_SETTINGS``),
   by speed (images/s) and by quality in two feature spaces (the judge's and pixels) plus the background level
   and saturation share, against every held-out image, with the sample counts printed. DDPM-1000 is 40 x slower
   per image, so it gets ``--ddpm-samples``; FID grows as the number of samples shrinks, so each FID is printed
   next to the data's own floor AT THE SAME COUNT: that many real training images against the same held-out
   set. Compare a row with its floor, not rows of different counts. The defaults (200 samples, 20 for DDPM)
   keep the table to a few minutes on 2 CPU cores; use --num-samples 1000 for figures to rank samplers by.
   Without a checkpoint the untrained model is measured (said so).

``--inherited-settings`` measures the same checkpoint with the samplers as they were before issue 24 (diffusers'
``from_config`` of the training scheduler, DDIM stepping with the unclipped noise estimate): the "before" column
of the sampler table, on the same weights and noise.

Step times are medians over the timed steps (robust to other processes on a shared machine). Usage:

    python scripts/bench_diffusion.py [--config configs/diffusion/default.yaml [--config overlay.yaml]]
        [--ckpt runs/diffusion/checkpoints/last.ckpt] [--num-samples 200] [--ddpm-samples 20]
        [--inherited-settings]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader, TensorDataset

from common.io import read_text
from common.prepare import build_data, build_model
from projects.diffusion import module as module_file
from projects.diffusion import pipeline as pipeline_file
from projects.diffusion.data import CharacterDataModule
from projects.diffusion.judge import load_judge
from projects.diffusion.module import DiffusionModule, FinalEvaluation
from projects.diffusion.recipes import configure

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = str(ROOT / "configs" / "diffusion" / "default.yaml")


class StepTimer(pl.Callback):
    """Wall time between consecutive batch starts: the whole loop iteration (data, step, logging, hooks)."""

    def __init__(self) -> None:
        self.starts: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.starts.append(time.perf_counter())

    def on_train_end(self, trainer, pl_module) -> None:
        self.starts.append(time.perf_counter())


def fresh_module(configs: list[str], data: CharacterDataModule) -> DiffusionModule:
    """The configs' model as `tgm` builds it (links from the data module), from the same seed every time."""
    torch.manual_seed(0)
    return build_model(configs, data)


def fixed_loader(data: CharacterDataModule, batch_size: int, steps: int) -> DataLoader:
    n = min(len(data.train_set), batch_size * steps)
    images, labels = data.train_set.images(np.arange(n)), data.train_set.labels[:n]
    return DataLoader(TensorDataset(images, labels), batch_size=batch_size, shuffle=False, drop_last=True)


def bench_lightning(module: DiffusionModule, loader: DataLoader, warmup: int) -> float:
    timer = StepTimer()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        gradient_clip_val=1.0,
        gradient_clip_algorithm="norm",
        callbacks=[timer],
    )
    trainer.fit(module, train_dataloaders=loader)
    steps = [b - a for a, b in zip(timer.starts[:-1], timer.starts[1:], strict=True)]
    return statistics.median(steps[warmup:])


def bench_bare(module: DiffusionModule, loader: DataLoader, warmup: int) -> float:
    """The same work as Lightning's loop, written out: loss, backward, clip, AdamW + LR schedule, EMA."""
    optimizers = configure(module, len(loader))  # the cosine lr schedule needs the number of steps
    optimizer, scheduler = optimizers["optimizer"], optimizers["lr_scheduler"]["scheduler"]
    module.train()
    steps, last = [], time.perf_counter()
    for images, labels in loader:
        loss = module.diffusion_loss(images, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        module.ema.step(module.unet.parameters())
        now = time.perf_counter()
        steps.append(now - last)
        last = now
    return statistics.median(steps[warmup:])


def use_inherited_sampler_settings() -> None:
    """Sample as before issue 24, for the before/after table only: every inference scheduler built by diffusers'
    ``from_config`` of the training scheduler (inheriting clip_sample, "leading" spacing, steps_offset 0) and
    DDIM stepping with the unclipped noise estimate (diffusers' default ``use_clipped_model_output=False``).
    DDIM's ``eta`` is still passed: the former pipeline passed none (always eta 0), so the eta 1 rows show what
    the inherited settings do at eta 1, not a sampler the former code offered."""
    classes, legacy = (
        pipeline_file.SCHEDULER_CLASSES,
        {
            "dpmsolver++": {
                "algorithm_type": "dpmsolver++",
                "solver_order": 2,
                "thresholding": True,
                "sample_max_value": 1.0,
            }
        },
    )  # the pre-issue-24 make_scheduler (a767495): from_config, only DPM-Solver++ given settings
    module_file.make_scheduler = lambda kind, config: classes[kind].from_config(
        config, **legacy.get(kind, {})
    )
    pipeline_file.step_kwargs = lambda scheduler, eta: (
        {"eta": eta} if isinstance(scheduler, pipeline_file.DDIMScheduler) else {}
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--config", action="append", help="tgm configs (repeatable; default: the default run)"
    )
    parser.add_argument("--ckpt", default=None, help="default: last.ckpt in the config's checkpoint.dirpath")
    parser.add_argument("--num-samples", type=int, default=200, help="samples per fast sampler")
    parser.add_argument("--ddpm-samples", type=int, default=20, help="samples for DDPM-1000 (40x slower)")
    parser.add_argument("--skip-training", action="store_true", help="only the sampler table")
    parser.add_argument("--train-steps", type=int, default=25, help="timed training steps (after 5 warm-up)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument(
        "--inherited-settings", action="store_true", help="samplers as before issue 24 (the 'before' table)"
    )
    args = parser.parse_args()
    if args.inherited_settings:
        use_inherited_sampler_settings()
    torch.set_num_threads(args.threads)
    configs = args.config or [DEFAULT_CONFIG]

    data = build_data(configs)
    data.prepare_data()  # renders the data / trains the judge once (cached)
    data.setup("fit")
    batch_size, warmup = data.batch_size, 5

    # 1. training step: Lightning vs bare PyTorch
    lightning_s = bare_s = float("nan")
    if not args.skip_training:
        loader = fixed_loader(data, batch_size, args.train_steps + warmup)
        bench_bare(
            fresh_module(configs, data), loader, warmup
        )  # untimed: one-off costs hit whoever runs first
        lightning_s = bench_lightning(fresh_module(configs, data), loader, warmup)
        bare_s = bench_bare(fresh_module(configs, data), loader, warmup)

    # 2. samplers on the trained checkpoint, judged by the converged judge
    dirpath = None
    for path in configs:
        dirpath = ((yaml.safe_load(read_text(path)) or {}).get("checkpoint") or {}).get("dirpath") or dirpath
    ckpt = Path(args.ckpt or ROOT / (dirpath or "runs/diffusion/checkpoints") / "last.ckpt")
    if ckpt.is_file():
        module = DiffusionModule.load_from_checkpoint(ckpt, map_location="cpu")
        source = str(ckpt)
    else:
        module = fresh_module(configs, data)
        source = f"UNTRAINED model ({ckpt} not found: train first)"
    module.eval()
    judge, report = load_judge(data.judge_path, data.class_names)
    module.use_extractor(judge, report)
    reference, labels = data.heldout_set.tensors
    train_images = data.train_set
    rows = []
    for kind, steps, eta, count in (
        ("ddpm", 1000, 0.0, args.ddpm_samples),
        ("ddim", 25, 0.0, args.num_samples),
        ("ddim", 50, 0.0, args.num_samples),
        ("ddim", 100, 0.0, args.num_samples),
        ("ddim", 25, 1.0, args.num_samples),
        ("ddim", 50, 1.0, args.num_samples),
        ("ddim", 100, 1.0, args.num_samples),
        ("dpmsolver++", 25, 0.0, args.num_samples),
        ("dpmsolver++", 50, 0.0, args.num_samples),
    ):
        pick = torch.randperm(len(train_images), generator=torch.Generator().manual_seed(0))[:count]
        settings = FinalEvaluation(count, kind, steps, 250, eta)
        began = time.perf_counter()
        result = module.evaluate_samples(reference, labels, settings)
        seconds = time.perf_counter() - began
        result.update(
            {
                f"val/{k}": v
                for k, v in module.real_vs_real_floors(reference, train_images.images(pick.numpy())).items()
            }
        )
        name = f"{kind}-{steps}" + (f" eta={eta:g}" if kind == "ddim" else "")
        rows.append((name, count, count / seconds, result))
        print(f"  {name}: {count} samples, {count / seconds:.2f} images/s, {result}", flush=True)

    keys = module.metric_keys
    print(
        f"\nthreads={torch.get_num_threads()}  batch={batch_size}  image={data.image_size}x{data.image_size}  "
        f"UNet={list(module.unet.config.block_out_channels)}  guidance={module.hparams.guidance_scale}  "
        f"data={data.data_dir} ({len(data.train_set)} train / {len(reference)} held-out)"
    )
    print(f"\nTraining step (median of {args.train_steps}, batch {batch_size}):")
    print(f"{'loop':<22}{'s/step':>10}{'images/s':>12}")
    print(f"{'Lightning':<22}{lightning_s:>10.4f}{batch_size / lightning_s:>12.1f}")
    print(f"{'bare PyTorch':<22}{bare_s:>10.4f}{batch_size / bare_s:>12.1f}")
    print(f"Lightning / bare step-time ratio: {lightning_s / bare_s:.3f}")
    print(f"\nJudge: {report.summary()}")
    print(
        f"\nSamplers ({source}{'; settings INHERITED as before issue 24' if args.inherited_settings else ''});"
        " class-conditional samples, labels cycled over the classes, against all "
        f"{len(reference)} held-out images; floor = that many real training images vs the same held-out images:"
    )
    real = rows[0][3]
    print(
        f"| sampler | samples | images/s | FID judge (floor) | FID pixels (floor) | background "
        f"(real {real['val/background_real']:.2f}) | saturation (real {real['val/saturation_real']:.2f}) "
        f"| IS | cond_acc |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, count, speed, r in rows:
        acc = r.get(keys["cond_acc"], float("nan"))
        print(
            f"| {name} | {count} | {speed:.2f} | {r[keys['fid']]:.3f} ({r['val/fid_floor_' + module.extractor_net.name]:.3f}) "
            f"| {r['val/fid_pixels']:.3f} ({r['val/fid_floor_pixels']:.3f}) | {r['val/background']:.3f} "
            f"| {r['val/saturation']:.3f} | {r[keys['is']]:.2f} | {acc:.3f} |"
        )


if __name__ == "__main__":
    main()
