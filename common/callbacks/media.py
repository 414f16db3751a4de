"""Ask the module for media samples every N epochs and send them to files and the active logger."""

from __future__ import annotations

import shutil
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from common.loggers import run_dir
from common.media import Table, files_of, to_wandb, write_media
from common.protocols import HasMediaSamples


class MediaLogger(pl.Callback):
    """On the first validation of training and then every ``every_n_epochs``-th validation, call
    ``pl_module.media_samples()`` (a ``dict[str, Media]``, see :mod:`common.media`), write each item under
    ``<run dir>/media/epoch_<N>/`` and send it to W&B as ``media/<name>`` when a :class:`WandbLogger` is active:
    tables to the run summary (the latest one), everything else to the history. Modules without
    ``media_samples`` are skipped; runs on rank zero only.

    The run folder is self-contained: every picture is a file there (a table's images too, named by its CSV).
    A table's files are also saved into the W&B run folder, because W&B itself keeps a table's images in a
    staging folder outside the run until it is uploaded.
    """

    def __init__(self, every_n_epochs: int = 1, enabled: bool = True) -> None:
        if every_n_epochs < 1:
            raise ValueError(f"MediaLogger.every_n_epochs must be >= 1, got {every_n_epochs}")
        self.every_n_epochs = every_n_epochs
        self.enabled = enabled
        self.written: list[Path] = []  # one file per media item (a table's CSV; its PNGs sit beside it)
        self.logged_keys: set[str] = set()  # W&B keys: ``media/<name>``
        # Validations are counted, not epochs, so ``check_val_every_n_epoch`` > 1 still gets media; the count
        # is checkpointed so a resumed run keeps the same cadence.
        self.validations_seen = 0
        self.checkpoint_epoch: int | None = None

    @rank_zero_only
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.enabled or trainer.sanity_checking or not isinstance(pl_module, HasMediaSamples):
            return
        self.validations_seen += 1
        if (self.validations_seen - 1) % self.every_n_epochs:
            return
        samples = pl_module.media_samples()
        if not samples:
            return
        directory = run_dir(trainer)
        # `tgm validate`: the checkpoint's epoch (Lightning's loops start at 0 outside fit)
        epoch = trainer.current_epoch
        if trainer.state.fn != "fit" and self.checkpoint_epoch is not None:
            epoch = self.checkpoint_epoch
        out_dir = directory / "media" / f"epoch_{epoch:04d}"
        wandb_items = {}
        for name, item in samples.items():
            path = write_media(item, out_dir / name.replace("/", "_"))
            self.written.append(path)
            wandb_items[f"media/{name}"] = (item, path)
        self.logged_keys.update(wandb_items)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                run = logger.experiment
                history = {k: v for k, v in wandb_items.items() if not isinstance(v[0], Table)}
                tables = {k: v for k, v in wandb_items.items() if isinstance(v[0], Table)}
                if history:
                    run.log(
                        {key: to_wandb(item, path) for key, (item, path) in history.items()}
                        | {"trainer/global_step": trainer.global_step}
                    )
                for key, (item, path) in tables.items():
                    # the run summary (what the workspace's table panel reads), not the history: a logged
                    # table is a row with its shape, which `wandb leet` plots as metrics media/<name>/ncols
                    # and /nrows; every epoch's table stays in the run folders (media/epoch_NNNN/)
                    run.summary[key] = to_wandb(item, path)
                    self._copy_into_wandb_run(
                        run, [(f, f.relative_to(directory)) for f in files_of(item, path)]
                    )

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict
    ) -> None:
        self.checkpoint_epoch = checkpoint.get("epoch")

    @staticmethod
    def _copy_into_wandb_run(run, files: list[tuple[Path, Path]]) -> None:
        """Copy files into the W&B run's own folder (``wandb.save`` of an outside file leaves a symlink, which a
        copied folder would not resolve) and upload them from there."""
        files_dir = Path(run.dir)
        for source, relative in files:
            target = files_dir / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
            run.save(str(target), base_path=str(files_dir), policy="now")

    def state_dict(self) -> dict:
        return {"validations_seen": self.validations_seen}

    def load_state_dict(self, state_dict: dict) -> None:
        self.validations_seen = int(state_dict.get("validations_seen", 0))
