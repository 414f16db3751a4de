"""Issue 21 (pose): the Progressive Transformer at the original Base.yaml size builds from
``configs/pose/default.yaml + configs/pose/base.yaml`` and runs two training steps, one validation batch and one
prediction. Slow (``make test-slow``); it prints parameters, peak RSS and seconds per step for the README.

    PYTHONPATH=. .venv/bin/python -m pytest tests/pose/test_real_size.py -m slow -s
"""

from __future__ import annotations

import resource
import time

import pytest
import yaml
from lightning.pytorch.callbacks import Callback

from common.cli import run_cli
from projects.pose.formats import read_split

BATCH = 8  # the original's batch_size


class StepTimer(Callback):
    """Wall seconds of each training batch (forward, backward, optimiser step)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.seconds.append(time.perf_counter() - self._start)


def expected_parameters(hidden: int, ff: int, layers: int, trg: int, vocab: int, fasttext: int) -> int:
    """The Base.yaml model counted by hand: pre-LN encoder/decoder layers, frame embedding, output, source side."""
    linear = lambda i, o: i * o + o  # noqa: E731
    attention = 4 * linear(hidden, hidden)
    norm = 2 * hidden
    encoder = layers * (attention + linear(hidden, ff) + linear(ff, hidden) + 2 * norm) + norm
    decoder = layers * (2 * attention + linear(hidden, ff) + linear(ff, hidden) + 3 * norm) + norm
    frames = linear(trg + 1, hidden) + linear(hidden, trg + 1)  # future_prediction 5 widens the output below
    source = vocab * fasttext + linear(fasttext, hidden)
    return encoder + decoder + frames + source


@pytest.mark.slow
def test_base_size_fits_validates_and_predicts(tmp_path, capsys):
    synthetic = {"num_train": 16, "num_dev": 8, "num_test": 2, "num_words": 8, "min_words": 2, "max_words": 3}
    overlay = {
        "data": {
            "init_args": {
                "train": str(tmp_path / "data" / "train"),
                "dev": str(tmp_path / "data" / "dev"),
                "test": str(tmp_path / "data" / "test"),
                "cache_dir": str(tmp_path / "prepared"),
                "fasttext_epochs": 2,
                "synthetic": {**synthetic, "seed": 5, "align": 2},
            }
        },
        "model": {"init_args": {"backtranslation": {"enabled": True, "epochs": 2}}},
        "trainer": {
            "max_steps": 2,
            "limit_val_batches": 1,
            "num_sanity_val_steps": 0,
            "check_val_every_n_epoch": 1,
            "logger": False,
            "enable_progress_bar": False,
            "default_root_dir": str(tmp_path),
            "callbacks": [
                {
                    "class_path": "projects.pose.writer.PosePredictionWriter",
                    "init_args": {"output_dir": str(tmp_path / "predictions")},
                },
                {"class_path": "tests.pose.test_real_size.StepTimer"},
            ],
        },
        "checkpoint": {"dirpath": str(tmp_path / "checkpoints")},
    }
    path = tmp_path / "overlay.yaml"
    path.write_text(yaml.safe_dump(overlay))
    configs = [
        "--config",
        "configs/pose/default.yaml",
        "--config",
        "configs/pose/base.yaml",
        "--config",
        str(path),
    ]
    started = time.perf_counter()
    cli = run_cli(["fit", *configs])
    fit_seconds = time.perf_counter() - started
    module, trainer = cli.model, cli.trainer
    assert trainer.global_step == 2
    assert (
        module.net.trg_embed.out_features == 512
        and module.net.decoder_layers[0].feed_forward[0].out_features == 2048
    )
    parameters = sum(p.numel() for p in module.parameters())
    future = module.net.future_frames  # extra output rows for the future frames (default recipe: 5)
    expected = expected_parameters(
        512, 2048, 2, 150, len(module.vocab.itos), module.net.src_embed.embedding_dim
    )
    assert parameters == expected + (future - 1) * 150 * 513
    assert "val/dtw_pt_l1_ref_len" in trainer.callback_metrics
    assert "val/dtw_pt_l1_ref_len_pt_protocol" in trainer.callback_metrics
    (timer,) = [c for c in trainer.callbacks if isinstance(c, StepTimer)]

    sentences = tmp_path / "sentences.txt"
    sentences.write_text("Merhaba okul.\n", encoding="utf-8")
    last = tmp_path / "checkpoints" / "last.ckpt"
    started = time.perf_counter()
    run_cli(["predict", *configs, "--ckpt_path", str(last), "--data.init_args.predict_file", str(sentences)])
    predict_seconds = time.perf_counter() - started
    (written,) = read_split(tmp_path / "predictions" / "predict", trg_size=150)
    assert written.text == "Merhaba okul." and len(written.frames) >= 1

    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with capsys.disabled():
        print(
            f"\npose Base size: {parameters / 1e6:.2f} M parameters; training steps at batch {BATCH}: "
            + ", ".join(f"{s:.2f}" for s in timer.seconds)
            + f" s; fit (prepare, 2 steps, 1 validation batch) {fit_seconds:.1f} s; predict {predict_seconds:.1f} s;"
            f" peak RSS of this process {peak_rss_mb:.0f} MB; checkpoint {last.stat().st_size / 1e6:.0f} MB"
        )
