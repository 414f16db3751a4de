"""Pose data at real size (issue 21, ``make bench-scale``): cold preparation, warm time to the first training
batch and peak RSS at fractions of PHOENIX14T (7,096 train / 519 dev / 642 test sequences, ~1.0 GB of ``.skels``).

Synthetic data in the exact Progressive Transformers format (``.text/.skels/.files``, 150 joint values + a 0-based
counter per frame, 16-172 frames per sequence, mean 94: ~1.0 GB at full size) is written to a temporary folder
(removed afterwards unless ``--keep``). For every size, two fresh processes run ``PoseDataModule`` with the
default settings:

* cold: ``prepare_data`` on an empty cache (timed alone), then ``setup("fit")`` and the first training batch;
* warm: a new process on the now-full cache: ``prepare_data`` + ``setup("fit")`` + the first training batch.

Peak RSS is each process's own ``ru_maxrss`` (one process per run, so per run); ``import MB`` is the RSS after the
imports, the part that does not depend on the data. ``--code DIR`` runs the children against another checkout
(e.g. a worktree of the code before a change: ``--code /tmp/before``). ``--extrapolate-to 1.0`` adds a row
extrapolated linearly from the two largest measured sizes when that size was not measured (labelled).
Timings on a shared machine are inflated by contention: compare ratios and growth per 10x.

    python scripts/bench_scale_pose.py                      # sizes 0.01, 0.1, 1.0 of PHOENIX14T
    python scripts/bench_scale_pose.py --sizes 0.01,0.1 --extrapolate-to 1.0
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PHOENIX = {"train": 7096, "dev": 519, "test": 642}
TRG_SIZE = 150
REPO = Path(__file__).resolve().parent.parent


def write_synthetic_split(prefix: Path, count: int, rng: np.random.Generator, words: list[str]) -> int:
    """``count`` sequences in PT's format (0-based counters ``i / N``); returns the ``.skels`` size in bytes.
    Frames are drawn from a pool of formatted random poses, so writing 1 GB takes seconds, not minutes."""
    pool = [" ".join(f"{v:.5f}" for v in rng.uniform(-1.0, 1.0, TRG_SIZE)) for _ in range(512)]
    with (
        open(f"{prefix}.skels", "w", encoding="utf-8") as skels,
        open(f"{prefix}.text", "w", encoding="utf-8") as text,
        open(f"{prefix}.files", "w", encoding="utf-8") as files,
    ):
        for index in range(count):
            length = int(rng.integers(16, 173))
            frames = rng.integers(0, len(pool), length)
            skels.write(" ".join(f"{pool[k]} {i / length:.5f}" for i, k in enumerate(frames)) + "\n")
            sentence = rng.choice(words, size=int(rng.integers(3, 13)))
            text.write(" ".join(sentence) + "\n")
            files.write(f"{prefix.name}/{index:05d}\n")
    return Path(f"{prefix}.skels").stat().st_size


def generate(folder: Path, fraction: float, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    syllables = [
        "ka",
        "le",
        "mi",
        "or",
        "tu",
        "ğa",
        "şi",
        "ün",
        "ır",
        "ev",
        "ok",
        "ul",
        "ba",
        "çe",
        "dö",
        "za",
    ]
    words = sorted({"".join(rng.choice(syllables, size=int(rng.integers(2, 5)))) for _ in range(3000)})[:1085]
    counts = {split: max(2, round(n * fraction)) for split, n in PHOENIX.items()}
    folder.mkdir(parents=True, exist_ok=True)
    size = sum(write_synthetic_split(folder / split, n, rng, words) for split, n in counts.items())
    return {**counts, "bytes": size}


def child(data: Path, cache: Path, mode: str) -> None:
    """One measured run in this process; prints one JSON line."""
    import torch

    from projects.pose.data import PoseDataModule

    torch.set_num_threads(1)
    imported = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    dm = PoseDataModule(
        train=str(data / "train"),
        dev=str(data / "dev"),
        test=str(data / "test"),
        trg_size=TRG_SIZE,
        cache_dir=str(cache),
    )
    start = time.perf_counter()
    dm.prepare_data()
    prepared = time.perf_counter()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    end = time.perf_counter()
    assert batch["frames"].shape[-1] == TRG_SIZE + 1
    print(
        json.dumps(
            {
                "mode": mode,
                "prepare_s": prepared - start,
                "setup_batch_s": end - prepared,
                "total_s": end - start,
                "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "import_mb": imported,
            }
        )
    )


def run_child(data: Path, cache: Path, mode: str, code: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, str(Path(__file__).resolve()), "--child", mode, "--data", str(data)]
    done = subprocess.run(
        [*command, "--cache", str(cache)], env=env, cwd=code, capture_output=True, text=True, check=False
    )
    if done.returncode:
        raise SystemExit(f"{mode} run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def growth(rows: list[dict], key: str) -> str:
    """Growth per 10x data between the last two rows (log-log slope)."""
    if len(rows) < 2:
        return ""
    a, b = rows[-2], rows[-1]
    if a[key] <= 0 or b[key] <= 0 or a["fraction"] == b["fraction"]:
        return ""
    slope = math.log(b[key] / a[key]) / math.log(b["fraction"] / a["fraction"])
    return f"{10**slope:.1f}x"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="0.01,0.1,1.0", help="fractions of PHOENIX14T, comma-separated")
    parser.add_argument("--extrapolate-to", type=float, default=None)
    parser.add_argument("--code", type=Path, default=REPO, help="checkout whose projects.pose is measured")
    parser.add_argument("--root", type=Path, default=None, help="folder for data and caches (default: temp)")
    parser.add_argument("--keep", action="store_true", help="keep the generated data and caches")
    parser.add_argument("--child", choices=["cold", "warm"], help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.data, args.cache, args.child)
        return
    root = args.root or Path(tempfile.mkdtemp(prefix="bench_scale_pose_"))
    rows = []
    try:
        for fraction in (float(s) for s in args.sizes.split(",")):
            data = root / f"data_{fraction:g}"
            cache = root / f"cache_{fraction:g}"
            shutil.rmtree(cache, ignore_errors=True)
            started = time.perf_counter()
            info = generate(data, fraction)
            print(
                f"# {fraction:g}: generated {info['train']}/{info['dev']}/{info['test']} sequences, "
                f"{info['bytes'] / 1e9:.3f} GB in {time.perf_counter() - started:.0f} s",
                flush=True,
            )
            cold = run_child(data, cache, "cold", args.code)
            warm = run_child(data, cache, "warm", args.code)
            rows.append(
                {
                    "fraction": fraction,
                    "label": f"{fraction:g} ({info['train']}/{info['dev']}/{info['test']}, "
                    f"{info['bytes'] / 1e9:.2f} GB)",
                    "cold_prepare": cold["prepare_s"],
                    "cold_setup": cold["setup_batch_s"],
                    "warm": warm["total_s"],
                    "cold_mb": cold["peak_mb"],
                    "warm_mb": warm["peak_mb"],
                    "cold_data_mb": cold["peak_mb"] - cold["import_mb"],
                    "warm_data_mb": warm["peak_mb"] - warm["import_mb"],
                    "import_mb": cold["import_mb"],
                    "extrapolated": False,
                }
            )
            print(f"# {json.dumps(rows[-1])}", flush=True)
            if not args.keep:
                shutil.rmtree(cache, ignore_errors=True)
                shutil.rmtree(data, ignore_errors=True)
    finally:
        if not args.keep and args.root is None:
            shutil.rmtree(root, ignore_errors=True)
    keys = ("cold_prepare", "cold_setup", "warm", "cold_mb", "warm_mb", "cold_data_mb", "warm_data_mb")
    if args.extrapolate_to and len(rows) >= 2 and all(r["fraction"] != args.extrapolate_to for r in rows):
        a, b = rows[-2], rows[-1]
        t = (args.extrapolate_to - a["fraction"]) / (b["fraction"] - a["fraction"])
        row = {key: a[key] + t * (b[key] - a[key]) for key in keys}
        label = (
            f"{args.extrapolate_to:g} (EXTRAPOLATED linearly from {a['fraction']:g} and {b['fraction']:g})"
        )
        rows.append({**row, "fraction": args.extrapolate_to, "label": label, "import_mb": b["import_mb"]})
    print(f"\npose data at PHOENIX14T fractions (code: {args.code})\n")
    print(
        "| size (train/dev/test, .skels) | cold prepare_data s | cold setup + 1st batch s | "
        "warm time-to-first-batch s | peak RSS MB cold / warm | above imports MB cold / warm |"
    )
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['label']} | {row['cold_prepare']:.1f} | {row['cold_setup']:.1f} | {row['warm']:.1f} | "
            f"{row['cold_mb']:.0f} / {row['warm_mb']:.0f} | {row['cold_data_mb']:.0f} / {row['warm_data_mb']:.0f} |"
        )
    if len(rows) >= 2:
        print(
            f"| growth per 10x (last two rows) | {growth(rows, 'cold_prepare')} | {growth(rows, 'cold_setup')} | "
            f"{growth(rows, 'warm')} | {growth(rows, 'cold_mb')} / {growth(rows, 'warm_mb')} | "
            f"{growth(rows, 'cold_data_mb')} / {growth(rows, 'warm_data_mb')} |"
        )


if __name__ == "__main__":
    main()
