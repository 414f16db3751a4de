"""CLIP image encoder, image decoding, CLIP preprocessing, and the on-disk scan of an image set.

The encoder is always frozen, so its output for a given image never changes during training: computing it once
per (image set, CLIP weights, preprocessing) and reading it back from disk saves the ViT forward on every step
(ClipCap's ``parse_coco.py`` does the same as a preparation step). One pass (:func:`scan_images`) decodes every
image exactly once, in DataLoader workers, runs CLIP in batches on the given device, and stores what it found: the
``N x D`` features (one ``.npy`` that training memory-maps) and which files are missing or unreadable. Its folder
name is a hash of the files' (path, size, mtime), the CLIP's identity and the preprocessing, so a warm launch costs
one ``stat`` per image and never decodes; changing any of them computes a new scan instead of reusing a stale one.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from PIL import Image, UnidentifiedImageError
from torch import nn
from torch.utils.data import DataLoader, Dataset

from common.errors import InputError
from common.io import atomic_dir, load_cache

CACHE_VERSION = 2  # 2: one folder per scan (features.npy + scan.json), problems recorded
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
BACKGROUND = (255, 255, 255)  # transparent pixels are composited on white
HIGH_BIT_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # 16-bit grey PNG/TIFF (``I``: 32-bit int)


class BadImageError(InputError):
    """An image file that is missing or cannot be decoded; the message names the file."""


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode as 8-bit RGB.

    ``convert("RGB")`` alone clips 16-bit grey values (0..65535) to 255, so a 16-bit PNG comes out almost white:
    those are scaled by 1/257 instead (65535 -> 255). Transparency (RGBA, LA, PA, P with a transparent index) is
    composited on white instead of showing whatever colour the hidden pixels store. CMYK, L, P, YCbCr ... convert.
    """
    if image.mode in HIGH_BIT_DEPTH_MODES:
        values = np.asarray(image, dtype=np.float64)
        grey = np.clip(np.round(values / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if image.mode == "F":  # float images: [0, 1] as most writers store them
        values = np.asarray(image, dtype=np.float64)
        grey = np.clip(np.round(values * 255.0 if values.max(initial=0.0) <= 1.0 else values), 0, 255)
        return Image.fromarray(grey.astype(np.uint8), mode="L").convert("RGB")
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode in ("P", "L", "RGB") and "transparency" in image.info
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_rgb(path: str | Path) -> Image.Image:
    """Decode an image completely (a truncated file fails here, not later) as 8-bit RGB (:func:`to_rgb`), or
    raise :class:`BadImageError` naming the file."""
    try:
        with Image.open(path) as image:
            image.load()
            return to_rgb(image)
    except FileNotFoundError as error:
        raise BadImageError(f"image file not found: {path}") from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise BadImageError(f"image file cannot be read: {path} ({type(error).__name__}: {error})") from error


@dataclass(frozen=True)
class Preprocess:
    """CLIP preprocessing, as ``CLIPImageProcessor`` does it: bicubic resize of the short side, centre crop,
    scale to [0, 1], normalise with the CLIP mean/std. Picklable, so DataLoader workers can use it."""

    image_size: int
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD

    def __call__(self, image: Image.Image) -> torch.Tensor:
        width, height = image.size
        scale = self.image_size / min(width, height)
        if scale != 1.0:
            size = (max(self.image_size, round(width * scale)), max(self.image_size, round(height * scale)))
            image = image.resize(size, Image.Resampling.BICUBIC)
        width, height = image.size
        left, top = (width - self.image_size) // 2, (height - self.image_size) // 2
        image = image.crop((left, top, left + self.image_size, top + self.image_size))
        pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
        pixels = pixels.view(self.image_size, self.image_size, 3).permute(2, 0, 1).float() / 255.0
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (pixels - mean) / std


class ClipImageEncoder(nn.Module):
    """A Hugging Face ``CLIPVisionModelWithProjection`` returning the projected image embedding (512-d for
    ViT-B/32). Frozen for good: no gradients, always in eval mode."""

    def __init__(self, clip: nn.Module, name: str) -> None:
        super().__init__()
        self.clip = clip
        self.name = name
        self.preprocess = Preprocess(image_size=int(clip.config.image_size))
        self.embed_dim = int(clip.config.projection_dim)
        self.clip.requires_grad_(False)
        self.eval()  # the wrapper too: Lightning reports (and keeps) each module's own mode

    def train(self, mode: bool = True) -> ClipImageEncoder:
        super().train(False)  # frozen: dropout and friends stay off even when the parent module trains
        return self

    @torch.no_grad()
    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.clip(pixel_values=pixel_values).image_embeds

    def identity(self) -> dict:
        """What the features depend on: model name, config, a hash of the weights, and the preprocessing."""
        digest = hashlib.sha256()
        for key, tensor in sorted(self.clip.state_dict().items()):
            digest.update(key.encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return {
            "name": self.name,
            "config": self.clip.config.to_json_string(use_diff=False),
            "weights_sha256": digest.hexdigest(),
            "preprocess": asdict(self.preprocess),
        }


def file_fingerprint(paths: Sequence[str | Path]) -> list[list]:
    """(absolute path, size, mtime_ns) per file, ``None`` size/mtime for a missing one: one ``stat`` per file,
    changes when a file is replaced, edited or touched."""
    rows = []
    for path in paths:
        try:
            stat = os.stat(path)
            rows.append([os.path.abspath(path), stat.st_size, stat.st_mtime_ns])
        except FileNotFoundError:
            rows.append([os.path.abspath(path), None, None])
    return rows


def directory_identity(folder: str | Path) -> list[list]:
    """The files of a ``save_pretrained`` folder as (name, size, mtime_ns): identifies the weights with a few
    ``stat`` calls instead of loading and hashing them (a rewritten folder gets new mtimes, hence a new key)."""
    folder = Path(folder)
    return [
        [p.relative_to(folder).as_posix(), p.stat().st_size, p.stat().st_mtime_ns]
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.startswith(".")
    ]


def scan_key(paths: Sequence[str | Path], identity: dict | None) -> str:
    """What a scan depends on: the files and, when it computes features, the encoder's identity."""
    payload = {"version": CACHE_VERSION, "files": file_fingerprint(paths), "encoder": identity}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


class ImageFiles(Dataset):
    """``(index, CLIP pixels or None, (reason, detail) or None)`` per file: decoding runs in DataLoader workers,
    and a bad file is reported instead of stopping the pass."""

    def __init__(self, paths: Sequence[str | Path], preprocess: Preprocess | None) -> None:
        self.paths, self.preprocess = list(paths), preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, tuple[str, str] | None]:
        path = self.paths[index]
        if not os.path.exists(path):
            return index, None, ("missing image file", str(path))
        try:
            image = load_rgb(path)
        except BadImageError as error:
            cause = error.__cause__
            detail = f"{path} ({type(cause).__name__ if cause else 'BadImageError'}: {cause or error})"
            return index, None, ("unreadable image file", detail)
        return index, (self.preprocess(image) if self.preprocess is not None else None), None


def _collate_scan(items: list[tuple]) -> list[tuple]:
    return items


@dataclass
class ImageScan:
    """What one pass over an image set found: ``features`` (``N x D`` float32, memory-mapped; rows of bad files
    are zeros; None for a check-only scan) and ``problems`` (row -> (reason, detail))."""

    features: np.ndarray | None
    problems: dict[int, tuple[str, str]]
    hit: bool


@torch.no_grad()
def encode_images(
    paths: Sequence[str | Path],
    encoder: ClipImageEncoder | None,
    batch_size: int = 64,
    num_workers: int = 0,
    device: torch.device | str | None = None,
    out: np.ndarray | None = None,
) -> dict[int, tuple[str, str]]:
    """Decode every file once (``num_workers`` DataLoader workers) and, with an ``encoder``, write its CLIP
    embedding into row ``i`` of ``out`` (batches on ``device``). Returns the problems by row."""
    if encoder is not None and device is not None:
        encoder.to(device)
    device = next(encoder.parameters()).device if encoder is not None else None
    files = ImageFiles(paths, encoder.preprocess if encoder is not None else None)
    loader = DataLoader(
        files,
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=_collate_scan,
        pin_memory=device is not None and device.type == "cuda",
    )
    problems: dict[int, tuple[str, str]] = {}
    for items in loader:
        good = [(index, pixels) for index, pixels, problem in items if problem is None]
        problems |= {index: problem for index, _, problem in items if problem is not None}
        if encoder is not None and good:
            pixels = torch.stack([p for _, p in good]).to(device, non_blocking=True)
            embeds = encoder(pixels).float().cpu().numpy()
            out[[index for index, _ in good]] = embeds
    return problems


def _load_scan(folder: Path, key: str, count: int) -> ImageScan:
    meta = json.loads((folder / "scan.json").read_text("utf-8"))
    if meta.get("key") != key or meta.get("rows") != count:
        raise ValueError(f"holds a scan of another image set ({meta.get('rows')} rows)")
    features = None
    if meta.get("features"):
        features = np.load(folder / "features.npy", mmap_mode="r")
        if features.shape[0] != count:
            raise ValueError(f"features.npy has {features.shape[0]} rows, expected {count}")
    problems = {int(row): (reason, detail) for row, (reason, detail) in meta["problems"].items()}
    return ImageScan(features, problems, hit=True)


def scan_images(
    paths: Sequence[str | Path],
    cache_dir: str | Path,
    identity: dict | None = None,
    make_encoder: Callable[[], ClipImageEncoder] | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    device: torch.device | str | None = None,
) -> ImageScan:
    """The stored scan of ``paths`` (features when ``identity``/``make_encoder`` are given, else only the image
    checks), computing and storing it on a miss.

    A hit costs one ``stat`` per file (the key) and a memory map: no image is decoded, no CLIP is loaded. A miss
    decodes each image once in ``num_workers`` workers and runs ``make_encoder()`` on ``device`` in batches. The
    folder is written atomically; a corrupt one is removed and rebuilt with one warning.
    """
    key = scan_key(paths, identity)
    kind = "clip_features" if identity is not None else "image_checks"
    folder = Path(cache_dir) / f"{kind}-{key[:20]}"
    what = "caption CLIP feature cache" if identity is not None else "caption image-check cache"
    stored = load_cache(folder, lambda f: _load_scan(f, key, len(paths)), what=what)
    if stored is not None:
        return stored
    encoder = make_encoder() if identity is not None else None
    if identity is not None:
        rank_zero_info(
            f"caption: computing CLIP features for {len(paths)} images on {device or 'cpu'} -> {folder}"
        )
    with atomic_dir(folder) as temporary:
        features = None
        if encoder is not None:
            features = np.lib.format.open_memmap(
                temporary / "features.npy", mode="w+", dtype=np.float32, shape=(len(paths), encoder.embed_dim)
            )
        problems = encode_images(paths, encoder, batch_size, num_workers, device, features)
        if features is not None:
            features.flush()
            del features
        meta = {"key": key, "rows": len(paths), "features": encoder is not None, "problems": problems}
        (temporary / "scan.json").write_text(json.dumps(meta, ensure_ascii=False), "utf-8")
    scan = _load_scan(folder, key, len(paths))
    return ImageScan(scan.features, scan.problems, hit=False)


def cached_features(
    paths: Sequence[str | Path],
    encoder: ClipImageEncoder,
    cache_dir: str | Path,
    batch_size: int = 64,
    num_workers: int = 0,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, bool]:
    """Features of ``paths`` (in order) from ``cache_dir``, computing and storing them on a miss; a missing or
    unreadable image is a :class:`BadImageError` naming it. Returns ``(features, hit)``."""
    scan = scan_images(paths, cache_dir, encoder.identity(), lambda: encoder, batch_size, num_workers, device)
    if scan.problems:
        reason, detail = scan.problems[min(scan.problems)]
        raise BadImageError(f"{reason}: {detail}")
    return torch.from_numpy(np.array(scan.features)), scan.hit
