"""``ModelCheckpoint`` whose ``last.ckpt`` is always the latest state, and a SIGTERM that saves before exiting."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import Tensor
from typing_extensions import override


class LatestCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` (same arguments) with these differences.

    * ``last.ckpt`` is rewritten after every validation, at every ``every_n_train_steps`` / ``train_time_interval``
      save and at the end of fit, whatever the monitored metric does. Lightning 2.6 writes it only when a top-k
      checkpoint is written at the same step, so a run whose metric stopped improving resumed from its best epoch.
    * On SIGTERM (SLURM pre-emption, spot instances) Lightning stops after the current batch; this callback then
      writes ``last.ckpt`` so ``--ckpt_path last`` continues from that batch.
    * Every checkpoint records the loggers' names and versions (``checkpoint["loggers"]``), so a resumed run
      appends to the same CSV version and W&B run (see ``common.cli``).
    * A best-k file always holds the weights its score was measured on. Lightning also ranks the step saves
      (``every_n_train_steps``, ``train_time_interval``) with the score of the *previous* validation, so a file
      with step-18 weights was kept as best for the step-16 score; here a step save writes ``last.ckpt`` only and
      the ranking waits for the next validation.
    * When ``last.ckpt`` is the same state as the best file just written (same step), it is a hard link to that
      file (a symlink where hard links fail), not a second full copy; a later full save replaces the link, never
      the file it points to.

    The state key is ``ModelCheckpoint``'s, so checkpoints written before this class existed resume as before.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._measured: tuple[int, Tensor] | None = None  # (step, monitored score) of the last validation
        self._ranked_step: int | None = None  # the step whose weights were last ranked for top-k
        self._rank_at_validation = False  # a step save waits for the next validation's score

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
        saved_before = self._last_global_step_saved
        ranked_before = self._ranked_step
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        every_n_steps = (
            self._every_n_train_steps >= 1 and trainer.global_step % self._every_n_train_steps == 0
        )
        interval_passed = (
            self._last_time_checked != time_checked
        )  # ModelCheckpoint resets it when the time is up
        if not (every_n_steps or interval_passed) or self._should_skip_for_state(trainer):
            return
        if self.monitor is not None and self._ranked_step == ranked_before:
            # the step save was not ranked (no score yet, or only the last validation's): the next validation
            # ranks the weights it measures
            self._rank_at_validation = True
            if self._last_global_step_saved == trainer.global_step:
                self._last_only_save = (trainer.global_step, saved_before)
        # with a validation metric monitored, ModelCheckpoint defers step saves until the next validation:
        # mid-epoch work would be lost in a long first epoch, so last.ckpt is written now
        self._save_last_now(trainer)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._forget_last_only_save(trainer)
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._rank_pending_step_save(trainer)
            self._save_last_now(trainer)

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        score = trainer.callback_metrics.get(self.monitor) if self.monitor else None
        if not trainer.sanity_checking and isinstance(score, Tensor):
            self._measured = (trainer.global_step, score.detach().clone())
        self._forget_last_only_save(trainer)
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._rank_pending_step_save(trainer)
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

    @override
    def _save_topk_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict[str, Tensor]) -> None:
        if self._score_is_stale(trainer, monitor_candidates) or self._ranked_step == trainer.global_step:
            return
        if self.monitor is None or self.monitor in monitor_candidates:
            self._ranked_step = trainer.global_step
        super()._save_topk_checkpoint(trainer, monitor_candidates)

    def _rank_pending_step_save(self, trainer: pl.Trainer) -> None:
        """Rank the current weights by the score just measured on them, for a step save whose ranking waited
        for a validation (ModelCheckpoint ranks only at step saves when ``every_n_train_steps`` is set)."""
        if not self._rank_at_validation or self._should_skip_for_state(trainer):
            return
        candidates = self._monitor_candidates(trainer)
        if self.monitor not in candidates or self._score_is_stale(trainer, candidates):
            return  # this validation did not measure the monitored metric: wait for one that does
        self._rank_at_validation = False
        self._defer_save_until_validation = False
        if self._ranked_step == trainer.global_step:
            return
        self._save_topk_checkpoint(trainer, candidates)
        self._save_last_checkpoint(trainer, candidates)

    def _should_skip_for_state(self, trainer: pl.Trainer) -> bool:
        """``ModelCheckpoint._should_skip_saving_checkpoint`` without its "already saved at this step" part."""
        from lightning.pytorch.trainer.states import TrainerFn

        return bool(trainer.fast_dev_run) or trainer.state.fn != TrainerFn.FITTING or trainer.sanity_checking

    def _score_is_stale(self, trainer: pl.Trainer, monitor_candidates: dict[str, Tensor]) -> bool:
        """True when the monitored value is the one the last validation measured, at an earlier step: ranking the
        current weights by it would tag them with another state's score. (A metric logged by training steps
        changes with every step, so it is not taken for a stale one, except by an exact coincidence, which only
        postpones one ranking.)"""
        measured = self._measured
        current = monitor_candidates.get(self.monitor) if self.monitor else None
        if measured is None or not isinstance(current, Tensor) or measured[0] == trainer.global_step:
            return False
        return current.shape == measured[1].shape and bool(torch.equal(current.cpu(), measured[1].cpu()))

    @override
    def _save_last_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict[str, Tensor]) -> None:
        if not self.save_last:
            return
        best = self._last_checkpoint_saved
        same_state = (
            self.save_last is True
            and self._last_global_step_saved == trainer.global_step
            and best in self.best_k_models
            and best != self.last_model_path
        )
        if not same_state:
            path = self._last_path(trainer, monitor_candidates)  # every rank: file_exists is a collective
            if trainer.is_global_zero:
                _unlink_if_linked(path)
            super()._save_last_checkpoint(trainer, monitor_candidates)
            return
        filepath = self._last_path(trainer, monitor_candidates)
        previous, self.last_model_path = self.last_model_path, filepath
        if trainer.is_global_zero:
            link_or_copy(best, filepath)
        trainer.strategy.barrier()
        if previous and previous != filepath and self._should_remove_checkpoint(trainer, previous, filepath):
            self._remove_checkpoint(trainer, previous)

    def _last_path(self, trainer: pl.Trainer, monitor_candidates: dict[str, Tensor]) -> str:
        """``last.ckpt``'s path as ``ModelCheckpoint._save_last_checkpoint`` chooses it (``last-v1.ckpt`` when a
        ``last.ckpt`` of another run is there)."""
        filepath = self.format_checkpoint_name(monitor_candidates, self.CHECKPOINT_NAME_LAST)
        if self._enable_version_counter:
            version = self.STARTING_VERSION
            while self.file_exists(filepath, trainer) and filepath != self.last_model_path:
                filepath = self.format_checkpoint_name(
                    monitor_candidates, self.CHECKPOINT_NAME_LAST, ver=version
                )
                version += 1
        return filepath

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


def link_or_copy(source: str | os.PathLike, link: str | os.PathLike) -> str:
    """Make ``link`` the same file as ``source``: a hard link (the data stays while either name exists), else a
    relative symlink, else a copy. Returns which one was made."""
    link = Path(link)
    _unlink_if_linked(link)
    if link.exists() or link.is_symlink():
        link.unlink()
    try:
        os.link(source, link)
        return "hardlink"
    except OSError:
        pass
    try:
        os.symlink(os.path.relpath(source, link.parent), link)
        return "symlink"
    except OSError:
        shutil.copy2(source, link)
        return "copy"


def _unlink_if_linked(path: str | os.PathLike) -> None:
    """Remove ``path`` when it is a symlink or one of several hard links, so writing it cannot reach the file it
    shares data with (Lightning's local save renames a temporary file over it, but other writers may not)."""
    path = Path(path)
    if path.is_symlink() or (path.is_file() and path.stat().st_nlink > 1):
        path.unlink()


def logger_versions(trainer: pl.Trainer) -> dict[str, dict[str, Any]]:
    """``{logger class path: {"name": ..., "version": ...}}`` of the trainer's loggers (the W&B version is the
    run id)."""
    versions = {}
    for logger in trainer.loggers:
        cls = type(logger)
        versions[f"{cls.__module__}.{cls.__qualname__}"] = {"name": logger.name, "version": logger.version}
    return versions
