"""Weights & Biases that works with no account and no network, and one notion of "the run directory"."""

from __future__ import annotations

import http.client
import netrc
import os
import shutil
import ssl
import sys
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import lightning.pytorch as pl
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger as _LightningCSVLogger
from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities import rank_zero_warn

from common.errors import InputError

DEFAULT_PROJECT = "turkish-generative-models"
DEFAULT_BASE_URL = "https://api.wandb.ai"
# how long an online run may wait to learn that the W&B server cannot be reached (README: "W&B without network")
PROBE_TIMEOUT_S = 5.0


def wandb_logged_in() -> bool:
    """True when an API key is available locally (``WANDB_API_KEY`` or ``wandb login``'s netrc entry).

    Checked without any network call, so an offline machine never waits on a server.
    """
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        host = os.environ.get("WANDB_BASE_URL", DEFAULT_BASE_URL).split("://")[-1].rstrip("/")
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def resolve_wandb_mode(mode: str | None = None) -> str:
    """Explicit ``mode`` > ``WANDB_MODE`` > online when logged in > offline."""
    chosen = mode or os.environ.get("WANDB_MODE") or ("online" if wandb_logged_in() else "offline")
    if chosen not in ("online", "offline", "disabled"):
        raise ValueError(f"W&B mode must be online, offline or disabled, got '{chosen}' (from WANDB_MODE?)")
    return chosen


def wandb_unreachable(timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Why the W&B server (``WANDB_BASE_URL``) cannot be reached, or None when it answers an HTTP request.

    A bounded probe (name lookup, connection, TLS and the first response line, all in a thread) so that a
    machine without network, or a server that accepts connections but never answers, is known in ``timeout``
    seconds instead of after wandb's own retries (about 90 s) or its ``init_timeout`` plus the telemetry flush
    at exit (about 45 s for the default 30 s). Any HTTP status counts as an answer, and so does a TLS failure
    (a server answered; wandb reports certificate problems itself).
    """
    url = os.environ.get("WANDB_BASE_URL", DEFAULT_BASE_URL)
    parts = urlsplit(url if "://" in url else f"https://{url}")
    https = parts.scheme != "http"
    host, port = parts.hostname or "", parts.port or (443 if https else 80)
    result: list[str | None] = []

    def request() -> None:
        connection_class = http.client.HTTPSConnection if https else http.client.HTTPConnection
        connection = connection_class(host, port, timeout=timeout + 1)  # the join below decides first
        try:
            connection.request("HEAD", "/")
            connection.getresponse()
            result.append(None)
        except ssl.SSLError:
            result.append(None)
        except (OSError, http.client.HTTPException) as error:
            reason = getattr(error, "strerror", None) or str(error) or "no answer"
            result.append(f"{type(error).__name__}: {reason}")
        finally:
            connection.close()

    thread = threading.Thread(target=request, daemon=True)
    thread.start()
    thread.join(timeout)
    if not result:
        return f"{url} did not answer within {timeout:.0f} s"
    return f"{url}: {result[0]}" if result[0] else None


def finish_wandb(exit_code: int) -> None:
    """Finish the active W&B run with the process's exit code, so a diverged (3), stopped (143) or refused (2)
    run is shown as failed, not "Finished": ``tgm`` ends with ``SystemExit``, which wandb's exit hook reads as 0.
    Does nothing when wandb was never imported or no run is active."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=exit_code)


def remove_run_folders(wandb_dir: Path, before: set[Path]) -> None:
    """Delete the ``run-*`` folders a failed online start left in ``wandb_dir`` (those not in ``before``), and
    the ``latest-run`` link when it points at one of them."""
    for folder in set(wandb_dir.glob("run-*")) - before:
        shutil.rmtree(folder, ignore_errors=True)
    latest = wandb_dir / "latest-run"
    if latest.is_symlink() and not latest.exists():
        latest.unlink()


class WandbLogger(_LightningWandbLogger):
    """Lightning's ``WandbLogger`` with safe defaults for this repo.

    * offline unless the user is logged in (or ``WANDB_MODE``/``mode`` says otherwise); offline runs land in
      ``<save_dir>/wandb/offline-run-*`` and are uploaded later with ``wandb sync``;
    * before an online run starts, a 5 s probe of the server: unreachable with online asked for explicitly is one
      line and exit 2 (:class:`~common.errors.InputError`); online only because a login was found falls back to
      offline with one warning; ``init_timeout`` bounds a server that answers but does not start the run;
    * checkpoints uploaded as artifacts (``log_model``) only when online, unless set explicitly;
    * ``id``: the run to continue (``tgm fit --ckpt_path`` sets it from the checkpoint, Lightning resumes with
      ``resume="allow"``);
    * :meth:`define_metrics`: validation metrics plotted against ``epoch``, the monitored metric's best value in
      the run summary.
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
        init_timeout: float = 30.0,
        id: str | None = None,
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
            id=id,
            **kwargs,
        )
        self.mode = resolved
        # online only because a login was found (not asked for): an unreachable server falls back to offline
        self.fallback_offline = resolved == "online" and not (mode or os.environ.get("WANDB_MODE"))

    @property
    def experiment(self) -> Any:
        if self._experiment is None and self.mode == "online":
            unreachable = wandb_unreachable()
            if unreachable and not self.fallback_offline:
                raise InputError(
                    f"W&B: online mode was asked for (mode / WANDB_MODE) but the server cannot be reached "
                    f"({unreachable}); check the network, or use WANDB_MODE=offline and `wandb sync` later"
                )
            if unreachable:
                self._go_offline(unreachable)
        if self._experiment is None and self.mode == "online":
            wandb_dir = self._wandb_dir()
            before = set(wandb_dir.glob("run-*"))
            try:
                return super().experiment
            except Exception as error:  # wandb raises CommError / UsageError / TimeoutError on no network
                remove_run_folders(wandb_dir, before)  # a run that never started has nothing to sync
                reason = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
                if not self.fallback_offline:
                    raise InputError(
                        f"W&B: could not start the online run ({reason}); check the network and `wandb login`, "
                        "or use WANDB_MODE=offline and `wandb sync` later"
                    ) from error
                self._go_offline(reason)
        return super().experiment

    def _wandb_dir(self) -> Path:
        """Where wandb puts this run's folder: ``<dir>/wandb`` (``dir`` is ``save_dir``, else ``WANDB_DIR``)."""
        base = self._wandb_init.get("dir") or os.environ.get("WANDB_DIR") or "."
        return Path(base) / "wandb"

    def _go_offline(self, reason: str) -> None:
        rank_zero_warn(
            f"W&B: could not start an online run ({reason}); logging offline instead. "
            "Upload it later with `wandb sync`."
        )
        self.mode = self._wandb_init["mode"] = "offline"
        self._log_model = False
        self.fallback_offline = False

    def define_metrics(self, monitor: str | None, mode: str = "min") -> None:
        """Charts that read right on first open: ``val/*`` against ``epoch`` (Lightning logs ``epoch`` with every
        metric), and the monitored metric's best value (``min``/``max`` as ``checkpoint.mode``) and last value
        in the run summary, so the runs table compares runs by their best score."""
        run = self.experiment
        if not callable(getattr(run, "define_metric", None)):
            return
        run.define_metric("epoch", step_metric="trainer/global_step")
        run.define_metric("val/*", step_metric="epoch")
        if monitor:
            run.define_metric(
                monitor, step_metric="epoch" if monitor.startswith("val/") else None, summary=f"{mode},last"
            )


class CSVLogger(_LightningCSVLogger):
    """Lightning's ``CSVLogger`` that appends to an existing ``metrics.csv`` instead of deleting it, so a resumed
    run (same ``version``, set from the checkpoint by ``tgm fit --ckpt_path``) keeps one log. Rows logged after
    the checkpoint and before the interruption appear again with the same steps."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


class _AppendingWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:
        if not self._fs.isfile(self.metrics_file_path):
            return
        with self._fs.open(self.metrics_file_path, "r", newline="") as file:
            header = file.readline().strip()
        self.metrics_keys = sorted(key for key in header.split(",") if key)


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
