"""Benchmark for projects/shape3d (`make bench-3d`).

1. Chamfer distance (pytorch3d semantics) at 2k / 10k / 50k points per cloud: this repo's chunked torch op vs
   scipy's cKDTree vs a naive full ``torch.cdist`` matrix -- wall time and peak extra memory (resident set); and the
   brute-force (GPU) path's relative error away from the origin (offsets up to 1e4, scales 1e-3 .. 1e3) next to its
   time, against a float64 KD-tree, with the naive float32 ``cdist`` for comparison.
2. Voxelisation and marching cubes time per shape at 32^3 / 48^3 / 64^3 on the generated motif set.
3. Training step time (forward + backward + AdamW) of the default model at 32^3 / 48^3 / 64^3.

Peak memory is the process's high-water mark (VmHWM) above its resident size before the call, reset between
measurements through /proc/self/clear_refs (Linux). Prints a Markdown table and writes it with a JSON copy to
runs/shape3d/bench.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from common.geometry import HAS_PYTORCH3D, chamfer, voxelize_mesh, voxels_to_mesh  # noqa: E402


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def measure(fn, repeats: int = 1) -> tuple[float, float]:
    """(best wall seconds, peak extra MiB) of ``fn()``."""
    times, peak = [], 0.0
    for _ in range(repeats):
        try:
            Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark
        except OSError:
            pass
        before = _status("VmRSS")
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        peak = max(peak, (_status("VmHWM") - before) / 2**20)
    return min(times), peak


def naive_chamfer(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    d = torch.cdist(x, y).square()  # the whole N x M matrix at once
    return d.min(2).values.mean(1) + d.min(1).values.mean(1)


def kdtree_chamfer(x: np.ndarray, y: np.ndarray) -> float:
    from scipy.spatial import cKDTree

    d_xy, _ = cKDTree(y).query(x)
    d_yx, _ = cKDTree(x).query(y)
    return float((d_xy**2).mean() + (d_yx**2).mean())


def bench_chamfer(sizes: list[int], naive_limit: int) -> list[dict]:
    rows = []
    rng = np.random.default_rng(0)
    for n in sizes:
        x_np = rng.random((n, 3), dtype=np.float32) - 0.5
        y_np = rng.random((n, 3), dtype=np.float32) - 0.5
        x, y = torch.from_numpy(x_np)[None], torch.from_numpy(y_np)[None]
        repeats = 3 if n <= 10_000 else 1
        for method, label in (
            ("kdtree", "ours, CPU default (KD-tree search + torch distances)"),
            ("brute", "ours, GPU path without pytorch3d (chunked brute-force torch)"),
        ):
            seconds, mib = measure(lambda x=x, y=y, method=method: chamfer(x, y, method=method), repeats)
            value = float(chamfer(x, y, method=method))
            rows.append(
                {
                    "op": "chamfer",
                    "method": label,
                    "points": n,
                    "seconds": seconds,
                    "peak_mib": mib,
                    "value": value,
                }
            )
        seconds, mib = measure(lambda x_np=x_np, y_np=y_np: kdtree_chamfer(x_np, y_np), repeats)
        rows.append(
            {
                "op": "chamfer",
                "method": "scipy cKDTree",
                "points": n,
                "seconds": seconds,
                "peak_mib": mib,
                "value": kdtree_chamfer(x_np, y_np),
            }
        )
        if n <= naive_limit:
            seconds, mib = measure(lambda x=x, y=y: naive_chamfer(x, y), repeats)
            rows.append(
                {
                    "op": "chamfer",
                    "method": "naive cdist",
                    "points": n,
                    "seconds": seconds,
                    "peak_mib": mib,
                    "value": float(naive_chamfer(x, y)),
                }
            )
        else:
            need = n * n * 4 / 2**30
            rows.append(
                {
                    "op": "chamfer",
                    "method": "naive cdist",
                    "points": n,
                    "seconds": None,
                    "peak_mib": None,
                    "value": None,
                    "note": f"skipped: the {n}x{n} matrix alone needs {need:.1f} GiB",
                }
            )
        print(f"chamfer {n}: done", flush=True)
    return rows


OFFSETS = [
    (0.0, 1.0),
    (100.0, 1.0),
    (1000.0, 1.0),
    (5000.0, 10.0),
    (1e4, 1.0),
    (1e4, 1e-3),
    (1e4, 1e3),
    (0.0, 1e-3),
]


def bench_offsets(n: int) -> list[dict]:
    """Relative error of the brute-force path (and of a naive float32 cdist) on clouds of ``n`` float32 points in a
    cube of side ``scale`` centred at ``offset`` on every axis, against a float64 KD-tree on the same points."""
    rows = []
    rng = np.random.default_rng(1)
    for offset, scale in OFFSETS:
        x_np = ((rng.random((n, 3)) - 0.5) * scale + offset).astype(np.float32)
        y_np = ((rng.random((n, 3)) - 0.5) * scale + offset).astype(np.float32)
        x, y = torch.from_numpy(x_np)[None], torch.from_numpy(y_np)[None]
        reference = kdtree_chamfer(x_np.astype(np.float64), y_np.astype(np.float64))
        seconds, _ = measure(lambda x=x, y=y: chamfer(x, y, method="brute"))
        brute = float(chamfer(x, y, method="brute"))
        naive = float(naive_chamfer(x, y))
        rows.append(
            {
                "op": "chamfer at offset",
                "points": n,
                "offset": offset,
                "scale": scale,
                "seconds": seconds,
                "brute_rel_error": abs(brute - reference) / reference,
                "naive_cdist_rel_error": abs(naive - reference) / reference,
            }
        )
    print("chamfer offsets: done", flush=True)
    return rows


def bench_voxels(resolutions: list[int], shapes: int) -> list[dict]:
    from projects.shape3d.data import normalize_to_unit_cube
    from projects.shape3d.generate import variants

    rng = np.random.default_rng(0)
    meshes = [normalize_to_unit_cube(v.build(rng)) for v in variants()[:shapes]]
    rows = []
    for resolution in resolutions:
        seconds, mib = measure(lambda r=resolution: [voxelize_mesh(m, r) for m in meshes])
        rows.append(
            {
                "op": "voxelise (winding number)",
                "resolution": resolution,
                "seconds_per_shape": seconds / len(meshes),
                "peak_mib": mib,
            }
        )
        grids = [voxelize_mesh(m, resolution).astype(np.float32) for m in meshes]
        seconds, mib = measure(lambda grids=grids: [voxels_to_mesh(g) for g in grids])
        rows.append(
            {
                "op": "marching cubes (skimage)",
                "resolution": resolution,
                "seconds_per_shape": seconds / len(meshes),
                "peak_mib": mib,
            }
        )
    print("voxels: done", flush=True)
    return rows


def bench_train_step(resolutions: list[int], batch_size: int, steps: int) -> list[dict]:
    import yaml

    from projects.shape3d.data import ShapeDataModule
    from projects.shape3d.module import Shape3DModule

    config = yaml.safe_load((ROOT / "configs" / "shape3d" / "default.yaml").read_text())["model"]["init_args"]
    data = ShapeDataModule()  # the linked values, as the CLI gives them (prepares the default tokenizer once)
    # sets torch threads from the config (1)
    model = Shape3DModule(**config, tokenizer_dir=data.tokenizer_dir, text_vocab_size=data.text_vocab_size)
    model.train()
    optimizer = model.configure_optimizers()["optimizer"]
    texts = ["ince uzun bir silindir", "sekiz köşeli yıldız motifi"] * (batch_size // 2)
    rows = []
    for resolution in resolutions:
        model.set_resolution(resolution)
        g = torch.Generator().manual_seed(0)
        batch = {
            "voxels": (torch.rand(batch_size, resolution, resolution, resolution, generator=g) > 0.7).float(),
            "distances": torch.rand(batch_size, 32, 32, 32, generator=g) * 0.01,
            "points": torch.rand(batch_size, 2048, 3, generator=g) - 0.5,
        }

        def step(batch: dict = batch) -> None:
            logits = model(texts, [""] * batch_size)
            loss = model._losses(batch, logits)["loss"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        step()  # warm-up
        seconds, mib = measure(step, steps)
        rows.append(
            {
                "op": "train step",
                "resolution": resolution,
                "batch": batch_size,
                "seconds": seconds,
                "peak_mib": mib,
            }
        )
        print(f"train step {resolution}: done", flush=True)
    return rows


def bench_refinement(resolutions: list[int], batch_size: int, steps: int) -> list[dict]:
    """Training step of the default model with the mesh refinement of configs/shape3d/refine.yaml, next to the same
    step without it, on one batch of motif shapes. An untrained decoder predicts noise, which the refinement skips,
    so the step meshes the targets (what a trained decoder predicts) while keeping the real step's gradients."""
    import yaml

    from projects.shape3d.data import ShapeDataModule, normalize_to_unit_cube
    from projects.shape3d.generate import variants
    from projects.shape3d.model import surface_samples
    from projects.shape3d.module import Shape3DModule

    configs = ROOT / "configs" / "shape3d"
    config = yaml.safe_load((configs / "default.yaml").read_text())["model"]["init_args"]
    config["refinement"] = yaml.safe_load((configs / "refine.yaml").read_text())["model"]["init_args"][
        "refinement"
    ]
    data = ShapeDataModule()
    model = Shape3DModule(**config, tokenizer_dir=data.tokenizer_dir, text_vocab_size=data.text_vocab_size)
    model.train()
    optimizer = model.configure_optimizers()["optimizer"]
    rng = np.random.default_rng(0)
    meshes = [normalize_to_unit_cube(v.build(rng)) for v in variants()[:batch_size]]
    points, normals = zip(*(surface_samples(m, 2048, seed=i) for i, m in enumerate(meshes)), strict=True)
    texts = ["ince uzun bir silindir", "sekiz köşeli yıldız motifi"] * (batch_size // 2)
    res = model.refinement.mesh_resolution
    target_logits = torch.from_numpy(np.stack([voxelize_mesh(m, res) for m in meshes])).float() * 8 - 4
    rows = []
    for resolution in resolutions:
        model.set_resolution(resolution)
        batch = {
            "voxels": torch.from_numpy(np.stack([voxelize_mesh(m, resolution) for m in meshes])).float(),
            "distances": torch.rand(batch_size, 32, 32, 32, generator=torch.Generator().manual_seed(0))
            * 0.01,
            "points": torch.from_numpy(np.stack(points)),
            "normals": torch.from_numpy(np.stack(normals)),
        }

        def step(refine: bool, batch: dict = batch) -> None:
            features = [] if refine else None
            logits = model(texts, [""] * batch_size, features=features)
            loss = model._losses(batch, logits)["loss"]
            if refine:
                coarse = model._resize(logits, res)
                as_target = (
                    coarse + (target_logits - coarse).detach()
                )  # the targets' values, the prediction's grads
                loss = loss + model._refinement_losses(batch, as_target, features)["loss"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        timed = {}
        for refine in (False, True):
            step(refine)  # warm-up
            timed[refine] = measure(lambda refine=refine: step(refine), steps)
        rows.append(
            {
                "op": f"+ mesh refinement (x{timed[True][0] / timed[False][0]:.2f} the plain step on the same batch)",
                "resolution": resolution,
                "batch": batch_size,
                "seconds": timed[True][0],
                "peak_mib": timed[True][1],
                "plain_seconds": timed[False][0],
            }
        )
        print(f"train step + refinement {resolution}: done", flush=True)
    return rows


def markdown(
    chamfer: list[dict], offsets: list[dict], voxels: list[dict], train: list[dict], threads: int
) -> str:
    def fmt(v, spec):
        return "-" if v is None else format(v, spec)

    lines = [
        f"CPU, torch {torch.__version__}, {threads} thread(s); pytorch3d importable: {HAS_PYTORCH3D}",
        "",
        "| Chamfer | points per cloud | time (s) | peak extra memory (MiB) | value |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in chamfer:
        lines.append(
            f"| {r['method']} | {r['points']:,} | {fmt(r['seconds'], '.3f')} | {fmt(r['peak_mib'], '.0f')} | "
            f"{fmt(r['value'], '.6f') if r['value'] is not None else r.get('note', '-')} |"
        )
    lines += [
        "",
        "| brute-force path, points in a cube of side *scale* at *offset* | points | time (s) | "
        "relative error vs float64 KD-tree | naive float32 cdist error |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in offsets:
        lines.append(
            f"| offset {r['offset']:g}, scale {r['scale']:g} | {r['points']:,} | {r['seconds']:.3f} | "
            f"{r['brute_rel_error']:.1e} | {r['naive_cdist_rel_error']:.1e} |"
        )
    lines += [
        "",
        "| geometry op | resolution | time per shape (ms) | peak extra memory (MiB) |",
        "|---|---:|---:|---:|",
    ]
    for r in voxels:
        lines.append(
            f"| {r['op']} | {r['resolution']}³ | {1000 * r['seconds_per_shape']:.1f} | {r['peak_mib']:.0f} |"
        )
    lines += [
        "",
        "| training step (default model) | resolution | batch | time (s) | peak extra memory (MiB) |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in train:
        lines.append(
            f"| fwd + bwd + AdamW {r['op'] if r['op'] != 'train step' else ''} | {r['resolution']}³ | {r['batch']} | "
            f"{r['seconds']:.2f} | {r['peak_mib']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2_000, 10_000, 50_000])
    parser.add_argument(
        "--naive-limit", type=int, default=10_000, help="largest cloud for the full cdist matrix"
    )
    parser.add_argument(
        "--offset-points", type=int, default=10_000, help="points per cloud of the offset rows"
    )
    parser.add_argument("--resolutions", type=int, nargs="+", default=[32, 48, 64])
    parser.add_argument("--shapes", type=int, default=8, help="motif shapes for the voxel timings")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "runs" / "shape3d" / "bench"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    chamfer = bench_chamfer(args.sizes, args.naive_limit)
    offsets = bench_offsets(args.offset_points)
    voxels = bench_voxels(args.resolutions, args.shapes)
    train = bench_train_step(args.resolutions, args.batch_size, args.steps)
    train += bench_refinement(args.resolutions, args.batch_size, args.steps)
    torch.set_num_threads(args.threads)
    table = markdown(chamfer, offsets, voxels, train, args.threads)
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(table + "\n")
    out.with_suffix(".json").write_text(
        json.dumps({"chamfer": chamfer, "offsets": offsets, "voxels": voxels, "train": train}, indent=2)
    )


if __name__ == "__main__":
    main()
