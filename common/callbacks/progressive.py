"""Progressive resolution growing (e.g. voxel grids 32 -> 48 -> 64) driven by an epoch schedule."""

from __future__ import annotations

import lightning.pytorch as pl

from common.protocols import HasFadeAlpha, HasResolution


class ProgressiveResolution(pl.Callback):
    """Tell the module and the datamodule which resolution to use, by epoch.

    ``schedule`` maps the first epoch of each stage to its resolution, e.g. ``{0: 32, 10: 48, 20: 64}``.
    At every train epoch start the callback calls ``set_resolution(resolution)`` on the LightningModule and on
    the datamodule whenever the resolution changes (both implement :class:`common.protocols.HasResolution`),
    and logs ``train/resolution``. When ``fade_epochs > 0`` and the module implements
    :class:`common.protocols.HasFadeAlpha`, alpha ramps from 0 to 1 over that many epochs after each change,
    step by step, so the new resolution is blended in (ProGAN-style fade-in).

    The resolution is derived from the epoch alone, so resuming from a checkpoint restores it exactly.
    """

    def __init__(self, schedule: dict[int, int], fade_epochs: float = 0.0) -> None:
        if not schedule:
            raise ValueError("ProgressiveResolution.schedule is empty; give at least {0: <resolution>}")
        if 0 not in schedule:
            raise ValueError(
                f"ProgressiveResolution.schedule must start at epoch 0, got epochs {sorted(schedule)}"
            )
        if any(r <= 0 for r in schedule.values()):
            raise ValueError(f"ProgressiveResolution.schedule has a non-positive resolution: {schedule}")
        if fade_epochs < 0:
            raise ValueError(f"ProgressiveResolution.fade_epochs must be >= 0, got {fade_epochs}")
        self.schedule = {int(epoch): int(res) for epoch, res in sorted(schedule.items())}
        self.fade_epochs = float(fade_epochs)
        self.current: int | None = None

    def stage_start(self, epoch: int) -> int:
        """The first epoch of the stage that ``epoch`` belongs to."""
        return max(e for e in self.schedule if e <= epoch)

    def resolution_at(self, epoch: int) -> int:
        return self.schedule[self.stage_start(epoch)]

    def _apply(self, trainer: pl.Trainer, pl_module: pl.LightningModule, resolution: int) -> None:
        for target in (pl_module, trainer.datamodule):
            if target is None:
                continue
            if not isinstance(target, HasResolution):
                raise TypeError(
                    f"ProgressiveResolution needs {type(target).__name__}.set_resolution(resolution: int) "
                    "(common.protocols.HasResolution)"
                )
            target.set_resolution(resolution)
        self.current = resolution

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A fresh run starts at schedule[0]. When resuming, Lightning restores the epoch counter only after
        # on_fit_start, so the resumed epoch's resolution is applied at the sanity check / first epoch.
        if trainer.ckpt_path is None:
            self._apply(trainer, pl_module, self.resolution_at(trainer.current_epoch))

    def on_sanity_check_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # the epoch counter is restored by now: the sanity check validates at the (resumed) epoch's resolution
        resolution = self.resolution_at(trainer.current_epoch)
        if resolution != self.current:
            self._apply(trainer, pl_module, resolution)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        resolution = self.resolution_at(trainer.current_epoch)
        if resolution != self.current:
            self._apply(trainer, pl_module, resolution)
        pl_module.log("train/resolution", float(resolution), on_step=False, on_epoch=True)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int
    ) -> None:
        if self.fade_epochs <= 0 or not isinstance(pl_module, HasFadeAlpha):
            return
        start = self.stage_start(trainer.current_epoch)
        if start == 0:  # nothing to fade from in the first stage
            pl_module.set_fade_alpha(1.0)
            return
        batches = max(int(trainer.num_training_batches), 1)
        progress = (trainer.current_epoch - start) + batch_idx / batches
        pl_module.set_fade_alpha(min(1.0, progress / self.fade_epochs))
