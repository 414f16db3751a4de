"""Export a trained checkpoint as a diffusers pipeline directory (EMA weights) that stock diffusers loads.

    python -m projects.diffusion.export --ckpt runs/diffusion/checkpoints/last.ckpt --out exports/diffusion

writes ``CharacterDiffusionPipeline.save_pretrained`` output (``model_index.json`` with the class names, the
null label and the guidance scale; ``unet/``; ``scheduler/``) and copies ``pipeline.py`` next to it, so

    from diffusers import DiffusionPipeline
    pipe = DiffusionPipeline.from_pretrained(out, custom_pipeline=out)
    images = pipe(class_labels=[0, 1, 2], num_inference_steps=1000).images       # N x 1 x H x W in [-1, 1]

runs the same loop as the Lightning module (no code of this repository needed). Unconditional models also load
with the plain ``DDPMPipeline.from_pretrained(out)``.
"""

from __future__ import annotations

import argparse
import copy
import shutil
from pathlib import Path

import torch

from projects.diffusion import pipeline as pipeline_file
from projects.diffusion.module import DiffusionModule
from projects.diffusion.pipeline import CharacterDiffusionPipeline, make_scheduler


def export_pipeline(module: DiffusionModule, out_dir: str | Path) -> Path:
    """Save the EMA UNet and the DDPM sampler (``make_scheduler("ddpm")``: the training noise schedule with the
    sampling settings stated in ``pipeline.SAMPLER_SETTINGS``) as a ``CharacterDiffusionPipeline`` directory.
    ``DDIMScheduler.from_config`` of the saved config then gives exactly ``make_scheduler("ddim")`` (trailing
    spacing, clipping, alpha 1 at the end); the pipeline passes DDIM's ``use_clipped_model_output=True``."""
    out_dir = Path(out_dir)
    unet = copy.deepcopy(module.unet).cpu()
    module.ema.to("cpu")
    module.ema.copy_to(unet.parameters())
    scheduler = make_scheduler("ddpm", module.noise_scheduler.config)
    pipe = CharacterDiffusionPipeline(
        unet=unet,
        scheduler=scheduler,
        null_label=module.null_label,
        guidance_scale=module.hparams.guidance_scale,
        class_names=list(module.class_names) if module.num_classes is not None else None,
    )
    pipe.save_pretrained(out_dir)
    shutil.copyfile(pipeline_file.__file__, out_dir / "pipeline.py")  # for custom_pipeline=out_dir
    return out_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--ckpt", required=True, help="a DiffusionModule checkpoint (runs/diffusion/checkpoints/last.ckpt)"
    )
    parser.add_argument("--out", required=True, help="output pipeline directory")
    args = parser.parse_args()
    if not Path(args.ckpt).is_file():
        raise SystemExit(f"checkpoint '{args.ckpt}' not found")
    module = DiffusionModule.load_from_checkpoint(args.ckpt, map_location=torch.device("cpu"))
    out = export_pipeline(module, args.out)
    kind = "class-conditional" if module.num_classes is not None else "unconditional"
    print(
        f"exported {kind} pipeline to {out} (load with DiffusionPipeline.from_pretrained('{out}', "
        f"custom_pipeline='{out}'))"
    )


if __name__ == "__main__":
    main()
