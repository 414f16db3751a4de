"""Self-contained run folders: every picture logged as media is a file in the run folder, tables included."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import imageio.v3 as iio
import lightning.pytorch as pl
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from common.callbacks import MediaLogger
from common.loggers import WandbLogger, run_dir
from common.media import Image, Table, write_media


def picture(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (6, 5, 3), dtype=np.uint8)


class TableModule(pl.LightningModule):
    """The smallest module whose media are a table of pictures (like caption's ``val_captions``)."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self.layer(batch[0]).pow(2).mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def media_samples(self) -> dict:
        rows = [[Image(picture(seed), caption=f"row {seed}"), f"bir kedi {seed}"] for seed in range(3)]
        return {"val_captions": Table(columns=["image", "prediction"], rows=rows)}


def loader() -> DataLoader:
    return DataLoader(TensorDataset(torch.randn(4, 2)), batch_size=2)


def read_table(csv_path: Path) -> list[dict]:
    with csv_path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def test_table_pictures_are_files_next_to_the_csv(tmp_path):
    rows = [[Image(picture(seed)), seed] for seed in range(2)]
    path = write_media(Table(["image", "n"], rows), tmp_path / "tab")
    cells = read_table(path)
    assert [c["n"] for c in cells] == ["0", "1"]
    for seed, cell in enumerate(cells):
        assert np.array_equal(iio.imread(path.parent / cell["image"]), picture(seed))


def test_a_copied_run_folder_keeps_its_pictures(tmp_path, monkeypatch):
    # W&B's staging folder (where it keeps a table's images until upload) lives outside the run: put it in
    # tmp so the test can delete it and show that nothing in either copied folder depends on it
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb_data"))
    logger = WandbLogger(save_dir=str(tmp_path / "runs"), mode="offline")
    media = MediaLogger()
    trainer = pl.Trainer(
        max_epochs=1,
        logger=logger,
        callbacks=[media],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        accelerator="cpu",
        devices=1,
    )
    trainer.fit(TableModule(), loader(), loader())
    run_folder, wandb_folder = run_dir(trainer), Path(logger.experiment.dir).parent
    logger.experiment.finish()
    assert media.logged_keys == {"media/val_captions"}

    copies = tmp_path / "copies"
    shutil.copytree(run_folder, copies / "run", symlinks=True)  # as `cp -r` does: links stay links
    shutil.copytree(wandb_folder, copies / "wandb_run", symlinks=True)
    shutil.rmtree(tmp_path / "runs")
    shutil.rmtree(tmp_path / "wandb_data", ignore_errors=True)

    for copy in (copies / "run", copies / "wandb_run" / "files"):
        (csv_path,) = copy.glob("media/epoch_0000/val_captions.csv")
        cells = read_table(csv_path)
        assert [c["prediction"] for c in cells] == ["bir kedi 0", "bir kedi 1", "bir kedi 2"]
        for seed, cell in enumerate(cells):
            assert np.array_equal(iio.imread(csv_path.parent / cell["image"]), picture(seed)), copy


def test_tables_go_to_the_run_summary_not_the_history(tmp_path, monkeypatch):
    """A logged wandb.Table is a history row {ncols, nrows, ...}, which `wandb leet` plotted as the metrics
    media/val_captions/ncols and /nrows; the workspace's table panel reads the summary."""
    import wandb
    from wandb.sdk.wandb_run import Run

    logged = []
    real_log = Run.log
    monkeypatch.setattr(
        Run, "log", lambda self, data, *a, **k: logged.append(dict(data)) or real_log(self, data, *a, **k)
    )
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb_data"))
    logger = WandbLogger(save_dir=str(tmp_path / "runs"), mode="offline")
    trainer = pl.Trainer(
        max_epochs=2,
        logger=logger,
        callbacks=[MediaLogger()],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        accelerator="cpu",
        devices=1,
    )
    try:
        trainer.fit(TableModule(), loader(), loader())
        assert not [row for row in logged if any(isinstance(v, wandb.Table) for v in row.values())]
        summary = logger.experiment.summary["media/val_captions"]
        assert summary["_type"] == "table-file" and summary["nrows"] == 3
    finally:
        logger.experiment.finish()
