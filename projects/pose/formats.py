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

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.errors import InputError
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
    tokens = line.split()
    width = trg_size + 1
    if not tokens:
        raise PoseDataError(f"{path}:{line_no}: empty pose sequence")
    if len(tokens) % width:
        raise PoseDataError(
            f"{path}:{line_no}: {len(tokens)} values is not a multiple of trg_size + 1 = {width} "
            f"({len(tokens) / width:.2f} frames); check trg_size (150 for 3D xyz, 100 for 2D xy)"
        )
    try:
        values = np.array(tokens, dtype=np.float64)
    except ValueError:
        for position, token in enumerate(tokens):
            try:
                float(token)
            except ValueError:
                raise PoseDataError(
                    f"{path}:{line_no}: value {position + 1} ('{token}', frame {position // width + 1}) "
                    "is not a number"
                ) from None
        raise
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        position = int(bad[0])
        raise PoseDataError(
            f"{path}:{line_no}: value {position + 1} (frame {position // width + 1}) is {tokens[position]}; "
            "NaN/inf are not allowed"
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


def read_split(
    prefix: str | Path,
    trg_size: int,
    src: str = "text",
    trg: str = "skels",
    files: str = "files",
    skip_frames: int = 1,
) -> list[Example]:
    """Read ``<prefix>.<src>``, ``<prefix>.<trg>`` and ``<prefix>.<files>`` (line counts must match).

    ``skip_frames`` keeps every Nth frame starting with the first, as the original loader does.
    """
    if skip_frames < 1:
        raise PoseDataError(f"skip_frames must be >= 1, got {skip_frames}")
    prefix = str(prefix)
    paths = {ext: Path(f"{prefix}.{ext}") for ext in (src, trg, files)}
    lines = {ext: read_lines(path, f"{ext} file") for ext, path in paths.items()}
    counts = {str(paths[ext]): len(lines[ext]) for ext in paths}
    if len(set(counts.values())) != 1:
        detail = ", ".join(f"{path}: {count} lines" for path, count in counts.items())
        raise PoseDataError(f"parallel files of '{prefix}' have different line counts ({detail})")
    examples = []
    for index, (text, skels, name) in enumerate(zip(lines[src], lines[trg], lines[files], strict=True)):
        if not text.strip():
            raise PoseDataError(f"{paths[src]}:{index + 1}: empty sentence")
        frames = parse_skels_line(skels, trg_size, paths[trg], index + 1)[::skip_frames]
        examples.append(Example(name=name.strip(), text=text.strip(), frames=frames))
    return examples


def format_skels_line(frames: np.ndarray, decimals: int = 5) -> str:
    """``T x (trg_size + 1)`` frames -> one ``.skels`` line (joints then counter per frame)."""
    frames = np.asarray(frames, dtype=np.float64)
    if frames.ndim != 2:
        raise ValueError(f"frames must be T x (trg_size + 1), got shape {frames.shape}")
    if not np.isfinite(frames).all():
        raise ValueError("refusing to write NaN/inf pose values")
    return " ".join(f"{value:.{decimals}f}" for value in frames.reshape(-1))


def write_split(
    prefix: str | Path,
    texts: list[str],
    sequences: list[np.ndarray],
    names: list[str],
    src: str = "text",
    trg: str = "skels",
    files: str = "files",
    decimals: int = 5,
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


def counters_are_zero_based(sequences: list[np.ndarray]) -> bool:
    """True when every sequence starts with counter 0 (PT data: frame 0 is the decoder's start frame)."""
    return bool(sequences) and all(float(frames[0, -1]) == 0.0 for frames in sequences)
