"""shape3d data preparation at scale: cold preparation, warm time to the first training batch, peak RSS.

    python scripts/bench_scale_shape3d.py                      # 20 and 200 meshes, 2,000 extrapolated (linear)
    python scripts/bench_scale_shape3d.py --sizes 200 2000     # measure the real size (issue 21: 2,000 meshes)

Synthetic data in the real format (a folder of ``.ply`` / ``.obj`` / ``.off`` / ``.stl`` meshes + ``train.jsonl`` /
``val.jsonl``, 9:1): every mesh is two or three overlapping closed parts (box, sphere, cylinder) at a random
scale between 0.01 and 100 (normalisation must handle it). For each size two fresh processes run the datamodule as
``tgm fit`` would, ``prepare_data`` + ``setup("fit")`` + the first training batch: cold (no cache) and warm (every
cache from the cold run on disk). Each run is a subprocess that reports its own peak RSS
(``getrusage(RUSAGE_SELF).ru_maxrss``; no DataLoader workers, so that is the whole run). The data is generated in
a temporary folder, removed afterwards unless ``--keep`` (or ``--data-root`` is given, which also reuses data).
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

REPO = Path(__file__).resolve().parents[1]
FULL_SIZE = 2000  # issue 21: "thousands of meshes"; its measurements used 200 and 2,000
FORMATS = (".ply", ".obj", ".off", ".stl")


def generate(root: Path, size: int, seed: int = 0) -> None:
    """``size`` meshes of overlapping parts at mixed scales, and the two captions files (reused when present)."""
    import numpy as np
    import trimesh

    stamp = root / "bench_manifest.json"
    if stamp.exists() and json.loads(stamp.read_text()) == {"size": size, "seed": seed}:
        return
    rng = np.random.default_rng(seed)
    (root / "meshes").mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(size):
        parts = []
        for _ in range(int(rng.integers(2, 4))):
            kind = int(rng.integers(3))
            if kind == 0:
                part = trimesh.creation.box(rng.uniform(0.3, 1.0, 3))
            elif kind == 1:
                part = trimesh.creation.icosphere(3, radius=float(rng.uniform(0.2, 0.6)))
            else:
                part = trimesh.creation.cylinder(float(rng.uniform(0.1, 0.4)), float(rng.uniform(0.5, 1.5)))
            part.apply_translation(rng.uniform(-0.3, 0.3, 3))  # overlapping parts
            parts.append(part)
        mesh = trimesh.util.concatenate(parts)
        mesh.apply_scale(10 ** rng.uniform(-2, 2))  # mixed scale
        relative = f"meshes/{index:05d}{FORMATS[index % len(FORMATS)]}"
        mesh.export(root / relative)
        rows.append({"mesh": relative, "text": f"{len(parts)} parçalı bir şekil {index % 7}", "style": ""})
    cut = max(1, size // 10)
    for name, split in (("val", rows[:cut]), ("train", rows[cut:])):
        with (root / f"{name}.jsonl").open("w", encoding="utf-8") as handle:
            for row in split:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    stamp.write_text(json.dumps({"size": size, "seed": seed}))


def child(data_dir: str) -> None:
    """One launch as ``tgm fit`` makes it: prepare_data, setup("fit"), first training batch; prints JSON."""
    sys.path.insert(0, os.getcwd())
    from projects.shape3d.data import ReferencePoints, ShapeDataModule

    start = time.perf_counter()
    datamodule = ShapeDataModule(
        data_dir=data_dir, batch_size=8, num_points=2048, reference=ReferencePoints(num_points=512)
    )
    datamodule.prepare_data()
    datamodule.setup("fit")
    prepared = time.perf_counter() - start
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["voxels"].shape[0] == min(8, len(datamodule.train_set))
    first_batch = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result = {"prepare_s": prepared, "first_batch_s": first_batch, "peak_mb": usage.ru_maxrss / 1024}
    print(json.dumps(result | {"cpu_s": usage.ru_utime + usage.ru_stime}))


def launch(data_dir: Path, code: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(code), HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
    result = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", str(data_dir)],
        cwd=code,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"bench child failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20, 200], help="meshes per data set")
    parser.add_argument("--keep", action="store_true", help="keep the generated data")
    parser.add_argument("--data-root", type=Path, help="generate (or reuse) data under this folder")
    parser.add_argument("--code", type=Path, default=REPO, help="repository whose datamodule is measured")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    root = args.data_root or Path(tempfile.mkdtemp(prefix="bench_scale_shape3d_"))
    rows = []
    try:
        for size in args.sizes:
            data_dir = root / f"n{size}"
            generate(data_dir, size)
            for derived in ("cache", "tokenizer"):  # cold: nothing prepared
                shutil.rmtree(data_dir / derived, ignore_errors=True)
            cold = launch(data_dir, args.code)
            warm = launch(data_dir, args.code)
            rows.append((size, cold, warm, False))
            print(f"# {size} meshes: cold {cold}, warm {warm}", file=sys.stderr, flush=True)
    finally:
        if not (args.keep or args.data_root):
            shutil.rmtree(root, ignore_errors=True)
    if FULL_SIZE not in args.sizes and len(rows) >= 2:
        # extrapolated linearly from the two largest sizes: the fixed start-up cost (imports) stays fixed and the
        # per-mesh cost between them is carried on (a power law through 20 and 200 would inflate the start-up)
        (n0, c0, w0, _), (n1, c1, w1, _) = rows[-2], rows[-1]

        def grow(a: dict, b: dict) -> dict:
            return {key: b[key] + max(0.0, b[key] - a[key]) * (FULL_SIZE - n1) / (n1 - n0) for key in b}

        rows.append((FULL_SIZE, grow(c0, c1), grow(w0, w1), True))
    print(
        "| meshes | cold prepare s (CPU s) | warm time-to-first-batch s (CPU s) | peak RSS MB (cold, warm) "
        "| growth per 10x (cold prepare, warm first batch, warm RSS) |"
    )
    print("|---:|---:|---:|---:|---|")
    for i, (size, cold, warm, extrapolated) in enumerate(rows):
        growth = "–"
        if i > 0:
            prev_size, prev_cold, prev_warm, _ = rows[i - 1]
            exponent = 1 / math.log10(size / prev_size)

            def ratio(a: float, b: float, e: float = exponent) -> str:
                return f"{(b / max(a, 1e-9)) ** e:.2f}x"

            growth = ", ".join(
                [
                    ratio(prev_cold["prepare_s"], cold["prepare_s"]),
                    ratio(prev_warm["first_batch_s"], warm["first_batch_s"]),
                    ratio(prev_warm["peak_mb"], warm["peak_mb"]),
                ]
            )
        label = f"{size:,} (extrapolated)" if extrapolated else f"{size:,}"
        print(
            f"| {label} | {cold['prepare_s']:.1f} ({cold['cpu_s']:.0f}) | {warm['first_batch_s']:.1f} "
            f"({warm['cpu_s']:.1f}) "
            f"| {cold['peak_mb']:.0f}, {warm['peak_mb']:.0f} | {growth} |"
        )


if __name__ == "__main__":
    main()
