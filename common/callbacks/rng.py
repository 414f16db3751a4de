"""Put the random number generators back where they were when a checkpoint was saved.

Lightning restores weights, optimizer, schedulers, loops and callbacks, but not RNG states, so a resumed run
shuffles its next epoch differently from an uninterrupted one. With this callback both are identical.
"""

from __future__ import annotations

import random
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch


def _numpy_state_to_plain(state: tuple) -> tuple:
    kind, keys, position, has_gauss, cached = state
    return kind, keys.tolist(), int(position), int(has_gauss), float(cached)


class ResumeRNG(pl.Callback):
    """Save Python, NumPy, torch (and CUDA) RNG states in each checkpoint and restore them on resume."""

    def state_key(self) -> str:
        return "ResumeRNG"

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint["rng_states"] = {
            "python": random.getstate(),
            # plain lists and tensors only, so checkpoints stay loadable with torch.load(weights_only=True)
            "numpy": _numpy_state_to_plain(np.random.get_state()),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        states = checkpoint.get("rng_states")
        if states is None:  # a checkpoint written without this callback: nothing to restore
            return
        random.setstate(states["python"])
        kind, keys, position, has_gauss, cached = states["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))
        torch.set_rng_state(states["torch"])
        if states["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(states["cuda"])
