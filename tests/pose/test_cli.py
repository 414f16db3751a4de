"""End to end through ``tgm``: fit the tiny config, then predict sentences and read the ``.skels`` back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from common.cli import run_cli
from projects.pose.data import PoseDataModule
from projects.pose.formats import read_split
from projects.pose.generate import generate_corpus
from tests.helpers import run_folders

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "configs" / "pose" / "tiny.yaml")
CSV = str(ROOT / "configs" / "logger" / "csv.yaml")


def common_args(tmp_path: Path) -> list[str]:
    data = tmp_path / "data"
    return [
        "--config",
        TINY,
        "--config",
        CSV,
        *run_folders(tmp_path),
        "--data.init_args.train",
        str(data / "train"),
        "--data.init_args.dev",
        str(data / "dev"),
        "--data.init_args.test",
        str(data / "test"),
        "--data.init_args.cache_dir",
        str(tmp_path / "prepared"),
    ]


def test_fit_then_predict_round_trip(tmp_path):
    cli = run_cli(["fit", *common_args(tmp_path), "--trainer.max_epochs", "2"])
    trainer = cli.trainer
    assert trainer.state.finished and trainer.global_step > 0
    metrics = trainer.callback_metrics
    for key in ("val/dtw_pt_l1_ref_len", "val/dtw_l2_path_len", "val/dtw_pt_l1_ref_len_mean_pose_baseline"):
        assert key in metrics and torch.isfinite(metrics[key]), key
    summary = json.loads(next(tmp_path.glob("csv/**/metric_summary.json")).read_text())
    assert "val/dtw_pt_l1_ref_len" in summary["before"] and "val/dtw_pt_l1_ref_len" in summary["after"]
    assert summary["after"]["val/loss"] < summary["before"]["val/loss"]  # a training step happened and helped
    # skeleton videos of prediction vs reference were written by the MediaLogger
    videos = list(tmp_path.glob("csv/**/media/epoch_*/skeleton_dev_0.gif"))
    assert videos, "no skeleton video written"
    checkpoint = tmp_path / "ckpt" / "last.ckpt"
    assert checkpoint.is_file()
    vocab, steps = list(cli.model.vocab.itos), trainer.global_step
    stds = cli.model.out_stds.clone()
    assert stds.gt(0).all()  # gaussian_noise: last epoch's per-joint error std, used as noise scale

    # --ckpt_path last resumes: vocabulary, noise statistics and step count come back from the checkpoint
    resumed = run_cli(
        [
            "fit",
            *common_args(tmp_path),
            "--trainer.max_epochs",
            "3",
            "--ckpt_path",
            "last",
            "--trainer.limit_train_batches",
            "1",
        ]
    )
    assert resumed.model.vocab.itos == vocab
    assert resumed.trainer.global_step == steps + 1
    checkpoint = tmp_path / "ckpt" / "last.ckpt"

    sentences = tmp_path / "sentences.txt"
    sentences.write_text("Merhaba ben.\nİyi okul\nbilinmeyen kelime\n", encoding="utf-8")
    out = tmp_path / "predictions"
    run_cli(
        [
            "predict",
            *common_args(tmp_path),
            "--ckpt_path",
            str(checkpoint),
            "--data.init_args.predict_file",
            str(sentences),
            "--trainer.callbacks.init_args.output_dir",
            str(out),
        ]
    )
    examples = read_split(out / "predict", trg_size=150)
    assert [e.text for e in examples] == ["Merhaba ben.", "İyi okul", "bilinmeyen kelime"]
    for example in examples:
        assert (
            example.frames.shape[1] == 151 and 2 <= len(example.frames) <= 31
        )  # PT format: the start frame, then up to 30 predicted
        assert np.isfinite(example.frames).all()
    assert len(list((out / "videos").glob("*.gif"))) == 3
    # test split: DTW of the progressive decoder and the mean-pose baseline, under test/
    cli = run_cli(["test", *common_args(tmp_path), "--ckpt_path", str(checkpoint)])
    test_metrics = cli.trainer.callback_metrics
    assert test_metrics["test/dtw_pt_l1_ref_len_mean_pose_baseline"] > 0
    assert torch.isfinite(test_metrics["test/dtw_pt_l1_ref_len"])
    # and the data module reads the written split as a dev set
    dm = PoseDataModule(train=str(tmp_path / "data" / "train"), dev=str(out / "predict"), trg_size=150)
    dm.setup("validate")
    assert len(dm.datasets["dev"]) == 3


def test_synthetic_corpus_is_deterministic_and_reused(tmp_path):
    settings = {
        "num_train": 6,
        "num_dev": 2,
        "num_test": 2,
        "num_words": 6,
        "min_words": 1,
        "max_words": 3,
        "seed": 5,
        "align": 2,
    }
    generate_corpus(tmp_path / "a", **settings)
    generate_corpus(tmp_path / "b", **settings)
    for ext in ("text", "skels", "files"):
        assert (tmp_path / "a" / f"train.{ext}").read_bytes() == (
            tmp_path / "b" / f"train.{ext}"
        ).read_bytes()
    stamp = (tmp_path / "a" / "train.skels").stat().st_mtime_ns
    generate_corpus(tmp_path / "a", **settings)  # manifest matches: nothing rewritten
    assert (tmp_path / "a" / "train.skels").stat().st_mtime_ns == stamp
    train = read_split(tmp_path / "a" / "train", 150)
    dev = read_split(tmp_path / "a" / "dev", 150)
    assert {e.text for e in train}.isdisjoint({e.text for e in dev})
    for example in train:
        counter = example.frames[:, -1]
        assert counter[-1] == 1.0 and (np.diff(counter) > 0).all()
        assert (len(example.frames) - 1) % 2 == 0  # align=2: skip_frames=2 keeps the final frame
    # joints move: every sequence is a motion, not a still pose
    assert all(np.abs(np.diff(e.frames[:, :-1], axis=0)).sum() > 1.0 for e in train)
