"""Everything ``tgm predict`` writes for caption: one COCO results JSON, ``[{"image_id": 391895, "caption":
"..."}, ...]``, which pycocotools' ``COCO.loadRes`` accepts against the ground-truth annotations file."""

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
            with atomic_path(self.output) as temporary:
                temporary.write_text(json.dumps(self.results, ensure_ascii=False, indent=1), "utf-8")
            rank_zero_info(f"caption: wrote {len(self.results)} captions to {self.output}")
