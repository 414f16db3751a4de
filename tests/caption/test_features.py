"""The CLIP feature cache: a hit does not run CLIP; changed images or changed weights invalidate it."""

from __future__ import annotations

import os

import pytest
import torch
from PIL import Image
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from projects.caption import features as feats
from projects.caption.features import BadImageError, ClipImageEncoder, Preprocess, cached_features
from tests.caption.conftest import TINY_CLIP


def encoder(seed: int = 0) -> ClipImageEncoder:
    torch.manual_seed(seed)
    return ClipImageEncoder(CLIPVisionModelWithProjection(CLIPVisionConfig(**TINY_CLIP)), "tiny")


@pytest.fixture
def images(tmp_path):
    paths = []
    for k in range(3):
        path = tmp_path / f"{k}.png"
        Image.new("RGB", (40, 32), (60 * k, 100, 200 - 50 * k)).save(path)
        paths.append(path)
    return paths


@pytest.fixture
def counted(monkeypatch):
    calls = []
    real = feats.encode_images

    def spy(paths, enc, *args, **kwargs):
        calls.append(len(paths))
        return real(paths, enc, *args, **kwargs)

    monkeypatch.setattr(feats, "encode_images", spy)
    return calls


def test_hit_reads_the_same_features_without_running_clip(tmp_path, images, counted):
    enc = encoder()
    first, hit = cached_features(images, enc, tmp_path / "cache")
    assert not hit and counted == [3] and first.shape == (3, 16)
    second, hit = cached_features(images, enc, tmp_path / "cache")
    assert hit and counted == [3]  # no second CLIP pass
    torch.testing.assert_close(first, second)
    direct = enc(torch.stack([enc.preprocess(Image.open(p).convert("RGB")) for p in images]))
    torch.testing.assert_close(first, direct)


def test_changed_image_set_or_file_invalidates(tmp_path, images, counted):
    enc = encoder()
    cached_features(images, enc, tmp_path / "cache")
    cached_features(images[:2], enc, tmp_path / "cache")  # a different image list
    assert counted == [3, 2]
    Image.new("RGB", (40, 32), (0, 0, 0)).save(images[0])  # same name, new content
    stat = os.stat(images[0])
    os.utime(images[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    changed, hit = cached_features(images, enc, tmp_path / "cache")
    assert not hit and counted == [3, 2, 3]
    assert len(list((tmp_path / "cache").glob("clip_features-*"))) == 3


def test_changed_weights_or_preprocessing_invalidates(tmp_path, images, counted):
    a, b = encoder(seed=0), encoder(seed=1)
    features_a, _ = cached_features(images, a, tmp_path / "cache")
    features_b, hit = cached_features(images, b, tmp_path / "cache")
    assert not hit and not torch.allclose(features_a, features_b)
    a.preprocess = Preprocess(image_size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    _, hit = cached_features(images, a, tmp_path / "cache")
    assert not hit and counted == [3, 3, 3]


def test_missing_image_is_a_clear_error(tmp_path, images):
    images[1].unlink()
    with pytest.raises(BadImageError, match="1.png"):
        cached_features(images, encoder(), tmp_path / "cache")


def test_encoder_stays_frozen_in_train_mode():
    enc = encoder()
    enc.train()
    assert not enc.training and not enc.clip.training
    assert not any(p.requires_grad for p in enc.parameters())
