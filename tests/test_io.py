"""common.io: one-line errors for non-UTF-8 text, and caches that rebuild instead of crashing."""

from __future__ import annotations

import pytest
import torch

from common.errors import InputError, MissingInputError
from common.io import load_cache, read_lines


def test_cp1254_text_names_file_line_and_expected_encoding(tmp_path):
    path = tmp_path / "dev.text"
    path.write_bytes("merhaba dünya\n".encode() + "çocuk ağaç\n".encode("cp1254"))
    with pytest.raises(InputError, match=r"dev\.text:2: not UTF-8 .*column 1.*iconv"):
        read_lines(path)


def test_utf8_with_bom_and_crlf_reads_clean(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes("\ufeffİstanbul\r\nışık\r\n".encode())
    assert read_lines(path) == ["İstanbul", "ışık"]


def test_missing_text_file_is_missing_input(tmp_path):
    with pytest.raises(MissingInputError, match="file not found"):
        read_lines(tmp_path / "nope.txt")


@pytest.mark.parametrize("content", [b"", b"\x00\x01garbage" * 10, None])
def test_corrupt_cache_is_removed_with_one_warning(tmp_path, content):
    path = tmp_path / "features.pt"
    torch.save({"x": torch.arange(100)}, path)
    if content is None:  # truncated
        path.write_bytes(path.read_bytes()[:50])
    else:
        path.write_bytes(content)
    with pytest.warns(UserWarning, match=r"features\.pt could not be loaded .*rebuilding"):
        assert load_cache(path, lambda p: torch.load(p, weights_only=True), "CLIP features") is None
    assert not path.exists()


def test_good_cache_loads_and_absent_cache_is_none(tmp_path):
    path = tmp_path / "ok.pt"
    assert load_cache(path, torch.load) is None
    torch.save([1, 2], path)
    assert load_cache(path, lambda p: torch.load(p, weights_only=True)) == [1, 2]
