"""common.io: multi-file artefacts written as a unit, with the mode the umask gives (shared caches)."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from common.io import atomic_dir, atomic_file_group, atomic_path


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_path_keeps_the_umask_mode_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "cache.pt") as temporary:
            temporary.write_bytes(b"x")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "cache.pt") == 0o644  # mkstemp alone gives 0600: colleagues could not read it


def test_atomic_dir_replaces_a_folder_as_a_unit(tmp_path):
    target = tmp_path / "clip"
    target.mkdir()
    (target / "old.bin").write_bytes(b"old")
    with atomic_dir(target) as temporary:
        (temporary / "config.json").write_text("{}")
        (temporary / "model.safetensors").write_bytes(b"new")
        assert not (target / "config.json").exists()  # readers still see the old folder
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "model.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == ["clip"]  # no temporary or old folder left behind


def test_atomic_dir_leaves_the_old_folder_on_error(tmp_path):
    target = tmp_path / "clip"
    target.mkdir()
    (target / "old.bin").write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_dir(target) as temporary:
        (temporary / "half.bin").write_bytes(b"half")
        raise RuntimeError("interrupted")
    assert [p.name for p in target.iterdir()] == ["old.bin"]
    assert [p.name for p in tmp_path.iterdir()] == ["clip"]


def test_atomic_file_group_moves_side_files_with_the_main_file(tmp_path):
    target = tmp_path / "ft.model"
    (tmp_path / "ft.model.stale.npy").write_bytes(b"from an older save")
    with atomic_file_group(target) as temporary:
        temporary.write_bytes(b"main")
        np.save(temporary.parent / "ft.model.wv.vectors_ngrams.npy", np.zeros(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ft.model", "ft.model.wv.vectors_ngrams.npy"]
    assert np.load(tmp_path / "ft.model.wv.vectors_ngrams.npy").shape == (3,)


def test_atomic_file_group_with_gensim_side_files(tmp_path):
    from gensim.models import FastText

    model = FastText(vector_size=8, min_count=1, bucket=64, epochs=1)
    model.build_vocab([["merhaba", "dünya"]])
    model.train([["merhaba", "dünya"]], total_examples=1, epochs=1)
    target = tmp_path / "ft.model"
    with atomic_file_group(target) as temporary:
        model.save(str(temporary), sep_limit=16)  # every array above 16 elements goes to a side file
    assert len(list(tmp_path.iterdir())) > 1
    loaded = FastText.load(str(target))
    assert np.allclose(loaded.wv["merhaba"], model.wv["merhaba"])


def test_atomic_file_group_without_main_file_changes_nothing(tmp_path):
    target = tmp_path / "ft.model"
    target.write_bytes(b"old")
    with pytest.raises(FileNotFoundError), atomic_file_group(target) as temporary:
        (temporary.parent / "ft.model.side.npy").write_bytes(b"x")
    assert [p.name for p in tmp_path.iterdir()] == ["ft.model"] and target.read_bytes() == b"old"
