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
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
import trimesh
from lightning.pytorch.utilities import rank_zero_info
from scipy.spatial import cKDTree
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from common.errors import InputError, MissingInputError
from common.geometry import (
    sample_surface_points,
    transform_voxels,
    voxel_grid_points,
    voxel_iou,
    voxelize_mesh,
)
from common.io import atomic_path, load_cache, read_lines, read_text
from projects.shape3d.generate import all_texts, generate_default_data
from projects.shape3d.text_encoder import TURKISH_ALPHABET, prepare_tokenizer

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA_DIR = REPO_ROOT / "data" / "generated" / "shape3d"
CACHE_VERSION = 4  # 4: winding-number voxelisation (common.geometry), target normals in the points cache
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
        self.normals = torch.from_numpy(cached["normals"]).float()  # unit normals of the target points' faces
        self.ref_points = torch.from_numpy(cached["ref_points"]).float()
        self.distances = torch.from_numpy(cached["distances"]).float()
        self.voxel_cache: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def _check_points(self, arrays: dict) -> None:
        for key in ("points", "normals", "ref_points", "distances"):
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
        points, normals, refs, distances = [], [], [], []
        for index, mesh in enumerate(self.meshes):
            # the same points as sample_surface_points(mesh, num_points, seed=2 * index), with their faces' normals
            sampled, face_index = trimesh.sample.sample_surface(mesh, num_points, seed=2 * index)
            points.append(np.asarray(sampled, np.float32))
            normals.append(np.asarray(mesh.face_normals[face_index], np.float32))
            refs.append(sample_surface_points(mesh, num_ref_points, seed=2 * index + 1))
            dense = sample_surface_points(mesh, 8192, seed=10_000 + index)
            # capped: far voxels only need "far" (a hard penalty), and an unbounded KD-tree query is 4x slower
            distance, _ = cKDTree(dense).query(centers, distance_upper_bound=DISTANCE_CAP)
            distance = np.minimum(distance, DISTANCE_CAP)
            distances.append((distance**2).reshape((self.surface_resolution,) * 3).astype(np.float32))
        return {
            "points": np.stack(points),
            "normals": np.stack(normals),
            "ref_points": np.stack(refs),
            "distances": np.stack(distances),
        }

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
    # a similarity map turns normals by its rotation: (A^-T n) normalised, which for A = sR is R n
    out["normals"] = torch.nn.functional.normalize(sample["normals"] @ matrix.T, dim=-1)
    jitter = torch.randn(sample["ref_points"].shape, generator=generator) * jitter_std
    out["ref_points"] = sample["ref_points"] @ matrix.T + jitter
    return out


def augment_mesh(mesh: trimesh.Trimesh, matrix: torch.Tensor) -> trimesh.Trimesh:
    """The same linear map as :func:`augment_sample`, applied to a mesh (for exports / mesh-level pipelines)."""
    transform = np.eye(4)
    transform[:3, :3] = matrix.double().numpy()
    return mesh.copy().apply_transform(transform)


@dataclass(frozen=True)
class Augmentation:
    """Random similarity maps of training samples (``data.init_args.augmentation``): rotation about the vertical
    axis within +-``rotation_degrees``, uniform scale in ``scale_range``, Gaussian ``jitter_std`` on the reference
    cloud, each sample with probability ``prob``. With ``only_with_ref`` only samples that carry the (equally
    transformed) reference cloud are augmented: a text alone cannot tell which pose the target was given."""

    enabled: bool = False
    prob: float = 0.5
    rotation_degrees: float = 30.0
    scale_range: tuple[float, float] = (0.8, 1.2)
    jitter_std: float = 0.01
    only_with_ref: bool = True


@dataclass(frozen=True)
class ReferencePoints:
    """The optional conditioning cloud (``data.init_args.reference``): ``num_points`` surface points per shape; a
    training sample carries it with probability ``train_prob``, a validation sample when ``in_validation``."""

    num_points: int = 512
    train_prob: float = 0.0
    in_validation: bool = False


def as_config(value, cls):
    """A config dataclass from itself or from a dict (checkpoints store plain dicts, the CLI gives dataclasses)."""
    return cls(**value) if isinstance(value, dict) else (value if value is not None else cls())


class ShapeDataset(Dataset):
    """Samples of a :class:`ShapeStore` at the resolution currently set (read at ``__getitem__`` time).

    The random choices of a sample (reference cloud or not, augmentation, jitter) come from a generator seeded by
    ``(seed, epoch, index)`` alone: deterministic for a seed, different every epoch, and the same whichever process
    (main or DataLoader worker) makes the sample. ``epoch`` is set with :meth:`set_epoch` before each epoch's
    iterator is created (by :class:`EpochSampler`, which Lightning gives the epoch); workers receive a copy of the
    dataset when the iterator is created, so they must not be persistent (they would keep the epoch they started
    with). ``baseline`` (validation): the mean-shape baseline's grid, passed along in every sample.
    """

    def __init__(
        self,
        store: ShapeStore,
        resolution: int,
        eval_resolution: int,
        augmentation: Augmentation | None = None,
        ref_points_prob: float = 0.0,
        seed: int = 0,
        baseline: torch.Tensor | None = None,
    ) -> None:
        self.store = store
        self.resolution = resolution
        self.eval_resolution = eval_resolution
        self.augmentation = augmentation or Augmentation()
        self.ref_points_prob = ref_points_prob
        self.seed = seed
        self.baseline = baseline
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.store)

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next samples belong to (part of every sample's seed)."""
        self.epoch = int(epoch)

    def sample_seed(self, index: int) -> int:
        """The seed of sample ``index`` in the current epoch: a hash of ``(seed, epoch, index)``."""
        # SeedSequence takes non-negative ints
        entropy = [self.seed & 0xFFFF_FFFF_FFFF_FFFF, self.epoch, int(index)]
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
            "normals": self.store.normals[index],
            "ref_points": self.store.ref_points[index],
            "distances": self.store.distances[index],
            "index": index,
        }
        has_ref = torch.rand(1, generator=generator).item() < self.ref_points_prob
        # A text alone cannot tell which random rotation / scale the target got, so by default only samples that
        # carry the (equally transformed) reference cloud are augmented: the target stays predictable.
        augmentation = self.augmentation
        wants = augmentation.enabled and (has_ref or not augmentation.only_with_ref)
        if wants and torch.rand(1, generator=generator).item() < augmentation.prob:
            matrix = random_similarity(
                generator, augmentation.rotation_degrees, tuple(augmentation.scale_range)
            )
            sample = augment_sample(sample, matrix, augmentation.jitter_std, generator)
        sample["has_ref"] = float(has_ref)
        if self.baseline is not None:
            sample["baseline"] = self.baseline
        return sample


class EpochSampler(DistributedSampler):
    """A ``DistributedSampler`` (one replica outside DDP) that hands the epoch on to its dataset.

    Lightning calls ``set_epoch`` on a loader's sampler before every training epoch's iterator is made, with the
    restored epoch after a resume; passing it to :meth:`ShapeDataset.set_epoch` gives every epoch new augmentations
    without the model reaching into the datamodule. Being a ``DistributedSampler`` already, Lightning does not wrap
    it under DDP (a wrapper would keep the epoch to itself). The order is shuffled by ``(seed, epoch)``.
    """

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.dataset.set_epoch(epoch)


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

TOKENIZER_VOCAB_SIZE = 300  # the Unigram trainer's target; a small corpus gives fewer pieces


class ShapeDataModule(pl.LightningDataModule):
    """Text (+ style, + optional reference point cloud) -> voxel / point targets, with progressive resolution.

    ``data_dir: null`` uses the generated motif set (in ``generated_dir``, default ``data/generated/shape3d``).
    ``prepare_data`` (rank 0, once; or ``python -m projects.shape3d.prepare``) writes the generated set and the tiny
    text encoder's tokenizer (``<root>/tokenizer``); ``setup`` only reads. The model takes ``tokenizer_dir`` and
    ``text_vocab_size`` from here (``Shape3DModule.linked_from_data``).

    ``set_resolution`` is called by :class:`common.callbacks.ProgressiveResolution` (and by the model outside fit,
    :class:`common.protocols.HasResolution`); targets are re-made (voxelised) at each new resolution. Metrics are
    taken at the fixed ``eval_resolution`` so numbers stay comparable while the resolution grows.

    Augmentations are seeded by ``(seed, epoch, index)``: the training loader's :class:`EpochSampler` receives the
    epoch from Lightning. DataLoader workers are never persistent, so each epoch's workers get the dataset with that
    epoch. Validation samples carry the mean-shape baseline (``baseline``) when the training split is loaded.
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
        normalize_extent: float = 0.8,
        batch_size: int = 16,
        num_workers: int = 0,
        augmentation: Augmentation = Augmentation(),
        reference: ReferencePoints = ReferencePoints(),
        on_bad_row: str = "error",
        cache: bool = True,
        generated_dir: str | None = None,
        generated_copies_train: int = 4,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.augmentation = as_config(augmentation, Augmentation)
        self.reference = as_config(reference, ReferencePoints)
        # checkpoints and loggers get plain values (a checkpoint must load with weights_only=True)
        self.save_hyperparameters(ignore=["augmentation", "reference"])
        self.save_hyperparameters(
            {"augmentation": asdict(self.augmentation), "reference": asdict(self.reference)}
        )
        self.resolution = resolution
        self.eval_resolution = eval_resolution
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

    # ------------------------------------------------------------------ preparation (once) and the model's links

    @property
    def tokenizer_dir(self) -> str:
        """Where ``prepare_data`` writes the tiny text encoder's tokenizer (linked to the model)."""
        return str(self.root / "tokenizer")

    def tokenizer_corpus(self) -> list[str]:
        """The texts the tiny tokenizer learns from: the generator's every phrasing for the generated set, the
        training captions and styles for a user's data; plus the alphabet, so no Turkish letter is unknown."""
        if self.hparams.data_dir:
            rows = read_captions(self.root / self.hparams.train_captions)
            texts = [row.text for row in rows] + [row.style for row in rows if row.style]
        else:
            texts = all_texts()
        return texts + [TURKISH_ALPHABET, TURKISH_ALPHABET.upper()]

    def prepare_tokenizer(self):
        return prepare_tokenizer(self.tokenizer_corpus(), self.tokenizer_dir, TOKENIZER_VOCAB_SIZE)

    @property
    def text_vocab_size(self) -> int:
        """The prepared tokenizer's size (linked to the model, whose tiny T5 needs it to be built). The CLI reads
        it right after instantiating the datamodule, before ``prepare_data`` runs, so the first read of a fresh
        clone prepares the tokenizer (seconds; atomic, so concurrent ranks are safe)."""
        return len(self.prepare_tokenizer())

    def prepare_data(self) -> None:
        """Once per machine, before ``setup``: the generated data set (unless ``data_dir`` is given) and the tiny
        text encoder's tokenizer. Both are reused while unchanged and written atomically."""
        if not self.hparams.data_dir:
            generate_default_data(self.root, copies_train=self.hparams.generated_copies_train)
        self.prepare_tokenizer()

    # ------------------------------------------------------------------ setup (reads only)

    def _store(self, captions: str) -> ShapeStore:
        h = self.hparams
        return ShapeStore(
            self.root / captions,
            num_points=h.num_points,
            num_ref_points=self.reference.num_points,
            extent=h.normalize_extent,
            surface_resolution=h.eval_resolution,
            on_bad_row=h.on_bad_row,
            cache_dir=(self.root / "cache") if h.cache else None,
        )

    def setup(self, stage: str) -> None:
        h = self.hparams
        if stage in ("fit", "validate", "test") and self.val_store is None:
            baseline = None
            if stage == "fit":
                self.train_store = self._store(h.train_captions)
                self.train_set = ShapeDataset(
                    self.train_store,
                    self.resolution,
                    h.eval_resolution,
                    augmentation=self.augmentation,
                    ref_points_prob=self.reference.train_prob,
                    seed=h.seed,
                )
                mean, threshold = self.mean_shape()
                # shifted so the chosen threshold is the 0.5 level: the model thresholds and meshes it like its own
                baseline = (mean - threshold + 0.5).clamp(0, 1)
            self.val_store = self._store(h.val_captions)
            self.val_set = ShapeDataset(
                self.val_store,
                self.resolution,
                h.eval_resolution,
                ref_points_prob=float(self.reference.in_validation),
                seed=h.seed + 1,
                baseline=baseline,
            )
            rank_zero_info(
                f"[shape3d] data: {len(self.train_store) if self.train_store else 0} train / "
                f"{len(self.val_store)} val shapes from {self.root}"
            )
        if stage == "predict":
            self.predict_set = PredictDataset(
                self._predict_rows(), self.reference.num_points, h.normalize_extent
            )

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

    def set_resolution(self, resolution: int) -> None:
        """Called by ProgressiveResolution: every dataset voxelises (or loads from cache) its targets at
        ``resolution``."""
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

    def _loader(self, dataset: Dataset, sampler: DistributedSampler | None = None) -> DataLoader:
        # never persistent: workers copy the dataset when an epoch's iterator is created, which is how they learn the
        # epoch (augmentation seeds) and the resolution set in the main process at the start of the epoch
        return DataLoader(
            dataset,
            batch_size=self.hparams.batch_size,
            sampler=sampler,
            shuffle=False,
            num_workers=self.hparams.num_workers,
            persistent_workers=False,
        )

    def train_dataloader(self) -> DataLoader:
        trainer = getattr(self, "trainer", None)
        replicas, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler = EpochSampler(
            self.train_set, num_replicas=replicas, rank=rank, shuffle=True, seed=self.hparams.seed
        )
        return self._loader(self.train_set, sampler)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.predict_set)
