"""Print validation metrics before training and at the end, so every run shows what it learned."""

from __future__ import annotations

import json
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from common.loggers import run_dir


def _scalars(metrics: dict, prefix: str) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in metrics.items()
        if k.startswith(prefix) and getattr(v, "numel", lambda: 1)() == 1
    }


class MetricSummary(pl.Callback):
    """Record ``val*`` metrics from the sanity-check pass and from the last validation, print both side by side
    at the end of ``fit`` and write them to ``metric_summary.json`` in the run directory.

    Set ``trainer.num_sanity_val_steps: -1`` so the sanity check covers the whole validation set and the
    "before" column is the untrained model on the full set (Lightning discards sanity-check logs otherwise).
    "before" is kept in checkpoints: a resumed run shows the original "before" and, in its own column, the
    sanity check of the resumed model ("at resume"), never the resumed scores as "before".
    """

    def __init__(self, prefix: str = "val") -> None:
        self.prefix = prefix
        self.before: dict[str, float] = {}
        self.at_resume: dict[str, float] = {}
        self.after: dict[str, float] = {}

    @override
    def on_sanity_check_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = _scalars(trainer.callback_metrics, self.prefix)
        if trainer.ckpt_path is not None:  # a resumed (or fine-tuned) model: not "before training"
            self.at_resume = metrics
            label = "at resume"
        else:
            self.before = metrics
            label = "before training"
        if metrics:
            rank_zero_info(f"{label}: " + ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items())))

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.after = _scalars(trainer.callback_metrics, self.prefix)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        columns = {"before": self.before, "at resume": self.at_resume, "after": self.after}
        columns = {name: values for name, values in columns.items() if values or name != "at resume"}
        if not trainer.is_global_zero or not (self.before or self.at_resume or self.after):
            return
        keys = sorted(set().union(*columns.values()))
        width = max(len(k) for k in keys)
        lines = [f"{'metric':<{width}}" + "".join(f"  {name:>12}" for name in columns)]
        for key in keys:
            cells = "".join(
                f"  {values[key]:12.4f}" if key in values else f"  {'-':>12}" for values in columns.values()
            )
            lines.append(f"{key:<{width}}{cells}")
        print("\n".join(["", f"Validation metrics {' / '.join(columns)} training:", *lines]), flush=True)
        path = run_dir(trainer) / "metric_summary.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            json.dumps({name.replace(" ", "_"): values for name, values in columns.items()}, indent=2)
        )

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"before": self.before}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.before = dict(state_dict.get("before", {}))
