"""The Progressive Transformers file format: round trip, options and every bad-input case."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from projects.pose.data import PoseDataModule
from projects.pose.formats import PoseDataError, progress_counter, read_split, write_split
from projects.pose.vocabulary import Vocabulary, tokenize, turkish_lower

TRG = 6  # two 3D joints keep the files readable


def make_sequences(lengths, trg_size=TRG, seed=0):
    rng = np.random.default_rng(seed)
    return [
        np.concatenate([rng.normal(size=(n, trg_size)), progress_counter(n)[:, None]], axis=1)
        for n in lengths
    ]


def write_corpus(prefix: Path, texts, lengths, trg_size=TRG):
    sequences = make_sequences(lengths, trg_size)
    write_split(prefix, texts, sequences, [f"video_{i}" for i in range(len(texts))])
    return sequences


def test_round_trip_and_layout(tmp_path):
    texts = ["Merhaba dünya.", "İyi günler!", "Irmak ılık mı?"]
    sequences = write_corpus(tmp_path / "train", texts, [4, 7, 5])
    first_line = (tmp_path / "train.skels").read_text().splitlines()[0].split(" ")
    assert len(first_line) == 4 * (TRG + 1)  # no frame delimiter: frames cut every trg_size + 1 values
    assert float(first_line[TRG]) == pytest.approx(0.25)  # counter = frame index / frame count
    examples = read_split(tmp_path / "train", TRG)
    assert [e.text for e in examples] == texts
    assert [e.name for e in examples] == ["video_0", "video_1", "video_2"]
    for example, sequence in zip(examples, sequences, strict=True):
        np.testing.assert_allclose(example.frames, sequence, atol=1e-5)
    assert examples[1].frames[-1, -1] == 1.0


def test_skip_frames_gloss_source_and_2d(tmp_path):
    sequences = write_corpus(tmp_path / "dev", ["a b", "c"], [5, 3], trg_size=4)
    (tmp_path / "dev.gloss").write_text("A B\nC\n", encoding="utf-8")
    examples = read_split(tmp_path / "dev", 4, src="gloss", skip_frames=2)
    assert [e.text for e in examples] == ["A B", "C"]
    np.testing.assert_allclose(examples[0].frames, sequences[0][::2], atol=1e-5)
    assert examples[0].frames.shape == (3, 5)


@pytest.mark.parametrize(
    "skels_line,message",
    [
        ("0.1 0.2 0.3", "3 values is not a multiple of trg_size \\+ 1 = 7"),
        ("0.1 0.2 abc 0.4 0.5 0.6 0.5", "value 3 \\('abc', frame 1\\) is not a number"),
        ("0.1 0.2 nan 0.4 0.5 0.6 0.5", "value 3 \\(frame 1\\) is nan"),
        ("0.1 0.2 0.3 0.4 0.5 0.6 0.5 0.1 0.2 0.3 0.4 inf 0.6 1.0", "value 12 \\(frame 2\\) is inf"),
        ("0.1 0.2 0.3 0.4 0.5 0.6 1.5", "frame 1 has counter value 1.5 outside \\[0, 1\\]"),
        ("", "empty pose sequence"),
    ],
)
def test_bad_skels_lines_name_file_and_line(tmp_path, skels_line, message):
    write_corpus(tmp_path / "train", ["bir", "iki"], [2, 2])
    lines = (tmp_path / "train.skels").read_text().splitlines()
    lines[1] = skels_line
    (tmp_path / "train.skels").write_text("\n".join(lines) + "\n")
    with pytest.raises(PoseDataError, match=f"train.skels:2: {message}"):
        read_split(tmp_path / "train", TRG)


def test_mismatched_line_counts(tmp_path):
    write_corpus(tmp_path / "train", ["bir", "iki"], [2, 3])
    (tmp_path / "train.files").write_text("only_one\n")
    with pytest.raises(PoseDataError, match=r"different line counts .*train.files: 1 lines"):
        read_split(tmp_path / "train", TRG)


def test_empty_sentence_and_missing_file(tmp_path):
    write_corpus(tmp_path / "train", ["bir", "iki"], [2, 3])
    (tmp_path / "train.text").write_text("bir\n   \n", encoding="utf-8")
    with pytest.raises(PoseDataError, match=r"train.text:2: empty sentence"):
        read_split(tmp_path / "train", TRG)
    (tmp_path / "train.skels").unlink()
    with pytest.raises(PoseDataError, match=r"skels file '.*train.skels' does not exist"):
        read_split(tmp_path / "train", TRG)


def test_predict_file_errors(tmp_path):
    (tmp_path / "in.txt").write_text("Merhaba.\n\nİyi.\n", encoding="utf-8")
    dm = PoseDataModule(
        train=str(tmp_path / "x"), dev=str(tmp_path / "y"), predict_file=str(tmp_path / "in.txt")
    )
    with pytest.raises(PoseDataError, match=r"in.txt:2: empty sentence"):
        dm.setup("predict")
    dm.predict_file = str(tmp_path / "missing.txt")
    with pytest.raises(PoseDataError, match="missing.txt' does not exist"):
        dm.setup("predict")


def test_max_sent_length_filters_train_only_and_counts(tmp_path):
    for split in ("train", "dev"):
        write_corpus(tmp_path / split, ["bir iki üç dört", "beş", "altı yedi"], [3, 9, 4])
    dm = PoseDataModule(
        train=str(tmp_path / "train"),
        dev=str(tmp_path / "dev"),
        trg_size=TRG,
        max_sent_length=4,
        cache_dir=str(tmp_path / "prep"),
    )
    dm.setup("fit")
    assert dm.num_filtered == 1  # the 9-frame pair
    assert len(dm.datasets["train"]) == 2 and len(dm.datasets["dev"]) == 3
    assert dm.datasets["train"].tokens == [["bir", "iki", "üç", "dört"], ["altı", "yedi"]]
    batch = next(iter(dm.val_dataloader()))
    assert batch["frames"].shape == (3, 9, TRG + 1) and batch["lengths"].tolist() == [3, 9, 4]


def test_turkish_lowercasing_punctuation_and_vocab():
    assert turkish_lower("IRMAK İSTANBUL") == "ırmak istanbul"
    assert tokenize("İstanbul'a gidiyorum, Irmak!") == ["istanbul'a", "gidiyorum", ",", "ırmak", "!"]
    assert tokenize("İstanbul'a gidiyorum, Irmak!", punctuation="drop") == [
        "istanbul'a",
        "gidiyorum",
        "ırmak",
    ]
    vocab = Vocabulary.build([["ev", "okul", "ev"], ["su"]], min_freq=2)
    assert vocab.itos == ["<unk>", "<pad>", "<s>", "</s>", "ev"]
    assert vocab.encode(["ev", "kitap"]) == [4, 0, 3]


def test_whitespace_tokenisation_as_the_original():
    """Converted original configs: str.split(), no lower-casing; hyphenated glosses stay one token."""
    assert tokenize("ES-BEDEUTET VIEL WOLKE", lowercase=False, punctuation="whitespace") == [
        "ES-BEDEUTET",
        "VIEL",
        "WOLKE",
    ]
    assert tokenize("Merhaba, dünya!", lowercase=False, punctuation="whitespace") == ["Merhaba,", "dünya!"]


def fork_tokenize(sentence: str) -> list[str]:
    """The Turkish fork's source processing, transcribed: lower-case, delete every ``string.punctuation``
    character, split on whitespace."""
    import string

    return sentence.lower().translate(str.maketrans("", "", string.punctuation)).split()


@pytest.mark.parametrize(
    "sentence",
    [
        "Merhaba, dünya!",
        "Öğretmen okula gidiyor; çocuklar (hep birlikte) şarkı söylüyor...",
        'Ankara\'ya 3-4 gün sonra gideceğiz: "güzel" olacak?',
        "ES-BEDEUTET viel_wolke #1 100% a/b",
        "  boşluklar\tve   sekmeler  ",
    ],
)
def test_strip_punctuation_is_the_turkish_forks_tokenisation(sentence):
    """Issue 23: the fork lower-cases and deletes ``string.punctuation``; ``punctuation: strip`` does exactly that
    (``drop`` would split ``Ankara'ya`` and ``3-4`` instead of joining them)."""
    assert tokenize(sentence, lowercase=True, punctuation="strip") == fork_tokenize(sentence)
    assert " ".join(tokenize(sentence, lowercase=False, punctuation="strip")).lower() == " ".join(
        fork_tokenize(sentence)
    )  # case kept, the same marks deleted


def test_strip_lower_cases_the_turkish_way():
    """The one intended difference from Python's ``str.lower`` in the fork: Turkish ``I -> ı`` and ``İ -> i``
    (``"İ".lower()`` is ``i`` + a combining dot, another vocabulary entry)."""
    assert tokenize("IŞIK, İzmir'de.", punctuation="strip") == ["ışık", "izmirde"]
    assert fork_tokenize("IŞIK, İzmir'de.") == ["işik", "i̇zmirde"]


def test_src_vocab_with_the_originals_specials_has_the_originals_size(tmp_path):
    """PT's ``src_vocab.txt`` lists ``<unk> <pad> <s> </s>`` first and its ``Vocabulary`` keeps one of each
    (1089 entries for PHOENIX14T); the former ``<bos>/<eos>`` specials made them ordinary tokens (1091)."""
    from tests.pose.pt_fixture import write_src_vocab

    path = write_src_vocab(tmp_path / "src_vocab.txt")
    original_itos: list[str] = []  # vocabulary.py: _from_file -> _from_list -> add_tokens(specials + tokens)
    for token in ["<unk>", "<pad>", "<s>", "</s>"] + [line.strip("\n") for line in open(path)]:
        if token not in original_itos:
            original_itos.append(token)
    vocab = Vocabulary.from_file(path)
    assert vocab.itos == original_itos and len(vocab) == 14
