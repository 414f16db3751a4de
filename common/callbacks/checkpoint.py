"""``ModelCheckpoint`` whose ``last.ckpt`` is always the latest state, and a SIGTERM that saves before exiting."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException
from typing_extensions import override


class LatestCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` (same arguments) with three differences.

    * ``last.ckpt`` is rewritten after every validation, at every ``every_n_train_steps`` / ``train_time_interval``
      save and at the end of fit, whatever the monitored metric does. Lightning 2.6 writes it only when a top-k
      checkpoint is written at the same step, so a run whose metric stopped improving resumed from its best epoch.
    * On SIGTERM (SLURM pre-emption, spot instances) Lightning stops after the current batch; this callback then
      writes ``last.ckpt`` so ``--ckpt_path last`` continues from that batch.
    * Every checkpoint records the loggers' names and versions (``checkpoint["loggers"]``), so a resumed run
      appends to the same CSV version and W&B run (see ``common.cli``).

    The state key is ``ModelCheckpoint``'s, so checkpoints written before this class existed resume as before.
    """

    @property
    @override
    def state_key(self) -> str:
        key = super().state_key
        return ModelCheckpoint.__qualname__ + key[len(type(self).__qualname__) :]

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        time_checked = self._last_time_checked
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        every_n_steps = (
            self._every_n_train_steps >= 1 and trainer.global_step % self._every_n_train_steps == 0
        )
        interval_passed = (
            self._last_time_checked != time_checked
        )  # ModelCheckpoint resets it when the time is up
        if every_n_steps or interval_passed:
            # with a validation metric monitored, ModelCheckpoint defers step saves until the next validation:
            # mid-epoch work would be lost in a long first epoch, so last.ckpt is written now
            self._save_last_now(trainer)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._forget_last_only_save(trainer)
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_now(trainer)

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._forget_last_only_save(trainer)
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_now(trainer)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self._save_last_now(trainer)  # e.g. max_steps reached mid-epoch, or no validation at all

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        super().on_exception(trainer, pl_module, exception)
        if isinstance(exception, SIGTERMException) and self.save_last:
            self._save_last_now(trainer)
            rank_zero_info(
                f"SIGTERM: saved {self.last_model_path} at epoch {trainer.current_epoch}, step "
                f"{trainer.global_step}; continue with --ckpt_path last"
            )

    @override
    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict
    ) -> None:
        checkpoint["loggers"] = logger_versions(trainer)

    def _save_last_now(self, trainer: pl.Trainer) -> None:
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            previous = self._last_global_step_saved
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            self._last_only_save = (trainer.global_step, previous)

    def _forget_last_only_save(self, trainer: pl.Trainer) -> None:
        """ModelCheckpoint skips every save at a step where it already saved. When only last.ckpt was written
        at this step (a step save before the validation that follows it), the validation's top-k decision and
        the deferred save must still happen, so the step is "unsaved" again."""
        step, previous = getattr(self, "_last_only_save", (None, 0))
        if step == trainer.global_step == self._last_global_step_saved:
            self._last_global_step_saved = previous
        self._last_only_save = (None, 0)


def logger_versions(trainer: pl.Trainer) -> dict[str, dict[str, Any]]:
    """``{logger class path: {"name": ..., "version": ...}}`` of the trainer's loggers (the W&B version is the
    run id)."""
    versions = {}
    for logger in trainer.loggers:
        cls = type(logger)
        versions[f"{cls.__module__}.{cls.__qualname__}"] = {"name": logger.name, "version": logger.version}
    return versions
