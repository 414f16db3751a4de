"""Issue 22: back-translation. A small pose -> text recogniser trained on the training split's reference poses
reads dev poses back into words; its BLEU-4 is logged for the produced poses and, as the ceiling, for the
reference poses. It must read references well and must not read a motionless (mean-pose) or wrong sentence."""

from __future__ import annotations

import pytest
import torch

from common.metrics.bleu import CorpusBLEU
from projects.pose.backtranslation import BackTranslation, BackTranslator, train_backtranslator
from projects.pose.data import PoseDataModule
from projects.pose.module import PoseModule, words_of
from tests.pose.pt_fixture import pt_datamodule, quiet_trainer, tiny_module


def split(dm: PoseDataModule, name: str) -> tuple[list[torch.Tensor], list[list[str]]]:
    dataset = dm.datasets[name]
    items = [dataset[i] for i in range(len(dataset))]
    return [torch.from_numpy(item["frames"]) for item in items], [words_of(item["tokens"]) for item in items]


def bleu4(translator: BackTranslator, sequences: list[torch.Tensor], words: list[list[str]]) -> float:
    metric = CorpusBLEU(max_n=4)
    metric.update(translator.read(sequences), [[" ".join(w)] for w in words])
    return float(metric.compute()["bleu4"])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("bt")
    synthetic = {
        "num_train": 60,
        "num_dev": 16,
        "num_test": 2,
        "num_words": 8,
        "min_words": 3,
        "max_words": 4,
    }
    dm = PoseDataModule(
        train=str(root / "train"),
        dev=str(root / "dev"),
        test=None,
        skip_frames=2,
        fasttext_dim=8,
        fasttext_epochs=1,
        cache_dir=str(root / "p"),
        synthetic={**synthetic, "seed": 3, "align": 2},
    )
    dm.prepare_data()
    dm.setup("fit")
    train, dev = split(dm, "train"), split(dm, "dev")
    threads = torch.get_num_threads()  # module scope: before the autouse one-thread fixture applies
    torch.set_num_threads(1)
    try:
        translator = train_backtranslator(*train, BackTranslation(enabled=True, epochs=20))
    finally:
        torch.set_num_threads(threads)
    return translator, dev


def test_recogniser_reads_reference_poses(corpus):
    translator, (sequences, words) = corpus
    assert bleu4(translator, sequences, words) > 0.8  # dev word combinations never occur in training


def test_recogniser_does_not_read_motionless_or_wrong_poses(corpus):
    translator, (sequences, words) = corpus
    mean = torch.cat([s[:, :-1] for s in sequences]).mean(0)
    motionless = [torch.cat([mean.expand(len(s), -1), s[:, -1:]], dim=1) for s in sequences]
    assert bleu4(translator, motionless, words) < 0.05
    assert bleu4(translator, sequences[1:] + sequences[:1], words) < 0.3  # each read against another sentence


def test_module_logs_backtranslation_bleu_and_keeps_the_recogniser(tmp_path):
    dm, _, _ = pt_datamodule(tmp_path, [12, 15, 20, 25], [11, 14], 6, eval_batch_size=2)
    module = tiny_module(dm, 6, backtranslation={"enabled": True, "epochs": 2})
    trainer = quiet_trainer(max_epochs=1, default_root_dir=str(tmp_path))
    trainer.fit(module, dm)
    logged = trainer.validate(module, dm, verbose=False)[0]
    for key in ("val/backtranslation_bleu4", "val/backtranslation_bleu4_reference"):
        assert 0.0 <= logged[key] <= 1.0
    # the recogniser travels in the checkpoint: a loaded model reads exactly as the trained one
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    loaded = PoseModule.load_from_checkpoint(path, weights_only=True)
    frames = [torch.from_numpy(dm.datasets["dev"][i]["frames"]) for i in range(2)]
    assert loaded._backtranslator.read(frames) == module._backtranslator.read(frames)
    assert not any(name.startswith("_backtranslator") for name in loaded.state_dict())
