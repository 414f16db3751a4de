"""Which training recipe learns x0: the same UNet, data and number of steps under each recipe, compared by the
x0 error per noise level on held-out images and by the pixel statistics of DDIM samples (no judge needed).

    python -m projects.diffusion.recipes [--config configs/diffusion/default.yaml] [--steps 748] [--samples 200]

Recipes (``RECIPES``): the default config's (AdamW 2e-3, 50 warm-up steps, constant; linear betas; epsilon),
diffusers' ``train_unconditional`` example (lr 1e-4, 500 warm-up steps, cosine decay), v-prediction with the
cosine ("squaredcos_cap_v2") noise schedule and cosine decay, and the default with cosine decay. Each trains
from the same initial weights on the same batches (seeded), in a bare loop with the module's own loss,
optimiser, schedule, gradient clipping (1.0) and EMA, so only the recipe differs. ``--steps`` defaults to the
default run's budget (4 epochs of 187 batches). Prints one markdown table.
"""

from __future__ import annotations

import argparse
import time
from types import SimpleNamespace

import numpy as np
import torch
from torch.utils.data import DataLoader

from common.metrics.image_quality import ExtractorFID, ImageStatistics, PixelFeatures
from common.prepare import build_data, build_model

RECIPES: dict[str, dict] = {
    "default (2e-3, 50 warm-up, constant)": {},
    "diffusers train_unconditional (1e-4, 500 warm-up, cosine)": {
        "optim": {"lr": 1e-4, "warmup_steps": 500, "schedule": "cosine"}
    },
    "v-prediction + cosine betas + cosine lr": {
        "prediction_type": "v_prediction",
        "beta_schedule": "squaredcos_cap_v2",
        "optim": {"schedule": "cosine"},
    },
    "default + cosine lr": {"optim": {"schedule": "cosine"}},
}


def train(configs: list[str], data, overrides: dict, steps: int, seed: int = 0):
    """The config's module with ``overrides`` on its init args, trained ``steps`` optimiser steps."""
    torch.manual_seed(seed)
    module = build_model(configs, data)
    hparams = dict(module.hparams)
    optim = {**hparams["optim"], **overrides.get("optim", {})}
    hparams.update({k: v for k, v in overrides.items() if k != "optim"}, optim=optim)
    torch.manual_seed(seed)
    module = type(module)(**hparams)
    optimizers = configure(module, steps)
    optimizer, scheduler = optimizers["optimizer"], optimizers["lr_scheduler"]["scheduler"]
    loader = DataLoader(
        data.train_set,
        batch_size=data.batch_size,
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(seed),
    )
    module.train()
    done, losses = 0, []
    torch.manual_seed(seed + 1)  # the noise and timesteps of the loss
    while done < steps:
        for images, labels in loader:
            loss = module.diffusion_loss(images, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(module.unet.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            module.ema.step(module.unet.parameters())
            losses.append(float(loss))
            done += 1
            if done == steps:
                break
    return module.eval(), float(np.mean(losses[-50:]))


def configure(module, steps: int):
    """``configure_optimizers`` outside a Trainer: the cosine schedule reads the number of steps from it."""
    object.__setattr__(module, "_trainer", SimpleNamespace(estimated_stepping_batches=steps))
    try:
        return module.configure_optimizers()
    finally:
        object.__setattr__(module, "_trainer", None)


@torch.no_grad()
def evaluate(module, data, num_samples: int) -> dict[str, float]:
    """x0 RMSE per noise level on the held-out images (EMA weights, seeded noise) and the pixel FID /
    background / saturation of ``num_samples`` DDIM-25 samples against them."""
    images, labels = data.heldout_set.tensors
    generator = torch.Generator().manual_seed(0)
    result = {}
    with module.ema_weights() as unet:
        for t in module.x0_timesteps():
            steps = torch.full((len(images),), t, dtype=torch.long)
            noise = torch.randn(images.shape, generator=generator)
            noisy = module.noise_scheduler.add_noise(images, noise, steps)
            x0 = module.x0_estimate(unet, noisy, steps, labels)
            result[f"x0_rmse_t{t}"] = float(((x0 - images) ** 2).mean(dim=(1, 2, 3)).sqrt().mean())
    wanted = labels.repeat(-(-num_samples // len(labels)))[:num_samples]
    fake = torch.cat(
        [
            module.generate(wanted[i : i + 100], len(wanted[i : i + 100]), "ddim", 25, generator)
            for i in range(0, num_samples, 100)
        ]
    )
    fid = ExtractorFID(PixelFeatures())
    fid.update(images, real=True)
    fid.update(fake, real=False)
    stats = ImageStatistics()
    stats.update(fake)
    values = stats.compute()
    result.update(
        fid_pixels=float(fid.compute()),
        background=float(values["background"]),
        saturation=float(values["saturation"]),
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", action="append", help="tgm configs (default: the default run)")
    parser.add_argument("--steps", type=int, default=748, help="optimiser steps per recipe")
    parser.add_argument("--samples", type=int, default=200, help="DDIM-25 samples for the pixel statistics")
    parser.add_argument("--only", default=None, help="comma-separated recipe numbers (1-based)")
    args = parser.parse_args()
    configs = args.config or ["configs/diffusion/default.yaml"]
    data = build_data(configs)
    data.prepare_judge = False  # the judge is not needed here
    data.prepare_data()
    data.setup("fit")
    chosen = list(RECIPES.items())
    if args.only:
        chosen = [chosen[int(i) - 1] for i in args.only.split(",")]
    rows = []
    for name, overrides in chosen:
        began = time.perf_counter()
        module, loss = train(configs, data, overrides, args.steps)
        result = evaluate(module, data, args.samples)
        rows.append((name, loss, result, time.perf_counter() - began))
        print(f"{name}: train loss {loss:.4f}, {result} ({rows[-1][3]:.0f} s)", flush=True)
    stats = data.heldout_set.tensors[0]
    real = ImageStatistics()
    real.update(stats)
    real = {k: float(v) for k, v in real.compute().items()}
    levels = [k for k in rows[0][2] if k.startswith("x0_rmse")]
    print(
        f"\n{args.steps} optimiser steps each, batch {data.batch_size}, {len(data.train_set)} training images; "
        f"x0 RMSE (EMA weights) on {len(stats)} held-out images; DDIM-25 samples: {args.samples} "
        f"(real: background {real['background']:.2f}, saturation {real['saturation']:.2f})\n"
    )
    header = " | ".join(level.replace("x0_rmse_", "") for level in levels)
    print(f"| recipe | train loss (last 50) | x0 RMSE {header} | FID pixels | background | saturation |")
    print("|---|---|" + "---|" * len(levels) + "---|---|---|")
    for name, loss, result, _ in rows:
        curve = " | ".join(f"{result[level]:.2f}" for level in levels)
        print(
            f"| {name} | {loss:.4f} | {curve} | {result['fid_pixels']:.2f} | {result['background']:.2f} "
            f"| {result['saturation']:.2f} |"
        )


if __name__ == "__main__":
    main()
