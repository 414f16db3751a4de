"""How diffusion's data preparation grows with the data (`make bench-scale` runs it after the other projects).

Synthetic EMNIST-format data (gzip IDX, transposed, mapping file; each image a few random strokes, so it
compresses like handwriting) at ``--sizes`` multiples of a base of 1,128 train + 188 test images (1 % of
EMNIST-balanced): by default 1x, 10x and 100x = the full EMNIST-balanced size (112,800 / 18,800, 47 classes).
EMNIST-byclass (697,932 / 116,323) is 6.2 x balanced: pass ``--sizes 1,10,100,620`` on a machine with time.

Per size, each in its own process so peak RSS is per run (the child's ``ru_maxrss``):
* cold: ``prepare_data()`` + ``setup()`` with an empty cache (decoding the IDX files);
* warm: a fresh process, ``prepare_data()`` + ``setup()`` + the first training batch, with the caches in place.

The judge is switched off (``prepare_judge: false``): its cost is training epochs, proportional to the data by
design, and measured by the judge tests and the README, not here. Prints one markdown table; ratios and growth
per 10x are what count (wall times on a shared machine are inflated). Also runs against an older checkout:

    PYTHONPATH=/tmp/before python scripts/bench_scale_diffusion.py [--sizes 1,10,100] [--keep] [--image-size 32]
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

BASE_TRAIN, BASE_TEST, CLASSES = 1128, 188, 47


def write_synthetic(folder: Path, scale: float, seed: int = 0) -> tuple[int, int]:
    """EMNIST-balanced-format files with ``scale`` x the base counts; returns (train, test) counts."""
    from projects.diffusion.generate import BALANCED_CLASSES
    from projects.diffusion.idx import emnist_paths, write_idx

    rng = np.random.default_rng(seed)
    counts = {}
    for subset, base in (("train", BASE_TRAIN), ("test", BASE_TEST)):
        n = int(round(base * scale))
        images = np.zeros((n, 28, 28), dtype=np.uint8)
        for start in range(0, n, 10_000):  # a few bright strokes per image, in chunks (bounded memory)
            chunk = images[start : start + 10_000]
            for _ in range(4):
                rows = rng.integers(4, 24, size=(len(chunk), 1))
                cols = rng.integers(4, 24, size=(len(chunk), 1))
                for offset in range(6):
                    r, c = (rows + offset).clip(0, 27), (cols + offset // 2).clip(0, 27)
                    chunk[np.arange(len(chunk))[:, None], r, c] = 255
        labels = (np.arange(n) % CLASSES).astype(np.uint8)
        images_path, labels_path = emnist_paths(folder, "balanced", subset)
        write_idx(images_path, images.transpose(0, 2, 1))
        write_idx(labels_path, labels)
        counts[subset] = n
    mapping = folder / "emnist-balanced-mapping.txt"
    mapping.write_text("".join(f"{k} {ord(c)}\n" for k, c in enumerate(BALANCED_CLASSES)))
    return counts["train"], counts["test"]


def child(data_dir: str, cache_dir: str, image_size: int, first_batch: bool) -> None:
    """One measured run: prepare_data + setup (+ the first training batch); prints JSON."""
    import torch

    from projects.diffusion.data import CharacterDataModule

    torch.set_num_threads(1)
    began = time.perf_counter()
    data = CharacterDataModule(
        data_dir=data_dir,
        source="emnist",
        split="balanced",
        image_size=image_size,
        batch_size=64,
        prepare_judge=False,
        judge_cache_dir=cache_dir,
    )
    data.prepare_data()
    data.setup("fit")
    if first_batch:
        images, _ = next(iter(data.train_dataloader()))
        assert images.shape[0] == 64
    seconds = time.perf_counter() - began
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_mb": peak_mb}))


def measure(data_dir: Path, cache_dir: Path, image_size: int, first_batch: bool) -> dict:
    command = [sys.executable, __file__, "--child", str(data_dir), str(cache_dir), str(image_size)]
    if first_batch:
        command.append("--first-batch")
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=dict(os.environ))
    if done.returncode != 0:
        raise SystemExit(f"child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def growth(rows: list[dict], key: str, i: int) -> str:
    if i == 0:
        return "-"
    size_ratio = rows[i]["scale"] / rows[i - 1]["scale"]
    value_ratio = rows[i][key] / max(rows[i - 1][key], 1e-9)
    return f"{value_ratio ** (1 / math.log10(size_ratio)):.2f}"  # ratio per 10x data


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]), "--first-batch" in sys.argv)
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1,10,100", help="multiples of 1,128 train + 188 test images")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--keep", action="store_true", help="keep the synthetic data folder")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench_scale_diffusion_"))
    rows = []
    try:
        for scale in [float(s) for s in args.sizes.split(",")]:
            folder, cache = root / f"x{scale:g}", root / f"x{scale:g}_cache"
            folder.mkdir()
            began = time.perf_counter()
            n_train, n_test = write_synthetic(folder, scale)
            written = time.perf_counter() - began
            cold = measure(folder, cache, args.image_size, first_batch=False)
            warm = measure(folder, cache, args.image_size, first_batch=True)
            size_mb = sum(p.stat().st_size for p in folder.iterdir()) / 2**20
            rows.append(
                {
                    "scale": scale,
                    "train": n_train,
                    "test": n_test,
                    "gz_mb": size_mb,
                    "cold": cold["seconds"],
                    "warm": warm["seconds"],
                    "cold_mb": cold["peak_mb"],
                    "warm_mb": warm["peak_mb"],
                }
            )
            print(
                f"x{scale:g}: {n_train}/{n_test} images ({size_mb:.1f} MB gz, written in {written:.1f} s): "
                f"cold {cold}, warm {warm}",
                flush=True,
            )
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print(
        f"\ndiffusion: EMNIST-balanced format, {args.image_size}x{args.image_size}, judge off, batch 64, "
        "1 torch thread; growth = ratio per 10x data (1.0 flat, 10.0 linear)\n"
    )
    print(
        "| size (train/test) | cold prepare s | warm time-to-first-batch s | peak RSS MB cold | peak RSS MB warm "
        "| growth per 10x: cold s, warm s, RSS cold, RSS warm |"
    )
    print("|---|---|---|---|---|---|")
    for i, r in enumerate(rows):
        g = ", ".join(growth(rows, k, i) for k in ("cold", "warm", "cold_mb", "warm_mb"))
        print(
            f"| x{r['scale']:g} ({r['train']}/{r['test']}) | {r['cold']:.2f} | {r['warm']:.2f} "
            f"| {r['cold_mb']:.0f} | {r['warm_mb']:.0f} | {g} |"
        )


if __name__ == "__main__":
    main()
