"""Read and write the Progressive Transformers data format exactly (Saunders et al., 2020).

A split is a path prefix (``Data/tmp/train``) with parallel files, one example per line:

* ``<prefix>.text`` (or ``.gloss``): the source sentence;
* ``<prefix>.skels``: the pose sequence, every frame's ``trg_size`` joint values followed by that frame's
  counter value in [0, 1], all space-separated floats, no frame delimiter (frames are cut every
  ``trg_size + 1`` values);
* ``<prefix>.files``: the example's name.

Every problem raises :class:`PoseDataError` naming the file and the 1-based line (and frame/value) so a bad
corpus is never silently truncated or corrupted.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.errors import InputError
from common.io import decode_text
from common.io import read_lines as read_utf8_lines


class PoseDataError(InputError):
    """A data file is missing or malformed; the message names the file and line."""


@dataclass
class Example:
    name: str
    text: str
    frames: np.ndarray | None  # T x (trg_size + 1), joints then counter; None for prediction inputs


def read_lines(path: str | Path, what: str = "file") -> list[str]:
    """All lines of a UTF-8 file (without newlines); a missing file or non-UTF-8 bytes are one line naming the
    file (and line)."""
    path = Path(path)
    if not path.is_file():
        raise PoseDataError(f"{what} '{path}' does not exist")
    return read_utf8_lines(path)


def parse_skels_line(line: str, trg_size: int, path: str | Path, line_no: int) -> np.ndarray:
    """One ``.skels`` line -> ``T x (trg_size + 1)`` float32 frames, checked value by value."""
    width = trg_size + 1
    if not line.strip():
        raise PoseDataError(f"{path}:{line_no}: empty pose sequence")
    try:  # numpy's C parser: about twice as fast as float() over str.split()
        values = np.loadtxt([line], dtype=np.float64, comments=None, ndmin=1)
    except ValueError:
        values = None
    tokens = line.split() if values is None else None
    if values is None:
        for position, token in enumerate(tokens):
            try:
                float(token)
            except ValueError:
                raise PoseDataError(
                    f"{path}:{line_no}: value {position + 1} ('{token}', frame {position // width + 1}) "
                    "is not a number"
                ) from None
        values = np.array(tokens, dtype=np.float64)
    if values.size % width:
        raise PoseDataError(
            f"{path}:{line_no}: {values.size} values is not a multiple of trg_size + 1 = {width} "
            f"({values.size / width:.2f} frames); check trg_size (150 for 3D xyz, 100 for 2D xy)"
        )
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        position = int(bad[0])
        raise PoseDataError(
            f"{path}:{line_no}: value {position + 1} (frame {position // width + 1}) is "
            f"{line.split()[position]}; NaN/inf are not allowed"
        )
    frames = values.reshape(-1, width)
    counter = frames[:, -1]
    outside = np.flatnonzero((counter < 0.0) | (counter > 1.0))
    if outside.size:
        frame = int(outside[0])
        raise PoseDataError(
            f"{path}:{line_no}: frame {frame + 1} has counter value {counter[frame]:g} outside [0, 1] "
            f"(the last of every {width} values is the counter)"
        )
    return frames.astype(np.float32)


def _decode_line(raw: bytes, path: Path, number: int) -> str:
    """One line of a UTF-8 file without its line ending; bad bytes are one line naming ``path:number``."""
    try:
        text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
    except UnicodeDecodeError:
        decode_text(b"\n" * (number - 1) + raw, path)  # raises the repo's message with this line number
        raise
    return text.rstrip("\r\n")


def iter_split(
    prefix: str | Path,
    trg_size: int,
    src: str = "text",
    trg: str = "skels",
    files: str = "files",
    skip_frames: int = 1,
) -> Iterator[Example]:
    """The examples of ``<prefix>.<src|trg|files>`` one at a time, reading the three files line by line in step
    (memory: one line, whatever the corpus size). ``skip_frames`` keeps every Nth frame starting with the first,
    as the original loader does. Every problem is a :class:`PoseDataError` naming the file and line."""
    if skip_frames < 1:
        raise PoseDataError(f"skip_frames must be >= 1, got {skip_frames}")
    paths = {ext: Path(f"{prefix}.{ext}") for ext in (src, trg, files)}
    for ext, path in paths.items():
        if not path.is_file():
            raise PoseDataError(f"{ext} file '{path}' does not exist")
    with ExitStack() as stack:
        handles = {ext: stack.enter_context(open(path, "rb")) for ext, path in paths.items()}
        number = 0
        while True:
            raw = {ext: handle.readline() for ext, handle in handles.items()}
            if not all(raw.values()):
                if any(raw.values()):
                    counts = {
                        str(paths[ext]): number + bool(raw[ext]) + sum(1 for _ in handles[ext])
                        for ext in paths
                    }
                    detail = ", ".join(f"{path}: {count} lines" for path, count in counts.items())
                    raise PoseDataError(f"parallel files of '{prefix}' have different line counts ({detail})")
                return
            number += 1
            text, skels, name = (_decode_line(raw[ext], paths[ext], number) for ext in (src, trg, files))
            if not text.strip():
                raise PoseDataError(f"{paths[src]}:{number}: empty sentence")
            frames = parse_skels_line(skels, trg_size, paths[trg], number)[::skip_frames]
            yield Example(name=name.strip(), text=text.strip(), frames=frames)


def read_split(
    prefix: str | Path,
    trg_size: int,
    src: str = "text",
    trg: str = "skels",
    files: str = "files",
    skip_frames: int = 1,
) -> list[Example]:
    """All examples of ``<prefix>.<src|trg|files>`` in memory (small splits, predictions, tests); the data module
    streams them into a memory-mapped array instead (see :func:`iter_split`)."""
    return list(iter_split(prefix, trg_size, src, trg, files, skip_frames))


def format_skels_line(frames: np.ndarray, decimals: int | None = 5) -> str:
    """``T x (trg_size + 1)`` frames -> one ``.skels`` line (joints then counter per frame). ``decimals=None``
    writes 9 significant digits, which read back to the identical float32 values."""
    frames = np.asarray(frames, dtype=np.float64)
    if frames.ndim != 2:
        raise ValueError(f"frames must be T x (trg_size + 1), got shape {frames.shape}")
    if not np.isfinite(frames).all():
        raise ValueError("refusing to write NaN/inf pose values")
    spec = ".9g" if decimals is None else f".{decimals}f"
    return " ".join(f"{value:{spec}}" for value in frames.reshape(-1))


def write_split(
    prefix: str | Path,
    texts: list[str],
    sequences: list[np.ndarray],
    names: list[str],
    src: str = "text",
    trg: str = "skels",
    files: str = "files",
    decimals: int | None = 5,
) -> list[Path]:
    """Write parallel ``.text/.skels/.files`` so :func:`read_split` (and the original code) reads them back."""
    if not len(texts) == len(sequences) == len(names):
        raise ValueError(f"write_split: {len(texts)} texts, {len(sequences)} sequences, {len(names)} names")
    for i, text in enumerate(texts):
        if not text.strip() or "\n" in text:
            raise ValueError(f"write_split: sentence {i + 1} is empty or spans lines: {text!r}")
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    outputs = {
        src: "\n".join(t.strip() for t in texts),
        trg: "\n".join(format_skels_line(s, decimals) for s in sequences),
        files: "\n".join(names),
    }
    written = []
    for ext, content in outputs.items():
        path = Path(f"{prefix}.{ext}")
        path.write_text(content + "\n", encoding="utf-8")
        written.append(path)
    return written


def progress_counter(num_frames: int, zero_based: bool = False) -> np.ndarray:
    """The counter column: frame index / frame count. 1-based (this project's generated data) ends at exactly 1;
    0-based (``i / N``, the Progressive Transformers data) starts at 0 and ends at ``(N - 1) / N``."""
    start = 0 if zero_based else 1
    return np.arange(start, num_frames + start, dtype=np.float32) / num_frames
