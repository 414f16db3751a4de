"""Write ``tgm predict`` results: one PNG per generated character, named by the character's code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import BasePredictionWriter
from PIL import Image as PILImage
from typing_extensions import override

from common.loggers import run_dir
from projects.diffusion.module import to_uint8


class DiffusionImageWriter(BasePredictionWriter):
    """After each predict batch: ``<output_dir>/<ascii code>_<batch>_<i>.png`` (``sample_<batch>_<i>.png`` for an
    unconditional model). The code, not the character, names the file: 'a' and 'A' differ on case-blind disks.
    ``output_dir: null`` writes to ``<run dir>/predictions``."""

    def __init__(self, output_dir: str | None = None) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = output_dir
        self.written: list[Path] = []

    @override
    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: dict[str, Any],
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        out_dir = Path(self.output_dir) if self.output_dir else run_dir(trainer) / "predictions"
        out_dir.mkdir(parents=True, exist_ok=True)
        conditional = pl_module.num_classes is not None
        for i, (label, picture) in enumerate(
            zip(prediction["labels"].tolist(), to_uint8(prediction["images"]), strict=True)
        ):
            name = pl_module.class_names[label] if conditional else "sample"
            code = f"{ord(name):03d}" if len(name) == 1 else name
            path = out_dir / f"{code}_{batch_idx:04d}_{i:03d}.png"
            PILImage.fromarray(picture).save(path)
            self.written.append(path)
