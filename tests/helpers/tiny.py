"""A test-only LightningModule / DataModule small enough to exercise the CLI and callbacks in seconds."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import ClassVar

import lightning.pytorch as pl
import numpy as np
import torch
import torchmetrics
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from common.media import Image, Table


class TinyDataModule(pl.LightningDataModule):
    """y = 3x - 1 with a little noise; ``resolution`` only records what ProgressiveResolution told it."""

    def __init__(self, num_samples: int = 64, batch_size: int = 8) -> None:
        super().__init__()
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.resolution: int | None = None
        self.resolution_history: list[int] = []

    def set_resolution(self, resolution: int) -> None:
        self.resolution = resolution
        self.resolution_history.append(resolution)

    def _dataset(self, seed: int) -> TensorDataset:
        generator = torch.Generator().manual_seed(seed)
        x = torch.randn(self.num_samples, 4, generator=generator)
        y = 3 * x.sum(dim=1, keepdim=True) - 1 + 0.01 * torch.randn(self.num_samples, 1, generator=generator)
        return TensorDataset(x, y)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self._dataset(0), batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self._dataset(1), batch_size=self.batch_size)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self._dataset(2), batch_size=self.batch_size)

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(self._dataset(3), batch_size=self.batch_size)


class TinyModule(pl.LightningModule):
    """Linear regression with a frozen-able ``encoder``, a sample counter metric and media samples.

    ``count_file``: when set, rank zero writes the DDP-synced number of validation samples there.
    """

    def __init__(self, lr: float = 0.05, hidden: int = 8, count_file: str | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.encoder = nn.Linear(4, hidden)
        self.head = nn.Linear(hidden, 1)
        self.val_mse = torchmetrics.MeanSquaredError()
        self.val_count = torchmetrics.SumMetric()
        self.resolution: int | None = None
        self.fade_alpha: float | None = None

    def set_resolution(self, resolution: int) -> None:
        self.resolution = resolution

    def set_fade_alpha(self, alpha: float) -> None:
        self.fade_alpha = alpha

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.val_mse(self(x), y)
        self.val_count(torch.tensor(float(len(x)), device=self.device))
        self.log("val/mse", self.val_mse, prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        count = self.val_count.compute()
        self.log("val/count", count)
        if self.hparams.count_file and self.trainer.is_global_zero and not self.trainer.sanity_checking:
            Path(self.hparams.count_file).write_text(
                json.dumps({"count": float(count), "world": self.trainer.world_size, "pid": os.getpid()})
            )
        self.val_count.reset()

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test/mse", nn.functional.mse_loss(self(x), y))

    def predict_step(self, batch, batch_idx):
        return self(batch[0])

    def media_samples(self) -> dict:
        picture = np.linspace(0, 1, 16 * 16, dtype=np.float32).reshape(16, 16)
        return {
            "gradient": Image(picture, caption="a grey ramp"),
            "table": Table(columns=["name", "value"], rows=[["resolution", str(self.resolution)]]),
        }

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.SGD(params, lr=self.hparams.lr)


class LinkedTinyDataModule(TinyDataModule):
    """The tiny data with ``num_features`` inputs, known right after ``__init__`` (a linked attribute)."""

    def __init__(self, num_features: int = 4, num_samples: int = 64, batch_size: int = 8) -> None:
        super().__init__(num_samples=num_samples, batch_size=batch_size)
        self.num_features = num_features

    def _dataset(self, seed: int) -> TensorDataset:
        generator = torch.Generator().manual_seed(seed)
        x = torch.randn(self.num_samples, self.num_features, generator=generator)
        return TensorDataset(x, x.sum(dim=1, keepdim=True))


class LinkedTinyModule(TinyModule):
    """The tiny model whose input width comes from the datamodule by a CLI link, not from the config."""

    linked_from_data: ClassVar[dict[str, str]] = {"in_features": "num_features"}

    def __init__(
        self, in_features: int, lr: float = 0.05, hidden: int = 8, count_file: str | None = None
    ) -> None:
        super().__init__(lr=lr, hidden=hidden, count_file=count_file)
        self.save_hyperparameters()
        self.encoder = nn.Linear(in_features, hidden)


class DivergingTinyModule(TinyModule):
    """The tiny model whose loss is NaN at optimizer step ``nan_at_step`` (and, with ``nan_once: false``, at
    every later step)."""

    def __init__(self, nan_at_step: int = 3, nan_once: bool = True, lr: float = 0.05) -> None:
        super().__init__(lr=lr)
        self.nan_at_step = nan_at_step
        self.nan_once = nan_once

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        step = self.trainer.global_step
        if step == self.nan_at_step or (step > self.nan_at_step and not self.nan_once):
            loss = loss * float("nan")
        return loss


class SlowValidationTinyModule(TinyModule):
    """The tiny model whose validation batch ``sigterm_batch`` of epoch ``sigterm_epoch`` sends SIGTERM to its own
    process and then works like a long sampling loop: it checks ``trainer.received_sigterm`` between its steps and
    stops with Lightning's ``SIGTERMException`` (as the diffusion sampler does), never finishing the batch."""

    def __init__(
        self, sigterm_epoch: int = 1, sigterm_batch: int = 1, lr: float = 0.05, count_file: str | None = None
    ) -> None:
        super().__init__(lr=lr, count_file=count_file)
        self.sigterm_epoch = sigterm_epoch
        self.sigterm_batch = sigterm_batch

    def validation_step(self, batch, batch_idx):
        trainer = self.trainer
        pre_empted = (trainer.current_epoch, batch_idx) == (self.sigterm_epoch, self.sigterm_batch)
        if pre_empted and not trainer.sanity_checking and trainer.state.fn == "fit":
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(6000):  # a minute of "sampler steps" if the signal were never seen
                if trainer.received_sigterm:
                    raise SIGTERMException
                time.sleep(0.01)
            raise RuntimeError("SIGTERM was not seen within a minute")
        return super().validation_step(batch, batch_idx)


class SignalAtStep(pl.Callback):
    """Send ``signum`` to this process when training reaches optimizer step ``step`` (a pre-emption or a crash
    at a known point, for the resume tests)."""

    def __init__(self, step: int, signum: int) -> None:
        self.step = step
        self.signum = signum

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)
