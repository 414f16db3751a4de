"""Caption benchmark (``make bench-caption``): what the CLIP feature cache saves, and greedy vs beam speed.

1. Training throughput with cached CLIP features vs running the (frozen) CLIP on every step (image decoding and
   preprocessing included, as the no-cache data path does it): median time of ``--steps`` optimizer steps of the
   default config, the two alternating step by step, times the steps of one epoch; plus the one-off cost of
   building the cache.
2. Captions per second (median of 3 passes) on the validation images for greedy search and beam search (3 and 5 beams), with a
   trained checkpoint when given (an untrained model always runs to ``max_new_tokens``), and the BLEU of each.

    PYTHONPATH=. python scripts/bench_caption.py [--ckpt runs/caption/checkpoints/last.ckpt] [--threads 2]

Prints a Markdown table and writes it with the raw numbers to ``runs/caption/bench.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from common.metrics.bleu import CorpusBLEU
from projects.caption.data import CaptionDataModule
from projects.caption.features import cached_features
from projects.caption.module import CaptionModule
from projects.caption.prepare import build_data, build_model


def build(config: Path, use_cache: bool) -> tuple[CaptionModule, CaptionDataModule]:
    data = build_data([str(config)], use_feature_cache=use_cache)
    data.prepare_data()
    data.setup("fit")
    model = build_model([str(config)], data)
    model.configure_model()
    model.set_tokenizer(data.tokenizer)
    return model, data


class Stepper:
    """One optimizer step at a time on a model and its data (data loading included), timed."""

    def __init__(self, model: CaptionModule, data: CaptionDataModule) -> None:
        self.model = model.train()
        self.optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        self.loader = iter(data.train_dataloader())

    def step(self) -> float:
        start = time.perf_counter()
        loss = self.model(next(self.loader))
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return time.perf_counter() - start


def interleaved_step_times(a: Stepper, b: Stepper, steps: int) -> tuple[float, float]:
    """Median seconds per step of ``a`` and ``b``, alternating step by step (after one warm-up step each), so
    load from other processes on a shared machine hits both alike."""
    a.step(), b.step()
    times_a, times_b = [], []
    for _ in range(steps):
        times_a.append(a.step())
        times_b.append(b.step())
    return statistics.median(times_a), statistics.median(times_b)


@torch.no_grad()
def caption_speed(model: CaptionModule, data: CaptionDataModule, num_beams: int) -> tuple[float, float]:
    """(captions per second, corpus BLEU-4) over the validation split."""
    model.eval()
    metric = CorpusBLEU()
    count, start = 0, time.perf_counter()
    for batch in data.val_dataloader():
        predictions = model.generate(model.image_features(batch), num_beams=num_beams)
        metric.update(predictions, batch["references"])
        count += len(predictions)
    return count / (time.perf_counter() - start), float(metric.compute()["bleu4"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("configs/caption/default.yaml"))
    parser.add_argument("--ckpt", type=Path, default=Path("runs/caption/checkpoints/last.ckpt"))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=Path("runs/caption/bench.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows, raw = [], {"threads": torch.get_num_threads(), "steps": args.steps}

    model, data = build(args.config, use_cache=True)
    steps_per_epoch = len(data.train_dataloader())
    paths = [r.path for r in data.records["train"]]
    with tempfile.TemporaryDirectory() as tmp:  # a cold cache: the one-off cost of computing the features
        start = time.perf_counter()
        cached_features(paths, model.image_encoder, tmp)
        raw["cache_build_s"] = time.perf_counter() - start
    uncached_model, uncached_data = build(args.config, use_cache=False)
    raw["cached_step_s"], raw["uncached_step_s"] = interleaved_step_times(
        Stepper(model, data), Stepper(uncached_model, uncached_data), args.steps
    )
    raw["steps_per_epoch"] = steps_per_epoch
    rows.append(
        (
            "train epoch, cached CLIP features",
            f"{raw['cached_step_s'] * steps_per_epoch:.1f} s/epoch",
            f"{raw['cached_step_s'] * 1000:.0f} ms/step",
        )
    )
    rows.append(
        (
            "train epoch, CLIP recomputed every step",
            f"{raw['uncached_step_s'] * steps_per_epoch:.1f} s/epoch",
            f"{raw['uncached_step_s'] * 1000:.0f} ms/step",
        )
    )
    rows.append(
        ("building the feature cache (once)", f"{raw['cache_build_s']:.1f} s", f"{len(paths)} images")
    )

    if args.ckpt.exists():
        state = torch.load(args.ckpt, map_location="cpu", weights_only=False)
        model.load_state_dict(state["state_dict"])
        raw["checkpoint"] = str(args.ckpt)
    else:
        raw["checkpoint"] = None
        print(f"no checkpoint at {args.ckpt}: generation speed of the untrained model")
    for beams in (1, 3, 5):
        runs = [caption_speed(model, data, beams) for _ in range(3)]  # median of 3: a shared machine is noisy
        speed, bleu4 = statistics.median(r[0] for r in runs), runs[0][1]
        raw[f"captions_per_s_beams{beams}"], raw[f"bleu4_beams{beams}"] = speed, bleu4
        name = "greedy" if beams == 1 else f"beam search, {beams} beams"
        rows.append((f"captioning, {name}", f"{speed:.0f} captions/s", f"val BLEU-4 {bleu4:.4f}"))

    table = ["| measurement | value | note |", "|---|---|---|", *[f"| {a} | {b} | {c} |" for a, b, c in rows]]
    print("\n".join(table))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"table": table, "raw": raw}, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
