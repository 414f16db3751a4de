"""Log the gradient norm right before the optimizer step (after unscaling, before clipping)."""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.utilities import grad_norm
from torch.optim import Optimizer


class GradNormLogger(pl.Callback):
    """Log the total gradient norm as ``train/grad_norm`` every ``every_n_steps`` optimizer steps.

    Clipping itself is the Trainer's job (``gradient_clip_val`` / ``gradient_clip_algorithm`` in
    ``configs/trainer/default.yaml``); this callback shows whether the clip value is sensible.
    ``on_before_optimizer_step`` runs after AMP unscaling and before clipping, so the logged norm is the raw one.
    """

    def __init__(self, norm_type: float = 2.0, every_n_steps: int = 1, per_layer: bool = False) -> None:
        if every_n_steps < 1:
            raise ValueError(f"GradNormLogger.every_n_steps must be >= 1, got {every_n_steps}")
        self.norm_type = norm_type
        self.every_n_steps = every_n_steps
        self.per_layer = per_layer

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Optimizer
    ) -> None:
        if trainer.global_step % self.every_n_steps:
            return
        norms = grad_norm(pl_module, norm_type=self.norm_type)
        if not norms:
            return
        total_key = f"grad_{float(self.norm_type)}_norm_total"
        pl_module.log("train/grad_norm", norms[total_key], on_step=True, on_epoch=False)
        if self.per_layer:
            layers = {f"grad_norm/{k}": v for k, v in norms.items() if k != total_key}
            pl_module.log_dict(layers, on_step=True, on_epoch=False)
