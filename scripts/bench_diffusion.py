"""Benchmark for projects/diffusion (`make bench-diffusion`).

1. Training throughput (images/s) of the default config's UNet, inside Lightning and in a bare PyTorch loop over
   the same module, batch and optimiser (AdamW, grad-norm clipping 1.0, EMA update): the ratio is the framework
   overhead per step.
2. Sampling throughput (images/s) and FID / IS / conditional accuracy (character-classifier features) of
   DDPM-1000 vs DDIM-25 vs DPM-Solver++-25, on the trained checkpoint (``--ckpt``; by default the last
   checkpoint of `make train-diffusion`). Without a checkpoint the untrained model is measured (said so).

Step times are medians over the timed steps (robust to other processes on a shared machine). Usage:

    python scripts/bench_diffusion.py [--ckpt runs/diffusion/checkpoints/last.ckpt] [--num-samples 50]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
import yaml
from torch.utils.data import DataLoader, TensorDataset

from common.metrics.image_quality import ConditionalAccuracy, ExtractorFID, ExtractorIS
from projects.diffusion.classifier import classifier_path, ensure_classifier
from projects.diffusion.data import CharacterDataModule
from projects.diffusion.model import DiffusionModule

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "configs" / "diffusion" / "default.yaml"


class StepTimer(pl.Callback):
    """Wall time between consecutive batch starts: the whole loop iteration (data, step, logging, hooks)."""

    def __init__(self) -> None:
        self.starts: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.starts.append(time.perf_counter())

    def on_train_end(self, trainer, pl_module) -> None:
        self.starts.append(time.perf_counter())


def fixed_loader(data: CharacterDataModule, batch_size: int, steps: int) -> DataLoader:
    images, labels = data.train_set.tensors
    n = batch_size * steps
    return DataLoader(TensorDataset(images[:n], labels[:n]), batch_size=batch_size, shuffle=False, drop_last=True)


def bench_lightning(model_args: dict, loader: DataLoader, warmup: int) -> float:
    torch.manual_seed(0)
    module = DiffusionModule(**model_args)
    timer = StepTimer()
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         gradient_clip_val=1.0, gradient_clip_algorithm="norm", callbacks=[timer])
    trainer.fit(module, train_dataloaders=loader)
    steps = [b - a for a, b in zip(timer.starts[:-1], timer.starts[1:], strict=True)]
    return statistics.median(steps[warmup:])


def bench_bare(model_args: dict, loader: DataLoader, warmup: int) -> float:
    """The same work as Lightning's loop, written out: loss, backward, clip, AdamW + LR schedule, EMA."""
    torch.manual_seed(0)
    module = DiffusionModule(**model_args)
    optimizers = module.configure_optimizers()
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


@torch.no_grad()
def bench_sampler(module: DiffusionModule, data: CharacterDataModule, extractor, kind: str, steps: int,
                  num_samples: int, batch_size: int) -> dict[str, float]:
    fid, inception, accuracy = ExtractorFID(extractor), ExtractorIS(extractor), ConditionalAccuracy(extractor)
    fid.update(data.val_set.tensors[0], real=True)  # every validation image as the reference
    labels = torch.arange(num_samples) % data.num_classes
    generated, seconds = 0, 0.0
    for start in range(0, num_samples, batch_size):
        chunk = labels[start:start + batch_size]
        generator = torch.Generator().manual_seed(start)
        began = time.perf_counter()
        images = module.generate(chunk, len(chunk), kind, steps, generator)
        seconds += time.perf_counter() - began
        generated += len(chunk)
        fid.update(images, real=False)
        inception.update(images)
        accuracy.update(images, chunk)
    return {"images_per_s": generated / seconds, "fid": float(fid.compute()),
            "is": float(inception.compute()[0]), "acc": float(accuracy.compute())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG))
    parser.add_argument("--ckpt", default=str(ROOT / "runs/diffusion/checkpoints/last.ckpt"))
    parser.add_argument("--num-samples", type=int, default=50, help="samples per sampler for FID / IS / accuracy")
    parser.add_argument("--train-steps", type=int, default=25, help="timed training steps (after 5 warm-up)")
    parser.add_argument("--ddpm-steps", type=int, default=1000)
    parser.add_argument("--fast-steps", type=int, default=25)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    config = yaml.safe_load(Path(args.config).read_text())
    model_args = config["model"]["init_args"]
    data = CharacterDataModule(**config["data"]["init_args"])
    data.setup("fit")
    batch_size = data.batch_size
    warmup = 5

    # 1. training step: Lightning vs bare PyTorch
    loader = fixed_loader(data, batch_size, args.train_steps + warmup)
    bench_bare(model_args, loader, warmup)  # untimed: one-off costs (allocator, kernels) hit whichever runs first
    lightning_s = bench_lightning(model_args, loader, warmup)
    bare_s = bench_bare(model_args, loader, warmup)

    # 2. samplers on the trained checkpoint
    ckpt = Path(args.ckpt)
    if ckpt.is_file():
        module = DiffusionModule.load_from_checkpoint(ckpt, map_location="cpu")
        source = str(ckpt)
    else:
        torch.manual_seed(0)
        module = DiffusionModule(**model_args)
        source = f"UNTRAINED model ({ckpt} not found: run `make train-diffusion` first)"
    module.eval()
    clf_path = model_args.get("classifier_ckpt") or classifier_path(
        model_args.get("classifier_cache_dir", "data/generated/diffusion"), data.data_dir, data.class_names,
        data.image_size)
    extractor = ensure_classifier(clf_path, data.train_set, data.val_set, data.class_names)
    rows = []
    for kind, steps in (("ddpm", args.ddpm_steps), ("ddim", args.fast_steps), ("dpmsolver++", args.fast_steps)):
        result = bench_sampler(module, data, extractor, kind, steps, args.num_samples, data.val_batch_size)
        rows.append((f"{kind}-{steps}", result))
        print(f"  {kind}-{steps}: {result}", flush=True)

    print(f"\nthreads={torch.get_num_threads()}  batch={batch_size}  image={data.image_size}x{data.image_size}  "
          f"UNet={model_args['unet']['block_out_channels']}  guidance={module.hparams.guidance_scale}")
    print(f"\nTraining step (median of {args.train_steps}, batch {batch_size}):")
    print(f"{'loop':<22}{'s/step':>10}{'images/s':>12}")
    print(f"{'Lightning':<22}{lightning_s:>10.4f}{batch_size / lightning_s:>12.1f}")
    print(f"{'bare PyTorch':<22}{bare_s:>10.4f}{batch_size / bare_s:>12.1f}")
    print(f"Lightning / bare step-time ratio: {lightning_s / bare_s:.3f}")
    print(f"\nSampling ({args.num_samples} class-conditional samples each, {source}; "
          f"FID/IS/acc with charclf features vs {len(data.val_set)} validation images):")
    print(f"{'sampler':<18}{'images/s':>10}{'fid_charclf':>13}{'is_charclf':>12}{'cond_acc':>10}")
    for name, r in rows:
        print(f"{name:<18}{r['images_per_s']:>10.2f}{r['fid']:>13.3f}{r['is']:>12.3f}{r['acc']:>10.3f}")


if __name__ == "__main__":
    main()
