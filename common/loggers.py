"""Weights & Biases that works with no account and no network, and one notion of "the run directory"."""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger
from lightning.pytorch.utilities import rank_zero_warn

DEFAULT_PROJECT = "turkish-generative-models"


def wandb_logged_in() -> bool:
    """True when an API key is available locally (``WANDB_API_KEY`` or ``wandb login``'s netrc entry).

    Checked without any network call, so an offline machine never waits on a server.
    """
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].rstrip("/")
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def resolve_wandb_mode(mode: str | None = None) -> str:
    """Explicit ``mode`` > ``WANDB_MODE`` > online when logged in > offline."""
    chosen = mode or os.environ.get("WANDB_MODE") or ("online" if wandb_logged_in() else "offline")
    if chosen not in ("online", "offline", "disabled"):
        raise ValueError(f"W&B mode must be online, offline or disabled, got '{chosen}' (from WANDB_MODE?)")
    return chosen


class WandbLogger(_LightningWandbLogger):
    """Lightning's ``WandbLogger`` with safe defaults for this repo.

    * offline unless the user is logged in (or ``WANDB_MODE``/``mode`` says otherwise); offline runs land in
      ``<save_dir>/wandb/offline-run-*`` and are uploaded later with ``wandb sync``;
    * a bounded ``init_timeout`` so a flaky network fails fast instead of hanging;
    * checkpoints uploaded as artifacts (``log_model``) only when online, unless set explicitly.
    """

    def __init__(
        self,
        project: str = DEFAULT_PROJECT,
        name: str | None = None,
        group: str | None = None,
        tags: list[str] | None = None,
        save_dir: str = "runs",
        mode: str | None = None,
        log_model: bool | str | None = None,
        init_timeout: float = 60.0,
        **kwargs: Any,
    ) -> None:
        import wandb

        resolved = resolve_wandb_mode(mode)
        if log_model is None:
            log_model = resolved == "online"
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        settings = kwargs.pop("settings", None) or wandb.Settings(init_timeout=init_timeout, silent=True)
        super().__init__(
            project=project,
            name=name,
            group=group,
            tags=list(tags) if tags else None,
            save_dir=save_dir,
            mode=resolved,
            log_model=log_model,
            settings=settings,
            **kwargs,
        )
        self.mode = resolved
        # online only because a login was found (not asked for): an unreachable server falls back to offline
        self.fallback_offline = resolved == "online" and not (mode or os.environ.get("WANDB_MODE"))

    @property
    def experiment(self) -> Any:
        if self._experiment is None and self.fallback_offline:
            try:
                return super().experiment
            except Exception as error:  # wandb raises CommError / UsageError / TimeoutError on no network
                rank_zero_warn(f"W&B: could not start an online run ({type(error).__name__}: {error}); logging "
                               "offline instead. Upload it later with `wandb sync`.")
                self.mode = self._wandb_init["mode"] = "offline"
                self._log_model = False
                self.fallback_offline = False
        return super().experiment


def run_dir(trainer: pl.Trainer) -> Path:
    """Where a run's own files go (saved config, media, summaries): ``<save_dir>/<name>/<version>``.

    This is the parent of the default checkpoint folder for both W&B and CSV/TensorBoard loggers.
    Without a logger it is ``default_root_dir``. No collective call is made (``trainer.log_dir`` broadcasts),
    so rank-zero-only code may call it under DDP.
    """
    logger = trainer.logger
    if logger is None:
        return Path(trainer.default_root_dir)
    if isinstance(logger, _LightningWandbLogger):
        return Path(logger.save_dir or trainer.default_root_dir) / str(logger.name) / str(logger.version)
    return Path(getattr(logger, "log_dir", None) or logger.save_dir or trainer.default_root_dir)
