"""GPU check (issue 21): each project's real-size config, a fixed number of bf16 training steps on one GPU.

    scripts/gpu_check.sh [--steps 20] [--warmup 5] [--projects caption shape3d diffusion pose] [--peak-tflops X]

Per project it prints training throughput (samples/s, and tokens/s where a batch has tokens: caption's caption
tokens, pose's target frames), model FLOPs utilisation (MFU) against the card's peak dense bf16 TFLOPs, and the
peak GPU memory. FLOPs per step are counted once with ``torch.utils.flop_counter.FlopCounterMode`` over a training
step's forward and backward; where that fails, ``6 x trainable parameters x samples`` is used and labelled so.

The pretrained parts are random weights written with ``save_pretrained`` from transformers config classes into a
temporary folder (nothing is downloaded) and passed as config overrides: caption's GPT-2 (``model.init_args.decoder``),
CLIP ViT-B/32 (``data.init_args.clip.name``) and a BPE tokenizer (``data.init_args.tokenizer.name``); shape3d's
mT5-small encoder and tokenizer (``model.init_args.text_encoder``). Each project runs in its own process (its own peak
memory, and one failure does not stop the others) with a time limit; all four take a few minutes on one H100.
Validation is off: it measures training steps only. On a machine without a CUDA GPU it says so in one line and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

# Peak dense bf16 tensor-core TFLOPs (no sparsity), from NVIDIA's data sheets; matched in order against
# torch.cuda.get_device_name(), so the more specific names come first.
PEAK_BF16_TFLOPS = (
    ("GH200", 989.4),
    ("H200", 989.4),
    ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.4),  # SXM
    ("H800", 989.4),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.1),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("A10", 125.0),
    ("A6000", 154.8),
)

# The real-size configs (stacked on the project default where the config says so) and the check's overrides.
PROJECTS: dict[str, dict[str, Any]] = {
    "caption": {
        "configs": ["configs/caption/default.yaml", "configs/caption/published.yaml"],
        "timeout": 240,
    },
    "shape3d": {"configs": ["configs/shape3d/default.yaml", "configs/shape3d/mt5.yaml"], "timeout": 180},
    "diffusion": {"configs": ["configs/diffusion/original.yaml"], "timeout": 240},
    "pose": {"configs": ["configs/pose/default.yaml", "configs/pose/base.yaml"], "timeout": 120},
}
CORPUS = [
    "bir kedi masada oturuyor",
    "kırmızı bir araba yolda",
    "iki çocuk parkta top oynuyor",
    "abcçdefgğhıijklmnoöprsştuüvyz",
]


def peak_tflops(device_name: str) -> float | None:
    for name, tflops in PEAK_BF16_TFLOPS:
        if name.lower() in device_name.lower():
            return tflops
    return None


# --------------------------------------------------------------------------------- random pretrained directories
def caption_overrides(folder: Path) -> dict:
    """GPT-2 124M, CLIP ViT-B/32 vision tower with its 512-d projection, and a BPE tokenizer, all random."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection, GPT2Config, GPT2LMHeadModel

    from projects.caption.data import bpe_tokenizer, wrap_tokenizer

    GPT2LMHeadModel(GPT2Config()).save_pretrained(folder / "gpt2")  # n_embd 768, 12 layers, 50257 tokens
    tokenizer = wrap_tokenizer(bpe_tokenizer(CORPUS * 4, vocab_size=300))
    tokenizer.save_pretrained(folder / "gpt2")
    clip = CLIPVisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                            image_size=224, patch_size=32, projection_dim=512)  # fmt: skip
    CLIPVisionModelWithProjection(clip).save_pretrained(folder / "clip")
    return {
        "model": {"init_args": {"decoder": str(folder / "gpt2")}},
        "data": {"init_args": {"clip": {"name": str(folder / "clip")}, "tokenizer": {"name": str(folder / "gpt2")},
                               "cache_dir": str(folder / "cache")}},
    }  # fmt: skip


def shape3d_overrides(folder: Path) -> dict:
    """google/mt5-small's encoder (250,112 pieces, d_model 512, 8 layers, 6 heads), random, and a tokenizer."""
    from transformers import MT5Config, MT5EncoderModel

    from projects.shape3d.text_encoder import TURKISH_ALPHABET, load_tokenizer, prepare_tokenizer

    config = MT5Config(vocab_size=250112, d_model=512, d_kv=64, d_ff=1024, num_layers=8, num_heads=6,
                       feed_forward_proj="gated-gelu")  # fmt: skip
    MT5EncoderModel(config).save_pretrained(folder / "mt5")
    prepare_tokenizer([*CORPUS, TURKISH_ALPHABET], folder / "tokenizer")
    load_tokenizer(folder / "tokenizer").save_pretrained(folder / "mt5")
    return {"model": {"init_args": {"text_encoder": str(folder / "mt5")}}}


def diffusion_overrides(folder: Path) -> dict:
    """The UNet is built from its config; the data is kept small (throughput does not depend on its size) and the
    judge, trained in prepare_data, gets one epoch."""
    return {"data": {"init_args": {"data_dir": str(folder / "glyphs"), "generated": {"train_per_class": 40},
                                   "judge": {"max_epochs": 1}, "judge_cache_dir": str(folder / "judge")}}}  # fmt: skip


OVERRIDES = {"caption": caption_overrides, "shape3d": shape3d_overrides, "diffusion": diffusion_overrides}


def samples_and_tokens(project: str, batch: Any) -> tuple[int, int | None]:
    """Samples in a training batch, and its tokens where that means something (caption tokens, target frames)."""
    if project == "caption":
        return len(batch["image_id"]), int(batch["attention_mask"].sum())
    if project == "pose":
        return len(batch["tokens"]), int(batch["lengths"].sum())
    if project == "diffusion":
        return len(batch[0]), None
    return len(batch["style"]), None


# ------------------------------------------------------------------------------------------------ measurement
def measure(project: str, steps: int, warmup: int, folder: Path, smoke: bool = False) -> dict:
    """Build the project's real-size model and data as ``tgm`` does, train ``warmup + steps`` bf16 steps on the GPU
    and return the figures. ``smoke``: the tiny config on the CPU instead (tests the measuring on any machine)."""
    import lightning.pytorch as pl
    import torch
    import yaml
    from torch.utils.flop_counter import FlopCounterMode

    from common.prepare import build_data, build_model

    names = [f"configs/{project}/tiny.yaml"] if smoke else PROJECTS[project]["configs"]
    configs = [str(ROOT / name) for name in names]
    missing = [name for name in names if not (ROOT / name).is_file()]
    if missing:
        return {"project": project, "error": f"{', '.join(missing)} not there"}
    cuda = not smoke
    overrides = OVERRIDES[project](folder) if project in OVERRIDES and not smoke else {}
    overlay = folder / "overlay.yaml"
    overlay.write_text(yaml.safe_dump(overrides), encoding="utf-8")
    data = build_data([*configs, str(overlay)])
    model = build_model([*configs, str(overlay)], data)
    seen: dict[str, Any] = {"samples": [], "tokens": [], "times": []}

    class Meter(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == warmup and "flops" not in seen:
                seen["flops"], seen["flops_source"] = count_flops(pl_module, batch, batch_idx)
            synchronize()
            self.began = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            synchronize()
            if trainer.global_step > warmup:
                samples, tokens = samples_and_tokens(project, batch)
                seen["times"].append(time.perf_counter() - self.began)
                seen["samples"].append(samples)
                seen["tokens"].append(tokens)

    def synchronize() -> None:
        if cuda:
            torch.cuda.synchronize()

    def count_flops(pl_module, batch, batch_idx) -> tuple[float, str]:
        trainable = sum(p.numel() for p in pl_module.parameters() if p.requires_grad)
        estimate = 6.0 * trainable * samples_and_tokens(project, batch)[0]
        try:
            with (
                FlopCounterMode(display=False) as counter,
                torch.autocast("cuda" if cuda else "cpu", dtype=torch.bfloat16),
            ):
                loss = pl_module.training_step(batch, batch_idx)
                if loss is None:
                    return estimate, "6N x samples"
                (loss["loss"] if isinstance(loss, dict) else loss).backward()
            pl_module.zero_grad(set_to_none=True)
            return float(counter.get_total_flops()), "FlopCounterMode"
        except Exception as error:  # an op the counter cannot trace: the classic estimate
            print(
                f"gpu_check: {project}: FlopCounterMode failed ({type(error).__name__}); using 6N",
                file=sys.stderr,
            )
            pl_module.zero_grad(set_to_none=True)
            return estimate, "6N x samples"

    callbacks: list[pl.Callback] = [Meter()]
    if (
        project == "shape3d" and not smoke
    ):  # the design's 64^3 stage, with the text encoder frozen as the config has it
        from common.callbacks import FreezeUnfreeze, ProgressiveResolution

        callbacks += [
            ProgressiveResolution(schedule={0: 64}),
            FreezeUnfreeze(["text_encoder"], unfreeze_at_epoch=10**6),
        ]
    trainer = pl.Trainer(
        accelerator="gpu" if cuda else "cpu", devices=1, precision="bf16-mixed", max_steps=warmup + steps, limit_val_batches=0,
        num_sanity_val_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=str(folder), callbacks=callbacks,
    )  # fmt: skip
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.fit(model, data)
    seconds = sum(seen["times"])
    tokens = None if None in seen["tokens"] else sum(seen["tokens"])
    return {
        "project": project,
        "parameters": sum(p.numel() for p in model.parameters()),
        "batch": seen["samples"][0] if seen["samples"] else None,
        "steps": len(seen["times"]),
        "seconds_per_step": seconds / max(len(seen["times"]), 1),
        "samples_per_s": sum(seen["samples"]) / seconds if seconds else None,
        "tokens_per_s": tokens / seconds if seconds and tokens is not None else None,
        "flops_per_step": seen.get("flops"),
        "flops_source": seen.get("flops_source"),
        "peak_memory_gb": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
    }


def table(results: list[dict], device: str, peak: float | None) -> str:
    head = f"{'project':<10} {'params':>8} {'batch':>5} {'s/step':>7} {'samples/s':>10} {'tokens/s':>10} {'TFLOP/step':>10} {'MFU':>6} {'peak GB':>8}  FLOPs from"
    lines = [f"gpu_check on {device} (peak bf16 {peak or '?'} TFLOPs dense)", head]
    for r in results:
        if "error" in r:
            lines.append(f"{r['project']:<10} {r['error']}")
            continue
        flops = r["flops_per_step"]
        achieved = flops / r["seconds_per_step"] / 1e12 if flops else None
        mfu = f"{achieved / peak:6.1%}" if achieved and peak else "   n/a"
        tokens = f"{r['tokens_per_s']:10.0f}" if r["tokens_per_s"] else f"{'-':>10}"
        memory = f"{r['peak_memory_gb']:8.2f}" if r["peak_memory_gb"] is not None else f"{'-':>8}"
        lines.append(
            f"{r['project']:<10} {r['parameters'] / 1e6:7.1f}M {r['batch']:>5} {r['seconds_per_step']:7.3f} "
            f"{r['samples_per_s']:10.1f} {tokens} {(flops or 0) / 1e12:10.3f} {mfu} {memory}  "
            f"{r['flops_source']}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="measured training steps per project")
    parser.add_argument(
        "--warmup", type=int, default=5, help="steps before measuring (compilation, allocator)"
    )
    parser.add_argument("--projects", nargs="+", default=list(PROJECTS), choices=list(PROJECTS))
    parser.add_argument(
        "--peak-tflops", type=float, default=None, help="the card's peak bf16 TFLOPs, if not in the table"
    )
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # child process: measure this project
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print(
            "gpu_check: no CUDA GPU on this machine (torch.cuda.is_available() is False); nothing to measure"
        )
        return 0
    if not torch.cuda.is_bf16_supported():
        print(
            f"gpu_check: {torch.cuda.get_device_name()} has no bf16; this check measures bf16 training only"
        )
        return 0
    if args.one:
        with tempfile.TemporaryDirectory(prefix=f"gpu_check_{args.one}_") as folder:
            result = measure(args.one, args.steps, args.warmup, Path(folder))
        Path(args.out).write_text(json.dumps(result), encoding="utf-8")
        return 0

    device = torch.cuda.get_device_name()
    peak = args.peak_tflops or peak_tflops(device)
    results = []
    for project in args.projects:
        out = Path(tempfile.mkstemp(suffix=".json")[1])
        command = [sys.executable, str(Path(__file__).resolve()), "--one", project, "--out", str(out),
                   "--steps", str(args.steps), "--warmup", str(args.warmup)]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
        began = time.perf_counter()
        try:
            done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                                  timeout=PROJECTS[project]["timeout"])  # fmt: skip
            if done.returncode == 0 and out.stat().st_size:
                results.append(json.loads(out.read_text(encoding="utf-8")))
            else:
                last = [line for line in done.stderr.splitlines() if line.strip()][-1:] or ["no output"]
                results.append(
                    {"project": project, "error": f"failed (exit {done.returncode}): {last[0][:160]}"}
                )
        except subprocess.TimeoutExpired:
            results.append({"project": project, "error": f"stopped after {PROJECTS[project]['timeout']} s"})
        finally:
            out.unlink(missing_ok=True)
        print(
            f"gpu_check: {project} done in {time.perf_counter() - began:.0f} s", file=sys.stderr, flush=True
        )
    print(table(results, device, peak))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
