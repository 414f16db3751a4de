"""The 50-joint skeleton of Progressive Transformers and side-by-side skeleton videos.

Joint order (as in the original ``plot_videos.py``): 0 head, 1 neck, 2-4 right shoulder/elbow/wrist,
5-7 left shoulder/elbow/wrist, 8-28 first hand (8 = hand root, then five fingers of 4 joints: 9-12, 13-16,
17-20, 21-24, 25-28), 29-49 second hand (29 = root, fingers 30-33 ... 46-49). Frames hold ``x y z`` per joint
(``trg_size = 150``) or ``x y`` (``trg_size = 100``); videos use the x·y projection, image-style (y down).
Other skeletons pass their own ``connections`` (pairs of joint indices) and ``groups``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def _hand(root: int, wrist: int) -> list[tuple[int, int]]:
    bones = [(wrist, root)]
    for finger in range(5):
        base = root + 1 + 4 * finger
        bones += [(root, base), (base, base + 1), (base + 1, base + 2), (base + 2, base + 3)]
    return bones


# (start joint, end joint) pairs: head, shoulders, arms, then the two hands (palm bones + three-bone fingers).
PT_CONNECTIONS: list[tuple[int, int]] = [
    (0, 1),
    (1, 2),
    (2, 3),
    (3, 4),
    (1, 5),
    (5, 6),
    (6, 7),
    *_hand(root=8, wrist=7),
    *_hand(root=29, wrist=4),
]
GROUP_COLOURS = {
    "body": (60, 60, 60),
    "hand_a_palm": (200, 60, 60),
    "hand_b_palm": (60, 60, 200),
    "thumb": (230, 150, 30),
    "index": (40, 160, 40),
    "middle": (30, 150, 200),
    "ring": (150, 60, 200),
    "little": (220, 60, 160),
}
FINGERS = ("thumb", "index", "middle", "ring", "little")


def pt_bone_groups() -> list[str]:
    """Colour group of each bone of :data:`PT_CONNECTIONS`."""
    groups = ["body"] * 7
    for palm in ("hand_a_palm", "hand_b_palm"):
        groups.append(palm)  # wrist -> hand root
        for finger in FINGERS:
            groups += [palm, finger, finger, finger]
    return groups


@lru_cache(maxsize=1)
def _font() -> ImageFont.ImageFont:
    """DejaVu Sans (shipped with matplotlib) so Turkish letters (ş, ğ, ı, İ) render; PIL's default bitmap font
    has no glyphs for them."""
    try:
        from matplotlib import font_manager

        return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), 11)
    except (ImportError, OSError):
        return ImageFont.load_default()


def _panel_transform(sequences: Sequence[np.ndarray], size: int, margin: int) -> tuple[np.ndarray, float]:
    points = np.concatenate([s.reshape(-1, 2) for s in sequences])
    points = points[np.isfinite(points).all(axis=1)]
    low, high = points.min(axis=0), points.max(axis=0)
    scale = (size - 2 * margin) / max(float((high - low).max()), 1e-6)
    # shift so the drawing is centred along its shorter extent, not stuck to the top-left corner
    low = low - ((size - 2 * margin) / scale - (high - low)) / 2
    return low, scale


def wrap_text(text: str, width: float, font: ImageFont.ImageFont | None = None) -> list[str]:
    """``text`` broken at spaces into lines no wider than ``width`` pixels (a longer single word keeps its line)."""
    font = font or _font()
    lines: list[str] = []
    for word in text.split():
        candidate = f"{lines[-1]} {word}" if lines else word
        if lines and font.getlength(candidate) <= width:
            lines[-1] = candidate
        else:
            lines.append(word)
    return lines


def render_side_by_side(
    sequences: Sequence[np.ndarray],
    titles: Sequence[str] = ("prediction", "reference"),
    dims: int = 3,
    connections: Sequence[tuple[int, int]] | None = None,
    groups: Sequence[str] | None = None,
    size: int = 192,
    flip_y: bool = False,
    caption: str | None = None,
) -> np.ndarray:
    """Draw each ``T_i x (J * dims)`` joint sequence (counter column removed) in its own panel, side by side,
    and return ``T x H x W x 3`` uint8 frames (``T`` = longest sequence; shorter ones hold their last frame).

    All panels share one scale so sizes are comparable. ``flip_y`` for data whose y axis points up. ``caption``
    (e.g. the whole source sentence) is drawn above the panels, wrapped to their width, never cut.
    """
    connections = list(connections if connections is not None else PT_CONNECTIONS)
    if groups is None:
        groups = pt_bone_groups() if connections == PT_CONNECTIONS else ["body"] * len(connections)
    xy = []
    for seq in sequences:
        joints = np.asarray(seq, dtype=np.float32).reshape(len(seq), -1, dims)[:, :, :2].copy()
        if flip_y:
            joints[:, :, 1] *= -1
        xy.append(joints)
    margin = 8
    low, scale = _panel_transform(xy, size, margin)
    length = max(len(s) for s in xy)
    header = wrap_text(caption, size * len(xy) - 8) if caption else []
    top = 14 * len(header)  # caption lines, then each panel's title row
    frames = np.empty((length, top + size + 16, size * len(xy), 3), dtype=np.uint8)
    for t in range(length):
        canvas = Image.new("RGB", (size * len(xy), top + size + 16), (255, 255, 255))
        draw = ImageDraw.Draw(canvas)
        for row, line in enumerate(header):
            draw.text((4, 1 + 14 * row), line, fill=(0, 0, 0), font=_font())
        for panel, (joints, title) in enumerate(zip(xy, titles, strict=False)):
            pixels = (joints[min(t, len(joints) - 1)] - low) * scale + margin
            pixels[:, 0] += panel * size
            pixels[:, 1] += top + 16
            draw.text(
                (panel * size + 4, top + 2),
                f"{title} {min(t, len(joints) - 1) + 1}/{len(joints)}",
                fill=(0, 0, 0),
                font=_font(),
            )
            for (a, b), group in zip(connections, groups, strict=True):
                if a < len(pixels) and b < len(pixels):
                    draw.line(
                        [tuple(pixels[a]), tuple(pixels[b])],
                        fill=GROUP_COLOURS.get(group, (0, 0, 0)),
                        width=2,
                    )
            if panel:
                draw.line([(panel * size, top), (panel * size, top + size + 16)], fill=(180, 180, 180))
        frames[t] = np.asarray(canvas)
    return frames
