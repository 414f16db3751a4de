"""One short training run per project's tiny config, shared by the dashboard and demo tests (trained once per
pytest process): the keys the module really logs, its checkpoints and its saved config."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

PROJECTS = ("pose", "shape3d", "caption", "diffusion")


@dataclass
class TinyRun:
    project: str
    metric_keys: set[str]  # every key the module (and the always-on callbacks) logged, as loggers receive it
    media_keys: set[str]  # ``media/<name>`` keys the MediaLogger sent
    checkpoint_dir: Path
    config: Path  # the run's saved config.yaml
    runs_root: Path  # where the demo looks for saved configs


@functools.cache
def root() -> Path:
    path = Path(tempfile.mkdtemp(prefix="tgm_tiny_runs_"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


@functools.cache
def tiny_run(project: str) -> TinyRun:
    """``tgm fit`` on ``configs/<project>/tiny.yaml`` for one epoch with a CSV logger, logging every step."""
    from common.callbacks import MediaLogger
    from common.cli import run_cli

    base = root() / project
    cli = run_cli(
        ["fit", "--config", f"configs/{project}/tiny.yaml", "--config", "configs/logger/csv.yaml",
         "--trainer.logger.init_args.save_dir", str(base / "runs"),
         "--trainer.max_epochs", "1", "--trainer.log_every_n_steps", "1",
         "--trainer.default_root_dir", str(base), "--checkpoint.dirpath", str(base / "checkpoints"),
         ]
    )  # fmt: skip
    media = next(c for c in cli.trainer.callbacks if isinstance(c, MediaLogger))
    metric_keys = set(cli.trainer.logger.experiment.metrics_keys) - {"epoch", "step"}
    (config,) = (base / "runs").glob("**/config.yaml")
    return TinyRun(project, metric_keys, set(media.logged_keys), base / "checkpoints", config, base / "runs")
