"""Everything ``tgm predict`` writes for caption: one COCO results JSON, ``[{"image_id": 391895, "caption":
"..."}, ...]``, which pycocotools' ``COCO.loadRes`` accepts against the ground-truth annotations file.

COCO ids are integers; images whose name gives none (``kedi.jpg``: ``image_id`` "kedi") go to a second file,
``<output stem>.non_coco.json`` (same format), with one line naming them, so the main file always loads with
``COCO.loadRes`` (which rejects the whole file for one id it does not know)."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import torch.distributed as dist
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from common.io import atomic_path


class CaptionPredictionWriter(BasePredictionWriter):
    """After ``predict``: ``output`` (COCO results JSON, UTF-8, in data order on one process). Under DDP the ranks'
    results are gathered and de-duplicated (the distributed sampler repeats items to even out ranks) on rank 0."""

    def __init__(self, output: str = "runs/caption/predictions.json") -> None:
        super().__init__(write_interval="epoch")
        self.output = Path(output)
        self.results: list[dict] = []

    @override
    def write_on_epoch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, predictions, batch_indices
    ) -> None:
        results = [item for batch in predictions for item in batch]
        if dist.is_available() and dist.is_initialized():
            gathered: list[list[dict]] = [[] for _ in range(dist.get_world_size())]
            dist.all_gather_object(gathered, results)
            results = [item for part in gathered for item in part]
        seen, self.results = set(), []
        for item in results:
            if item["image_id"] not in seen:
                seen.add(item["image_id"])
                self.results.append(item)
        if trainer.is_global_zero:
            coco = [r for r in self.results if isinstance(r["image_id"], int)]
            other = [r for r in self.results if not isinstance(r["image_id"], int)]
            self._write(self.output, coco)
            rank_zero_info(f"caption: wrote {len(coco)} captions to {self.output}")
            side = self.non_coco_path
            if other:
                self._write(side, other)
                names = ", ".join(str(r["image_id"]) for r in other[:5]) + (", ..." if len(other) > 5 else "")
                rank_zero_info(
                    f"caption: {len(other)} images have no COCO id ({names}): written to {side}, not to "
                    f"{self.output} (COCO.loadRes would reject it)"
                )
            else:
                side.unlink(missing_ok=True)  # a stale one from an earlier run would mislead

    @property
    def non_coco_path(self) -> Path:
        return self.output.with_name(f"{self.output.stem}.non_coco.json")

    @staticmethod
    def _write(path: Path, results: list[dict]) -> None:
        with atomic_path(path) as temporary:
            temporary.write_text(json.dumps(results, ensure_ascii=False, indent=1), "utf-8")
