"""Shape metrics as ``torchmetrics.Metric``s: per-sample sums and counts are states reduced by ``sum``, so the
epoch value is the mean over every sample seen by every process (correct under DDP)."""

from __future__ import annotations

import torch
from torchmetrics import Metric

from common.geometry import chamfer, voxel_iou


class VoxelIoU(Metric):
    """Mean per-sample IoU of occupancy grids (B, ...) thresholded at ``threshold`` (probabilities or 0/1)."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, threshold: float = 0.5, **kwargs) -> None:
        super().__init__(**kwargs)
        self.threshold = threshold
        self.add_state("iou_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        if pred.shape != target.shape:
            raise ValueError(
                f"VoxelIoU: prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ"
            )
        iou = voxel_iou(pred, target, self.threshold)
        self.iou_sum += iou.double().sum()
        self.count += iou.numel()

    def compute(self) -> torch.Tensor:
        return (self.iou_sum / self.count.clamp(min=1)).float()


class ChamferDistance(Metric):
    """Mean per-sample Chamfer distance (pytorch3d semantics: squared L2, mean per direction, directions summed)
    between point clouds; ``update`` takes lists (clouds may differ in size) or (B, N, 3) tensors."""

    full_state_update = False
    higher_is_better = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("chamfer_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(
        self, pred: list[torch.Tensor] | torch.Tensor, target: list[torch.Tensor] | torch.Tensor
    ) -> None:
        if len(pred) != len(target):
            raise ValueError(f"ChamferDistance: {len(pred)} predicted clouds but {len(target)} targets")
        for p, t in zip(pred, target, strict=True):
            value = chamfer(p[None].float(), t[None].float(), batch_reduction="sum")
            self.chamfer_sum += value.detach().double()
            self.count += 1

    def compute(self) -> torch.Tensor:
        return (self.chamfer_sum / self.count.clamp(min=1)).float()
