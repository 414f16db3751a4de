"""Reading meshes + captions (with bad rows), the generated default set, augmentation and per-resolution targets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import trimesh
from torch.utils.data import DataLoader

from common.errors import InputError, MissingInputError
from common.geometry import voxel_iou, voxelize_mesh
from projects.shape3d.data import (
    Augmentation,
    ReferencePoints,
    ShapeDataModule,
    ShapeDataset,
    ShapeStore,
    augment_mesh,
    augment_sample,
    random_similarity,
    read_captions,
)
from projects.shape3d.generate import STYLES, generate_default_data, variants


def write_set(root: Path, rows: list[dict], fmt: str = "jsonl") -> Path:
    """Three good meshes in three formats, plus whatever rows the test adds."""
    (root / "m").mkdir(parents=True, exist_ok=True)
    trimesh.creation.box((1, 2, 3)).export(root / "m" / "box.obj")
    trimesh.creation.icosphere(2).export(root / "m" / "ball.ply")
    trimesh.creation.cylinder(0.5, 2.0).export(root / "m" / "rod.off")
    good = [
        {"mesh": "m/box.obj", "text": "bir kutu", "style": ""},
        {"mesh": "m/ball.ply", "text": "bir küre", "style": "dolgun üslup"},
        {"mesh": "m/rod.off", "text": "ince uzun bir silindir"},
    ]
    rows = good + rows
    if fmt == "jsonl":
        path = root / "captions.jsonl"
        path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    else:
        path = root / "captions.csv"
        lines = ["mesh,text,style"] + [f"{r['mesh']},{r['text']},{r.get('style', '')}" for r in rows]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_splits(root: Path) -> None:
    """``train.jsonl`` and ``val.jsonl``, each the three good rows of :func:`write_set`."""
    for name in ("train", "val"):
        write_set(root, [])
        (root / "captions.jsonl").rename(root / f"{name}.jsonl")


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_reads_meshes_and_captions(tmp_path, fmt):
    path = write_set(tmp_path, [], fmt)
    rows = read_captions(path)
    assert [r.text for r in rows] == ["bir kutu", "bir küre", "ince uzun bir silindir"]
    assert rows[1].style == "dolgun üslup" and rows[2].style == ""
    store = ShapeStore(path, num_points=64, num_ref_points=16, surface_resolution=16)
    assert len(store) == 3
    # normalised: centred, longest side = 0.8
    for mesh in (store.mesh(i) for i in range(len(store))):
        assert np.allclose(mesh.bounds.mean(0), 0, atol=1e-6)
        assert (mesh.bounds[1] - mesh.bounds[0]).max() == pytest.approx(0.8)
    assert store.points.shape == (3, 64, 3) and store.distances.shape == (3, 16, 16, 16)
    assert store.voxels(16).shape == (3, 16, 16, 16) and store.voxels(24).shape == (3, 24, 24, 24)


@pytest.mark.parametrize(
    "bad_row, message",
    [
        (
            {"mesh": "m/missing.obj", "text": "kayıp"},
            "captions.jsonl:4: mesh file .*missing.obj' does not exist",
        ),
        ({"mesh": "m/box.obj", "text": "  "}, "captions.jsonl:4: empty caption text"),
        ({"mesh": "m/garbage.ply", "text": "bozuk"}, "captions.jsonl:4: .*garbage.ply"),
        ({"mesh": "m/empty.obj", "text": "boş"}, "captions.jsonl:4: .*empty.obj"),
    ],
)
def test_bad_rows_raise_naming_the_row_or_are_skipped(tmp_path, bad_row, message):
    path = write_set(tmp_path, [bad_row])
    (tmp_path / "m" / "garbage.ply").write_bytes(b"ply\nformat nonsense\n\x00\x01\x02")
    (tmp_path / "m" / "empty.obj").write_text("# no geometry\n")
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        if "empty caption" in message:
            read_captions(path)
        else:
            ShapeStore(path, num_points=32, num_ref_points=8, surface_resolution=8)
    if "empty caption" in message:
        return  # a caption error is a malformed file: always an error
    before = {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir()}
    with pytest.warns(UserWarning, match="captions.jsonl:4"):
        store = ShapeStore(path, num_points=32, num_ref_points=8, surface_resolution=8, on_bad_row="skip")
    assert [r.text for r in store.rows] == ["bir kutu", "bir küre", "ince uzun bir silindir"]
    assert {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir()} == before  # the data is untouched


def test_non_watertight_mesh_is_kept_and_reported(tmp_path):
    sphere = trimesh.creation.icosphere(2)
    trimesh.Trimesh(sphere.vertices, sphere.faces[:-10], process=False).export(tmp_path / "open.obj")
    (tmp_path / "c.jsonl").write_text(json.dumps({"mesh": "open.obj", "text": "açık bir küre"}) + "\n")
    with pytest.warns(UserWarning, match="c.jsonl:1.*not watertight.*surface"):
        store = ShapeStore(tmp_path / "c.jsonl", num_points=32, num_ref_points=8, surface_resolution=8)
    grid = store.voxels(16)[0]
    assert grid.any() and not grid[8, 8, 8]  # a shell


def test_generated_default_set_is_complete_and_reused(tmp_path):
    root = generate_default_data(tmp_path / "gen", copies_train=1, copies_val=1)
    train = read_captions(root / "train.jsonl")
    assert len(train) == len(variants()) * len(STYLES)
    assert {r.style for r in train} == set(STYLES)
    assert all(r.mesh.exists() for r in train)
    assert {r.mesh.suffix for r in train} == {".obj", ".ply", ".off"}
    stamp = (root / "train.jsonl").stat().st_mtime_ns
    generate_default_data(root, copies_train=1, copies_val=1)  # same manifest: nothing rewritten
    assert (root / "train.jsonl").stat().st_mtime_ns == stamp
    # every shape loads as a watertight mesh, and the style changes the shape
    mesh = trimesh.load(train[0].mesh, force="mesh")
    assert mesh.is_watertight


def test_augmentation_is_consistent_for_voxels_points_and_meshes(tmp_path):
    # off-centre, so a rotation the wrong way round would land elsewhere
    mesh = trimesh.creation.box(
        (0.4, 0.2, 0.3), transform=trimesh.transformations.translation_matrix((0.15, 0.1, 0))
    )
    generator = torch.Generator().manual_seed(3)
    matrix = random_similarity(generator, 30.0, (0.8, 1.2))
    assert abs(torch.linalg.det(matrix).item() ** (1 / 3) - 1) <= 0.2 + 1e-6
    grid = torch.from_numpy(voxelize_mesh(mesh, 48)).float()
    sampled, face_index = trimesh.sample.sample_surface(mesh, 200, seed=0)
    points = torch.from_numpy(sampled).float()
    sample = {
        "voxels": grid,
        "eval_voxels": grid,
        "points": points,
        "normals": torch.from_numpy(mesh.face_normals[face_index]).float(),
        "ref_points": points.clone(),
        "distances": torch.zeros(16, 16, 16),
    }
    out = augment_sample(sample, matrix, 0.0, generator)
    moved = augment_mesh(mesh, matrix)
    expected_grid = torch.from_numpy(voxelize_mesh(moved, 48)).float()
    assert voxel_iou(out["voxels"][None], expected_grid[None]).item() > 0.85
    wrong_way = torch.from_numpy(voxelize_mesh(augment_mesh(mesh, matrix.T.contiguous()), 48)).float()
    assert voxel_iou(out["voxels"][None], wrong_way[None]).item() < 0.7
    # the moved points lie on the moved box: mapped back, each touches a face (|offset| = half extent on some axis)
    back = (out["points"].double() @ torch.linalg.inv(matrix.double()).T).numpy()
    offset = np.abs(back - np.array([0.15, 0.1, 0.0])) / np.array([0.2, 0.1, 0.15])
    assert np.allclose(offset.max(1), 1.0, atol=1e-5)
    assert np.allclose(
        moved.vertices, mesh.vertices @ matrix.double().numpy().T
    )  # the mesh moved the same way
    # the normals turned with it: the face a point lies on (the axis where |offset| = 1) gives its box normal,
    # which the rotation part of the map must have turned
    axis = offset.argmax(1)
    box_normals = np.zeros_like(back)
    box_normals[np.arange(len(back)), axis] = np.sign(
        (back - np.array([0.15, 0.1, 0.0]))[np.arange(len(back)), axis]
    )
    rotation = matrix.double().numpy() / abs(np.linalg.det(matrix.double().numpy())) ** (1 / 3)
    np.testing.assert_allclose(out["normals"].numpy(), box_normals @ rotation.T, atol=1e-5)


def test_datamodule_targets_follow_the_resolution(tmp_path):
    write_splits(tmp_path)
    dm = ShapeDataModule(
        data_dir=str(tmp_path),
        num_points=64,
        reference=ReferencePoints(num_points=16),
        batch_size=2,
        eval_resolution=16,
        resolution=16,
        cache=True,
    )
    dm.setup("fit")
    for resolution in (16, 24, 32):
        dm.set_resolution(resolution)
        batch = next(iter(dm.train_dataloader()))
        assert batch["voxels"].shape == (2, resolution, resolution, resolution)
        assert batch["eval_voxels"].shape == (2, 16, 16, 16)
    # prepared per split: the configured resolutions and eval_resolution at once, 24 added on first use
    for split in ("train", "val"):
        (folder,) = (tmp_path / "cache").glob(f"{split}_*")
        assert {p.name for p in folder.glob("voxels*.npy")} == {
            f"voxels{r}.npy" for r in (16, 24, 32, 48, 64)
        }
    assert (
        len(list((tmp_path / "cache" / "meshes").glob("*.npz"))) == 3
    )  # one per mesh file, shared by splits
    mean, threshold = dm.mean_shape()
    assert mean.shape == (16, 16, 16) and 0 < threshold < 1
    # validation samples carry the baseline shape (the model reads it from the batch, not from the datamodule):
    # the mean grid shifted so that its 0.5 level is the chosen threshold
    batch = next(iter(dm.val_dataloader()))
    assert torch.equal(batch["baseline"][0] > 0.5, mean > threshold)


def test_dataset_reads_resolution_at_getitem_time(tmp_path):
    path = write_set(tmp_path, [])
    store = ShapeStore(path, num_points=32, num_ref_points=8, surface_resolution=8)
    dataset = ShapeDataset(
        store, resolution=8, eval_resolution=8, augmentation=Augmentation(enabled=True), ref_points_prob=1.0
    )
    assert dataset[0]["voxels"].shape == (8, 8, 8)
    dataset.resolution = 12
    sample = dataset[0]
    assert sample["voxels"].shape == (12, 12, 12) and sample["has_ref"] == 1.0


def test_bad_user_data_raises_input_errors(tmp_path):
    path = write_set(tmp_path, [{"mesh": "m/missing.obj", "text": "kayıp"}])
    with pytest.raises(MissingInputError, match="captions.jsonl:4: mesh file"):
        ShapeStore(path, num_points=32, num_ref_points=8, surface_resolution=8)
    with pytest.raises(MissingInputError, match="does not exist"):
        read_captions(tmp_path / "nope.jsonl")
    (tmp_path / "c.txt").write_text("x\n")
    with pytest.raises(InputError, match=r"must end in \.jsonl or \.csv"):
        read_captions(tmp_path / "c.txt")
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(InputError, match="bad.jsonl:1: not valid JSON"):
        read_captions(tmp_path / "bad.jsonl")
    (tmp_path / "bad.csv").write_text("mesh,caption\na.obj,x\n")
    with pytest.raises(InputError, match="bad.csv:1: CSV header"):
        read_captions(tmp_path / "bad.csv")
    with pytest.raises(InputError, match="on_bad_row"):
        ShapeStore(path, on_bad_row="ignore")
    (tmp_path / "none.jsonl").write_text(json.dumps({"mesh": "m/missing.obj", "text": "kayıp"}) + "\n")
    with pytest.warns(UserWarning, match="skipping"), pytest.raises(InputError, match="no usable rows"):
        ShapeStore(tmp_path / "none.jsonl", on_bad_row="skip")
    with pytest.raises(InputError, match="predict_texts"):
        ShapeDataModule(data_dir=str(tmp_path)).setup("predict")
    # the callers' existing `except ValueError` / `except FileNotFoundError` keep working
    assert issubclass(InputError, ValueError) and issubclass(MissingInputError, FileNotFoundError)


def test_cache_is_written_atomically(tmp_path, monkeypatch):
    path = write_set(tmp_path, [])
    cache = tmp_path / "cache"
    store = ShapeStore(path, num_points=32, num_ref_points=8, surface_resolution=8, cache_dir=cache)
    store.voxels(8)

    def files() -> list[str]:
        return sorted(str(p.relative_to(cache)) for p in cache.rglob("*"))

    names = files()
    assert len([n for n in names if n.startswith("meshes/")]) == 3 and not any("/." in n for n in names)

    def crash(file, *args, **arrays):  # a writer killed half way through
        if hasattr(file, "write"):
            file.write(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez_compressed", crash)
    with pytest.raises(KeyboardInterrupt):  # adding a resolution to a per-mesh cache file
        store.voxels(12)
    monkeypatch.undo()
    monkeypatch.setattr(np, "save", crash)
    with pytest.raises(KeyboardInterrupt):  # the per-mesh files have 12 now: only the split's file is written
        store.voxels(12)
    assert files() == [n for n in files() if n in names or n.startswith("meshes/")]
    assert not any(Path(n).name.startswith(".") for n in files())  # no partial or temporary file left
    monkeypatch.undo()
    shutil.rmtree(cache)
    monkeypatch.setattr(np.lib.format, "write_array_header_1_0", crash)
    with pytest.raises(KeyboardInterrupt):  # killed while assembling the split: no split folder appears
        ShapeStore(path, num_points=32, num_ref_points=8, surface_resolution=8, cache_dir=cache)
    assert [p.name for p in cache.iterdir()] == ["meshes"]


def augmented_points(dataset: ShapeDataset, num_workers: int) -> list[torch.Tensor]:
    loader = DataLoader(
        dataset, batch_size=1, shuffle=False, num_workers=num_workers, persistent_workers=False
    )
    return [batch["points"][0] for batch in loader]


def test_augmentations_depend_on_seed_epoch_and_index_not_on_workers(tmp_path):
    path = write_set(tmp_path, [])
    store = ShapeStore(path, num_points=32, num_ref_points=8, surface_resolution=8)
    dataset = ShapeDataset(
        store,
        resolution=8,
        eval_resolution=8,
        augmentation=Augmentation(enabled=True, prob=1.0),
        ref_points_prob=1.0,
        seed=5,
    )
    epoch0 = augmented_points(dataset, num_workers=0)
    assert all(
        not torch.allclose(p, store.points[i]) for i, p in enumerate(epoch0)
    )  # every sample was augmented
    # deterministic: the same epoch and index give the same sample, in any order and any process
    torch.testing.assert_close(dataset[2]["points"], epoch0[2])
    torch.testing.assert_close(augmented_points(dataset, num_workers=2), epoch0)
    dataset.set_epoch(1)  # set in the main process before the epoch's iterator: reaches the (new) workers
    epoch1 = augmented_points(dataset, num_workers=2)
    torch.testing.assert_close(augmented_points(dataset, num_workers=0), epoch1)
    assert all(
        not torch.allclose(a, b) for a, b in zip(epoch0, epoch1, strict=True)
    )  # a new draw every epoch
    other_seed = ShapeDataset(
        store,
        resolution=8,
        eval_resolution=8,
        augmentation=Augmentation(enabled=True, prob=1.0),
        ref_points_prob=1.0,
        seed=6,
    )
    assert not torch.allclose(other_seed[0]["points"], epoch0[0])


def test_datamodule_passes_the_epoch_to_the_training_set(tmp_path):
    from lightning.fabric.utilities.data import _set_sampler_epoch
    from torch.utils.data import DistributedSampler

    write_splits(tmp_path)
    dm = ShapeDataModule(
        data_dir=str(tmp_path),
        num_points=32,
        reference=ReferencePoints(num_points=8),
        batch_size=2,
        eval_resolution=8,
        resolution=8,
        cache=False,
        augmentation=Augmentation(enabled=True),
    )
    dm.setup("fit")
    loader = dm.train_dataloader()
    # what Lightning's fit loop does before every epoch's iterator (with the restored epoch after a resume)
    _set_sampler_epoch(loader, 3)
    assert dm.train_set.epoch == 3 and dm.val_set.epoch == 0  # validation data stays the same every epoch
    _set_sampler_epoch(loader, 7)
    assert loader.dataset.epoch == 7
    assert loader.persistent_workers is False
    # under DDP each rank draws its share; a DistributedSampler is left as it is by Lightning (not wrapped)
    dm.trainer = SimpleNamespace(world_size=2, global_rank=1)
    sampler = dm.train_dataloader().sampler
    assert isinstance(sampler, DistributedSampler) and (sampler.num_replicas, sampler.rank) == (2, 1)


def test_tokenizer_is_prepared_once_atomically_and_setup_only_reads(tmp_path, monkeypatch):
    from projects.shape3d.text_encoder import load_tokenizer

    write_splits(tmp_path)
    dm = ShapeDataModule(
        data_dir=str(tmp_path), num_points=32, reference=ReferencePoints(num_points=8), cache=False
    )
    tokenizer_dir = Path(dm.tokenizer_dir)
    dm.setup("fit")  # setup reads the data; it prepares nothing
    assert not tokenizer_dir.exists()
    dm.prepare_data()
    tokenizer = load_tokenizer(tokenizer_dir)
    # the user's captions (and styles) are the corpus: their words are pieces, not <unk>
    assert tokenizer.unk_token_id not in tokenizer("ince uzun bir silindir dolgun üslup")["input_ids"]
    assert dm.text_vocab_size == len(tokenizer)  # the scalar linked to the model
    stamp = (tokenizer_dir / "tokenizer.json").stat().st_mtime_ns
    dm.prepare_data()  # same corpus: reused, not retrained
    assert (tokenizer_dir / "tokenizer.json").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tokenizer")] == []  # no temporary left
    (tokenizer_dir / "tokenizer.json").write_bytes(
        b"\x00garbage"
    )  # a damaged tokenizer is rebuilt, with a warning
    with pytest.warns(UserWarning, match="shape3d tokenizer .* could not be loaded"):
        dm.prepare_data()
    assert len(load_tokenizer(tokenizer_dir)) == len(tokenizer)

    def crash(*args, **kwargs):  # a writer killed half way through leaves the old tokenizer or none
        raise KeyboardInterrupt

    (tmp_path / "train.jsonl").write_text(json.dumps({"mesh": "m/box.obj", "text": "yeni bir kutu"}) + "\n")
    import transformers

    monkeypatch.setattr(transformers.PreTrainedTokenizerFast, "save_pretrained", crash)
    with pytest.raises(KeyboardInterrupt):
        dm.prepare_data()
    assert len(load_tokenizer(tokenizer_dir)) == len(tokenizer)  # untouched
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tokenizer")] == []


# ------------------------------------------------------------------ issue 11: every reader, every cache

TURKISH_CP1254 = "bir küre,ılık ışık,şirin üslup".encode("cp1254")


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_non_utf8_captions_name_the_file_and_line(tmp_path, fmt):
    path = write_set(tmp_path, [], fmt)
    lines = path.read_bytes().splitlines(keepends=True)
    if fmt == "jsonl":  # the 3rd data line saved as cp1254 (Windows Turkish), as a spreadsheet tool would
        lines[2] = b'{"mesh": "m/rod.off", "text": "' + "ince uzun ışık".encode("cp1254") + b'"}\n'
        bad_line = 3
    else:
        lines[2] = b"m/ball.ply," + TURKISH_CP1254 + b"\n"
        bad_line = 3
    path.write_bytes(b"".join(lines))
    with pytest.raises(InputError, match=rf"{path.name}:{bad_line}: not UTF-8"):
        read_captions(path)
    with pytest.raises(InputError, match=rf"{path.name}:{bad_line}: not UTF-8"):
        ShapeStore(path, num_points=32, num_ref_points=8, surface_resolution=8)


def test_non_utf8_predict_captions_name_the_file_and_line(tmp_path):
    predict = tmp_path / "predict.csv"
    predict.write_bytes(b"text,style\nbir k\xfcre,\n")  # latin-1 / cp1254 "ü"
    dm = ShapeDataModule(data_dir=str(tmp_path), predict_captions=str(predict))
    with pytest.raises(InputError, match=r"predict.csv:2: not UTF-8"):
        dm.setup("predict")


@pytest.mark.parametrize("damage", ["random", "truncated", "empty"])
def test_corrupt_array_caches_are_rebuilt_with_one_warning(tmp_path, damage):
    import warnings

    path = write_set(tmp_path, [])
    cache = tmp_path / "cache"
    store = ShapeStore(path, num_points=32, num_ref_points=8, surface_resolution=8, cache_dir=cache)
    expected_voxels = store.voxels(8).clone()
    expected = {"points": store.points, "distances": store.distances}
    del store  # its memory maps would see the files change under them (damage in place, not a rename)
    files = sorted(p for p in cache.rglob("*") if p.is_file())
    assert len(files) == 3 + 7  # per mesh, and the split: 4 fields + voxels8 + mean_shape + manifest
    for file in files:
        data = file.read_bytes()
        file.write_bytes(
            {
                "random": np.random.default_rng(0).bytes(len(data)),
                "truncated": data[: len(data) // 2],
                "empty": b"",
            }[damage]
        )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rebuilt = ShapeStore(path, num_points=32, num_ref_points=8, surface_resolution=8, cache_dir=cache)
        voxels = rebuilt.voxels(8)
    messages = [str(w.message) for w in caught if "could not be loaded" in str(w.message)]
    assert len(messages) == 4 and all("rebuilding" in m for m in messages), messages
    assert sum("prepared split" in m for m in messages) == 1 and sum("mesh cache" in m for m in messages) == 3
    torch.testing.assert_close(rebuilt.points, expected["points"])
    torch.testing.assert_close(rebuilt.distances, expected["distances"])
    assert torch.equal(voxels, expected_voxels)
    # the rebuilt caches are good again: a third store loads them silently
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = ShapeStore(path, num_points=32, num_ref_points=8, surface_resolution=8, cache_dir=cache)
        assert torch.equal(again.voxels(8), expected_voxels)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"hello world\nthis is not a mesh\n", "could not be parsed"),
        (bytes(range(256)) * 8, "could not be parsed"),
        (b"", r"is an empty file \(0 bytes\)"),
        (b"v 0 0 0\nv 1 0 0\nv 0 1 0\n", r"has no faces"),
    ],
)
def test_garbage_obj_is_reported_as_unparsable_not_as_empty(tmp_path, content, message):
    from projects.shape3d.data import load_mesh

    (tmp_path / "bad.obj").write_bytes(content)
    with pytest.raises(InputError, match=rf"c.jsonl:2: mesh '.*bad.obj' {message}"):
        load_mesh(tmp_path / "bad.obj", "c.jsonl:2")
