"""Print validation metrics before training and at the end, so every run shows what it learned."""

from __future__ import annotations

import json

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info

from common.loggers import run_dir


def _scalars(metrics: dict, prefix: str) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if k.startswith(prefix) and getattr(v, "numel", lambda: 1)() == 1}


class MetricSummary(pl.Callback):
    """Record ``val*`` metrics from the sanity-check pass and from the last validation, print both side by side
    at the end of ``fit`` and write them to ``metric_summary.json`` in the run directory.

    Set ``trainer.num_sanity_val_steps: -1`` so the sanity check covers the whole validation set and the
    "before" column is the untrained model on the full set (Lightning discards sanity-check logs otherwise).
    """

    def __init__(self, prefix: str = "val") -> None:
        self.prefix = prefix
        self.before: dict[str, float] = {}
        self.after: dict[str, float] = {}

    def on_sanity_check_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.before = _scalars(trainer.callback_metrics, self.prefix)
        if self.before:
            rank_zero_info("before training: " + ", ".join(f"{k}={v:.4f}" for k, v in sorted(self.before.items())))

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.after = _scalars(trainer.callback_metrics, self.prefix)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or not (self.before or self.after):
            return
        keys = sorted(set(self.before) | set(self.after))
        width = max(len(k) for k in keys)
        lines = [f"{'metric':<{width}}  {'before':>12}  {'after':>12}"]
        for key in keys:
            before = f"{self.before[key]:12.4f}" if key in self.before else f"{'-':>12}"
            after = f"{self.after[key]:12.4f}" if key in self.after else f"{'-':>12}"
            lines.append(f"{key:<{width}}  {before}  {after}")
        print("\n".join(["", "Validation metrics before / after training:", *lines]), flush=True)
        path = run_dir(trainer) / "metric_summary.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"before": self.before, "after": self.after}, indent=2))
