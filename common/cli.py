"""``tgm``: the one command line for every project (``tgm fit|validate|test|predict --config ...``).

Model and data are chosen by ``class_path`` in the config, so a new project needs no change here.
``configs/trainer/default.yaml`` and ``configs/logger/wandb.yaml`` are applied first for every subcommand;
the ``--config`` files given on the command line are merged on top, in order, then ``--key value`` flags.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import set_parsing_settings
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from common.callbacks import GradNormLogger, LatestCheckpoint, MediaLogger, MetricSummary, NaNGuard, ResumeRNG
from common.errors import InputError, MissingInputError, TrainingDiverged
from common.loggers import WandbLogger, finish_wandb, run_dir
from common.precision import precision_for_hardware

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
DEFAULT_CONFIGS = [str(CONFIG_DIR / "trainer" / "default.yaml"), str(CONFIG_DIR / "logger" / "wandb.yaml")]
SUBCOMMANDS = ("fit", "validate", "test", "predict")


class SaveConfigToRun(SaveConfigCallback):
    """Save the fully resolved config as ``config.yaml`` in the run directory and send it to every logger
    (W&B shows it under the run's config; the file is also uploaded with the run)."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.already_saved:
            return
        directory = run_dir(trainer)
        if trainer.is_global_zero:
            directory.mkdir(parents=True, exist_ok=True)
            path = directory / self.config_filename
            self.parser.save(self.config, str(path), skip_unset=False, overwrite=True, multifile=False)
            resolved = yaml.safe_load(self.parser.dump(self.config, skip_unset=False))
            for logger in trainer.loggers:
                logger.log_hyperparams(resolved)
                if isinstance(logger, WandbLogger):
                    logger.experiment.save(str(path), base_path=str(directory), policy="now")
                    checkpoint = trainer.checkpoint_callback
                    logger.define_metrics(
                        getattr(checkpoint, "monitor", None), getattr(checkpoint, "mode", "min")
                    )
            self.already_saved = True
        self.already_saved = trainer.strategy.broadcast(self.already_saved)


class TGMCLI(LightningCLI):
    """LightningCLI with this repo's always-on callbacks, hardware-chosen precision and data -> model links.

    ``links`` maps model init args to datamodule attributes (the model class's ``linked_from_data``); each one
    becomes ``parser.link_arguments("data", "model.init_args.<arg>", apply_on="instantiate")``.
    """

    def __init__(self, *args: Any, links: dict[str, str] | None = None, **kwargs: Any) -> None:
        self.links = links or {}
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for arg, attribute in self.links.items():
            parser.link_arguments(
                "data", f"model.init_args.{arg}", compute_fn=data_attribute(attribute), apply_on="instantiate"
            )
        # Always-on callbacks, configurable under their own keys (``checkpoint.monitor: val/dtw`` ...).
        parser.add_lightning_class_args(LatestCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.save_last": True,
                "checkpoint.save_top_k": 1,
                "checkpoint.filename": "epoch{epoch:03d}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        parser.add_lightning_class_args(GradNormLogger, "grad_norm")
        parser.add_lightning_class_args(MediaLogger, "media")
        parser.add_lightning_class_args(MetricSummary, "summary")
        parser.add_lightning_class_args(ResumeRNG, "resume_rng")
        parser.add_lightning_class_args(NaNGuard, "nan_guard")

    def _parse_ckpt_path(self) -> None:
        # checked before Lightning merges a checkpoint's hyperparameters (they hold the linked values too)
        config = self.config[self.config.subcommand] if self.config.get("subcommand") else self.config
        init_args = config.model.get("init_args") or {}
        for arg, attribute in self.links.items():
            if init_args.get(arg) is not None:
                raise InputError(
                    f"model.init_args.{arg} is set in the config, but {config.model.class_path} takes it from "
                    f"the datamodule's '{attribute}' (linked_from_data): remove it from the config"
                )
        # Lightning's own version of what follows reads the whole checkpoint (GBs at real size, and once more when
        # it restores) only for the hyperparameters; memory-mapped, only the bytes touched are read.
        ckpt_path = config.get("ckpt_path")
        if not self.config.get("subcommand") or not ckpt_path or not Path(ckpt_path).is_file():
            return
        import torch

        checkpoint = torch.load(ckpt_path, weights_only=True, map_location="cpu", mmap=True)
        hparams = dict(checkpoint.get("hyper_parameters") or {})
        hparams.pop("_instantiator", None)
        if not hparams:
            return
        if "_class_path" in hparams:
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        try:
            self.config = self.parser.parse_object({self.config.subcommand: {"model": hparams}}, self.config)
        except SystemExit:
            sys.stderr.write("Parsing of ckpt_path hyperparameters failed!\n")
            raise

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        trainer = config.trainer
        if trainer.precision is None:  # not set anywhere: choose from the hardware
            trainer.precision = precision_for_hardware(trainer.accelerator)
        logger = trainer.logger
        if getattr(logger, "class_path", None) == f"{WandbLogger.__module__}.{WandbLogger.__name__}":
            init_args = logger.init_args
            if init_args.get("group") is None:  # one W&B group per project, taken from the model's package
                init_args.group = project_of(config.model.class_path)
        if self.subcommand == "fit":
            # one run, one log: continue the checkpoint's CSV version and W&B run instead of starting new ones
            checkpoint = resume_checkpoint(
                config.ckpt_path, config.checkpoint.dirpath, trainer.default_root_dir
            )
            resume_loggers(trainer.logger, checkpoint)
        if self.subcommand in ("validate", "test", "predict") and config.ckpt_path == "best":
            # Lightning knows "best" only inside the process that trained; read it from last.ckpt instead.
            config.ckpt_path = str(best_checkpoint(config.checkpoint.dirpath))

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except ValueError as error:
            if isinstance(error.__cause__, InputError):  # raised inside a link's compute_fn
                raise error.__cause__ from None
            reasons = construction_errors(str(error))
            if not reasons or os.environ.get("TGM_TRACEBACK"):
                raise
            # jsonargparse reports a failing __init__ as a Union mismatch followed by a dump of every init arg;
            # the user needs the one line that says what went wrong (missing weights, a bad data file ...).
            lines = "\n".join(f"  - {reason}" for reason in reasons)
            sys.stderr.write(
                f"tgm {self.subcommand}: could not build what the config asks for:\n{lines}\n"
                "(set TGM_TRACEBACK=1 for the full traceback)\n"
            )
            raise SystemExit(2) from error


def data_attribute(attribute: str):
    """A link's compute_fn: read ``attribute`` from the instantiated datamodule, or one line saying it is not
    there (the model declares ``linked_from_data`` but the datamodule does not provide it)."""

    def read(datamodule: Any) -> Any:
        if not hasattr(datamodule, attribute):
            raise InputError(
                f"the model takes '{attribute}' from the datamodule (linked_from_data), but "
                f"{type(datamodule).__name__} has no attribute '{attribute}'"
            )
        return getattr(datamodule, attribute)

    return read


def model_links(args: Sequence[str]) -> dict[str, str]:
    """The model class's ``linked_from_data`` (``{model init arg: datamodule attribute}``), found before parsing.

    Links are part of the parser, and in subclass mode the parser is built before the model class is known, so
    the class is pre-read from the command line: the last ``--model[.class_path] X`` wins over the last
    ``--config`` file that sets ``model.class_path``. Anything unresolvable gives no links (the parser then
    reports the real problem).
    """
    class_path = None
    for index, arg in enumerate(args):
        name, _, value = arg.partition("=")
        if not value and index + 1 < len(args):
            value = args[index + 1]
        if name in ("--config", "-c"):
            class_path = config_model_class_path(value) or class_path
        elif name in ("--model", "--model.class_path"):
            class_path = value
    model_class = import_class(class_path) if class_path else None
    return dict(getattr(model_class, "linked_from_data", None) or {})


def config_model_class_path(path: str) -> str | None:
    try:
        config = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    model = config.get("model") if isinstance(config, dict) else None
    if isinstance(model, dict):
        return model.get("class_path")
    return model if isinstance(model, str) else None


def import_class(class_path: str) -> type | None:
    module_name, _, class_name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), class_name, None) if module_name else None
    except ImportError:
        return None


def resume_checkpoint(ckpt_path: str | None, dirpath: str | None, root_dir: str | None) -> Path | None:
    """The file ``fit --ckpt_path`` resumes from, as Lightning chooses it: ``last`` is the newest ``last*.ckpt``
    in ``checkpoint.dirpath``; no ``--ckpt_path`` under SLURM is the newest ``hpc_ckpt_N.ckpt`` in
    ``trainer.default_root_dir`` (written by Lightning's auto-requeue). None when there is none."""
    if ckpt_path is None:
        hpc = list(Path(root_dir or ".").glob("hpc_ckpt_*.ckpt")) if SLURMEnvironment.detect() else []
        hpc = [path for path in hpc if path.stem.removeprefix("hpc_ckpt_").isdigit()]
        return max(hpc, key=lambda path: int(path.stem.removeprefix("hpc_ckpt_"))) if hpc else None
    if ckpt_path == "last":
        candidates = (
            sorted(Path(dirpath).glob("last*.ckpt"), key=lambda p: p.stat().st_mtime) if dirpath else []
        )
        return candidates[-1] if candidates else None
    path = Path(ckpt_path)
    return path if path.is_file() else None


def resume_loggers(logger_config: Any, checkpoint: Path | None) -> None:
    """Set each configured logger's ``version`` (CSV, TensorBoard) or ``id`` (W&B) to the one recorded in the
    checkpoint (``LatestCheckpoint`` writes ``checkpoint["loggers"]``), unless the config sets it."""
    if checkpoint is None or not logger_config or isinstance(logger_config, bool):
        return
    import torch

    try:
        saved = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True).get("loggers") or {}
    except Exception as error:  # unreadable here: Lightning reports it when it restores; the log starts anew
        rank_zero_warn(
            f"could not read the loggers' versions from {checkpoint} ({type(error).__name__}); "
            "the resumed run logs to a new version"
        )
        return
    for entry in logger_config if isinstance(logger_config, list) else [logger_config]:
        cls = import_class(getattr(entry, "class_path", None) or "")
        recorded = saved.get(f"{cls.__module__}.{cls.__qualname__}") if cls else None
        if recorded is None:
            continue
        key = "id" if issubclass(cls, LightningWandbLogger) else "version"
        if entry.init_args.get(key) is None:
            entry.init_args[key] = recorded["version"]


def best_checkpoint(dirpath: str | None) -> Path:
    """The best checkpoint recorded by ``ModelCheckpoint`` in ``<dirpath>/last.ckpt``."""
    if dirpath is None:
        raise InputError(
            "--ckpt_path best needs checkpoint.dirpath in the config (where last.ckpt is); "
            "or give the checkpoint's path"
        )
    last = Path(dirpath) / "last.ckpt"
    if not last.is_file():
        raise MissingInputError(
            f"--ckpt_path best: no {last} to read the best checkpoint from; train first "
            "or give the checkpoint's path"
        )
    import torch

    # mmap: only the small callback states are read, not the weights and optimiser tensors
    checkpoint = torch.load(last, map_location="cpu", weights_only=False, mmap=True)
    states = checkpoint.get("callbacks", {})
    monitors = []
    for key, state in states.items():
        if not key.startswith("ModelCheckpoint"):
            continue
        if state.get("best_model_path"):
            best = Path(state["best_model_path"])
            if not best.is_file():
                raise MissingInputError(
                    f"--ckpt_path best: {last} names {best} as best, but it does not exist"
                )
            return best
        monitors.append(state.get("monitor"))
    where = f"epoch {checkpoint.get('epoch')}, step {checkpoint.get('global_step')}"
    if any(monitors):
        monitor = next(m for m in monitors if m)
        reason = (
            f"it was written at {where}, before any validation had measured checkpoint.monitor '{monitor}' "
            "(best files are chosen at validations), or with checkpoint.save_top_k 0"
        )
    elif monitors:
        reason = f"it was written at {where} with no checkpoint.monitor and no top-k file saved"
    else:
        reason = f"it was written at {where} without a ModelCheckpoint callback"
    raise InputError(
        f"--ckpt_path best: {last} records no best checkpoint: {reason}; use --ckpt_path last instead"
    )


UNION_FAILURE = "Does not validate against any of the Union subtypes"


def construction_errors(message: str) -> list[str]:
    """The per-subtype reasons of a jsonargparse Union failure, without the ``None`` alternative and the
    value dump; empty when ``message`` is something else."""
    if not message.startswith(UNION_FAILURE) or "\nErrors:\n" not in message:
        return []
    body = message.split("\nErrors:\n", 1)[1].split("\nGiven value", 1)[0]
    reasons: list[str] = []
    for line in body.splitlines():
        if line.startswith("  - "):
            reasons.append(line[4:])
        elif reasons and line.strip():
            reasons[-1] += " " + line.strip()
    return [reason for reason in reasons if not reason.startswith("Expected a <class 'NoneType'>")]


def project_of(class_path: str) -> str:
    """``projects.pose.model.PoseModule`` -> ``pose``; anything else -> its top-level package."""
    parts = class_path.split(".")
    return parts[1] if parts[0] == "projects" and len(parts) > 2 else parts[0]


def build_parser_kwargs() -> dict:
    # allow_abbrev=False: argparse would otherwise take a misspelt --trainer.max_epoch as max_epochs.
    shared = {"parser_mode": "omegaconf+", "allow_abbrev": False}
    # a one-line usage: argparse prints it before every error, and the full one is 60+ lines (--help lists all)
    per_subcommand = {
        name: {
            **shared,
            "default_config_files": DEFAULT_CONFIGS,
            "usage": f"tgm {name} --config FILE [--config FILE ...] [--key value ...]",
        }
        for name in SUBCOMMANDS
    }
    return {**shared, **per_subcommand}


def run_cli(args: list[str] | None = None, cli_class: type[TGMCLI] | None = None) -> TGMCLI:
    """Build and run the CLI; ``args`` replaces ``sys.argv[1:]`` (for Python callers and tests); ``cli_class``
    a :class:`TGMCLI` subclass with extra hooks (the demo sets predict-time model settings with one)."""
    # ``omegaconf+`` resolves ${...} after all config files are merged, so one file can refer to a key set in
    # another; absolute paths like ${data.init_args.batch_size} are read relative to the subcommand's root.
    set_parsing_settings(omegaconf_absolute_to_relative_paths=True)
    return (cli_class or TGMCLI)(
        links=model_links(sys.argv[1:] if args is None else args),
        model_class=LightningModule,
        datamodule_class=None,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=SaveConfigToRun,
        save_config_kwargs={"overwrite": True},
        parser_kwargs=build_parser_kwargs(),
        args=args,
        auto_configure_optimizers=False,
    )


def main() -> None:
    """Entry point of the ``tgm`` console script. Expected endings are one line on stderr, no traceback:
    bad user input exits 2, a diverged run (NaN/Inf) 3, SIGTERM 143 after saving ``last.ckpt``. A W&B run
    that was started is finished with that code (wandb would otherwise record 0 and show "Finished")."""
    try:
        run_cli()
    # bad data, or a set-up Lightning refuses (a GPU config without a GPU ...)
    except (InputError, MisconfigurationException) as error:
        finish_wandb(2)
        if os.environ.get("TGM_TRACEBACK"):
            raise
        hint = ""
        if isinstance(error, MisconfigurationException) and "gpu" in str(error).lower():
            hint = " (the config asks for a GPU; without one use --trainer.accelerator cpu)"
        sys.stderr.write(f"tgm: {error}{hint}\n(set TGM_TRACEBACK=1 for the full traceback)\n")
        raise SystemExit(2) from error
    except TrainingDiverged as error:
        finish_wandb(3)
        if os.environ.get("TGM_TRACEBACK"):
            raise
        sys.stderr.write(f"tgm: {error}\n")
        raise SystemExit(3) from error
    except SIGTERMException as error:  # Lightning stops after the batch; LatestCheckpoint has saved last.ckpt
        finish_wandb(143)
        sys.stderr.write("tgm: stopped by SIGTERM after saving last.ckpt; continue with --ckpt_path last\n")
        raise SystemExit(143) from error


if __name__ == "__main__":
    main()
