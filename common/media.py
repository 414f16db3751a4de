"""Logger-agnostic media samples.

A LightningModule that wants pictures, videos, meshes or tables on its dashboard implements
``media_samples(self) -> dict[str, Media]``; :class:`common.callbacks.MediaLogger` turns them into files
in the run directory and, when W&B is the logger, into ``wandb.Image`` / ``wandb.Video`` / ``wandb.Object3D``
/ ``wandb.Table``. Projects never import wandb for media themselves.

The files are the record: a table's pictures are written as PNGs next to its CSV (the CSV names them), and the
W&B objects are built from those files, so a copied run folder keeps every picture. (W&B keeps a table's images in
a staging folder outside the run until the table is uploaded.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class Image:
    """An ``H x W x C`` uint8 (or float in [0, 1]) picture."""

    pixels: np.ndarray
    caption: str | None = None


@dataclass
class Video:
    """A ``T x H x W x C`` uint8 clip."""

    frames: np.ndarray
    fps: int = 12
    caption: str | None = None


@dataclass
class Mesh:
    """A triangle mesh: ``V x 3`` float vertices and ``F x 3`` int faces."""

    vertices: np.ndarray
    faces: np.ndarray
    caption: str | None = None


@dataclass
class Table:
    """Rows of cells; a cell may be a str, a number or an :class:`Image`."""

    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)


Media = Image | Video | Mesh | Table


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Accept float images in [0, 1] or uint8 images and return uint8 with a channel axis."""
    array = np.asarray(pixels)
    if array.dtype != np.uint8:
        array = (np.clip(array, 0.0, 1.0) * 255).round().astype(np.uint8)
    if array.ndim == 2:  # a single grey image
        array = array[..., None]
    return array


def table_image_path(csv_path: Path, row: int, column: str) -> Path:
    """Where :func:`write_media` puts the picture in ``row`` / ``column`` of a table written to ``csv_path``:
    ``<name>/row<R>_<column>.png`` next to ``<name>.csv``."""
    safe_column = "".join(c if c.isalnum() or c in "-_" else "_" for c in column) or "image"
    return csv_path.with_suffix("") / f"row{row:03d}_{safe_column}.png"


def write_png(pixels: np.ndarray, path: Path) -> Path:
    import imageio.v3 as iio

    path.parent.mkdir(parents=True, exist_ok=True)
    array = to_uint8(pixels)
    iio.imwrite(path, array[..., 0] if array.shape[-1] == 1 else array)
    return path


def write_media(item: Media, path_without_suffix: Path) -> Path:
    """Write one media item to disk and return the file written (png, gif, obj or csv).

    A table's :class:`Image` cells become PNGs at :func:`table_image_path`; the CSV cell holds that file's path
    relative to the CSV's folder, so the CSV and its pictures move together.
    """
    import imageio.v3 as iio

    path_without_suffix.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(item, Image):
        path = write_png(item.pixels, path_without_suffix.with_suffix(".png"))
    elif isinstance(item, Video):
        path = path_without_suffix.with_suffix(".gif")
        iio.imwrite(path, to_uint8(item.frames), duration=1000 / item.fps, loop=0)
    elif isinstance(item, Mesh):
        import trimesh

        path = path_without_suffix.with_suffix(".obj")
        trimesh.Trimesh(vertices=item.vertices, faces=item.faces, process=False).export(path)
    elif isinstance(item, Table):
        import csv

        path = path_without_suffix.with_suffix(".csv")
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(item.columns)
            for r, row in enumerate(item.rows):
                cells = []
                for column, cell in zip(item.columns, row, strict=True):
                    if isinstance(cell, Image):
                        image_path = write_png(cell.pixels, table_image_path(path, r, column))
                        cell = image_path.relative_to(path.parent).as_posix()
                    cells.append(cell)
                writer.writerow(cells)
    else:
        raise TypeError(f"unknown media type {type(item).__name__}; expected Image, Video, Mesh or Table")
    return path


def files_of(item: Media, file_written: Path) -> list[Path]:
    """Every file :func:`write_media` wrote for ``item``: the file it returned and a table's pictures."""
    files = [file_written]
    if isinstance(item, Table):
        files += [
            table_image_path(file_written, r, column)
            for r, row in enumerate(item.rows)
            for column, cell in zip(item.columns, row, strict=True)
            if isinstance(cell, Image)
        ]
    return files


def to_wandb(item: Media, file_written: Path) -> Any:
    """Convert a media item, already written to ``file_written`` by :func:`write_media`, to the matching wandb
    object built from the files (wandb is imported lazily)."""
    import wandb

    if isinstance(item, Image):
        return wandb.Image(str(file_written), caption=item.caption)
    if isinstance(item, Video):
        return wandb.Video(str(file_written), caption=item.caption, format="gif")
    if isinstance(item, Mesh):
        return wandb.Object3D(str(file_written), caption=item.caption)
    if isinstance(item, Table):
        rows = [
            [
                wandb.Image(str(table_image_path(file_written, r, column)), caption=cell.caption)
                if isinstance(cell, Image)
                else cell
                for column, cell in zip(item.columns, row, strict=True)
            ]
            for r, row in enumerate(item.rows)
        ]
        return wandb.Table(columns=item.columns, data=rows)
    raise TypeError(f"unknown media type {type(item).__name__}")
