"""Meshes + captions -> voxel grids and surface points at the resolution the progressive-growing callback asks for.

A data set is a folder of meshes (``.obj`` / ``.ply`` / ``.off`` / ``.glb`` / anything ``trimesh.load`` reads) and
a captions file per split, CSV (header ``mesh,text[,style]``) or JSONL (``{"mesh": ..., "text": ..., "style": ...}``);
mesh paths are relative to the captions file. Every mesh is centred and scaled so its longest side is
``normalize_extent`` of the unit cube ``[-0.5, 0.5]^3``, then voxelised at the current resolution (cached in memory
and on disk, per resolution) and sampled for surface points. With no ``data_dir`` the generated motif set
(:mod:`projects.shape3d.generate`) is written to ``data/generated/shape3d`` on first use.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
import trimesh
from lightning.pytorch.utilities import rank_zero_info
from scipy.spatial import cKDTree
from torch.utils.data import DataLoader, Dataset

from common.errors import InputError, MissingInputError
from common.geometry import (
    sample_surface_points,
    transform_voxels,
    voxel_grid_points,
    voxel_iou,
    voxelize_mesh,
)
from common.io import atomic_path, load_cache, read_lines, read_text
from projects.shape3d.generate import generate_default_data

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA_DIR = REPO_ROOT / "data" / "generated" / "shape3d"
CACHE_VERSION = 3
DISTANCE_CAP = 0.25  # unit-cube distance beyond which a voxel counts as simply far from the surface


# ----------------------------------------------------------------------------------------------- reading


@dataclass
class CaptionRow:
    """One captions-file row; ``where`` names it in errors (``file:line``)."""

    mesh: Path | None
    text: str
    style: str
    where: str


def read_captions(path: str | Path, require_mesh: bool = True) -> list[CaptionRow]:
    """Rows of a CSV or JSONL captions file. A row without text, or (when ``require_mesh``) without a mesh path,
    raises an InputError (a ValueError) naming the file and line; so does a file that is not UTF-8 (read with
    :func:`common.io.read_text`, no encoding is guessed). Mesh paths are resolved relative to the file's folder."""
    path = Path(path)
    if not path.exists():
        raise MissingInputError(f"captions file '{path}' does not exist")
    raw: list[tuple[int, dict]] = []
    if path.suffix.lower() == ".jsonl":
        for line_number, line in enumerate(read_lines(path), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise InputError(f"{path}:{line_number}: not valid JSON ({error.msg})") from error
            if not isinstance(record, dict):
                raise InputError(f"{path}:{line_number}: expected a JSON object with 'mesh' and 'text'")
            raw.append((line_number, record))
    elif path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
        if reader.fieldnames is None or "text" not in reader.fieldnames:
            raise InputError(
                f"{path}:1: CSV header must name the columns mesh,text[,style]; got {reader.fieldnames}"
            )
        for record in reader:
            raw.append((reader.line_num, record))
    else:
        raise InputError(f"captions file '{path}' must end in .jsonl or .csv")
    rows = []
    for line_number, record in raw:
        where = f"{path}:{line_number}"
        text = str(record.get("text") or "").strip()
        if not text:
            raise InputError(f"{where}: empty caption text")
        mesh = str(record.get("mesh") or "").strip()
        if require_mesh and not mesh:
            raise InputError(f"{where}: no mesh path")
        rows.append(
            CaptionRow(
                mesh=(path.parent / mesh) if mesh else None,
                text=text,
                style=str(record.get("style") or "").strip(),
                where=where,
            )
        )
    return rows


OBJ_FACE = re.compile(rb"^[ \t]*f[ \t]", re.MULTILINE)
OBJ_VERTEX = re.compile(rb"^[ \t]*v[ \t]", re.MULTILINE)


def load_mesh(path: Path, where: str) -> trimesh.Trimesh:
    """Read one mesh (scenes are merged into one mesh). Missing, empty, unparsable or face-less files raise an
    InputError naming ``where``; a file trimesh reads as nothing is "could not be parsed", not "empty": trimesh
    returns an empty mesh for garbage, so the file's own records decide which it is."""
    if not path.exists():
        raise MissingInputError(f"{where}: mesh file '{path}' does not exist")
    if path.stat().st_size == 0:
        raise InputError(f"{where}: mesh '{path}' is an empty file (0 bytes)")
    try:
        mesh = trimesh.load(str(path), force="mesh")
    except Exception as error:  # trimesh raises many types for corrupt files
        raise InputError(
            f"{where}: mesh '{path}' could not be parsed ({type(error).__name__}: {error})"
        ) from error
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0 or len(mesh.vertices) == 0:
        if path.suffix.lower() == ".obj":
            data = path.read_bytes()
            if OBJ_VERTEX.search(data) and not OBJ_FACE.search(data):
                raise InputError(f"{where}: mesh '{path}' has no faces (only vertices)")
            raise InputError(
                f"{where}: mesh '{path}' could not be parsed as OBJ (no readable 'v' / 'f' records)"
            )
        raise InputError(
            f"{where}: mesh '{path}' could not be parsed, or has no faces (trimesh read no triangles)"
        )
    if not np.isfinite(mesh.vertices).all():
        raise InputError(f"{where}: mesh '{path}' has non-finite vertex coordinates")
    return mesh


def normalize_to_unit_cube(
    mesh: trimesh.Trimesh, extent: float = 0.8, where: str | None = None
) -> trimesh.Trimesh:
    """Centre the bounding box at the origin and scale its longest side to ``extent`` (< 1 leaves a margin).
    ``where`` (``file:line``) prefixes the error for a mesh of zero extent."""
    mesh = mesh.copy()
    lower, upper = mesh.bounds
    size = float((upper - lower).max())
    if size <= 0:
        raise InputError(f"{where}: mesh has zero extent" if where else "mesh has zero extent")
    mesh.apply_translation(-(lower + upper) / 2)
    mesh.apply_scale(extent / size)
    return mesh


# ----------------------------------------------------------------------------------------------- store


class ShapeStore:
    """The meshes of one split, normalised, with their surface points and voxel grids (per resolution, cached).

    ``on_bad_row="error"`` stops at the first bad row (missing / unreadable / empty mesh) with its file:line;
    ``"skip"`` warns with the file:line and keeps every other row as it is.
    """

    def __init__(
        self,
        captions: Path,
        num_points: int = 2048,
        num_ref_points: int = 512,
        extent: float = 0.8,
        surface_resolution: int = 32,
        on_bad_row: str = "error",
        cache_dir: Path | None = None,
    ) -> None:
        if on_bad_row not in ("error", "skip"):
            raise InputError(f"on_bad_row must be 'error' or 'skip', got {on_bad_row!r}")
        self.captions = Path(captions)
        self.extent = extent
        self.cache_dir = cache_dir
        self.surface_resolution = surface_resolution
        self.rows: list[CaptionRow] = []
        self.meshes: list[trimesh.Trimesh] = []
        for row in read_captions(self.captions):
            try:
                mesh = normalize_to_unit_cube(load_mesh(row.mesh, row.where), extent, row.where)
            except InputError as error:  # MissingInputError included; anything else is a bug and propagates
                if on_bad_row == "error":
                    raise
                warnings.warn(f"skipping {error}", stacklevel=2)
                continue
            if not mesh.is_watertight:
                warnings.warn(
                    f"{row.where}: mesh '{row.mesh}' is not watertight; it is voxelised by surface",
                    stacklevel=2,
                )
            self.rows.append(row)
            self.meshes.append(mesh)
        if not self.rows:
            raise InputError(f"{self.captions}: no usable rows")
        self.digest = self._digest(num_points, num_ref_points)
        cached = self._load_cache("points", self._check_points)
        if cached is None:
            cached = self._points_and_distances(num_points, num_ref_points)
            self._save_cache("points", cached)
        self.points = torch.from_numpy(cached["points"]).float()
        self.ref_points = torch.from_numpy(cached["ref_points"]).float()
        self.distances = torch.from_numpy(cached["distances"]).float()
        self.voxel_cache: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def _check_points(self, arrays: dict) -> None:
        for key in ("points", "ref_points", "distances"):
            if key not in arrays or len(arrays[key]) != len(self):
                raise ValueError(f"'{key}' missing or not {len(self)} rows")

    def _digest(self, *extra) -> str:
        parts = [CACHE_VERSION, self.extent, self.surface_resolution, *extra]
        for row in self.rows:
            stat = row.mesh.stat()
            parts.append([str(row.mesh.resolve()), stat.st_size, stat.st_mtime_ns])
        return hashlib.sha1(json.dumps(parts).encode()).hexdigest()[:16]

    def _cache_path(self, what: str) -> Path | None:
        return (
            None
            if self.cache_dir is None
            else self.cache_dir / f"{self.captions.stem}_{self.digest}_{what}.npz"
        )

    def _load_cache(self, what: str, check: Callable[[dict], None] | None = None) -> dict | None:
        """The arrays of a cache file, or None (no cache, or a damaged one: removed with one warning by
        :func:`common.io.load_cache`, then rebuilt by the caller). ``check`` rejects arrays of the wrong shape."""
        path = self._cache_path(what)
        if path is None:
            return None

        def load(file: Path) -> dict:
            with np.load(file, allow_pickle=False) as data:
                arrays = {key: data[key] for key in data.files}
            if check is not None:
                check(arrays)
            return arrays

        return load_cache(path, load, what=f"shape3d {what} cache")

    def _save_cache(self, what: str, arrays: dict) -> None:
        """Written atomically (a temporary file in the same folder, then ``os.replace``): another process (a second
        DDP rank, a DataLoader worker) sees either no cache file or a complete one, never a half-written one."""
        path = self._cache_path(what)
        if path is None:
            return
        with atomic_path(path) as temporary, temporary.open("wb") as file:
            np.savez_compressed(file, **arrays)  # a file object: numpy adds no ".npz" to the name

    def _points_and_distances(self, num_points: int, num_ref_points: int) -> dict:
        """Target surface points, a separate reference cloud (the optional conditioning input), and the squared
        distance from every voxel centre of the ``surface_resolution`` grid to the surface (for the surface loss)."""
        centers = voxel_grid_points(self.surface_resolution).numpy()
        points, refs, distances = [], [], []
        for index, mesh in enumerate(self.meshes):
            points.append(sample_surface_points(mesh, num_points, seed=2 * index))
            refs.append(sample_surface_points(mesh, num_ref_points, seed=2 * index + 1))
            dense = sample_surface_points(mesh, 8192, seed=10_000 + index)
            # capped: far voxels only need "far" (a hard penalty), and an unbounded KD-tree query is 4x slower
            distance, _ = cKDTree(dense).query(centers, distance_upper_bound=DISTANCE_CAP)
            distance = np.minimum(distance, DISTANCE_CAP)
            distances.append((distance**2).reshape((self.surface_resolution,) * 3).astype(np.float32))
        return {"points": np.stack(points), "ref_points": np.stack(refs), "distances": np.stack(distances)}

    def voxels(self, resolution: int) -> torch.Tensor:
        """(N, R, R, R) bool occupancy at ``resolution``, voxelised once per resolution (memory + disk cache)."""
        if resolution not in self.voxel_cache:
            count = len(self) * resolution**3

            def unpack(
                arrays: dict,
            ) -> None:  # packed bits -> grids, inside the loader: a short array is damage
                if arrays["packed"].size * 8 < count:
                    raise ValueError(f"{arrays['packed'].size * 8} bits, expected {count}")
                arrays["grids"] = np.unpackbits(arrays["packed"], count=count).reshape(
                    len(self), *(resolution,) * 3
                )

            cached = self._load_cache(f"voxels{resolution}", unpack)
            if cached is not None:
                grids = cached["grids"]
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # non-watertight meshes were reported once when read
                    grids = np.stack(
                        [
                            voxelize_mesh(mesh, resolution, row.where)
                            for mesh, row in zip(self.meshes, self.rows, strict=True)
                        ]
                    )
                self._save_cache(f"voxels{resolution}", {"packed": np.packbits(grids.reshape(-1))})
            self.voxel_cache[resolution] = torch.from_numpy(grids.astype(bool))
        return self.voxel_cache[resolution]


# ----------------------------------------------------------------------------------------------- datasets


def random_similarity(
    generator: torch.Generator, max_degrees: float, scale_range: tuple[float, float]
) -> torch.Tensor:
    """A rotation about the vertical (z) axis within +-``max_degrees`` times a uniform scale in ``scale_range``.
    z only, because the captions name the vertical orientation ("dik", "yatay") and must stay true."""
    angle = math.radians((torch.rand(1, generator=generator).item() * 2 - 1) * max_degrees)
    scale = scale_range[0] + torch.rand(1, generator=generator).item() * (scale_range[1] - scale_range[0])
    c, s = math.cos(angle), math.sin(angle)
    return scale * torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def augment_sample(sample: dict, matrix: torch.Tensor, jitter_std: float, generator: torch.Generator) -> dict:
    """Apply one linear map to every geometric field so voxels, points and distances stay consistent:
    grids are resampled (occupancy thresholded back to 0/1), points are mapped, the reference cloud is jittered."""
    out = dict(sample)
    for key in ("voxels", "eval_voxels"):
        out[key] = (transform_voxels(sample[key][None, None].float(), matrix[None])[0, 0] > 0.5).float()
    scale = float(torch.linalg.det(matrix).abs() ** (1 / 3))
    # squared distance to the surface under a similarity map: d'(Ap) = s d(p); outside the old grid -> far away
    far = float(sample["distances"].max())
    moved = transform_voxels(sample["distances"][None, None] - far, matrix[None])[0, 0] + far
    out["distances"] = moved * scale**2
    out["points"] = sample["points"] @ matrix.T
    jitter = torch.randn(sample["ref_points"].shape, generator=generator) * jitter_std
    out["ref_points"] = sample["ref_points"] @ matrix.T + jitter
    return out


def augment_mesh(mesh: trimesh.Trimesh, matrix: torch.Tensor) -> trimesh.Trimesh:
    """The same linear map as :func:`augment_sample`, applied to a mesh (for exports / mesh-level pipelines)."""
    transform = np.eye(4)
    transform[:3, :3] = matrix.double().numpy()
    return mesh.copy().apply_transform(transform)


class ShapeDataset(Dataset):
    """Samples of a :class:`ShapeStore` at the resolution currently set (read at ``__getitem__`` time).

    The random choices of a sample (reference cloud or not, augmentation, jitter) come from a generator seeded by
    ``(seed, epoch, index)`` alone: deterministic for a seed, different every epoch, and the same whichever process
    (main or DataLoader worker) makes the sample. ``epoch`` is set with :meth:`set_epoch` before each epoch's
    iterator is created (:class:`ShapeDataModule` does it); workers receive a copy of the dataset when the iterator is
    created, so they must not be persistent (they would keep the epoch they started with).
    """

    def __init__(
        self,
        store: ShapeStore,
        resolution: int,
        eval_resolution: int,
        augment: bool = False,
        augment_prob: float = 0.5,
        rotation_degrees: float = 30.0,
        scale_range: tuple[float, float] = (0.8, 1.2),
        jitter_std: float = 0.01,
        ref_points_prob: float = 0.0,
        augment_only_with_ref: bool = True,
        seed: int = 0,
    ) -> None:
        self.store = store
        self.augment_only_with_ref = augment_only_with_ref
        self.resolution = resolution
        self.eval_resolution = eval_resolution
        self.augment = augment
        self.augment_prob = augment_prob
        self.rotation_degrees = rotation_degrees
        self.scale_range = tuple(scale_range)
        self.jitter_std = jitter_std
        self.ref_points_prob = ref_points_prob
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.store)

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next samples belong to (part of every sample's seed)."""
        self.epoch = int(epoch)

    def sample_seed(self, index: int) -> int:
        """The seed of sample ``index`` in the current epoch: a hash of ``(seed, epoch, index)``."""
        entropy = [
            self.seed & 0xFFFF_FFFF_FFFF_FFFF,
            self.epoch,
            int(index),
        ]  # SeedSequence takes non-negative ints
        return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0])

    def __getitem__(self, index: int) -> dict:
        # a fresh generator per sample, from (seed, epoch, index) only: no per-process state, so DataLoader workers
        # (restarted every epoch) neither repeat each other's draws nor the previous epoch's
        generator = torch.Generator().manual_seed(self.sample_seed(index))
        row = self.store.rows[index]
        sample = {
            "text": row.text,
            "style": row.style,
            "voxels": self.store.voxels(self.resolution)[index].float(),
            "eval_voxels": self.store.voxels(self.eval_resolution)[index].float(),
            "points": self.store.points[index],
            "ref_points": self.store.ref_points[index],
            "distances": self.store.distances[index],
            "index": index,
        }
        has_ref = torch.rand(1, generator=generator).item() < self.ref_points_prob
        # A text alone cannot tell which random rotation / scale the target got, so by default only samples that
        # carry the (equally transformed) reference cloud are augmented: the target stays predictable.
        wants = self.augment and (has_ref or not self.augment_only_with_ref)
        if wants and torch.rand(1, generator=generator).item() < self.augment_prob:
            matrix = random_similarity(generator, self.rotation_degrees, self.scale_range)
            sample = augment_sample(sample, matrix, self.jitter_std, generator)
        sample["has_ref"] = float(has_ref)
        return sample


class PredictDataset(Dataset):
    """Texts (and optional style / reference mesh) to turn into meshes."""

    def __init__(self, rows: list[CaptionRow], num_ref_points: int, extent: float) -> None:
        self.rows = rows
        self.refs = []
        for index, row in enumerate(rows):
            if row.mesh is None:
                self.refs.append(None)
                continue
            mesh = normalize_to_unit_cube(load_mesh(row.mesh, row.where), extent, row.where)
            self.refs.append(torch.from_numpy(sample_surface_points(mesh, num_ref_points, seed=index)))
        self.num_ref_points = num_ref_points

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        ref = self.refs[index]
        return {
            "text": self.rows[index].text,
            "style": self.rows[index].style,
            "ref_points": ref if ref is not None else torch.zeros(self.num_ref_points, 3),
            "has_ref": float(ref is not None),
            "index": index,
        }


# ----------------------------------------------------------------------------------------------- datamodule


class ShapeDataModule(pl.LightningDataModule):
    """Text (+ style, + optional reference point cloud) -> voxel / point targets, with progressive resolution.

    ``data_dir: null`` uses the generated motif set (in ``generated_dir``, default ``data/generated/shape3d``). ``set_resolution`` is called by
    :class:`common.callbacks.ProgressiveResolution`; targets are re-made (voxelised) at each new resolution.
    Metrics are taken at the fixed ``eval_resolution`` so numbers stay comparable while the resolution grows.

    Augmentations are seeded by ``(seed, epoch, index)``: ``set_epoch`` is called by
    :meth:`projects.shape3d.module.Shape3DModule.on_train_epoch_start` (and ``train_dataloader`` takes the trainer's
    epoch, which covers the first epoch and a resumed one). DataLoader workers are never persistent, so each epoch's
    workers get the dataset with that epoch.
    """

    def __init__(
        self,
        data_dir: str | None = None,
        train_captions: str = "train.jsonl",
        val_captions: str = "val.jsonl",
        predict_captions: str | None = None,
        predict_texts: list[str] | None = None,
        predict_style: str = "",
        resolution: int = 32,
        eval_resolution: int = 32,
        num_points: int = 2048,
        num_ref_points: int = 512,
        normalize_extent: float = 0.8,
        batch_size: int = 16,
        num_workers: int = 0,
        augment: bool = False,
        augment_prob: float = 0.5,
        rotation_degrees: float = 30.0,
        scale_range: tuple[float, float] = (0.8, 1.2),
        jitter_std: float = 0.01,
        ref_points_prob: float = 0.0,
        augment_only_with_ref: bool = True,
        val_ref_points: bool = False,
        on_bad_row: str = "error",
        cache: bool = True,
        generated_dir: str | None = None,
        generated_copies_train: int = 4,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.resolution = resolution
        self.train_store: ShapeStore | None = None
        self.val_store: ShapeStore | None = None
        self.train_set: ShapeDataset | None = None
        self.val_set: ShapeDataset | None = None
        self._mean_shape: tuple[torch.Tensor, float] | None = None

    @property
    def root(self) -> Path:
        if self.hparams.data_dir:
            return Path(self.hparams.data_dir)
        return Path(self.hparams.generated_dir) if self.hparams.generated_dir else DEFAULT_DATA_DIR

    def prepare_data(self) -> None:
        if not self.hparams.data_dir:
            generate_default_data(self.root, copies_train=self.hparams.generated_copies_train)

    def _store(self, captions: str) -> ShapeStore:
        h = self.hparams
        return ShapeStore(
            self.root / captions,
            num_points=h.num_points,
            num_ref_points=h.num_ref_points,
            extent=h.normalize_extent,
            surface_resolution=h.eval_resolution,
            on_bad_row=h.on_bad_row,
            cache_dir=(self.root / "cache") if h.cache else None,
        )

    def setup(self, stage: str) -> None:
        h = self.hparams
        if stage in ("fit", "validate", "test") and self.val_store is None:
            self.prepare_data()
            if stage == "fit":
                self.train_store = self._store(h.train_captions)
                self.train_set = ShapeDataset(
                    self.train_store,
                    self.resolution,
                    h.eval_resolution,
                    augment=h.augment,
                    augment_prob=h.augment_prob,
                    rotation_degrees=h.rotation_degrees,
                    scale_range=h.scale_range,
                    jitter_std=h.jitter_std,
                    ref_points_prob=h.ref_points_prob,
                    augment_only_with_ref=h.augment_only_with_ref,
                    seed=h.seed,
                )
            self.val_store = self._store(h.val_captions)
            self.val_set = ShapeDataset(
                self.val_store,
                self.resolution,
                h.eval_resolution,
                ref_points_prob=float(h.val_ref_points),
                seed=h.seed + 1,
            )
            rank_zero_info(
                f"[shape3d] data: {len(self.train_store) if self.train_store else 0} train / {len(self.val_store)} val shapes "
                f"from {self.root}"
            )
        if stage == "predict":
            self.predict_set = PredictDataset(self._predict_rows(), h.num_ref_points, h.normalize_extent)

    def _predict_rows(self) -> list[CaptionRow]:
        h = self.hparams
        if h.predict_captions:
            return read_captions(h.predict_captions, require_mesh=False)
        if h.predict_texts:
            return [
                CaptionRow(None, text, h.predict_style, f"data.predict_texts[{i}]")
                for i, text in enumerate(h.predict_texts)
            ]
        raise InputError(
            "predict needs data.init_args.predict_texts (a list of descriptions) or data.init_args.predict_captions"
        )

    def set_epoch(self, epoch: int) -> None:
        """The training epoch about to start: the training set's augmentations differ every epoch. Validation
        samples keep epoch 0, so every validation pass sees the same data."""
        if self.train_set is not None:
            self.train_set.set_epoch(epoch)

    def set_resolution(self, resolution: int) -> None:
        """Called by ProgressiveResolution: every dataset voxelises (or loads from cache) its targets at ``resolution``."""
        self.resolution = resolution
        for dataset in (self.train_set, self.val_set):
            if dataset is not None:
                dataset.store.voxels(resolution)
                dataset.resolution = resolution

    def mean_shape(self) -> tuple[torch.Tensor, float]:
        """The 'predict the mean shape' baseline: the mean training occupancy at ``eval_resolution`` and the
        threshold on it that maximises the mean training IoU (the strongest single shape for this data)."""
        if self._mean_shape is None:
            if self.train_store is None:
                raise RuntimeError("mean_shape needs the training split (setup('fit'))")
            grids = self.train_store.voxels(self.hparams.eval_resolution).float()
            mean = grids.mean(0)
            best = max(
                (float(voxel_iou(mean.expand_as(grids), grids, t).mean()), t)
                for t in np.arange(0.05, 0.96, 0.05).tolist()
            )
            self._mean_shape = (mean, best[1])
        return self._mean_shape

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        # never persistent: workers copy the dataset when an epoch's iterator is created, which is how they learn the
        # epoch (augmentation seeds) and the resolution set in the main process at the start of the epoch
        return DataLoader(
            dataset,
            batch_size=self.hparams.batch_size,
            shuffle=shuffle,
            num_workers=self.hparams.num_workers,
            persistent_workers=False,
        )

    def train_dataloader(self) -> DataLoader:
        # the first epoch's iterator (and a resumed run's) is created before on_train_epoch_start: take the epoch here
        trainer = getattr(self, "trainer", None)
        self.set_epoch(trainer.current_epoch if trainer is not None else 0)
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.predict_set, shuffle=False)
