"""Issue 21: preparation decodes each image once; a warm launch (and every other rank's ``setup``) decodes none,
loads no CLIP and memory-maps the features; CLIP runs on the trainer's device with DataLoader workers decoding."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from lightning.pytorch.trainer.states import TrainerFn

from projects.caption import data as caption_data
from projects.caption import features as feats
from projects.caption import readers
from projects.caption.data import CaptionDataModule
from tests.caption.test_data import datamodule, write_image


@pytest.fixture
def decodes(monkeypatch):
    """Counts image decodes (in this process; the tests use workers only where they say so)."""
    calls = []
    real = feats.load_rgb

    def counting(path):
        calls.append(str(path))
        return real(path)

    monkeypatch.setattr(feats, "load_rgb", counting)
    monkeypatch.setattr(readers, "load_rgb", counting, raising=False)  # where the old check decoded
    monkeypatch.setattr(readers, "_checked", {}, raising=False)  # and its per-process memo
    return calls


def test_cold_prepare_decodes_each_image_once_and_warm_launch_none(tmp_path, decodes, monkeypatch):
    dm = datamodule(tmp_path, batch_size=3, prepare_workers=0)
    dm.prepare_data()
    assert sorted(decodes) == sorted(str(tmp_path / "img" / f"{k}.png") for k in range(1, 7))  # once each
    dm.setup("fit")
    assert len(decodes) == 6  # same process: nothing again

    decodes.clear()

    def no_clip(self):
        raise AssertionError("a warm launch must not load CLIP")

    monkeypatch.setattr(CaptionDataModule, "encoder", no_clip)
    warm = CaptionDataModule(**dict(dm.hparams))  # a fresh process / another DDP rank
    warm.prepare_data()
    other_rank = CaptionDataModule(**dict(dm.hparams))  # a rank that only runs setup (Lightning's contract)
    for module in (warm, other_rank):
        module.setup("fit")
        batch = next(iter(module.train_dataloader()))
        assert batch["features"].shape == (3, 16)
        assert module.cache_hits == {"train": True, "val": True}
        assert isinstance(module._features["train"], np.memmap)  # one file, read through a memory map
    assert decodes == []


def test_a_changed_image_is_rescanned_and_a_bad_one_reported(tmp_path, decodes):
    dm = datamodule(tmp_path, prepare_workers=0)
    dm.prepare_data()
    (tmp_path / "img" / "3.png").write_bytes(b"not a png any more")
    decodes.clear()
    again = CaptionDataModule(**dict(dm.hparams))
    with pytest.raises(ValueError, match=r"unreadable image file.*3\.png"):
        again.prepare_data()
    assert len(decodes) == 4  # the training split's fingerprint changed: its 4 images; val is still cached
    write_image(tmp_path / "img" / "3.png", (10, 20, 30))
    fixed = CaptionDataModule(**dict(dm.hparams))
    fixed.prepare_data()
    fixed.setup("fit")
    assert len(fixed.records["train"]) == 4


def test_features_are_computed_on_the_trainers_device_with_workers(tmp_path, monkeypatch):
    seen = []
    real = feats.encode_images

    def spy(paths, encoder, batch_size, num_workers, device, out):
        seen.append((len(paths), batch_size, num_workers, device))
        return real(paths, encoder, batch_size, num_workers, "cpu", out)

    monkeypatch.setattr(feats, "encode_images", spy)
    device = torch.device("cuda", 3)  # stands for the trainer's accelerator; the spy runs it on the CPU
    dm = datamodule(tmp_path, prepare_workers=2, prepare_batch_size=3)
    dm.trainer = SimpleNamespace(
        state=SimpleNamespace(fn=TrainerFn.FITTING), strategy=SimpleNamespace(root_device=device)
    )
    dm.prepare_data()
    assert seen == [(4, 3, 2, device), (2, 3, 2, device)]
    assert dm._encoder is None  # dropped after preparation: it is not needed for training
    dm.trainer = None
    dm.setup("fit")
    pixels = torch.stack([dm.encoder().preprocess(feats.load_rgb(r.path)) for r in dm.records["train"]])
    torch.testing.assert_close(torch.from_numpy(np.array(dm._features["train"])), dm.encoder()(pixels))


def test_num_workers_default_depends_on_what_the_loader_reads(tmp_path):
    dm = datamodule(tmp_path)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.train_dataloader().num_workers == 0  # rows of a memory map: no decoding to spread
    pixels = CaptionDataModule(**(dict(dm.hparams) | {"use_feature_cache": False}))
    pixels.prepare_data()
    pixels.setup("fit")
    cores = caption_data.os.cpu_count() or 1
    assert pixels.train_dataloader().num_workers == min(4, max(cores - 1, 0))
