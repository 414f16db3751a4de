"""Write predicted shapes as mesh files (``.obj`` / ``.ply`` / ``.glb``) that any mesh tool opens.

A callback rather than model hyperparameters: ``tgm predict --ckpt_path ...`` restores the model's init args from
the checkpoint, so output options given on the command line would be overwritten if the model owned them.
"""

from __future__ import annotations

import re
from pathlib import Path

import lightning.pytorch as pl
import trimesh
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info

from common.geometry import voxels_to_mesh
from projects.shape3d.model import refine_mesh

FORMATS = ("obj", "ply", "glb", "off", "stl")


def slug(text: str) -> str:
    """A file-name-safe version of a description (Turkish letters kept)."""
    return re.sub(r"[^\w]+", "_", text.lower()).strip("_")[:40] or "shape"


class MeshWriter(BasePredictionWriter):
    """For every prediction: the model's refined mesh when it has a trained refinement stage
    (``model.init_args.refinement.enabled``), else marching cubes at ``level`` on the occupancy grid with optional
    vertex fitting (``refine_steps`` of edge/Laplacian-regularised fitting to the iso-surface); then one file per
    format in ``output_dir`` named ``<index>_<description>.<format>``. ``resolution`` (e.g. 64) overrides the grid size the
    model predicts at; by default the model keeps the resolution it reached in training (stored in the checkpoint).
    """

    def __init__(
        self,
        output_dir: str = "runs/shape3d/predictions",
        formats: list[str] = ("obj", "ply", "glb"),
        resolution: int | None = None,
        level: float = 0.5,
        refine_steps: int = 0,
    ) -> None:
        super().__init__(write_interval="batch")
        unknown = [f for f in formats if f not in FORMATS]
        if unknown:
            raise ValueError(f"MeshWriter.formats: unknown {unknown}; choose from {FORMATS}")
        self.output_dir = Path(output_dir)
        self.formats = list(formats)
        self.resolution = resolution
        self.level = level
        self.refine_steps = refine_steps
        self.written: list[Path] = []

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.resolution is not None:
            pl_module.set_resolution(self.resolution)

    def write_on_batch_end(
        self,
        trainer,
        pl_module,
        prediction: dict,
        batch_indices,
        batch,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        refined = prediction.get("meshes") or [None] * len(
            prediction["prob"]
        )  # the model's trained refinement
        for prob, text, style, index, vertices_faces in zip(
            prediction["prob"],
            prediction["text"],
            prediction["style"],
            prediction["index"],
            refined,
            strict=True,
        ):
            if vertices_faces is not None:
                mesh = trimesh.Trimesh(*vertices_faces, process=False)
            else:
                mesh = refine_mesh(voxels_to_mesh(prob, self.level), prob, self.refine_steps)
            if len(mesh.faces) == 0:
                rank_zero_info(f"[shape3d] predict: '{text}' gave an empty shape; writing an empty mesh")
            name = f"{index:03d}_{slug(text)}" + (f"_{slug(style)}" if style else "")
            for fmt in self.formats:
                path = self.output_dir / f"{name}.{fmt}"
                mesh.export(str(path))
                self.written.append(path)

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        rank_zero_info(f"[shape3d] predict: wrote {len(self.written)} mesh files to {self.output_dir}")
