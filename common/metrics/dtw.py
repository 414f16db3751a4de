"""Dynamic time warping (DTW) between predicted and reference joint sequences, as a ``torchmetrics.Metric``.

Sequences are ``T x (J + 1)`` tensors: ``J`` joint values per frame followed by the progress counter (the
Progressive Transformers layout). The counter column is never part of the frame cost. Two definitions:

``"pt"`` -- the Progressive Transformers (Saunders et al., 2020) ``calculate_dtw``, the comparable default,
    logged as ``dtw_pt_l1_ref_len``:

    * the hypothesis's first frame (the start frame the decoder began from: frame 0 of the original's 0-based
      data) is dropped; the references are the decoder's targets (``data[1:]`` for the original's data);
    * each sequence is cut at the argmax of its counter column (``seq[:argmax]``, at least one frame);
    * frame cost = sum of absolute differences over joints (the original names it ``euclidean_norm`` but it
      is the L1 distance);
    * score = accumulated cost of the optimal warping path / length of the (cut) reference.

``"l2_path"`` -- logged as ``dtw_l2_path_len``: whole sequences (no frame dropped or cut), frame cost =
    Euclidean distance between joint vectors, score = accumulated cost / number of steps of the optimal path.

The DP is hand-written because dtaidistance (C, fast) only supports squared-Euclidean frame costs: here it is a
batched anti-diagonal wavefront in torch. The cost matrices are skewed once so that each anti-diagonal is a
contiguous row; all cells on one anti-diagonal of all sequence pairs are then updated in one vectorised step
(``N + M`` steps instead of ``N * M`` Python iterations). Under DDP the metric keeps a
summed score and a count, so the mean is over every sequence of every process.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

DEFINITIONS = {"pt": "dtw_pt_l1_ref_len", "l2_path": "dtw_l2_path_len"}
FRAME_COSTS = ("l1", "euclidean", "sqeuclidean")


def frame_costs(x: Tensor, y: Tensor, frame_cost: str) -> Tensor:
    """Pairwise frame costs ``B x N x M`` between ``x: B x N x D`` and ``y: B x M x D``."""
    if frame_cost == "l1":
        return torch.cdist(x, y, p=1.0)
    if frame_cost == "euclidean":
        return torch.cdist(x, y, p=2.0, compute_mode="donot_use_mm_for_euclid_dist")
    if frame_cost == "sqeuclidean":
        return torch.cdist(x, y, p=2.0, compute_mode="donot_use_mm_for_euclid_dist").square()
    raise ValueError(f"frame_cost must be one of {FRAME_COSTS}, got '{frame_cost}'")


def dtw_batch(
    xs: Sequence[Tensor], ys: Sequence[Tensor], frame_cost: str = "l1", return_path_length: bool = False
) -> Tensor | tuple[Tensor, Tensor]:
    """Accumulated cost of the optimal warping path for each pair ``(xs[i], ys[i])`` (``T_i x D`` tensors).

    Steps are the classic (i-1, j), (i, j-1), (i-1, j-1) with no window. With ``return_path_length`` also the
    number of cells on the optimal path (ties resolved diagonal, then (i-1, j), then (i, j-1)).
    """
    if len(xs) != len(ys):
        raise ValueError(f"dtw_batch: {len(xs)} hypotheses but {len(ys)} references")
    if not xs:
        empty = torch.zeros(0)
        return (empty, empty) if return_path_length else empty
    for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
        if x.ndim != 2 or y.ndim != 2 or x.shape[0] == 0 or y.shape[0] == 0 or x.shape[1] != y.shape[1]:
            raise ValueError(
                f"dtw_batch: pair {i} has shapes {tuple(x.shape)} and {tuple(y.shape)}; "
                "need non-empty T x D sequences with the same D"
            )
    device = xs[0].device
    lengths_x = torch.tensor([len(x) for x in xs], device=device)
    lengths_y = torch.tensor([len(y) for y in ys], device=device)
    x = torch.nn.utils.rnn.pad_sequence([t.double() for t in xs], batch_first=True)
    y = torch.nn.utils.rnn.pad_sequence([t.double() for t in ys], batch_first=True)
    cost = frame_costs(x, y, frame_cost)  # B x N x M (padded cells only feed cells past a pair's end)
    batch, n, m = cost.shape
    # Skew to anti-diagonal layout once: cells (i, j) with i + j == k (1-based, cost of frames i-1, j-1) become
    # row k, column i, so every DP step below reads and writes contiguous slices instead of scattered cells.
    k = torch.arange(n + m + 1, device=device)[:, None]
    i = torch.arange(n + 1, device=device)[None, :]
    j = k - i
    valid = (i >= 1) & (j >= 1) & (j <= m)
    flat = torch.where(valid, (i - 1) * m + (j - 1), n * m)  # n * m: an extra +inf cell
    padded_cost = torch.cat([cost.reshape(batch, n * m), cost.new_full((batch, 1), float("inf"))], dim=1)
    acc = padded_cost[:, flat]  # B x (N + M + 1) x (N + 1); overwritten row by row with accumulated costs
    acc[:, 0, 0] = 0.0  # the start cell (0, 0)
    if n + m >= 1:
        acc[:, 1] = float("inf")  # cells (0, 1) and (1, 0) are boundary cells
    steps = torch.zeros_like(acc) if return_path_length else None
    for diagonal in range(2, n + m + 1):
        # predecessors of (i, j): (i-1, j-1) on diagonal k-2 at i-1; (i-1, j) and (i, j-1) on k-1 at i-1 and i
        candidates = torch.stack(
            [acc[:, diagonal - 2, :-1], acc[:, diagonal - 1, :-1], acc[:, diagonal - 1, 1:]]
        )
        best, which = candidates.min(dim=0)  # ties: diagonal first, then (i-1, j), then (i, j-1)
        acc[:, diagonal, 1:] += best  # invalid cells hold +inf and stay +inf
        if steps is not None:
            previous = torch.stack(
                [steps[:, diagonal - 2, :-1], steps[:, diagonal - 1, :-1], steps[:, diagonal - 1, 1:]]
            )
            steps[:, diagonal, 1:] = 1.0 + previous.gather(0, which.unsqueeze(0)).squeeze(0)
    rows = torch.arange(batch, device=device)
    total = acc[rows, lengths_x + lengths_y, lengths_x]
    if steps is None:
        return total
    return total, steps[rows, lengths_x + lengths_y, lengths_x]


def dtw_many(
    xs: Sequence[Tensor],
    ys: Sequence[Tensor],
    frame_cost: str = "l1",
    return_path_length: bool = False,
    chunk_size: int = 128,
) -> Tensor | tuple[Tensor, Tensor]:
    """:func:`dtw_batch` over pairs sorted by length and processed in chunks (less padding, bounded memory)."""
    order = sorted(range(len(xs)), key=lambda i: (len(xs[i]), len(ys[i])))
    totals = torch.zeros(len(xs), dtype=torch.float64)
    steps = torch.zeros(len(xs), dtype=torch.float64)
    for start in range(0, len(order), chunk_size):
        idx = order[start : start + chunk_size]
        out = dtw_batch([xs[i] for i in idx], [ys[i] for i in idx], frame_cost, return_path_length)
        if return_path_length:
            totals[idx], steps[idx] = out[0].cpu(), out[1].cpu()
        else:
            totals[idx] = out.cpu()
    return (totals, steps) if return_path_length else totals


def cut_at_counter_argmax(sequence: Tensor) -> Tensor:
    """``seq[:argmax(counter)]`` (at least one frame), as the original ``calculate_dtw`` does."""
    end = int(torch.argmax(sequence[:, -1]))
    return sequence[: max(end, 1)]


class DynamicTimeWarping(Metric):
    """Mean DTW score over all sequences seen (see the module docstring for the two ``definition``s).

    ``update(preds, target)`` takes lists of ``T_i x (J + 1)`` tensors (joints + counter), or padded
    ``B x T x (J + 1)`` tensors with ``preds_lengths`` / ``target_lengths``. For ``definition="pt"`` the
    hypotheses must start with the decoder's start frame, as the original decoder output does.
    """

    full_state_update = False
    higher_is_better = False
    is_differentiable = False

    def __init__(self, definition: str = "pt", **kwargs) -> None:
        super().__init__(**kwargs)
        if definition not in DEFINITIONS:
            raise ValueError(
                f"DynamicTimeWarping.definition must be one of {list(DEFINITIONS)}, got '{definition}'"
            )
        self.definition = definition
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    @property
    def name(self) -> str:
        """The name to log it under, saying which definition it is."""
        return DEFINITIONS[self.definition]

    @staticmethod
    def _unpad(sequences: Tensor | Sequence[Tensor], lengths: Tensor | None) -> list[Tensor]:
        if isinstance(sequences, Tensor) and sequences.ndim == 3:
            if lengths is None:
                return list(sequences)
            return [s[: int(n)] for s, n in zip(sequences, lengths, strict=True)]
        return list(sequences)

    def scores(
        self,
        preds: Tensor | Sequence[Tensor],
        target: Tensor | Sequence[Tensor],
        preds_lengths: Tensor | None = None,
        target_lengths: Tensor | None = None,
    ) -> Tensor:
        """Per-sequence DTW scores (float64) without touching the metric state."""
        hyps = self._unpad(preds, preds_lengths)
        refs = self._unpad(target, target_lengths)
        if len(hyps) != len(refs):
            raise ValueError(f"DynamicTimeWarping: {len(hyps)} predictions but {len(refs)} references")
        if self.definition == "pt":
            hyps = [cut_at_counter_argmax(h[1:] if len(h) > 1 else h)[:, :-1] for h in hyps]
            refs = [cut_at_counter_argmax(r)[:, :-1] for r in refs]
            total = dtw_many(refs, hyps, frame_cost="l1")
            return total / torch.tensor([len(r) for r in refs], dtype=total.dtype)
        hyps = [h[:, :-1] for h in hyps]
        refs = [r[:, :-1] for r in refs]
        total, steps = dtw_many(refs, hyps, frame_cost="euclidean", return_path_length=True)
        return total / steps

    def update(
        self,
        preds: Tensor | Sequence[Tensor] | None = None,
        target: Tensor | Sequence[Tensor] | None = None,
        preds_lengths: Tensor | None = None,
        target_lengths: Tensor | None = None,
        scores: Tensor | None = None,
    ) -> None:
        """Add the scores of ``preds`` vs ``target``, or ``scores`` already computed by :meth:`scores` (when the
        caller needs the per-sequence numbers too, so the DTW runs once)."""
        if scores is None:
            if preds is None or target is None:
                raise ValueError("DynamicTimeWarping.update needs preds and target, or scores")
            scores = self.scores(preds, target, preds_lengths, target_lengths)
        self.total += scores.sum().to(self.total)
        self.count += scores.numel()

    def compute(self) -> Tensor:
        return (self.total / self.count.clamp(min=1)).float()
