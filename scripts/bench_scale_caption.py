"""Caption preparation at scale (``make bench-scale``): synthetic COCO-format data, cold and warm launches.

Writes a synthetic set in the real format (640x480 JPEGs in mixed modes: RGB, grey ``L`` and ``CMYK``; a COCO
captions JSON with 5 Turkish captions per image; a validation split of 1/20 of the training size) at each size of
``--sizes``, then per size, each in a fresh subprocess so timings and peak RSS are per run:

* cold: ``prepare_data`` with an empty cache (tokenizer, tiny CLIP, image checks, CLIP features);
* warm: a new process, ``prepare_data`` + ``setup("fit")`` + the first training batch, caches on disk.

Prints one markdown table; rows above the largest measured size are extrapolated with the measured growth per 10x
(labelled). The CLIP is the tiny CPU one of ``configs/caption/tiny.yaml`` (ViT-B/32 on this CPU is 0.25-0.57 s per
image, which would measure CLIP, not the preparation); decoding the 640x480 JPEGs is the real cost either way.

    python scripts/bench_scale_caption.py [--sizes 1000 10000] [--full 118287] [--keep] [--data DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COCO_TRAIN_2017 = 118_287
WORDS = (
    "bir iki kırmızı mavi yeşil sarı kedi köpek adam kadın çocuk masa üzerinde yanında önünde arkasında "
    "sokakta parkta duran oturan koşan büyük küçük beyaz siyah araba otobüs tren bisiklet tabak pizza"
).split()
MODES = ("RGB", "L", "CMYK")


def pool_images(count: int, seed: int = 0) -> list[bytes]:
    """``count`` distinct 640x480 JPEGs (rectangles on a gradient), cycling through the modes."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    pool = []
    for k in range(count):
        image = Image.linear_gradient("L").resize((640, 480)).convert("RGB")
        draw = ImageDraw.Draw(image)
        for _ in range(6):
            x, y = rng.randrange(560), rng.randrange(400)
            colour = tuple(rng.randrange(256) for _ in range(3))
            draw.rectangle((x, y, x + rng.randrange(20, 80), y + rng.randrange(20, 80)), fill=colour)
        path = Path(tempfile.mkstemp(suffix=".jpg")[1])
        image.convert(MODES[k % len(MODES)]).save(path, quality=85)
        pool.append(path.read_bytes())
        path.unlink()
    return pool


def write_split(
    root: Path, split: str, count: int, first_id: int, pool: list[bytes], rng: random.Random
) -> Path:
    folder = root / f"{split}2017"
    folder.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for k in range(count):
        image_id = first_id + k
        name = f"{image_id:012d}.jpg"
        (folder / name).write_bytes(pool[k % len(pool)])
        images.append({"id": image_id, "file_name": f"{split}2017/{name}", "width": 640, "height": 480})
        for _ in range(5):
            caption = " ".join(rng.choice(WORDS) for _ in range(rng.randrange(6, 13)))
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "caption": caption})
    path = root / f"captions_{split}2017.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations}, ensure_ascii=False), "utf-8")
    return path


def generate(root: Path, size: int) -> None:
    if (root / "done").exists():
        return
    rng = random.Random(size)
    pool = pool_images(48)
    write_split(root, "train", size, 1, pool, rng)
    write_split(root, "val", max(50, size // 20), 10_000_000, pool, rng)
    (root / "done").write_text("ok")


def child(root: Path, cache: Path, mode: str) -> None:
    """One measured run in this (fresh) process; prints a JSON line."""
    start = time.perf_counter()
    from projects.caption.data import CaptionDataModule, ClipSpec, TokenizerSpec

    imported = time.perf_counter()
    clip = ClipSpec(
        config={
            "image_size": 32,
            "patch_size": 8,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "projection_dim": 32,
        }
    )
    data = CaptionDataModule(
        train_file=str(root / "captions_train2017.json"),
        val_file=str(root / "captions_val2017.json"),
        image_root=str(root),
        clip=clip,
        tokenizer=TokenizerSpec(vocab_size=1000),
        cache_dir=str(cache),
        batch_size=40,
    )
    data.prepare_data()
    prepared = time.perf_counter()
    if mode == "warm":
        data.setup("fit")
        next(iter(data.train_dataloader()))
    done = time.perf_counter()
    peak_kb = max(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
    )
    print(
        json.dumps(
            {
                "import_s": imported - start,
                "prepare_s": prepared - imported,
                "first_batch_s": done - imported,
                "peak_mb": peak_kb / 1024,
            }
        )
    )


def run_child(root: Path, cache: Path, mode: str) -> dict:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        mode,
        "--data",
        str(root),
        "--cache",
        str(cache),
    ]
    out = subprocess.run(
        command, check=True, capture_output=True, text=True, env=os.environ | {"TGM_BENCH": "1"}
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def growth(small: float, large: float, factor: float) -> float:
    """Growth per 10x from two sizes ``factor`` apart."""
    return (large / small) ** (1.0 / math.log10(factor)) if small > 0 else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000], help="training images per set")
    parser.add_argument(
        "--full", type=int, default=COCO_TRAIN_2017, help="extrapolate to this size (0: none)"
    )
    parser.add_argument("--data", type=Path, default=None, help="where the sets go (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the generated data")
    parser.add_argument("--child", choices=["cold", "warm"], help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.data, args.cache, args.child)
        return
    base = args.data or Path(tempfile.mkdtemp(prefix="bench_scale_caption-"))
    rows = []
    try:
        for size in args.sizes:
            root = base / f"coco_{size}"
            started = time.perf_counter()
            generate(root, size)
            print(
                f"# {size}: data ready in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True
            )
            cache = root / "cache"
            shutil.rmtree(cache, ignore_errors=True)
            cold = run_child(root, cache, "cold")
            warm = run_child(root, cache, "warm")
            print(f"# {size}: cold {cold}, warm {warm}", file=sys.stderr, flush=True)
            rows.append((size, cold, warm))
    finally:
        if not args.keep and args.data is None:
            shutil.rmtree(base, ignore_errors=True)
    print(
        "| size (train images) | cold prepare s | warm time-to-first-batch s | peak RSS MB cold | peak RSS MB warm |"
    )
    print("|---|---|---|---|---|")
    for size, cold, warm in rows:
        print(
            f"| {size} | {cold['prepare_s']:.1f} | {warm['first_batch_s']:.2f} | {cold['peak_mb']:.0f} | "
            f"{warm['peak_mb']:.0f} |"
        )
    if len(rows) >= 2:
        (s0, c0, w0), (s1, c1, w1) = rows[-2], rows[-1]
        keys = (("prepare_s", c0, c1), ("first_batch_s", w0, w1), ("peak_mb", c0, c1), ("peak_mb", w0, w1))
        ratios = [growth(a[key], b[key], s1 / s0) for key, a, b in keys]
        print("| growth per 10x (ratio) | " + " | ".join(f"{r:.2f}" for r in ratios) + " |")
        if args.full and args.full > s1:
            decades = math.log10(args.full / s1)
            values = [b[key] * r**decades for (key, _, b), r in zip(keys, ratios, strict=True)]
            print(
                f"| {args.full} (extrapolated from {s0} and {s1}) | {values[0]:.0f} | {values[1]:.1f} | "
                f"{values[2]:.0f} | {values[3]:.0f} |"
            )
    print(
        f"(import time of the warm process, not counted: {rows[-1][2]['import_s']:.1f} s; 2-core shared CPU)"
    )


if __name__ == "__main__":
    main()
