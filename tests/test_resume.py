"""Runs you can trust: last.ckpt is the latest state, step checkpoints and SIGTERM survive a kill, a resumed run
keeps its log, a diverging run stops with one line."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
from datetime import timedelta
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from common.callbacks import LatestCheckpoint, NaNGuard
from common.cli import run_cli
from common.errors import TrainingDiverged
from tests.helpers import run_folders, tgm_command
from tests.helpers.tiny import DivergingTinyModule, TinyDataModule, TinyModule
from tests.test_cli import CSV, ROOT, TINY, fit

BATCHES_PER_EPOCH = 8  # tiny data: 64 samples, batch size 8


def saved_step(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=True)["global_step"]


class LastCkptProbe(pl.Callback):
    """At the start of each epoch after the first, read which step last.ckpt holds (checkpoint callbacks run
    after all others, so the previous epoch's saves are done by then)."""

    def __init__(self, last: Path) -> None:
        self.last = last
        self.steps: list[int] = []

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch > 0:
            self.steps.append(saved_step(self.last))


def trainer_with(tmp_path: Path, callbacks: list, **kwargs) -> pl.Trainer:
    return pl.Trainer(
        default_root_dir=tmp_path,
        accelerator="cpu",
        logger=CSVLogger(tmp_path, name="t"),
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        **kwargs,
    )


def test_last_ckpt_follows_every_validation_when_the_metric_gets_worse(tmp_path):
    """mode=max on val/mse, which falls as the model learns: from the checkpoint's view the metric gets worse
    every epoch, so only epoch 0 is top-1. last.ckpt must still hold each epoch's state."""
    checkpoint = LatestCheckpoint(
        dirpath=tmp_path / "ckpt",
        monitor="val/mse",
        mode="max",
        save_last=True,
        filename="epoch{epoch:03d}",
        auto_insert_metric_name=False,
    )
    probe = LastCkptProbe(tmp_path / "ckpt" / "last.ckpt")
    trainer = trainer_with(tmp_path, [checkpoint, probe], max_epochs=3)
    trainer.fit(TinyModule(), TinyDataModule())
    assert probe.steps == [8, 16]
    assert Path(checkpoint.best_model_path).name == "epoch000.ckpt"  # the metric really got worse
    assert saved_step(tmp_path / "ckpt" / "last.ckpt") == trainer.global_step == 24


def test_last_ckpt_holds_the_end_of_fit_when_it_stops_mid_epoch(tmp_path):
    checkpoint = LatestCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/mse", save_last=True)
    trainer = trainer_with(tmp_path, [checkpoint], max_steps=12)
    trainer.fit(TinyModule(), TinyDataModule())
    assert saved_step(tmp_path / "ckpt" / "last.ckpt") == 12


def test_step_saves_before_a_validation_do_not_hide_it(tmp_path):
    """every_n_train_steps=4 with 8 batches and saving at validation end: the step save at step 8 (last.ckpt)
    comes right before the first validation, whose top-k decision and deferred save must still happen."""
    checkpoint = LatestCheckpoint(
        dirpath=tmp_path / "ckpt",
        monitor="val/mse",
        save_last=True,
        every_n_train_steps=4,
        save_on_train_epoch_end=False,
    )
    trainer = trainer_with(tmp_path, [checkpoint], max_epochs=1)
    trainer.fit(TinyModule(), TinyDataModule())
    assert Path(checkpoint.best_model_path).is_file()
    assert float(checkpoint.best_model_score) == pytest.approx(float(trainer.callback_metrics["val/mse"]))
    assert saved_step(tmp_path / "ckpt" / "last.ckpt") == 8


def test_time_interval_saves_last_ckpt_before_the_first_validation(tmp_path):
    """train_time_interval (0 s: every batch) writes last.ckpt in the first epoch, like every_n_train_steps."""
    seen = []

    class Probe(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step > 0:
                seen.append((saved_step(tmp_path / "ckpt" / "last.ckpt"), trainer.global_step))

    checkpoint = LatestCheckpoint(
        dirpath=tmp_path / "ckpt", monitor="val/mse", save_last=True, train_time_interval=timedelta(seconds=0)
    )
    trainer_with(tmp_path, [checkpoint, Probe()], max_steps=4).fit(TinyModule(), TinyDataModule())
    assert seen == [(1, 1), (2, 2), (3, 3)]


def test_cli_last_ckpt_is_the_latest_epoch(tmp_path):
    cli = fit(tmp_path, "--checkpoint.mode", "max", "--trainer.max_epochs", "3")
    assert saved_step(tmp_path / "ckpt" / "last.ckpt") == cli.trainer.global_step == 24
    assert (tmp_path / "ckpt" / "epoch000.ckpt").exists() and not (
        tmp_path / "ckpt" / "epoch002.ckpt"
    ).exists()


def killed_run(tmp_path: Path, signum: int, step: int, *extra: str) -> subprocess.CompletedProcess:
    """`tgm fit` in a subprocess that receives ``signum`` when training reaches ``step``."""
    callbacks = tmp_path / "signal.yaml"
    callbacks.write_text(
        "trainer:\n  callbacks:\n    - class_path: tests.helpers.tiny.SignalAtStep\n"
        f"      init_args: {{step: {step}, signum: {int(signum)}}}\n"
    )
    command = tgm_command(
        "fit",
        TINY,
        CSV,
        str(callbacks),
        args=[
            *run_folders(tmp_path),
            *extra,
        ],
    )
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


def resume(tmp_path: Path):
    return fit(tmp_path, "--ckpt_path", "last")


def test_sigkill_mid_first_epoch_resumes_from_the_step_checkpoint(tmp_path):
    """every_n_train_steps=4 and a kill at step 6, before the first validation: last.ckpt holds step 4 (a
    monitored validation metric does not exist yet, which made ModelCheckpoint defer the save)."""
    killed = killed_run(tmp_path, signal.SIGKILL, 6, "--checkpoint.every_n_train_steps", "4")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert saved_step(tmp_path / "ckpt" / "last.ckpt") == 4
    resumed = resume(tmp_path)
    assert resumed.trainer.ckpt_path == str(tmp_path / "ckpt" / "last.ckpt")
    assert resumed.trainer.current_epoch == 2 and resumed.trainer.global_step == 2 * BATCHES_PER_EPOCH


def test_sigterm_saves_last_ckpt_and_exits_with_one_line(tmp_path):
    """SIGTERM at the start of step 6: Lightning finishes that batch and stops; last.ckpt holds step 7."""
    stopped = killed_run(tmp_path, signal.SIGTERM, 6)
    assert stopped.returncode == 143, stopped.stderr[-2000:]
    assert "Traceback" not in stopped.stderr
    assert "tgm: stopped by SIGTERM after saving last.ckpt; continue with --ckpt_path last" in stopped.stderr
    assert saved_step(tmp_path / "ckpt" / "last.ckpt") == 7
    resumed = resume(tmp_path)
    assert resumed.trainer.current_epoch == 2 and resumed.trainer.global_step == 2 * BATCHES_PER_EPOCH


def test_resumed_run_appends_to_the_same_csv_version_and_keeps_before(tmp_path):
    fit(tmp_path, "--trainer.max_epochs", "1")
    first = json.loads((tmp_path / "csv" / "default" / "version_0" / "metric_summary.json").read_text())
    fit(tmp_path, "--trainer.max_epochs", "2", "--ckpt_path", "last")
    assert sorted(p.name for p in (tmp_path / "csv" / "default").iterdir()) == ["version_0"]
    with open(tmp_path / "csv" / "default" / "version_0" / "metrics.csv", newline="") as file:
        rows = [row for row in csv.DictReader(file) if row.get("val/mse")]
    assert [int(row["epoch"]) for row in rows] == [0, 1]  # both runs' validations, in one file
    summary = json.loads((tmp_path / "csv" / "default" / "version_0" / "metric_summary.json").read_text())
    assert summary["before"] == first["before"]  # the untrained model, not the resumed one
    assert summary["at_resume"]["val/mse"] == pytest.approx(first["after"]["val/mse"], rel=1e-5)


def test_nan_guard_stops_at_the_first_nan_and_keeps_the_last_good_checkpoint(tmp_path):
    checkpoint = LatestCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/mse", save_last=True)
    trainer = trainer_with(tmp_path, [checkpoint, NaNGuard()], max_epochs=3)
    module = DivergingTinyModule(nan_at_step=11)  # epoch 1, batch 3
    with pytest.raises(
        TrainingDiverged, match=r"non-finite loss \(nan\) at epoch 1, step 11, batch 3"
    ) as error:
        trainer.fit(module, TinyDataModule())
    assert str(tmp_path / "ckpt" / "last.ckpt") in str(error.value)
    assert saved_step(tmp_path / "ckpt" / "last.ckpt") == 8
    assert all(torch.isfinite(p).all() for p in module.parameters())  # stopped before the step


def test_nan_guard_skip_batch_drops_only_the_bad_batch(tmp_path):
    guard = NaNGuard(action="skip_batch")
    module = DivergingTinyModule(nan_at_step=3)
    reference = TinyModule()
    reference.load_state_dict(module.state_dict())
    trainer = trainer_with(tmp_path, [guard], max_epochs=1, enable_checkpointing=False)
    trainer.fit(module, TinyDataModule())
    assert guard.skipped == 1 and trainer.global_step == BATCHES_PER_EPOCH
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_nan_guard_never_writes_non_finite_weights():
    module = TinyModule()

    class Stub:
        current_epoch, global_step, checkpoint_callback = 2, 17, None

    with pytest.raises(TrainingDiverged, match="weight 'head.bias' is not finite at epoch 2, step 17"):
        NaNGuard().on_save_checkpoint(
            Stub(), module, {"state_dict": {"head.bias": torch.tensor([float("inf")])}}
        )


def test_diverging_cli_run_exits_non_zero_with_one_line(tmp_path):
    """The issue's command: lr 1e30 on the tiny config used to finish with exit 0 and val/mse nan."""
    command = tgm_command(
        "fit",
        TINY,
        CSV,
        args=[
            "--model.init_args.lr",
            "1e30",
            *run_folders(tmp_path),
        ],
    )
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 3, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if "diverged" in line]
    assert len(lines) == 1 and lines[0].startswith("tgm: training diverged: non-finite loss"), result.stderr
    assert "epoch 0, step 1, batch 1" in lines[0]


def test_resume_checkpoint_is_the_one_lightning_picks(tmp_path, monkeypatch):
    from common.cli import resume_checkpoint

    (tmp_path / "ckpt").mkdir()
    for name in ("hpc_ckpt_2.ckpt", "hpc_ckpt_10.ckpt", "ckpt/last.ckpt", "ckpt/last-v1.ckpt"):
        (tmp_path / name).write_bytes(b"")
    os.utime(tmp_path / "ckpt" / "last-v1.ckpt", (1, 1))  # last.ckpt is the newest last*.ckpt
    assert resume_checkpoint("last", str(tmp_path / "ckpt"), str(tmp_path)) == tmp_path / "ckpt" / "last.ckpt"
    assert resume_checkpoint("last", None, str(tmp_path)) is None
    assert (
        resume_checkpoint(str(tmp_path / "ckpt" / "last-v1.ckpt"), None, None)
        == tmp_path / "ckpt" / "last-v1.ckpt"
    )
    monkeypatch.delenv("SLURM_NTASKS", raising=False)
    assert resume_checkpoint(None, None, str(tmp_path)) is None  # not under SLURM: a fresh run
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_JOB_NAME", "tgm")
    assert resume_checkpoint(None, None, str(tmp_path)) == tmp_path / "hpc_ckpt_10.ckpt"  # the requeued job


def test_checkpoints_from_plain_model_checkpoint_still_resume():
    """LatestCheckpoint keeps ModelCheckpoint's state key: older checkpoints restore best/last paths."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    kwargs = {"monitor": "val/mse", "mode": "max", "every_n_train_steps": 4}
    assert LatestCheckpoint(**kwargs).state_key == ModelCheckpoint(**kwargs).state_key
    assert LatestCheckpoint(**kwargs).state_key.startswith("ModelCheckpoint{")


def measured_mse(path: Path) -> float:
    """val/mse of the weights stored in ``path``, measured again on the tiny validation set."""
    module = TinyModule()
    module.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["state_dict"])
    x, y = TinyDataModule()._dataset(1).tensors
    with torch.no_grad():
        return float(torch.nn.functional.mse_loss(module(x), y))


def test_step_saves_keep_best_files_true_to_their_scores(tmp_path):
    """every_n_train_steps=6 with validations at steps 8, 16, 24: Lightning ranked the step saves (12, 18) with
    the previous validation's score, so epoch002.ckpt held step-18 weights tagged with the step-16 score. Every
    best file must hold the weights its score was measured on, and each validation's weights get ranked."""
    checkpoint = LatestCheckpoint(
        dirpath=tmp_path / "ckpt",
        monitor="val/mse",
        save_top_k=-1,
        save_last=True,
        every_n_train_steps=6,
        filename="epoch{epoch:03d}",
        auto_insert_metric_name=False,
    )
    trainer_with(tmp_path, [checkpoint], max_epochs=3).fit(TinyModule(), TinyDataModule())
    assert sorted(saved_step(Path(path)) for path in checkpoint.best_k_models) == [8, 16, 24]
    for path, score in checkpoint.best_k_models.items():
        assert float(score) == pytest.approx(measured_mse(Path(path)), rel=1e-5), path


def test_time_interval_saves_are_ranked_at_the_next_validation(tmp_path):
    """A save every batch (train_time_interval 0 s) ranks nothing itself: the best file is a validation's."""
    checkpoint = LatestCheckpoint(
        dirpath=tmp_path / "ckpt",
        monitor="val/mse",
        mode="max",  # the metric falls, so the first validation stays best
        save_last=True,
        train_time_interval=timedelta(seconds=0),
    )
    trainer_with(tmp_path, [checkpoint], max_epochs=2).fit(TinyModule(), TinyDataModule())
    best = Path(checkpoint.best_model_path)
    assert saved_step(best) == 8
    assert float(checkpoint.best_model_score) == pytest.approx(measured_mse(best), rel=1e-5)


def test_last_ckpt_links_the_best_file_when_they_are_the_same_state(tmp_path):
    """val/mse improves every epoch: last.ckpt and the best file are the same state, stored once (a hard link);
    --ckpt_path last resumes from it and --ckpt_path best finds the best file."""
    fit(tmp_path, "--trainer.max_epochs", "2")
    last, best = tmp_path / "ckpt" / "last.ckpt", tmp_path / "ckpt" / "epoch001.ckpt"
    assert os.path.samefile(last, best)
    resumed = fit(tmp_path, "--trainer.max_epochs", "3", "--ckpt_path", "last")
    assert resumed.trainer.global_step == 3 * BATCHES_PER_EPOCH
    assert os.path.samefile(last, tmp_path / "ckpt" / "epoch002.ckpt")
    assert not best.exists()  # top-1: the older best file went, last.ckpt kept its own name
    validated = run_cli(
        ["validate", "--config", TINY, "--config", CSV, *run_folders(tmp_path), "--ckpt_path", "best"]
    )
    assert validated.trainer.ckpt_path == str(tmp_path / "ckpt" / "epoch002.ckpt")


def test_rewriting_last_ckpt_leaves_the_linked_best_file_alone(tmp_path):
    """mode=max: epoch 0 stays best and last.ckpt starts as its link; the later full saves of last.ckpt must
    replace the link, not write through it into epoch000.ckpt."""
    checkpoint = LatestCheckpoint(
        dirpath=tmp_path / "ckpt", monitor="val/mse", mode="max", save_last=True, filename="best"
    )
    probe = LastCkptProbe(tmp_path / "ckpt" / "last.ckpt")
    trainer_with(tmp_path, [checkpoint, probe], max_epochs=3).fit(TinyModule(), TinyDataModule())
    assert probe.steps == [8, 16]
    assert saved_step(tmp_path / "ckpt" / "best.ckpt") == 8
    assert saved_step(tmp_path / "ckpt" / "last.ckpt") == 24
    assert not os.path.samefile(tmp_path / "ckpt" / "best.ckpt", tmp_path / "ckpt" / "last.ckpt")


def test_link_or_copy_falls_back_to_a_symlink(tmp_path, monkeypatch):
    from common.callbacks.checkpoint import link_or_copy

    source = tmp_path / "best.ckpt"
    source.write_bytes(b"state")
    (tmp_path / "last.ckpt").write_bytes(b"old")

    def no_hard_links(*args, **kwargs):
        raise OSError("hard links not supported here")

    monkeypatch.setattr(os, "link", no_hard_links)
    assert link_or_copy(source, tmp_path / "last.ckpt") == "symlink"
    assert (tmp_path / "last.ckpt").read_bytes() == b"state" and (tmp_path / "last.ckpt").is_symlink()


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--trainer.max_steps", "4"], "written at epoch 0, step 4, before any validation had measured"),
        (["--checkpoint.save_top_k", "0"], "or with checkpoint.save_top_k 0"),
    ],
)
def test_ckpt_path_best_without_a_best_file_says_why(tmp_path, extra, expected):
    """The old message asked "is checkpoint.monitor set?" although it was: the run had stopped before its
    first validation."""
    from common.cli import best_checkpoint
    from common.errors import InputError

    fit(tmp_path, "--trainer.max_epochs", "1", *extra)
    with pytest.raises(InputError, match="records no best checkpoint") as error:
        best_checkpoint(str(tmp_path / "ckpt"))
    assert expected in str(error.value) and "--ckpt_path last" in str(error.value)


def test_sigterm_inside_a_long_validation_batch_saves_and_resumes(tmp_path):
    """A validation batch that takes minutes (diffusion sampling) checks trainer.received_sigterm between its
    steps and raises SIGTERMException: tgm must still write last.ckpt, exit 143 with its one line, and the resumed
    run must finish with every epoch validated once more from where it stopped."""
    module = tmp_path / "module.yaml"
    module.write_text(
        "model:\n  class_path: tests.helpers.tiny.SlowValidationTinyModule\n"
        "  init_args: {sigterm_epoch: 1, sigterm_batch: 1}\n"
    )
    command = tgm_command(
        "fit", TINY, CSV, str(module), args=[*run_folders(tmp_path), "--trainer.max_epochs", "3"]
    )
    stopped = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert stopped.returncode == 143, stopped.stderr[-2000:]
    assert "Traceback" not in stopped.stderr
    assert "tgm: stopped by SIGTERM after saving last.ckpt" in stopped.stderr
    assert saved_step(tmp_path / "ckpt" / "last.ckpt") == 2 * BATCHES_PER_EPOCH  # epoch 1's training is kept
    resumed = fit(
        tmp_path, "--trainer.max_epochs", "3", "--ckpt_path", "last",
        "--model", "tests.helpers.tiny.SlowValidationTinyModule", "--model.init_args.sigterm_epoch", "-1",
    )  # fmt: skip
    assert resumed.trainer.global_step == 3 * BATCHES_PER_EPOCH
    with open(tmp_path / "csv" / "default" / "version_0" / "metrics.csv", newline="") as file:
        epochs = [int(row["epoch"]) for row in csv.DictReader(file) if row.get("val/mse")]
    assert epochs == [0, 1, 2]  # epoch 1's validation, interrupted, ran again after the resume
