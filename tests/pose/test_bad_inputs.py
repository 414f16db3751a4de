"""Issue 11 for pose: non-UTF-8 files, damaged caches and empty splits end in one clear line or a rebuild."""

from __future__ import annotations

import numpy as np
import pytest

from common.errors import InputError
from projects.pose.data import PoseDataModule
from projects.pose.embeddings import train_fasttext
from projects.pose.formats import progress_counter, write_split

TRG = 6
CP1254 = "Işık ılık, öğretmen güzel.".encode("cp1254")  # Turkish text saved in the Windows code page


def frames(n: int) -> np.ndarray:
    return np.concatenate([np.zeros((n, TRG)), progress_counter(n)[:, None]], 1)


def corpus(tmp_path, texts=("okul ev", "su")):
    write_split(
        tmp_path / "train",
        list(texts),
        [frames(4 + i) for i in range(len(texts))],
        [f"n{i}" for i in range(len(texts))],
    )
    return PoseDataModule(
        train=str(tmp_path / "train"),
        dev=str(tmp_path / "train"),
        test=None,
        trg_size=TRG,
        fasttext_dim=8,
        fasttext_epochs=1,
        cache_dir=str(tmp_path / "prep"),
        predict_file=str(tmp_path / "in.txt"),
    )


@pytest.mark.parametrize("ext", ["text", "skels", "files"])
def test_non_utf8_split_files_name_file_and_line(tmp_path, ext):
    dm = corpus(tmp_path)
    path = tmp_path / f"train.{ext}"
    lines = path.read_bytes().split(b"\n")
    lines[1] = CP1254 if ext != "skels" else lines[1] + b" \xfe"
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(InputError, match=rf"train.{ext}:2: not UTF-8 \(byte 0x"):
        dm.setup("fit")


def test_non_utf8_predict_file_and_vocab_file(tmp_path):
    dm = corpus(tmp_path)
    (tmp_path / "in.txt").write_bytes(b"okul ev\n" + CP1254 + b"\n")
    with pytest.raises(InputError, match=r"in.txt:2: not UTF-8"):
        dm.setup("predict")
    (tmp_path / "vocab.txt").write_bytes(b"okul\n" + CP1254 + b"\n")
    dm.src_vocab = str(tmp_path / "vocab.txt")
    with pytest.raises(InputError, match=r"vocab.txt:2: not UTF-8"):
        dm.prepare_data()


@pytest.mark.parametrize("damage", ["truncated", "empty", "random"])
def test_damaged_fasttext_cache_is_rebuilt_with_one_warning(tmp_path, damage):
    sentences = [["okul", "ev"], ["su", "ev"]]
    first = train_fasttext(sentences, tmp_path, vector_size=8, epochs=1)
    (cache,) = tmp_path.glob("fasttext_*.model")
    data = cache.read_bytes()
    cache.write_bytes(
        {"truncated": data[: len(data) // 2], "empty": b"", "random": np.random.default_rng(0).bytes(500)}[
            damage
        ]
    )
    with pytest.warns(
        UserWarning, match=r"FastText cache .*fasttext_.*model could not be loaded.*rebuilding"
    ):
        again = train_fasttext(sentences, tmp_path, vector_size=8, epochs=1)
    np.testing.assert_allclose(again["okul"], first["okul"])  # deterministic: the same model again
    assert len(list(tmp_path.glob("fasttext_*.model"))) == 1


def test_damaged_prepared_cache_is_rebuilt(tmp_path):
    dm = corpus(tmp_path)
    dm.prepare_data()
    path = tmp_path / "prep" / dm.prepared_path.split("/")[-1]
    path.write_bytes(path.read_bytes()[:100])
    with pytest.warns(UserWarning, match="prepared data .* could not be loaded"):
        dm.prepare_data()
    import torch

    assert torch.load(path, weights_only=True)["vocab"][4:] == ["ev", "okul", "su"]


def test_empty_dev_split_is_one_clear_line(tmp_path):
    dm = corpus(tmp_path)
    for ext in ("text", "skels", "files"):
        (tmp_path / f"dev.{ext}").write_text("")
    dm.paths["dev"] = str(tmp_path / "dev")
    with pytest.raises(
        InputError, match=r"dev.text: the dev \(validation\) split is empty .*limit_val_batches: 0"
    ):
        dm.setup("fit")


def test_empty_train_split_is_one_clear_line_not_max_sent_length(tmp_path):
    dm = corpus(tmp_path)
    for ext in ("text", "skels", "files"):
        (tmp_path / f"train.{ext}").write_text("")
    with pytest.raises(InputError, match=r"train.text: the training split is empty") as error:
        dm.setup("fit")
    assert "max_sent_length" not in str(error.value)


def test_unknown_share_warning_at_training(tmp_path):
    """A vocabulary file whose tokens do not match the tokenisation (glosses vs lower-cased text) warns."""
    dm = corpus(tmp_path, texts=("OKUL EV", "SU"))
    (tmp_path / "vocab.txt").write_text("OKUL\nEV\nSU\n")
    dm.src_vocab = str(tmp_path / "vocab.txt")  # data.lowercase is on: every token becomes unknown
    with pytest.warns(UserWarning, match=r"3 of 3 source tokens \(100.0 %\) are not in the vocabulary"):
        dm.prepare_data()


@pytest.mark.parametrize("damage", ["meta.json", "frames.f32", "offsets.npy"])
def test_damaged_split_arrays_are_rebuilt_with_one_warning(tmp_path, damage):
    dm = corpus(tmp_path)
    dm.prepare_data()
    folder = dm.split_folder("train")
    path = folder / damage
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    fresh = corpus(tmp_path)
    with pytest.warns(UserWarning, match=r"prepared train split .*split_.* could not be loaded.*rebuilding"):
        fresh.setup("fit")
    assert len(fresh.datasets["train"]) == 2
    np.testing.assert_array_equal(fresh.datasets["train"][1]["frames"], frames(5))
