"""Export a trained checkpoint as a stock diffusers pipeline directory (EMA weights).

    python -m projects.diffusion.export --ckpt runs/diffusion/checkpoints/last.ckpt --out exports/diffusion

writes ``DDPMPipeline.save_pretrained`` output (``model_index.json``, ``unet/``, ``scheduler/``) plus
``class_labels.json`` (class names, the null label, the guidance scale). Unconditional models sample with
``DDPMPipeline.from_pretrained(out)(...)``; class-conditional ones need labels, see :func:`sample_exported`
and the README: it uses nothing but diffusers and torch.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch
from diffusers import DDPMPipeline, DDPMScheduler

from projects.diffusion.model import DiffusionModule


def export_pipeline(module: DiffusionModule, out_dir: str | Path) -> Path:
    """Save the EMA UNet and the training scheduler as a ``DDPMPipeline`` directory."""
    out_dir = Path(out_dir)
    unet = copy.deepcopy(module.unet).cpu()
    module.ema.to("cpu")
    module.ema.copy_to(unet.parameters())
    scheduler = DDPMScheduler.from_config(module.noise_scheduler.config)
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(out_dir)
    meta = {
        "class_names": list(module.class_names) if module.num_classes is not None else None,
        "null_label": module.null_label,
        "guidance_scale": module.hparams.guidance_scale,
        "note": "image = 28x28 EMNIST zero-padded to 32x32 (then resized to sample_size); pixels in [-1, 1]",
    }
    (out_dir / "class_labels.json").write_text(json.dumps(meta, indent=2))
    return out_dir


# The reference loop for class-conditional exports; the README shows the same code. Stock diffusers only.
SAMPLE_EXPORTED = '''
import json, torch
from diffusers import DDIMScheduler, UNet2DModel
from diffusers.utils.torch_utils import randn_tensor

def sample_exported(path, labels, steps=25, seed=0):
    meta = json.load(open(f"{path}/class_labels.json"))
    unet = UNet2DModel.from_pretrained(path, subfolder="unet").eval()
    scheduler = DDIMScheduler.from_pretrained(path, subfolder="scheduler")
    labels = torch.as_tensor(labels)
    generator = torch.Generator().manual_seed(seed)
    size, w = unet.config.sample_size, meta["guidance_scale"]
    image = randn_tensor((len(labels), unet.config.in_channels, size, size), generator=generator)
    scheduler.set_timesteps(steps)
    null = torch.full_like(labels, meta["null_label"])
    with torch.no_grad():
        for t in scheduler.timesteps:
            both = unet(torch.cat([image, image]), t, class_labels=torch.cat([labels, null])).sample
            cond, uncond = both.chunk(2)
            image = scheduler.step(uncond + w * (cond - uncond), t, image, generator=generator).prev_sample
    return (image.clamp(-1, 1) + 1) / 2  # N x 1 x H x W in [0, 1]
'''


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True, help="a DiffusionModule checkpoint (e.g. runs/diffusion/checkpoints/last.ckpt)")
    parser.add_argument("--out", required=True, help="output pipeline directory")
    args = parser.parse_args()
    if not Path(args.ckpt).is_file():
        raise SystemExit(f"checkpoint '{args.ckpt}' not found")
    module = DiffusionModule.load_from_checkpoint(args.ckpt, map_location=torch.device("cpu"))
    out = export_pipeline(module, args.out)
    kind = "class-conditional" if module.num_classes is not None else "unconditional"
    print(f"exported {kind} pipeline to {out} (load with DDPMPipeline.from_pretrained('{out}'))")


if __name__ == "__main__":
    main()
