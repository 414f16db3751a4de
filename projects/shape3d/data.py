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
import multiprocessing
import re
import shutil
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
import trimesh
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from scipy.spatial import cKDTree
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from common.errors import InputError, MissingInputError
from common.geometry import (
    sample_surface_points,
    transform_voxels,
    voxel_grid_points,
    voxelize_mesh,
)
from common.io import atomic_dir, atomic_path, load_cache, read_lines, read_text
from projects.shape3d.generate import all_texts, generate_default_data
from projects.shape3d.text_encoder import TURKISH_ALPHABET, prepare_tokenizer

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA_DIR = REPO_ROOT / "data" / "generated" / "shape3d"
CACHE_VERSION = 5  # 5: per-mesh caches + memory-mapped prepared splits (4: winding numbers, target normals)
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
        raw = read_csv_records(path)
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


def read_csv_records(path: Path) -> list[tuple[int, dict]]:
    """``(line, record)`` per data row of a captions CSV. Python's csv module accepts two mistakes silently: an
    unterminated quote swallows every following row into one field (the caption becomes
    ``'kapanmamış tırnak,\nmeshes/001_0.ply,bir kutu,'``), and extra columns are dropped; both are one error
    naming the file and the row's first line. A quoted field never spans lines in a captions file."""
    reader = csv.reader(io.StringIO(read_text(path), newline=""), strict=True)
    try:
        header = next(reader, None)
    except csv.Error as error:
        raise InputError(f"{path}:1: malformed CSV header ({error})") from error
    if header is None or "text" not in header:
        raise InputError(f"{path}:1: CSV header must name the columns mesh,text[,style]; got {header}")
    records = []
    while True:
        start = reader.line_num + 1
        try:
            values = next(reader, None)
        except csv.Error as error:  # strict: an unterminated quote at the end of the file
            raise InputError(f"{path}:{start}: malformed CSV row, unterminated quote? ({error})") from error
        if values is None:
            return records
        if reader.line_num != start or any("\n" in value or "\r" in value for value in values):
            raise InputError(
                f"{path}:{start}: a quoted field runs over lines {start}-{reader.line_num} (unterminated quote?)"
            )
        if not values:
            continue  # a blank line
        if len(values) > len(header):
            raise InputError(
                f"{path}:{start}: {len(values)} columns, the header has {len(header)} ({','.join(header)}); "
                "quote fields that contain commas"
            )
        records.append((start, dict(zip(header, values, strict=False))))


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
        # unprocessed: trimesh's processing silently drops non-finite vertices and their faces (a box with one
        # NaN corner kept 8 of 12 faces), so the check below must see the file's own vertices first
        mesh = trimesh.load(str(path), force="mesh", process=False)
    except Exception as error:  # trimesh raises many types for corrupt files
        raise InputError(
            f"{where}: mesh '{path}' could not be parsed ({type(error).__name__}: {error})"
        ) from error
    if isinstance(mesh, trimesh.Trimesh) and len(mesh.vertices) and not np.isfinite(mesh.vertices).all():
        bad = int((~np.isfinite(mesh.vertices).all(1)).sum())
        raise InputError(
            f"{where}: mesh '{path}' has non-finite (NaN/Inf) vertex coordinates ({bad} vertices)"
        )
    if isinstance(mesh, trimesh.Trimesh):
        mesh.process()  # what trimesh.load does by default: merge duplicate vertices (STL), drop degenerate faces
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


def mesh_fingerprint(path: Path) -> list | None:
    """What identifies a mesh file's contents without reading it: resolved path, size, mtime (None: missing)."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]


def _sha1(value) -> str:
    return hashlib.sha1(json.dumps(value).encode()).hexdigest()[:16]


def process_mesh(
    mesh: trimesh.Trimesh,
    seed: int,
    num_points: int,
    num_ref_points: int,
    surface_resolution: int,
    resolutions: list[int],
) -> dict[str, np.ndarray]:
    """Everything training needs from one normalised mesh: target surface points with their faces' normals, a
    separate reference cloud (the optional conditioning input), the squared distance from every voxel centre of
    the ``surface_resolution`` grid to the surface (for the surface loss, capped at ``DISTANCE_CAP``) and the
    occupancy grid at each of ``resolutions``, bit-packed (``voxels<R>``)."""
    sampled, face_index = trimesh.sample.sample_surface(mesh, num_points, seed=seed)
    dense = sample_surface_points(mesh, 8192, seed=seed + 2)
    # capped: far voxels only need "far" (a hard penalty), and an unbounded KD-tree query is 4x slower
    centers = voxel_grid_points(surface_resolution).numpy()
    distance, _ = cKDTree(dense).query(centers, distance_upper_bound=DISTANCE_CAP)
    distance = np.minimum(distance, DISTANCE_CAP)
    arrays = {
        "points": np.asarray(sampled, np.float32),
        "normals": np.asarray(mesh.face_normals[face_index], np.float32),
        "ref_points": sample_surface_points(mesh, num_ref_points, seed=seed + 1),
        "distances": (distance**2).reshape((surface_resolution,) * 3).astype(np.float32),
        "watertight": np.array(mesh.is_watertight),
    }
    arrays |= voxel_arrays(mesh, resolutions)
    return arrays


def voxel_arrays(mesh: trimesh.Trimesh, resolutions: list[int]) -> dict[str, np.ndarray]:
    """``{"voxels<R>": bit-packed occupancy}`` for each resolution (8x smaller than bool, unpacked per sample)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a non-watertight mesh is reported once per row by the store
        return {f"voxels{r}": np.packbits(voxelize_mesh(mesh, r).reshape(-1)) for r in resolutions}


def unpack_voxels(packed: np.ndarray, resolution: int) -> np.ndarray:
    """(..., bytes) bit-packed rows -> (..., R, R, R) bool."""
    grids = np.unpackbits(np.asarray(packed), count=resolution**3, axis=-1)
    return grids.reshape(*packed.shape[:-1], resolution, resolution, resolution).astype(bool)


def mean_shape_of(packed: np.ndarray, resolution: int, chunk: int = 256) -> tuple[np.ndarray, float]:
    """The mean occupancy of bit-packed grids and the threshold (0.05 ... 0.95) that maximises their mean IoU
    with it, in chunks (memory bounded by ``chunk`` grids at any data size). Two empty grids have IoU 1, the
    larger threshold wins a tie (as :func:`common.geometry.voxel_iou` and ``max`` over ``(iou, t)``)."""
    count = len(packed)
    total = np.zeros(resolution**3, np.float64)
    for start in range(0, count, chunk):
        total += unpack_voxels(packed[start : start + chunk], resolution).reshape(-1, resolution**3).sum(0)
    mean = (total / count).astype(np.float32)
    thresholds = np.arange(0.05, 0.96, 0.05)
    predicted = (mean[:, None] > thresholds[None, :]).astype(np.float32)  # (V, T)
    iou_sum = np.zeros(len(thresholds))
    for start in range(0, count, chunk):
        grids = unpack_voxels(packed[start : start + chunk], resolution).reshape(-1, resolution**3)
        inter = grids.astype(np.float32) @ predicted  # (n, T)
        union = grids.sum(1, keepdims=True) + predicted.sum(0, keepdims=True) - inter
        iou_sum += np.where(union > 0, inter / np.maximum(union, 1), 1.0).sum(0)
    best = max(zip((iou_sum / count).tolist(), thresholds.tolist(), strict=True))
    return mean.reshape((resolution,) * 3), float(best[1])


FIELDS = ("points", "normals", "ref_points", "distances")


class ShapeStore:
    """The meshes of one split, prepared once: surface points, normals, reference clouds, surface distances and
    bit-packed voxel grids per resolution, with the mean-shape baseline.

    Preparation (loading, validating, normalising, sampling, voxelising) is cached per mesh under
    ``<cache_dir>/meshes/`` by the mesh file's fingerprint (path, size, mtime), so new or changed meshes are the only
    ones read again; the split is then assembled into ``<cache_dir>/<captions stem>_<digest>/``: one ``.npy`` per
    field and resolution (the voxels bit-packed) plus ``manifest.json`` (kept rows, warnings, baseline threshold),
    written atomically. Opening a prepared split reads the captions file, stats every mesh and memory-maps the
    arrays: no mesh is read, RSS does not grow with the data, and every DDP rank and DataLoader worker shares the
    page cache. Without ``cache_dir`` everything is computed in memory.

    ``on_bad_row="error"`` stops at the first bad row (missing / unreadable / empty / non-finite mesh) with its
    file:line; ``"skip"`` warns with the file:line (on every open) and keeps every other row as it is.
    ``resolutions`` are voxelised while preparing; another resolution is added on first use. ``workers`` > 1
    prepares the meshes missing from the per-mesh cache in that many processes first.
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
        resolutions: tuple[int, ...] = (),
        workers: int = 0,
    ) -> None:
        if on_bad_row not in ("error", "skip"):
            raise InputError(f"on_bad_row must be 'error' or 'skip', got {on_bad_row!r}")
        self.captions = Path(captions)
        self.extent = extent
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.surface_resolution = surface_resolution
        self.on_bad_row = on_bad_row
        self.resolutions = sorted({*resolutions, surface_resolution})
        self.workers = workers
        self.settings = [CACHE_VERSION, extent, surface_resolution, num_points, num_ref_points]
        all_rows = read_captions(self.captions)
        fingerprints = [mesh_fingerprint(row.mesh) for row in all_rows]
        settings_key = _sha1([*self.settings, on_bad_row])
        self.digest = f"{settings_key[:8]}_{_sha1([settings_key, fingerprints])[:12]}"
        self.split_dir = (
            None if self.cache_dir is None else self.cache_dir / f"{self.captions.stem}_{self.digest}"
        )
        self._arrays: dict[str, np.ndarray] | None = None
        manifest = self._open() if self.split_dir is not None else None
        if manifest is None:
            manifest = self._prepare(all_rows, fingerprints)
        for message in manifest["warnings"]:
            warnings.warn(message, stacklevel=2)
        self.rows = [all_rows[i] for i in manifest["kept"]]
        if not self.rows:
            raise InputError(f"{self.captions}: no usable rows")
        self.fingerprints = [fingerprints[i] for i in manifest["kept"]]
        self.mean_threshold = float(manifest["mean_threshold"])

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self) -> dict:
        # DataLoader workers started by spawn re-open the memory maps instead of receiving copies of the arrays
        state = dict(self.__dict__)
        if self.split_dir is not None:
            state["_arrays"] = None
        return state

    # ------------------------------------------------------------------ reading the prepared split

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            self._arrays = self._open_arrays(self.split_dir)
        return self._arrays

    def _open_arrays(self, folder: Path) -> dict[str, np.ndarray]:
        arrays = {file.stem: np.load(file, mmap_mode="r") for file in sorted(folder.glob("*.npy"))}
        return arrays

    def _open(self) -> dict | None:
        """The manifest of the prepared split, or None (not prepared, or damaged: removed with one warning)."""

        def load(folder: Path) -> dict:
            manifest = json.loads(read_text(folder / "manifest.json"))
            arrays = self._open_arrays(folder)
            for key in (*FIELDS, "mean_shape", f"voxels{self.surface_resolution}"):
                if key not in arrays or (key != "mean_shape" and len(arrays[key]) != len(manifest["kept"])):
                    raise ValueError(f"'{key}' missing or not {len(manifest['kept'])} rows")
            self._arrays = arrays
            return manifest

        return load_cache(self.split_dir, load, what="shape3d prepared split")

    def item(self, index: int) -> dict[str, torch.Tensor]:
        """The point fields of sample ``index`` (copied out of the memory map)."""
        return {key: torch.from_numpy(np.array(self.arrays[key][index])) for key in FIELDS}

    def _field(self, key: str) -> torch.Tensor:
        return torch.from_numpy(np.array(self.arrays[key]))

    @property
    def points(self) -> torch.Tensor:
        return self._field("points")

    @property
    def normals(self) -> torch.Tensor:
        """Unit normals of the faces the target points lie on."""
        return self._field("normals")

    @property
    def ref_points(self) -> torch.Tensor:
        return self._field("ref_points")

    @property
    def distances(self) -> torch.Tensor:
        return self._field("distances")

    def voxel(self, index: int, resolution: int) -> torch.Tensor:
        """(R, R, R) bool occupancy of sample ``index``, unpacked from the prepared bits."""
        self.ensure_resolution(resolution)
        return torch.from_numpy(unpack_voxels(self.arrays[f"voxels{resolution}"][index], resolution))

    def voxels(self, resolution: int) -> torch.Tensor:
        """(N, R, R, R) bool occupancy of every sample (tests, small sets: the per-sample path is :meth:`voxel`)."""
        self.ensure_resolution(resolution)
        return torch.from_numpy(unpack_voxels(self.arrays[f"voxels{resolution}"], resolution))

    def mean_shape(self) -> tuple[torch.Tensor, float]:
        """The mean occupancy at ``surface_resolution`` and its best-IoU threshold (prepared with the split)."""
        return torch.from_numpy(np.array(self.arrays["mean_shape"])), self.mean_threshold

    def mesh(self, index: int) -> trimesh.Trimesh:
        """The normalised mesh of sample ``index``, read from its file (meshes are not kept in memory)."""
        row = self.rows[index]
        return normalize_to_unit_cube(load_mesh(row.mesh, row.where), self.extent, row.where)

    # ------------------------------------------------------------------ preparing

    def _mesh_cache_path(self, fingerprint: list) -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / "meshes" / f"{_sha1([*self.settings, fingerprint])}.npz"

    def _mesh_arrays(self, row: CaptionRow, fingerprint: list | None, resolutions: list[int]) -> dict:
        """One mesh's prepared arrays: from its per-mesh cache, or computed (and cached). A cached entry that
        lacks a resolution gets it added. Bad meshes raise an InputError naming the row."""
        path = None if fingerprint is None else self._mesh_cache_path(fingerprint)
        arrays = None
        if path is not None:

            def load(file: Path) -> dict:
                with np.load(file, allow_pickle=False) as data:
                    return {key: data[key] for key in data.files}

            arrays = load_cache(path, load, what="shape3d mesh cache")
        missing = resolutions if arrays is None else [r for r in resolutions if f"voxels{r}" not in arrays]
        if arrays is not None and not missing:
            return arrays
        mesh = normalize_to_unit_cube(load_mesh(row.mesh, row.where), self.extent, row.where)
        if arrays is None:
            # the seed comes from the file's identity, not its row: a mesh gives the same samples in any split
            seed = int(_sha1(fingerprint or [str(row.mesh)])[:7], 16)
            arrays = process_mesh(mesh, seed, *self.settings[3:], self.surface_resolution, resolutions)
        else:
            arrays |= voxel_arrays(mesh, missing)
        if path is not None:
            with atomic_path(path) as temporary, temporary.open("wb") as file:
                np.savez_compressed(file, **arrays)  # a file object: numpy adds no ".npz" to the name
        return arrays

    def _prepare(self, all_rows: list[CaptionRow], fingerprints: list) -> dict:
        """Read, check and prepare every row (per-mesh cache first), then assemble the split."""
        if self.workers > 1 and self.cache_dir is not None:
            self._fill_mesh_cache(all_rows, fingerprints)
        kept, messages, in_memory = [], [], []
        for index, (row, fingerprint) in enumerate(zip(all_rows, fingerprints, strict=True)):
            try:
                arrays = self._mesh_arrays(row, fingerprint, self.resolutions)
            except InputError as error:  # MissingInputError included; anything else is a bug and propagates
                if self.on_bad_row == "error":
                    raise
                messages.append(f"skipping {error}")
                continue
            if not bool(arrays["watertight"]):
                messages.append(
                    f"{row.where}: mesh '{row.mesh}' is not watertight; it is voxelised by surface"
                )
            kept.append(index)
            if self.split_dir is None:
                in_memory.append(arrays)
        manifest = {"kept": kept, "warnings": messages, "mean_threshold": 0.0}
        if not kept:
            return manifest
        keys = [*FIELDS, *(f"voxels{r}" for r in self.resolutions)]
        if self.split_dir is None:
            self._arrays = {key: np.stack([arrays[key] for arrays in in_memory]) for key in keys}
            self._finish(self._arrays, manifest)
            return manifest
        with atomic_dir(self.split_dir) as folder:
            first = self._mesh_arrays(all_rows[kept[0]], fingerprints[kept[0]], self.resolutions)
            files = {key: (folder / f"{key}.npy").open("wb") for key in keys}
            try:
                for key, file in files.items():  # .npy header, then the rows appended one mesh at a time
                    header = {"descr": np.lib.format.dtype_to_descr(first[key].dtype), "fortran_order": False}
                    header["shape"] = (len(kept), *first[key].shape)
                    np.lib.format.write_array_header_1_0(file, header)
                for index in kept:  # re-read from the per-mesh cache: memory stays flat at any data size
                    arrays = self._mesh_arrays(all_rows[index], fingerprints[index], self.resolutions)
                    for key, file in files.items():
                        file.write(np.ascontiguousarray(arrays[key], dtype=first[key].dtype).tobytes())
            finally:
                for file in files.values():
                    file.close()
            written = self._open_arrays(folder)
            self._finish(written, manifest)
            np.save(folder / "mean_shape.npy", written["mean_shape"])
            del written
            (folder / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
        self._remove_stale_splits()
        self._arrays = None
        return manifest

    def _fill_mesh_cache(self, all_rows: list[CaptionRow], fingerprints: list) -> None:
        """The per-mesh cache entries of every row, made in ``workers`` processes (each writes its files
        atomically); bad rows are left to the sequential pass, which reports them in order."""
        todo = [
            (row, fingerprint)
            for row, fingerprint in zip(all_rows, fingerprints, strict=True)
            if fingerprint is not None and not self._mesh_cache_path(fingerprint).exists()
        ]
        if len(todo) < 2:
            return
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("fork" if "fork" in methods else None)
        with ProcessPoolExecutor(min(self.workers, len(todo)), mp_context=context) as pool:
            list(pool.map(self._cache_one, todo, chunksize=max(1, len(todo) // (8 * self.workers))))

    def _cache_one(self, item: tuple[CaptionRow, list]) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                self._mesh_arrays(*item, self.resolutions)
            except InputError:
                pass  # reported by the sequential pass, with on_bad_row

    def _finish(self, arrays: dict, manifest: dict) -> None:
        resolution = self.surface_resolution
        mean, manifest["mean_threshold"] = mean_shape_of(arrays[f"voxels{resolution}"], resolution)
        arrays["mean_shape"] = mean

    def _remove_stale_splits(self) -> None:
        """Older preparations of this captions file with the same settings (the data changed since)."""
        prefix = f"{self.captions.stem}_{self.digest.split('_')[0]}_"
        for folder in self.cache_dir.glob(f"{prefix}*"):
            if folder.is_dir() and folder != self.split_dir:
                shutil.rmtree(folder, ignore_errors=True)

    def ensure_resolution(self, resolution: int) -> None:
        """Voxel grids at a resolution that was not prepared: made now from the per-mesh caches (meshes are read
        only for this resolution) and added to the prepared split. List it in ``resolutions`` to do it once in
        ``prepare_data`` instead of on every rank."""
        key = f"voxels{resolution}"
        if key in self.arrays:
            return
        packed = np.stack(
            [
                self._mesh_arrays(row, fingerprint, [resolution])[key]
                for row, fingerprint in zip(self.rows, self.fingerprints, strict=True)
            ]
        )
        if self.split_dir is None:
            self.arrays[key] = packed
            return
        with atomic_path(self.split_dir / f"{key}.npy") as temporary, temporary.open("wb") as file:
            np.save(file, packed)
        self.arrays[key] = np.load(self.split_dir / f"{key}.npy", mmap_mode="r")


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
            "voxels": self.store.voxel(index, self.resolution).float(),
            "eval_voxels": self.store.voxel(index, self.eval_resolution).float(),
            **self.store.item(index),
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
    ``prepare_data`` (rank 0, once; or ``python -m projects.shape3d.prepare``) writes the generated set, the tiny
    text encoder's tokenizer (``<root>/tokenizer``) and the prepared splits (``<root>/cache``, voxelised at
    ``resolutions``, in ``prepare_workers`` processes when > 1); ``setup`` only opens them (memory maps; it reads
    no mesh). The model takes ``tokenizer_dir`` and
    ``text_vocab_size`` from here (``Shape3DModule.linked_from_data``).

    ``set_resolution`` is called by :class:`common.callbacks.ProgressiveResolution` (and by the model outside fit,
    :class:`common.protocols.HasResolution`); targets come from the prepared grids of that resolution (one not in
    ``resolutions`` is voxelised on first use, on every rank). Metrics are
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
        resolutions: tuple[int, ...] = (32, 48, 64),
        prepare_workers: int = 0,
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
        """Once per machine, before ``setup``: the generated data set (unless ``data_dir`` is given), the tiny
        text encoder's tokenizer and, with ``cache: true``, the prepared splits (every mesh read, checked, sampled
        and voxelised at ``resolutions``; see :class:`ShapeStore`). All are reused while unchanged (a warm launch
        stats the mesh files, it does not read them) and written atomically. ``fit`` prepares both splits,
        ``validate`` the validation split, ``predict`` neither."""
        h = self.hparams
        if not h.data_dir:
            generate_default_data(self.root, copies_train=h.generated_copies_train)
        self.prepare_tokenizer()
        if not h.cache:
            return  # nothing on disk: setup computes the splits in memory (on every rank)
        trainer = getattr(self, "trainer", None)
        stage = trainer.state.fn if trainer is not None else TrainerFn.FITTING
        splits = {
            TrainerFn.FITTING: [h.train_captions, h.val_captions],
            TrainerFn.VALIDATING: [h.val_captions],
        }
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # bad-row and watertightness warnings are given by setup, once
            for captions in splits.get(stage, []):
                self._store(captions)

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
            resolutions=(*h.resolutions, self.resolution, h.eval_resolution),
            workers=h.prepare_workers,
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
                dataset.store.ensure_resolution(resolution)
                dataset.resolution = resolution

    def mean_shape(self) -> tuple[torch.Tensor, float]:
        """The 'predict the mean shape' baseline: the mean training occupancy at ``eval_resolution`` and the
        threshold on it that maximises the mean training IoU (the strongest single shape for this data)."""
        if self._mean_shape is None:
            if self.train_store is None:
                raise RuntimeError("mean_shape needs the training split (setup('fit'))")
            self._mean_shape = self.train_store.mean_shape()  # prepared with the split
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
