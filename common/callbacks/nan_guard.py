"""Stop (or skip the batch) at the first NaN / Inf loss or gradient, before it reaches the weights."""

from __future__ import annotations

import math
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.plugins.precision import MixedPrecision
from lightning.pytorch.utilities import rank_zero_warn
from torch.optim import Optimizer
from typing_extensions import override

from common.errors import TrainingDiverged


class NaNGuard(pl.Callback):
    """Check the loss of every backward pass and the gradients before every optimizer step.

    ``action="stop"`` raises :class:`~common.errors.TrainingDiverged` naming the epoch, the step, the batch index
    and the last good checkpoint (``tgm`` prints it as one line, exit code 3). The check runs before the
    optimizer step, so the weights and every checkpoint on disk are still the last finite ones.
    ``action="skip_batch"`` drops that batch's gradients (the optimizer skips parameters without a gradient), warns
    in one line and goes on; ``skipped`` counts them and is logged as ``train/skipped_batches``.

    Checkpoints are checked too: a state with non-finite weights is never written, so a NaN never replaces a
    good ``last.ckpt``. Under fp16 mixed precision the gradient check is left to the GradScaler, which skips
    overflowing steps by design; the loss is still checked.
    """

    def __init__(self, action: Literal["stop", "skip_batch"] = "stop", enabled: bool = True) -> None:
        if action not in ("stop", "skip_batch"):
            raise ValueError(f"nan_guard.action must be 'stop' or 'skip_batch', got {action!r}")
        self.action = action
        self.enabled = enabled
        self.skipped = 0
        self._batch_idx = 0
        self._bad_loss: float | None = None

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ):
        self._batch_idx = batch_idx

    @override
    def on_before_backward(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor
    ) -> None:
        if self.enabled and self._bad_loss is None and not bool(torch.isfinite(loss.detach()).all()):
            self._bad_loss = float(loss.detach().float().sum())

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Optimizer
    ) -> None:
        if not self.enabled:
            return
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        problem = None
        if self._bad_loss is not None:
            problem = f"non-finite loss ({self._bad_loss})"
        elif grads and not _scaler_checks_gradients(trainer):
            norm = float(torch.nn.utils.get_total_norm(grads))  # what clip_grad_norm_ computes
            if not math.isfinite(norm):
                problem = f"non-finite gradient norm ({norm})"
        self._bad_loss = None
        # every rank takes the same decision (a NaN loss on one rank must not leave the others waiting)
        if not trainer.strategy.reduce_boolean_decision(problem is not None, all=False):
            return
        where = f"epoch {trainer.current_epoch}, step {trainer.global_step}, batch {self._batch_idx}"
        problem = problem or "non-finite loss or gradient on another rank"
        if self.action == "skip_batch":
            for group in optimizer.param_groups:
                for param in group["params"]:
                    param.grad = None
            self.skipped += 1
            pl_module.log("train/skipped_batches", float(self.skipped), on_step=True, on_epoch=False)
            rank_zero_warn(f"nan_guard: {problem} at {where}; batch skipped ({self.skipped} so far)")
            return
        raise TrainingDiverged(
            f"training diverged: {problem} at {where}; stopped before the weights changed. "
            f"Last good checkpoint: {last_good_checkpoint(trainer)} "
            "(lower the learning rate, or set nan_guard.action: skip_batch)"
        )

    @override
    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict
    ) -> None:
        if not self.enabled:
            return
        for name, tensor in checkpoint.get("state_dict", {}).items():
            if (
                torch.is_tensor(tensor)
                and tensor.is_floating_point()
                and not bool(torch.isfinite(tensor).all())
            ):
                raise TrainingDiverged(
                    f"training diverged: weight '{name}' is not finite at epoch {trainer.current_epoch}, step "
                    f"{trainer.global_step}; the checkpoint was not written. Last good checkpoint: "
                    f"{last_good_checkpoint(trainer)}"
                )

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = int(state_dict.get("skipped", 0))


def _scaler_checks_gradients(trainer: pl.Trainer) -> bool:
    plugin = trainer.precision_plugin
    return isinstance(plugin, MixedPrecision) and plugin.scaler is not None


def last_good_checkpoint(trainer: pl.Trainer) -> str:
    callback = trainer.checkpoint_callback
    path = getattr(callback, "last_model_path", "") or getattr(callback, "best_model_path", "")
    return path or "none written yet"
