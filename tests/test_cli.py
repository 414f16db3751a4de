"""The `tgm` CLI end to end on the tiny test module: fit, checkpoints, saved config, resume, errors."""

from __future__ import annotations

import glob
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from common.cli import run_cli
from common.errors import MissingInputError
from tests.helpers import tgm_command
from tests.helpers.run_if import RunIf

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "tests" / "configs" / "tiny.yaml")
CSV = str(ROOT / "configs" / "logger" / "csv.yaml")


def fit(tmp_path: Path, *extra: str, logger: str | None = CSV):
    args = ["fit", "--config", TINY]
    if logger:
        args += ["--config", logger]
    args += [
        "--trainer.default_root_dir",
        str(tmp_path),
        "--checkpoint.dirpath",
        str(tmp_path / "ckpt"),
        *extra,
    ]
    if logger == CSV:
        args += ["--trainer.logger.init_args.save_dir", str(tmp_path / "csv")]
    return run_cli(args)


def test_fit_writes_checkpoints_config_and_resolves_precision(tmp_path):
    cli = fit(tmp_path)
    assert cli.trainer.precision == "32-true"  # chosen from the hardware: this machine has no GPU
    assert cli.trainer.gradient_clip_val == 1.0  # from configs/trainer/default.yaml
    assert (tmp_path / "ckpt" / "last.ckpt").exists()
    assert (tmp_path / "ckpt" / "epoch001.ckpt").exists()  # best-1 by val/mse, named from the config
    saved = yaml.safe_load((tmp_path / "csv" / "default" / "version_0" / "config.yaml").read_text())
    assert saved["model"]["class_path"] == "tests.helpers.tiny.TinyModule"
    assert saved["checkpoint"]["monitor"] == "val/mse"


def test_resume_from_last_is_exact(tmp_path):
    straight = fit(tmp_path / "a", "--trainer.max_epochs", "3")
    fit(tmp_path / "b", "--trainer.max_epochs", "2")
    resumed = fit(tmp_path / "b", "--trainer.max_epochs", "3", "--ckpt_path", "last")
    assert resumed.trainer.current_epoch == 3 and resumed.trainer.global_step == straight.trainer.global_step
    for (name, p), q in zip(straight.model.named_parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(p, q), f"{name} differs after resume"


def test_omegaconf_interpolation(tmp_path):
    config = tmp_path / "interp.yaml"
    config.write_text("model:\n  init_args:\n    hidden: ${data.init_args.batch_size}\n")
    cli = fit(tmp_path, "--config", str(config), "--trainer.max_epochs", "1")
    assert cli.model.encoder.out_features == 8


def test_print_config_lists_the_resolved_setup(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["fit", "--config", TINY, "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["trainer"]["logger"]["class_path"] == "common.loggers.WandbLogger"
    assert printed["checkpoint"]["save_last"] is True


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--trainer.max_epochz", "3"], "max_epochz"),
        (["--trainer.max_epoch", "3"], "max_epoch"),  # an abbreviation is a typo, not max_epochs
        (["--model.init_args.lr", "fast"], "lr"),
        (["--model.class_path", "tests.helpers.tiny.NoSuchModule"], "NoSuchModule"),
        (["--config", "configs/does/not/exist.yaml"], "does/not/exist.yaml"),
    ],
)
def test_user_mistakes_name_the_key_or_file(extra, expected):
    """Run as a user would: one short message naming the problem, exit code 2, no traceback."""
    assert_user_error(tgm_command("fit", TINY, args=extra), expected)


def test_missing_pretrained_weights_give_one_clear_line():
    """A model whose __init__ fails (here: a text-encoder directory that does not exist) is reported by its
    message, not by jsonargparse's dump of every init argument."""
    expected = "model.init_args.text_encoder: local directory '/no/such/t5' does not exist"
    command = tgm_command(
        "fit",
        "configs/shape3d/tiny.yaml",
        "configs/logger/csv.yaml",
        args=["--model.init_args.text_encoder", "/no/such/t5"],
    )
    stderr = assert_user_error(command, expected)
    assert "Given value" not in stderr


def test_bad_data_file_during_the_run_is_one_line(tmp_path):
    """Data errors surface after the objects are built (in setup); they too end in one line, exit 2."""
    command = tgm_command(
        "fit",
        "configs/diffusion/tiny.yaml",
        "configs/logger/csv.yaml",
        args=["--data.init_args.source", "emnist", "--data.init_args.data_dir", str(tmp_path)],
    )
    stderr = assert_user_error(command, str(tmp_path))
    assert any(line.startswith("tgm: ") and str(tmp_path) in line for line in stderr.splitlines()), stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_gpu_config_without_a_gpu_is_one_clear_line():
    command = tgm_command("fit", TINY, CSV, "configs/trainer/gpu.yaml")
    assert_user_error(command, "--trainer.accelerator cpu")


def test_ckpt_path_best_is_read_from_last_ckpt(tmp_path):
    fit(tmp_path, "--trainer.max_epochs", "3")
    best = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)["callbacks"]
    best = next(state["best_model_path"] for key, state in best.items() if key.startswith("ModelCheckpoint"))
    cli = run_cli(
        [
            "test",
            "--config",
            TINY,
            "--config",
            CSV,
            "--checkpoint.dirpath",
            str(tmp_path / "ckpt"),
            "--trainer.logger.init_args.save_dir",
            str(tmp_path / "csv"),
            "--ckpt_path",
            "best",
        ]
    )
    assert cli.trainer.ckpt_path == best
    with pytest.raises(MissingInputError, match="no .*last.ckpt"):
        run_cli(
            [
                "test",
                "--config",
                TINY,
                "--config",
                CSV,
                "--checkpoint.dirpath",
                str(tmp_path / "none"),
                "--ckpt_path",
                "best",
            ]
        )


def assert_user_error(command: list[str], expected: str) -> str:
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert result.returncode == 2, result.stderr[-2000:]
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr


@RunIf(wandb=True)
def test_wandb_offline_run_has_config_and_group(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("WANDB_API_KEY", "")
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    cli = fit(
        tmp_path,
        "--trainer.max_epochs",
        "1",
        "--trainer.logger.init_args.save_dir",
        str(tmp_path / "wb"),
        logger=None,
    )
    logger = cli.trainer.logger
    assert logger.mode == "offline"
    assert logger.experiment.group == "tests"  # derived from the model's package
    assert glob.glob(str(tmp_path / "wb" / "wandb" / "offline-run-*"))
    run_dir = tmp_path / "wb" / "turkish-generative-models" / logger.version
    assert (run_dir / "config.yaml").exists()
    assert (run_dir / "media" / "epoch_0000" / "gradient.png").exists()
    import wandb

    wandb.finish()  # close the run so later tests in this process start their own


LINKED = {
    "model": {"class_path": "tests.helpers.tiny.LinkedTinyModule"},
    "data": {"class_path": "tests.helpers.tiny.LinkedTinyDataModule", "init_args": {"num_features": 7}},
}


def test_linked_from_data_sets_the_model_arg_from_the_datamodule(tmp_path):
    """LinkedTinyModule.linked_from_data = {"in_features": "num_features"}: the width comes from the data."""
    config = tmp_path / "linked.yaml"
    config.write_text(yaml.safe_dump(LINKED))
    cli = fit(tmp_path, "--config", str(config), "--trainer.max_epochs", "1")
    assert cli.model.hparams.in_features == 7 and cli.model.encoder.in_features == 7
    cli = run_cli(
        [
            "validate",
            "--config",
            TINY,
            "--config",
            str(config),
            "--config",
            CSV,
            "--trainer.logger.init_args.save_dir",
            str(tmp_path / "csv"),
            "--ckpt_path",
            str(tmp_path / "ckpt" / "last.ckpt"),
        ]
    )
    assert cli.model.encoder.in_features == 7


def test_model_links_are_read_from_the_last_config_or_flag(tmp_path):
    from common.cli import model_links

    config = tmp_path / "linked.yaml"
    config.write_text(yaml.safe_dump(LINKED))
    assert model_links(["fit", "--config", TINY]) == {}
    assert model_links(["fit", "--config", TINY, "--config", str(config)]) == {"in_features": "num_features"}
    assert (
        model_links(["fit", f"--config={config}", "--model.class_path", "tests.helpers.tiny.TinyModule"])
        == {}
    )
    assert model_links(["fit", "-c", TINY, "--model", "tests.helpers.tiny.LinkedTinyModule"]) == {
        "in_features": "num_features"
    }


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--model.init_args.in_features", "3"], "model.init_args.in_features is set in the config"),
        (
            ["--data.class_path", "tests.helpers.tiny.TinyDataModule"],
            "TinyDataModule has no attribute 'num_features'",
        ),
    ],
)
def test_link_mistakes_are_one_line(tmp_path, extra, expected):
    config = tmp_path / "linked.yaml"
    config.write_text(yaml.safe_dump(LINKED))
    command = tgm_command(
        "fit", TINY, str(config), CSV, args=["--trainer.default_root_dir", str(tmp_path), *extra]
    )
    assert_user_error(command, expected)


def test_ckpt_path_hyperparameters_are_read_without_loading_the_checkpoint(tmp_path, monkeypatch):
    """`tgm validate --ckpt_path X` read the whole file twice (Lightning's hyperparameter merge, then the restore):
    2.2 GB each at caption's real size. The merge now memory-maps it; only the restore (from an open file) reads
    it whole."""
    fit(tmp_path, "--trainer.max_epochs", "1")
    checkpoint = tmp_path / "ckpt" / "last.ckpt"
    reads_by_path = []
    real_load = torch.load

    def load(source, *args, **kwargs):
        if str(source) == str(checkpoint):
            reads_by_path.append("mmap" if kwargs.get("mmap") else "whole file")
        return real_load(source, *args, **kwargs)

    monkeypatch.setattr(torch, "load", load)
    cli = run_cli(
        ["validate", "--config", TINY, "--config", CSV, "--trainer.default_root_dir", str(tmp_path),
         "--trainer.logger.init_args.save_dir", str(tmp_path / "csv"), "--ckpt_path", str(checkpoint)]
    )  # fmt: skip
    assert reads_by_path == ["mmap"]
    assert cli.model.hparams.lr == 0.05 and "val/mse" in cli.trainer.callback_metrics
