"""IDX reading (EMNIST layout, transposition, bad files) and the data module."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch

from common.errors import InputError
from projects.diffusion import data as data_module
from projects.diffusion.data import CharacterDataModule
from projects.diffusion.generate import BALANCED_CLASSES, generate
from projects.diffusion.idx import IDXError, emnist_paths, read_emnist, read_idx, read_mapping, write_idx


def write_split(root, images, labels, split="digits", subset="train"):
    """Write images the way EMNIST does (transposed) plus labels."""
    write_idx(root / f"emnist-{split}-{subset}-images-idx3-ubyte.gz", images.transpose(0, 2, 1))
    write_idx(root / f"emnist-{split}-{subset}-labels-idx1-ubyte.gz", labels)


def test_read_emnist_undoes_the_transposed_layout(tmp_path):
    images = np.zeros((2, 28, 28), np.uint8)
    images[0, 3, :] = 255  # a horizontal bar in row 3
    images[1, :, 5] = 200  # a vertical bar in column 5
    write_split(tmp_path, images, np.array([4, 7], np.uint8))
    read_images, labels = read_emnist(tmp_path, "digits", "train")
    np.testing.assert_array_equal(read_images, images)
    assert labels.tolist() == [4, 7]
    raw = read_idx(tmp_path / "emnist-digits-train-images-idx3-ubyte.gz", 2051)
    np.testing.assert_array_equal(raw, images.transpose(0, 2, 1))  # on disk it really is transposed
    assert raw[0, 0, 3] == 255 and raw[0, 3, 0] == 0


def test_missing_file_names_it(tmp_path):
    with pytest.raises(IDXError, match="emnist-letters-test-images-idx3-ubyte.gz: file not found"):
        read_emnist(tmp_path, "letters", "test")


def test_truncated_file_names_it(tmp_path):
    path = tmp_path / "emnist-mnist-train-images-idx3-ubyte.gz"
    header = struct.pack(">iiii", 2051, 10, 28, 28)
    with gzip.open(path, "wb") as handle:
        handle.write(header + bytes(28 * 28 * 3))  # 3 of 10 images
    with pytest.raises(IDXError, match=r"images-idx3-ubyte.gz: header says shape \(10, 28, 28\).*truncated"):
        read_idx(path, 2051)


def test_cut_gzip_stream_is_reported(tmp_path):
    path = tmp_path / "emnist-mnist-train-labels-idx1-ubyte.gz"
    write_idx(path, np.arange(200, dtype=np.uint8))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(IDXError, match="labels-idx1-ubyte.gz: not a readable gzip file"):
        read_idx(path, 2049)


def test_wrong_magic_number(tmp_path):
    path = tmp_path / "labels.gz"
    write_idx(path, np.arange(5, dtype=np.uint8))  # a labels file
    with pytest.raises(IDXError, match=r"labels.gz: wrong magic number 2049, expected images \(2051\)"):
        read_idx(path, 2051)


def test_image_label_count_mismatch(tmp_path):
    write_split(tmp_path, np.zeros((3, 28, 28), np.uint8), np.array([1, 2], np.uint8))
    with pytest.raises(IDXError, match="holds 3 images but .*labels-idx1-ubyte.gz holds 2 labels"):
        read_emnist(tmp_path, "digits", "train")


def test_mapping_bad_line_names_file_and_line(tmp_path):
    (tmp_path / "emnist-digits-mapping.txt").write_text("0 48\n1 forty-nine\n")
    with pytest.raises(IDXError, match="emnist-digits-mapping.txt:2"):
        read_mapping(tmp_path, "digits")


def test_generator_is_deterministic(tmp_path):
    a, b = generate(tmp_path / "a", 2, 1, seed=3), generate(tmp_path / "b", 2, 1, seed=3)
    for name in ("emnist-balanced-train-images-idx3-ubyte.gz", "emnist-balanced-test-labels-idx1-ubyte.gz"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert "".join(read_mapping(a, "balanced").values()) == BALANCED_CLASSES


def test_data_module_subset_relabels_and_pads(glyph_dir, tmp_path):
    data = CharacterDataModule(
        data_dir=str(glyph_dir),
        judge_cache_dir=str(tmp_path),
        classes="bA7",
        image_size=32,
        val_per_class=5,
        generated={"train_per_class": 30, "test_per_class": 8},
    )
    data.setup("fit")
    assert data.class_names == ["b", "A", "7"]
    images, labels = data.train_set.tensors
    assert images.shape == (90, 1, 32, 32) and sorted(set(labels.tolist())) == [0, 1, 2]
    assert images.min() == -1 and images.max() <= 1
    assert (images[:, :, :2, :] == -1).all() and (images[:, :, :, -2:] == -1).all()  # 28 -> 32 zero padding
    assert len(data.val_set) == 15
    # relabelling keeps the right character: each class's mean image correlates with the raw class mean
    raw_images, raw_labels = read_emnist(glyph_dir, "balanced", "train")
    for new, char in enumerate(data.class_names):
        raw_mean = raw_images[raw_labels == BALANCED_CLASSES.index(char)].mean(0)
        ours = images[labels == new, 0, 2:30, 2:30].mean(0).numpy()
        assert np.corrcoef(raw_mean.ravel(), ours.ravel())[0, 1] > 0.99


def test_data_module_rejects_unknown_class(glyph_dir):
    data = CharacterDataModule(
        data_dir=str(glyph_dir), classes="AÇ", generated={"train_per_class": 30, "test_per_class": 8}
    )
    with pytest.raises(ValueError, match=r"classes 'AÇ': characters \['Ç'\]"):
        data.setup("fit")


def test_emnist_source_with_missing_files_is_clear(tmp_path):
    data = CharacterDataModule(data_dir=str(tmp_path), source="emnist", split="letters")
    with pytest.raises(IDXError, match="emnist-letters-mapping.txt: file not found"):
        data.setup("fit")


def test_idx_files_are_decoded_once_and_memory_mapped(glyph_dir, tmp_path, monkeypatch):
    """The first setup decodes the gzip IDX files into uint8 .npy arrays; a warm launch (a new data module)
    opens them memory-mapped and decodes nothing; items become floats one at a time."""
    settings = {
        "data_dir": str(glyph_dir),
        "classes": "bA7",
        "image_size": 16,
        "judge_cache_dir": str(tmp_path),
        "generated": {"train_per_class": 30, "test_per_class": 8},
    }
    cold = CharacterDataModule(**settings)
    cold.setup("fit")

    def no_decoding(*args, **kwargs):
        raise AssertionError("a warm launch decoded the IDX files")

    monkeypatch.setattr(data_module, "read_emnist", no_decoding)
    warm = CharacterDataModule(**settings)
    warm.setup("fit")
    assert isinstance(warm.train_set.raw, np.memmap) and warm.train_set.raw.dtype == np.uint8
    image, label = warm.train_set[5]
    assert image.dtype == torch.float32 and image.shape == (1, 16, 16)
    assert torch.equal(image, cold.train_set.tensors[0][5]) and int(label) == int(cold.train_set.labels[5])


def test_unknown_label_names_the_labels_file_and_the_mapping_in_use(tmp_path):
    """digits without a mapping file: the message names the labels file and the built-in mapping, not a
    mapping file that does not exist (issue 24)."""
    images = np.zeros((3, 28, 28), dtype=np.uint8)
    for subset, labels in (("train", [0, 1, 12]), ("test", [0, 1, 2])):
        images_path, labels_path = emnist_paths(tmp_path, "digits", subset)
        write_idx(images_path, images)
        write_idx(labels_path, np.array(labels, dtype=np.uint8))
    data = CharacterDataModule(
        data_dir=str(tmp_path), source="emnist", split="digits", judge_cache_dir=str(tmp_path / "cache")
    )
    labels_file = emnist_paths(tmp_path, "digits", "train")[1]
    with pytest.raises(
        InputError, match=f"{labels_file}: label 12 is not listed in the built-in EMNIST-digits"
    ):
        data.setup("fit")
