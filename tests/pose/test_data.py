"""PoseDataModule at real size (issue 21) and one counter convention per split (issue 23): each split is parsed
once into memory-mapped arrays that ``setup`` only opens; a split mixing 0- and 1-based counters is one line."""

from __future__ import annotations

import os

import numpy as np
import pytest

import projects.pose.data as pose_data
from common.errors import InputError
from projects.pose.data import PoseDataModule
from projects.pose.formats import progress_counter, read_split, write_split
from tests.pose.pt_fixture import write_pt_split

TRG = 6


def datamodule(tmp_path, **kwargs) -> PoseDataModule:
    return PoseDataModule(
        train=str(tmp_path / "train"),
        dev=str(tmp_path / "dev"),
        test=None,
        src="gloss",
        trg_size=TRG,
        lowercase=False,
        punctuation="whitespace",
        fasttext_dim=8,
        fasttext_epochs=1,
        cache_dir=str(tmp_path / "prep"),
        **kwargs,
    )


def test_one_off_convention_line_is_one_error_naming_file_and_line(tmp_path):
    """Issue 23: one dev line whose first counter is 0.0001 among 0-based lines used to switch the whole split
    to 1-based handling (a different DTW) without a word."""
    write_pt_split(tmp_path / "train", [12, 15, 20], TRG, seed=1)
    write_pt_split(tmp_path / "dev", [11, 14, 30, 13], TRG, seed=2)
    lines = (tmp_path / "dev.skels").read_text().splitlines()
    values = lines[2].split(" ")
    values[TRG] = "0.0001"  # frame 0's counter of line 3
    lines[2] = " ".join(values)
    (tmp_path / "dev.skels").write_text("\n".join(lines) + "\n")
    dm = datamodule(tmp_path)
    with pytest.raises(
        InputError, match=r"dev.skels:3: the first counter is 0.0001, but 3 of 4 sequences"
    ) as error:
        dm.prepare_data()
    assert "\n" not in str(error.value)
    with pytest.raises(InputError, match=r"dev.skels:3: "):  # setup alone says the same
        datamodule(tmp_path).setup("validate")
    # a 1-based split with one 0-based line: that line is named
    ones = [np.concatenate([np.ones((n, TRG)), progress_counter(n)[:, None]], 1) for n in (5, 6, 7)]
    ones[0][:, -1] = progress_counter(5, zero_based=True)
    write_split(tmp_path / "dev", ["A", "B", "C"], ones, ["a", "b", "c"], src="gloss")
    with pytest.raises(InputError, match=r"dev.skels:1: the first counter is 0, but 1 of 3"):
        datamodule(tmp_path).setup("validate")
    # an explicit convention is the user's word: no check
    dm = datamodule(tmp_path, counter="one_based")
    dm.setup("validate")
    assert not dm.datasets["dev"].zero_based


def test_prepare_parses_once_and_setup_only_opens_memory_maps(tmp_path, monkeypatch):
    train = write_pt_split(tmp_path / "train", [12, 15, 20, 9], TRG, seed=1)
    dev = write_pt_split(tmp_path / "dev", [11, 14, 30], TRG, seed=2)
    calls = []
    original = pose_data.iter_split

    def counting(prefix, *args, **kwargs):
        calls.append(os.path.basename(str(prefix)))
        return original(prefix, *args, **kwargs)

    monkeypatch.setattr(pose_data, "iter_split", counting)
    dm = datamodule(tmp_path, skip_frames=2)
    dm.prepare_data()
    assert sorted(calls) == ["dev", "train"]  # each split parsed once, the training split included
    dm.setup("fit")
    assert sorted(calls) == ["dev", "train"]  # setup parsed nothing
    assert isinstance(dm.datasets["train"].arrays.frames, np.memmap)
    # a warm launch: a fresh data module parses nothing either
    warm = datamodule(tmp_path, skip_frames=2)
    warm.prepare_data()
    warm.setup("fit")
    assert len(calls) == 2
    for split, sequences in (("train", train), ("dev", dev)):
        expected = read_split(tmp_path / split, TRG, src="gloss", skip_frames=2)
        dataset = warm.datasets[split]
        assert dataset.zero_based and dataset.texts == [e.text for e in expected]
        for index, example in enumerate(expected):
            start, targets = dataset.start_and_targets(index)
            np.testing.assert_array_equal(start, example.frames[0])
            np.testing.assert_array_equal(targets, example.frames[1:])
            np.testing.assert_allclose(example.frames, sequences[index][::2], atol=1e-6)
    batch = next(iter(warm.train_dataloader()))
    assert batch["frames"].shape[-1] == TRG + 1
    # a changed file (size or modification time) is parsed again, the other split is not
    write_pt_split(tmp_path / "dev", [11, 14], TRG, seed=3)
    again = datamodule(tmp_path, skip_frames=2)
    again.setup("validate")
    assert calls[2:] == ["dev"] and len(again.datasets["dev"]) == 2


def test_statistics_match_the_whole_split_in_memory(tmp_path):
    """The prepared mean pose, start pose and end gap, computed one memory-mapped sequence at a time, equal the
    figures over the whole training split held in memory (as before)."""
    import torch

    train = write_pt_split(tmp_path / "train", [12, 15, 20, 25], TRG, seed=1)
    write_pt_split(tmp_path / "dev", [11], TRG, seed=2)
    dm = datamodule(tmp_path)
    dm.prepare_data()
    prepared = torch.load(dm.prepared_path, weights_only=True)
    frames = [np.float32(s) for s in train]
    np.testing.assert_allclose(
        prepared["mean_pose"].numpy(), np.concatenate([f[1:] for f in frames])[:, :-1].mean(0), rtol=1e-5
    )
    np.testing.assert_allclose(
        prepared["start_pose"].numpy(), np.stack([f[0] for f in frames]).mean(0), rtol=1e-5
    )
    assert prepared["counter_end_gap"] == pytest.approx(1.0) and prepared["zero_based"]


def test_statistics_of_one_based_data_count_only_the_kept_training_pairs(tmp_path):
    import torch

    rng = np.random.default_rng(0)
    sequences = [
        np.concatenate([rng.normal(size=(n, TRG)), progress_counter(n)[:, None]], 1).astype(np.float32)
        for n in (4, 9, 6)
    ]
    write_split(
        tmp_path / "train", ["A B", "C", "D E"], sequences, ["a", "b", "c"], src="gloss", decimals=None
    )
    write_split(tmp_path / "dev", ["A"], sequences[:1], ["a"], src="gloss")
    dm = datamodule(tmp_path, max_sent_length=8)  # drops the 9-frame pair
    dm.prepare_data()
    prepared = torch.load(dm.prepared_path, weights_only=True)
    kept = [sequences[0], sequences[2]]
    np.testing.assert_allclose(prepared["mean_pose"].numpy(), np.concatenate(kept)[:, :-1].mean(0), rtol=1e-6)
    assert not prepared["start_pose"].any() and not prepared["zero_based"]
    assert prepared["counter_end_gap"] == pytest.approx(0.0, abs=1e-6)


def test_parse_holds_one_sequence_not_the_split(tmp_path):
    """Issue 21: memory while preparing must not grow with the data (the former reader held whole files and every
    parsed sequence: 3.3x the file). 100 sequences of 80 frames are 4.8 MB as float32; the parse may hold about
    one line at a time."""
    import tracemalloc

    from projects.pose.data import write_split_arrays

    rng = np.random.default_rng(0)
    width = 151
    sequences = [
        np.concatenate(
            [rng.uniform(-1, 1, (80, width - 1)), progress_counter(80, zero_based=True)[:, None]], 1
        )
        for _ in range(100)
    ]
    write_split(tmp_path / "big", ["a b"] * 100, sequences, [f"n{i}" for i in range(100)])
    folder = tmp_path / "arrays"
    folder.mkdir()
    tracemalloc.start()
    write_split_arrays(folder, str(tmp_path / "big"), width - 1, "text", "skels", "files", 1, "auto", [])
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert (folder / "frames.f32").stat().st_size == 100 * 80 * width * 4
    assert peak < 2_000_000, f"peak {peak / 1e6:.1f} MB while parsing 4.8 MB of frames"
