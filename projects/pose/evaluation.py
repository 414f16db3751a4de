"""What pose validation reports besides DTW: decoded/reference length per length bucket, the length-aware
checkpoint-selection score, and Progressive Transformers' own evaluation protocol (its batch cut).

Why: DTW alone can be won by a broken model. PT's ``calculate_dtw`` divides by the reference length and aligns
every reference frame to *some* hypothesis frame, so a model that stops after one (mean-looking) frame scores
better than a model of the right length that moves (issue 22: a one-frame model, length ratio 0.0116, kept as the
best checkpoint with DTW 23.6 against 45.6). The selection score multiplies each sequence's DTW by how far its
length is off, ``max(decoded / reference, reference / decoded)``: a model of the right length keeps its DTW, one
that stops after 1 of 100 frames pays 100 times it, one that runs twice too long pays twice.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchmetrics import Metric

# reference-length buckets (frames after skip_frames, targets only): (low, high inclusive or None = open)
LENGTH_BUCKETS: tuple[tuple[int, int | None], ...] = ((10, 49), (50, 99), (100, 199), (200, None))


def bucket_name(low: int, high: int | None) -> str:
    """``length_ratio_10_49`` ... ``length_ratio_200_plus``: the logged metric name of a bucket."""
    return f"length_ratio_{low}_{high}" if high is not None else f"length_ratio_{low}_plus"


def length_factor(decoded: Tensor, reference: Tensor) -> Tensor:
    """``max(r, 1 / r)`` with ``r = decoded / reference`` per sequence (decoded lengths of at least 1)."""
    ratio = decoded.double().clamp(min=1) / reference.double().clamp(min=1)
    return torch.maximum(ratio, 1.0 / ratio)


def pt_protocol_batches(batch_size: int) -> int:
    """How many evaluation batches PT's ``validate_on_data`` scores: it breaks once its counter (from 0) equals
    ``ceil(20 / batch_size)``, after that many batches plus one."""
    return math.ceil(20 / batch_size) + 1


class LengthRatio(Metric):
    """Mean decoded/reference length per reference-length bucket (:data:`LENGTH_BUCKETS`), summed state so the
    mean covers every sequence of every DDP process. References shorter than the first bucket are not counted
    (the overall ratio, ``predicted_frames_per_reference_frame``, covers them); an empty bucket computes NaN."""

    full_state_update = False
    is_differentiable = False

    def __init__(self, buckets: tuple[tuple[int, int | None], ...] = LENGTH_BUCKETS, **kwargs) -> None:
        super().__init__(**kwargs)
        self.buckets = buckets
        self.add_state("total", default=torch.zeros(len(buckets), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros(len(buckets), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, decoded: Tensor, reference: Tensor) -> None:
        """``decoded``, ``reference``: lengths (frames) per sequence."""
        decoded, reference = decoded.to(self.total.device), reference.to(self.total.device)
        ratio = decoded.double() / reference.double().clamp(min=1)
        for index, (low, high) in enumerate(self.buckets):
            inside = (reference >= low) & (reference <= (high if high is not None else reference.max()))
            self.total[index] += ratio[inside].sum()
            self.count[index] += int(inside.sum())

    def compute(self) -> dict[str, Tensor]:
        means = self.total / self.count.clamp(min=1)
        means = torch.where(self.count > 0, means, torch.full_like(means, float("nan")))
        return {bucket_name(*bucket): means[i].float() for i, bucket in enumerate(self.buckets)}
