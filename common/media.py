"""Logger-agnostic media samples.

A LightningModule that wants pictures, videos, meshes or tables on its dashboard implements
``media_samples(self) -> dict[str, Media]``; :class:`common.callbacks.MediaLogger` turns them into files
in the run directory and, when W&B is the logger, into ``wandb.Image`` / ``wandb.Video`` / ``wandb.Object3D``
/ ``wandb.Table``. Projects never import wandb for media themselves.
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


def write_media(item: Media, path_without_suffix: Path) -> Path:
    """Write one media item to disk and return the file written (png, gif, obj or csv)."""
    import imageio.v3 as iio

    path_without_suffix.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(item, Image):
        path = path_without_suffix.with_suffix(".png")
        pixels = to_uint8(item.pixels)
        iio.imwrite(path, pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
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
            for row in item.rows:
                writer.writerow(["<image>" if isinstance(cell, Image) else cell for cell in row])
    else:
        raise TypeError(f"unknown media type {type(item).__name__}; expected Image, Video, Mesh or Table")
    return path


def to_wandb(item: Media, file_written: Path) -> Any:
    """Convert a media item to the matching wandb object (wandb is imported lazily)."""
    import wandb

    if isinstance(item, Image):
        return wandb.Image(to_uint8(item.pixels), caption=item.caption)
    if isinstance(item, Video):
        return wandb.Video(str(file_written), caption=item.caption, format="gif")
    if isinstance(item, Mesh):
        return wandb.Object3D(open(file_written, encoding="utf-8"), file_type="obj", caption=item.caption)
    if isinstance(item, Table):
        rows = [[wandb.Image(to_uint8(c.pixels), caption=c.caption) if isinstance(c, Image) else c for c in row]
                for row in item.rows]
        return wandb.Table(columns=item.columns, data=rows)
    raise TypeError(f"unknown media type {type(item).__name__}")
