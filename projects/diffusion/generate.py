"""A generated stand-in for EMNIST-balanced: font glyphs with random affine and elastic distortion, 28 x 28.

EMNIST cannot be downloaded here, so the default data is rendered from the TrueType fonts matplotlib ships
and written in EMNIST's own format (gzip IDX, transposed images, ``emnist-balanced-mapping.txt``), so the
one reader in :mod:`projects.diffusion.idx` serves both. Deterministic: same seed, same bytes.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from projects.diffusion.idx import emnist_paths, write_idx

VERSION = 1
# EMNIST-balanced's 47 classes in label order: digits, upper case, and the lower-case letters that do not
# look like their capitals.
BALANCED_CLASSES = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabdefghnqrt"
FONTS = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSans-Oblique.ttf",
    "DejaVuSans-BoldOblique.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-Italic.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
    "STIXGeneral.ttf",
    "STIXGeneralBol.ttf",
    "STIXGeneralItalic.ttf",
    "cmr10.ttf",
    "cmss10.ttf",
    "cmtt10.ttf",
)


def font_paths() -> list[Path]:
    root = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    paths = [root / name for name in FONTS]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"matplotlib fonts missing, cannot render glyphs: {missing}")
    return paths


def render_glyph(char: str, font_path: Path, size: int = 112) -> np.ndarray:
    """One character, white on black, cropped to its ink and fitted into a 20 x 20 box centred by mass in
    28 x 28, as MNIST/EMNIST were prepared. Float in [0, 1]."""
    font = ImageFont.truetype(str(font_path), size=size)
    canvas = Image.new("L", (2 * size, 2 * size), 0)
    ImageDraw.Draw(canvas).text((size // 2, size // 4), char, fill=255, font=font)
    box = canvas.getbbox()
    if box is None:
        raise ValueError(f"font {font_path.name} renders no ink for '{char}'")
    glyph = canvas.crop(box)
    scale = 20 / max(glyph.size)
    glyph = glyph.resize(
        (max(1, round(glyph.size[0] * scale)), max(1, round(glyph.size[1] * scale))), Image.Resampling.LANCZOS
    )
    array = np.asarray(glyph, dtype=np.float32) / 255.0
    out = np.zeros((28, 28), dtype=np.float32)
    cy, cx = ndimage.center_of_mass(array)
    top, left = int(round(14 - cy)), int(round(14 - cx))
    top, left = min(max(top, 0), 28 - array.shape[0]), min(max(left, 0), 28 - array.shape[1])
    out[top : top + array.shape[0], left : left + array.shape[1]] = array
    return np.clip(out, 0.0, 1.0)


def distort(glyph: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random stroke width, rotation, shear, scale, shift and a smooth elastic displacement field
    (Simard et al. 2003), applied as one resampling so the glyph is interpolated once."""
    if rng.random() < 0.35:
        glyph = ndimage.grey_dilation(glyph, size=(2, 2))
    elif rng.random() < 0.15:
        glyph = ndimage.grey_erosion(glyph, size=(2, 1))
    angle = np.deg2rad(rng.normal(0, 8))
    shear = rng.normal(0, 0.12)
    scale = rng.uniform(0.85, 1.12, size=2)
    matrix = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    matrix = matrix @ np.array([[1.0, shear], [0.0, 1.0]]) @ np.diag(1.0 / scale)
    yy, xx = np.mgrid[0:28, 0:28].astype(np.float32) - 13.5
    coords = np.einsum("ij,jhw->ihw", matrix, np.stack([yy, xx])) + 13.5
    coords += rng.normal(0, 1.0, size=(2, 1, 1))  # shift
    alpha, sigma = rng.uniform(1.5, 3.0), 3.5
    coords += (
        alpha
        * np.stack([ndimage.gaussian_filter(rng.uniform(-1, 1, (28, 28)), sigma) for _ in range(2)])
        * sigma
    )
    out = ndimage.map_coordinates(glyph, coords, order=1, mode="constant", cval=0.0)
    return np.clip(out, 0.0, 1.0)


def generate(
    out_dir: str | Path, train_per_class: int = 400, test_per_class: int = 60, seed: int = 0
) -> Path:
    """Write ``emnist-balanced-{train,test}-{images,labels}`` and the mapping file into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    fonts = font_paths()
    bases = [[render_glyph(char, font) for font in fonts] for char in BALANCED_CLASSES]
    for subset, per_class in (("train", train_per_class), ("test", test_per_class)):
        labels = np.repeat(np.arange(len(BALANCED_CLASSES)), per_class)
        rng.shuffle(labels)
        fonts_used = rng.integers(0, len(fonts), size=len(labels))
        images = np.stack(
            [distort(bases[label][font], rng) for label, font in zip(labels, fonts_used, strict=True)]
        )
        images = (images * 255).round().astype(np.uint8).transpose(0, 2, 1)  # EMNIST's transposed layout
        images_path, labels_path = emnist_paths(out_dir, "balanced", subset)
        write_idx(images_path, images)
        write_idx(labels_path, labels.astype(np.uint8))
    mapping = "\n".join(f"{label} {ord(char)}" for label, char in enumerate(BALANCED_CLASSES))
    (out_dir / "emnist-balanced-mapping.txt").write_text(mapping + "\n")
    return out_dir


def ensure_generated(
    out_dir: str | Path, train_per_class: int = 400, test_per_class: int = 60, seed: int = 0
) -> Path:
    """Generate once; reuse when ``manifest.json`` says the same version and settings were used."""
    out_dir = Path(out_dir)
    settings = {
        "version": VERSION,
        "train_per_class": train_per_class,
        "test_per_class": test_per_class,
        "seed": seed,
        "fonts": list(FONTS),
        "classes": BALANCED_CLASSES,
    }
    manifest = out_dir / "manifest.json"
    if manifest.is_file() and json.loads(manifest.read_text()) == settings:
        return out_dir
    print(
        f"[diffusion] generating glyph data set into {out_dir} (one time, {settings['train_per_class']} + "
        f"{settings['test_per_class']} images per class) ...",
        flush=True,
    )
    generate(out_dir, train_per_class, test_per_class, seed)
    manifest.write_text(json.dumps(settings, indent=2))
    return out_dir
