"""Issue 21 (preparation once, in prepare_data; warm launches stat files, never read meshes) and issue 23 (CSV and
non-finite meshes are one error naming file and line)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

import projects.shape3d.data as data
from common.errors import InputError
from common.geometry import voxel_iou
from projects.shape3d.data import ReferencePoints, ShapeDataModule, ShapeStore, load_mesh, read_captions
from tests.shape3d.test_data import write_set, write_splits


def count_mesh_reads(monkeypatch) -> list[str]:
    """Every ``trimesh.load`` the data code makes, by file name."""
    reads: list[str] = []
    real = trimesh.load

    def counting(path, *args, **kwargs):
        reads.append(Path(path).name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(data.trimesh, "load", counting)
    return reads


def small_datamodule(root: Path, **kwargs) -> ShapeDataModule:
    settings = dict(num_points=32, reference=ReferencePoints(num_points=8), batch_size=2, eval_resolution=8)
    return ShapeDataModule(data_dir=str(root), resolution=8, resolutions=(8, 12), **settings | kwargs)


def test_prepare_data_does_the_work_and_setup_reads_no_mesh(tmp_path, monkeypatch):
    write_splits(tmp_path)
    reads = count_mesh_reads(monkeypatch)
    small_datamodule(tmp_path).prepare_data()
    assert sorted(reads) == ["ball.ply", "box.obj", "rod.off"]  # each file once, shared by both splits
    reads.clear()
    dm = small_datamodule(tmp_path)  # a fresh launch (another process, another rank)
    dm.prepare_data()
    dm.setup("fit")
    dm.set_resolution(12)  # a prepared resolution: read from the split, no mesh
    batch = next(iter(dm.train_dataloader()))
    assert batch["voxels"].shape == (2, 12, 12, 12) and batch["points"].shape == (2, 32, 3)
    assert reads == []
    # setup opens memory maps: nothing of the split is copied into the process up front
    assert all(isinstance(a, np.memmap) for a in dm.train_store.arrays.values())


def test_a_changed_mesh_is_the_only_one_read_again(tmp_path, monkeypatch):
    write_splits(tmp_path)
    small_datamodule(tmp_path).prepare_data()
    trimesh.creation.box((1, 1, 3)).export(tmp_path / "m" / "box.obj")  # new contents, new size/mtime
    os.utime(tmp_path / "m" / "box.obj", ns=(1, 1))
    reads = count_mesh_reads(monkeypatch)
    dm = small_datamodule(tmp_path)
    dm.prepare_data()
    assert reads == ["box.obj"]
    dm.setup("fit")
    grid = dm.train_store.voxel(0, 12)
    assert torch.equal(grid, torch.from_numpy(data.voxelize_mesh(dm.train_store.mesh(0), 12)))


def test_prepared_mean_shape_matches_the_brute_force_baseline(tmp_path):
    write_splits(tmp_path)
    dm = small_datamodule(tmp_path)
    dm.prepare_data()
    dm.setup("fit")
    mean, threshold = dm.mean_shape()
    grids = dm.train_store.voxels(8).float()
    torch.testing.assert_close(mean, grids.mean(0))
    reference = max(
        (float(voxel_iou(grids.mean(0).expand_as(grids), grids, t).mean()), t)
        for t in np.arange(0.05, 0.96, 0.05).tolist()
    )
    assert threshold == pytest.approx(reference[1])


def test_skipped_rows_are_reported_on_warm_launches_too(tmp_path):
    path = write_set(tmp_path, [{"mesh": "m/missing.obj", "text": "kayıp"}])
    for _ in range(2):  # cold, then warm from the prepared split
        with pytest.warns(UserWarning, match="captions.jsonl:4: mesh file"):
            store = ShapeStore(
                path,
                num_points=32,
                num_ref_points=8,
                surface_resolution=8,
                on_bad_row="skip",
                cache_dir=tmp_path / "cache",
            )
        assert len(store) == 3
    (tmp_path / "m" / "missing.obj").write_bytes((tmp_path / "m" / "box.obj").read_bytes())
    store = ShapeStore(
        path,
        num_points=32,
        num_ref_points=8,
        surface_resolution=8,
        on_bad_row="skip",
        cache_dir=tmp_path / "cache",
    )  # the file appeared: prepared again, kept
    assert len(store) == 4
    assert len(list((tmp_path / "cache").glob("captions_*"))) == 1  # the stale preparation was removed


# ------------------------------------------------------------------ issue 23: malformed CSV rows


@pytest.mark.parametrize(
    "content, message",
    [
        (
            'mesh,text,style\nm/a.ply,"kapanmamış tırnak,\nm/b.ply,bir kutu,\n',
            r"c.csv:2: .*unterminated quote",
        ),
        (
            'mesh,text,style\nm/a.ply,"kapanmamış tırnak,\nm/b.ply,bir kutu,"\nm/c.ply,bir küre,\n',
            r"c.csv:2: a quoted field runs over lines 2-3",
        ),
        (
            "mesh,text,style\nm/a.ply,bir kutu,\nm/b.ply,bir, küre,narin\n",
            r"c.csv:3: 4 columns, the header has 3",
        ),
    ],
)
def test_malformed_csv_rows_name_the_file_and_line(tmp_path, content, message):
    (tmp_path / "c.csv").write_text(content, encoding="utf-8")
    with pytest.raises(InputError, match=message):
        read_captions(tmp_path / "c.csv")


def test_well_formed_csv_quotes_and_blank_lines_still_read(tmp_path):
    (tmp_path / "c.csv").write_text('mesh,text,style\nm/a.ply,"bir, kutu",x\n\nm/b.ply,"a ""b"""\n', "utf-8")
    rows = read_captions(tmp_path / "c.csv")
    assert [(r.where.rsplit(":", 1)[1], r.text, r.style) for r in rows] == [
        ("2", "bir, kutu", "x"),
        ("4", 'a "b"', ""),
    ]


def test_tgm_prints_one_line_for_an_unterminated_quote(tmp_path):
    import subprocess
    import sys

    write_splits(tmp_path)
    (tmp_path / "train.csv").write_text('mesh,text\nm/box.obj,"kapanmamış\nm/ball.ply,bir küre\n', "utf-8")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "common.cli",
            "fit",
            "-c",
            "configs/shape3d/tiny.yaml",
            "--data.init_args.data_dir",
            str(tmp_path),
            "--data.init_args.train_captions",
            "train.csv",
            "--data.init_args.val_captions",
            "val.jsonl",
            "--trainer.logger",
            "false",
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="disabled"),
        cwd=Path(__file__).resolve().parents[2],
        timeout=300,
        check=False,
    )
    lines = [line for line in result.stderr.strip().splitlines() if "train.csv:2" in line]
    assert result.returncode == 2 and len(lines) == 1 and "unterminated quote" in lines[0], result.stderr[
        -2000:
    ]


# ------------------------------------------------------------------ issue 23: non-finite vertices


def nan_box() -> trimesh.Trimesh:
    box = trimesh.creation.box()
    vertices = box.vertices.copy()
    vertices[0, 0] = np.nan
    return trimesh.Trimesh(vertices, box.faces, process=False)


@pytest.mark.parametrize("suffix", [".ply", ".stl", ".off", ".obj"])
def test_non_finite_vertices_are_one_error_naming_the_file(tmp_path, suffix):
    nan_box().export(tmp_path / f"bad{suffix}")
    with pytest.raises(InputError, match=rf"c.jsonl:2: mesh '.*bad\{suffix}' has non-finite"):
        load_mesh(tmp_path / f"bad{suffix}", "c.jsonl:2")


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_one_face_non_finite_obj_says_non_finite(tmp_path, value):
    (tmp_path / "bad.obj").write_text(f"v 0 0 0\nv 1 0 0\nv {value} 1 0\nf 1 2 3\n")
    with pytest.raises(InputError, match=r"c.jsonl:2: mesh '.*bad.obj' has non-finite \(NaN/Inf\)"):
        load_mesh(tmp_path / "bad.obj", "c.jsonl:2")


def test_stl_is_still_merged_into_a_watertight_mesh(tmp_path):
    trimesh.creation.box().export(tmp_path / "box.stl")
    mesh = load_mesh(tmp_path / "box.stl", "c.jsonl:1")
    assert len(mesh.vertices) == 8 and mesh.is_watertight


def test_non_finite_mesh_row_stops_the_split_or_is_skipped(tmp_path):
    path = write_set(tmp_path, [{"mesh": "m/nan.ply", "text": "bozuk"}])
    nan_box().export(tmp_path / "m" / "nan.ply")
    with pytest.raises(InputError, match="captions.jsonl:4: .*nan.ply' has non-finite"):
        ShapeStore(path, num_points=32, num_ref_points=8, surface_resolution=8)
    with pytest.warns(UserWarning, match="captions.jsonl:4: .*non-finite"):
        store = ShapeStore(path, num_points=32, num_ref_points=8, surface_resolution=8, on_bad_row="skip")
    assert len(store) == 3
    assert json.dumps([r.text for r in store.rows], ensure_ascii=False).count("bozuk") == 0


def test_preparing_in_worker_processes_gives_the_same_arrays(tmp_path):
    path = write_set(tmp_path, [{"mesh": "m/missing.obj", "text": "kayıp"}])
    settings = dict(
        num_points=32, num_ref_points=8, surface_resolution=8, on_bad_row="skip", resolutions=(8, 12)
    )
    with pytest.warns(UserWarning, match="captions.jsonl:4"):
        serial = ShapeStore(path, **settings)  # in memory, one process
    with pytest.warns(UserWarning, match="captions.jsonl:4"):
        parallel = ShapeStore(path, cache_dir=tmp_path / "cache", workers=2, **settings)
    assert len(list((tmp_path / "cache" / "meshes").glob("*.npz"))) == 3
    for key in ("points", "normals", "ref_points", "distances"):
        torch.testing.assert_close(getattr(parallel, key), getattr(serial, key))
    assert torch.equal(parallel.voxels(12), serial.voxels(12))
