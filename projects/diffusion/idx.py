"""Read and write the IDX files EMNIST ships (``emnist-<split>-<train|test>-<images|labels>-idx<N>-ubyte.gz``).

Hand-written because the format is 20 lines (big-endian header, then raw bytes) and every error must name the
file: torchvision's reader would add a dependency and raise anonymous errors on truncated files.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from common.errors import InputError
from common.io import read_lines

IMAGES_MAGIC = 2051  # 0x00000803: unsigned byte, 3 dimensions
LABELS_MAGIC = 2049  # 0x00000801: unsigned byte, 1 dimension
SPLITS = ("balanced", "byclass", "bymerge", "letters", "digits", "mnist")
# The splits whose mapping is fixed (0-9 -> ASCII 48-57): their mapping file may be absent.
BUILTIN_MAPPINGS = {split: {label: str(label) for label in range(10)} for split in ("digits", "mnist")}


class IDXError(InputError):
    """An IDX file is missing, truncated, corrupt or does not match its partner file."""


def _read_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise IDXError(f"{path}: file not found (expected an EMNIST gzip IDX file)")
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb") as handle:
            return handle.read()
    except (OSError, EOFError, zlib.error) as error:
        raise IDXError(f"{path}: not a readable gzip file ({type(error).__name__}: {error})") from error


def read_idx(path: str | Path, expected_magic: int) -> np.ndarray:
    """Return the array stored in one IDX file, checking magic number, header and payload length."""
    path = Path(path)
    raw = _read_bytes(path)
    ndim = {IMAGES_MAGIC: 3, LABELS_MAGIC: 1}[expected_magic]
    header_len = 4 + 4 * ndim
    if len(raw) < 4:
        raise IDXError(f"{path}: truncated header ({len(raw)} bytes, need {header_len})")
    magic = struct.unpack(">i", raw[:4])[0]
    if magic != expected_magic:
        kind = "images (2051)" if expected_magic == IMAGES_MAGIC else "labels (2049)"
        raise IDXError(f"{path}: wrong magic number {magic}, expected {kind}")
    if len(raw) < header_len:
        raise IDXError(f"{path}: truncated header ({len(raw)} bytes, need {header_len})")
    shape = struct.unpack(f">{ndim}i", raw[4:header_len])
    expected = int(np.prod(shape))
    payload = len(raw) - header_len
    if payload != expected:
        raise IDXError(
            f"{path}: header says shape {shape} ({expected} bytes) but the file holds {payload} bytes "
            f"({'truncated' if payload < expected else 'trailing data'})"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_len).reshape(shape)


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write a uint8 array of 1 (labels) or 3 (images) dimensions as a gzip IDX file."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    magic = {1: LABELS_MAGIC, 3: IMAGES_MAGIC}[array.ndim]
    header = struct.pack(f">i{array.ndim}i", magic, *array.shape)
    with (
        open(path, "wb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as handle,
    ):  # byte-identical reruns
        handle.write(header + array.tobytes())


def emnist_paths(data_dir: str | Path, split: str, subset: str) -> tuple[Path, Path]:
    """File names as EMNIST's ``gzip.zip`` unpacks them."""
    if split not in SPLITS:
        raise IDXError(f"unknown EMNIST split '{split}', expected one of {SPLITS}")
    if subset not in ("train", "test"):
        raise IDXError(f"unknown EMNIST subset '{subset}', expected train or test")
    root = Path(data_dir)
    return (
        root / f"emnist-{split}-{subset}-images-idx3-ubyte.gz",
        root / f"emnist-{split}-{subset}-labels-idx1-ubyte.gz",
    )


def read_emnist(data_dir: str | Path, split: str, subset: str) -> tuple[np.ndarray, np.ndarray]:
    """Images ``N x 28 x 28`` uint8 in upright orientation and labels ``N`` int64.

    EMNIST stores every image transposed (column-major, from the NIST conversion); ``.transpose`` fixes it.
    """
    images_path, labels_path = emnist_paths(data_dir, split, subset)
    images = read_idx(images_path, IMAGES_MAGIC)
    labels = read_idx(labels_path, LABELS_MAGIC)
    if len(images) != len(labels):
        raise IDXError(
            f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels"
        )
    if images.shape[1:] != (28, 28):
        raise IDXError(f"{images_path}: images are {images.shape[1:]}, expected 28 x 28")
    return np.ascontiguousarray(images.transpose(0, 2, 1)), labels.astype(np.int64)


def read_mapping(data_dir: str | Path, split: str) -> dict[int, str]:
    """``emnist-<split>-mapping.txt``: ``label ascii_code [ascii_code2]`` a line -> ``{label: character}``.

    The ``letters`` split lists upper and lower case per label; the first (upper case) names the class.
    ``digits`` and ``mnist`` fall back to their fixed mapping when the file is absent (said in one line).
    """
    path = Path(data_dir) / f"emnist-{split}-mapping.txt"
    if not path.is_file():
        if split in BUILTIN_MAPPINGS:
            print(
                f"[diffusion] {path} not found: using the fixed EMNIST-{split} mapping (labels 0-9 -> '0'-'9')"
            )
            return dict(BUILTIN_MAPPINGS[split])
        raise IDXError(f"{path}: file not found (EMNIST ships it next to the IDX files)")
    mapping = {}
    for number, line in enumerate(read_lines(path), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) not in (2, 3) or not all(p.isdigit() for p in parts):
            raise IDXError(f"{path}:{number}: expected 'label ascii_code', got '{line}'")
        mapping[int(parts[0])] = chr(int(parts[1]))
    return mapping
