"""The judge: convergence on real handwriting, its own RNG, a cache key that covers data and settings, corrupt
caches rebuilt, the built-in digit mappings and the real-digits converter."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest
import torch

from projects.diffusion.data import CharacterDataModule
from projects.diffusion.idx import IDXError, read_idx, read_mapping, write_idx
from projects.diffusion.judge import (
    JudgeConfig,
    accuracy,
    augment,
    ensure_judge,
    load_judge,
    train_judge,
)
from tests.diffusion.real_fixture import FAST_JUDGE as FAST
from tests.diffusion.real_fixture import REAL


def test_judge_converges_on_real_handwriting(real_data, real_judge_run):
    """Trained by epochs on 400 real digits: > 0.85 on 120 digits of other writers (chance 0.1); the full real
    set (1438 images) reaches >= 0.95 with the default settings (README)."""
    net, best_step = real_judge_run
    assert accuracy(net, real_data.heldout_set) > 0.85
    assert 0 < best_step <= FAST.max_epochs * (360 // FAST.batch_size)  # 360 after the 10 % hold-out


def test_augmentation_keeps_background_and_moves_ink():
    images = -torch.ones(4, 1, 16, 16)
    images[:, :, 6:10, 6:10] = 1.0
    out = augment(images, JudgeConfig(), torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.min() >= -1 - 1e-6 and out.max() <= 1 + 1e-6
    assert (out[:, :, 0, :] == -1).all()  # borders stay background
    assert not torch.allclose(out, images)  # but the stroke moved / turned
    assert torch.equal(augment(images, JudgeConfig(), torch.Generator().manual_seed(0)), out)  # seeded


def test_judge_leaves_the_global_rng_untouched(real_data, tmp_path):
    """Training, caching and loading the judge draw nothing from the global RNG, so the diffusion run's random
    stream is the same whether the judge was trained in this process, loaded from the cache, or not used."""
    config = JudgeConfig(max_epochs=1, batch_size=32)
    path = tmp_path / "judge.pt"
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first, _ = ensure_judge(path, real_data.train_set, real_data.heldout_set, real_data.class_names, config)
    assert torch.equal(torch.get_rng_state(), state)  # trained here
    again, _ = ensure_judge(path, real_data.train_set, real_data.heldout_set, real_data.class_names, config)
    load_judge(path, real_data.class_names)
    assert torch.equal(torch.get_rng_state(), state)  # loaded from the cache
    retrained, _ = train_judge(real_data.train_set, 10, config, log=False)  # and it is deterministic
    for a, b, c in zip(
        first.state_dict().values(), again.state_dict().values(), retrained.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b) and torch.equal(a, c)


def test_cache_key_covers_data_classes_size_and_training_settings(tmp_path):
    shutil.copytree(REAL, tmp_path / "real")

    def path(**kwargs) -> str:
        args = {
            "data_dir": str(tmp_path / "real"),
            "source": "emnist",
            "split": "digits",
            "image_size": 16,
            "judge_cache_dir": str(tmp_path / "cache"),
            **kwargs,
        }
        return CharacterDataModule(**args).judge_path

    base = path()
    assert path() == base  # deterministic
    assert (
        path(judge={"max_epochs": 80}) != base
    )  # training settings (the bug: only data/classes/size counted)
    assert path(judge={"rotate_degrees": 5.0}) != base
    assert path(classes="0123") != base
    assert path(image_size=32) != base
    assert path(train_per_class=20) != base
    labels = tmp_path / "real" / "emnist-digits-train-labels-idx1-ubyte.gz"
    write_idx(labels, np.roll(read_idx(labels, 2049), 1))  # other data, same folder and file names
    assert path() != base
    assert path(judge_ckpt="my_judge.ckpt") == "my_judge.ckpt"


@pytest.mark.parametrize("damage", ["random", "truncated", "empty"])
def test_corrupt_judge_cache_is_rebuilt_with_one_warning(real_data, tmp_path, damage):
    config = JudgeConfig(max_epochs=1, batch_size=32, min_accuracy=0.0)
    path = tmp_path / "judge.pt"
    ensure_judge(path, real_data.train_set, real_data.heldout_set, real_data.class_names, config)
    good = path.read_bytes()
    path.write_bytes(
        {"random": bytes(range(256)) * 8, "truncated": good[: len(good) // 2], "empty": b""}[damage]
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        net, report = ensure_judge(
            path, real_data.train_set, real_data.heldout_set, real_data.class_names, config
        )
    messages = [str(w.message) for w in caught if "judge cache" in str(w.message)]
    assert len(messages) == 1 and str(path) in messages[0] and "rebuilding" in messages[0]
    assert load_judge(path, real_data.class_names)[1] == report  # rebuilt and loadable


def test_weak_judge_warns_loudly(real_data, tmp_path):
    config = JudgeConfig(max_epochs=1, batch_size=32, lr=1e-5, min_accuracy=0.95)
    with pytest.warns(UserWarning, match=r"UNRELIABLE"):
        _, report = ensure_judge(
            tmp_path / "j.pt", real_data.train_set, real_data.heldout_set, real_data.class_names, config
        )
    assert report.val_acc < 0.95 and report.num_heldout == 120 and report.num_train == 400


def test_fid_floor_is_recorded(real_data, tmp_path):
    _, report = ensure_judge(
        tmp_path / "j.pt",
        real_data.train_set,
        real_data.heldout_set,
        real_data.class_names,
        JudgeConfig(max_epochs=2, batch_size=32, min_accuracy=0.0),
    )
    assert report.fid_floor > 0 and report.steps > 0


def test_builtin_mapping_for_digits_and_mnist_only(tmp_path, capsys):
    for split in ("digits", "mnist"):
        assert read_mapping(tmp_path, split) == {k: str(k) for k in range(10)}
    assert capsys.readouterr().out.count("using the fixed EMNIST-") == 2  # one line each
    for split in ("letters", "balanced", "byclass", "bymerge"):
        with pytest.raises(IDXError, match=f"emnist-{split}-mapping.txt: file not found"):
            read_mapping(tmp_path, split)


def test_real_digits_fixture_is_what_the_converter_writes(tmp_path):
    pytest.importorskip("sklearn")
    from projects.diffusion.real_digits import write_real_digits

    write_real_digits(tmp_path, train_per_class=40, test_per_class=12)
    for file in REAL.iterdir():
        assert (tmp_path / file.name).read_bytes() == file.read_bytes(), file.name
