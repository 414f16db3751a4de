"""CLIP image encoder, image decoding, CLIP preprocessing, and the on-disk cache of image embeddings.

The encoder is always frozen, so its output for a given image never changes during training: computing it once
per (image set, CLIP weights, preprocessing) and reading it back from disk saves the ViT forward on every step
(ClipCap's ``parse_coco.py`` does the same as a preparation step). The cache file name is a hash of exactly those
three things (file paths with sizes and mtimes; the model's name, config and a hash of its weights; image size and
normalisation), so changing any of them computes a new file instead of reusing stale features.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from PIL import Image, UnidentifiedImageError
from torch import nn

from common.errors import InputError
from common.io import atomic_path, load_cache

CACHE_VERSION = 1
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
        self.clip.eval()

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
    """(absolute path, size, mtime_ns) per file: changes when a file is replaced, edited or touched."""
    rows = []
    for path in paths:
        try:
            stat = os.stat(path)
        except FileNotFoundError as error:
            raise BadImageError(f"image file not found: {path}") from error
        rows.append([str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns])
    return rows


def cache_key(paths: Sequence[str | Path], encoder: ClipImageEncoder) -> str:
    payload = {"version": CACHE_VERSION, "files": file_fingerprint(paths), "encoder": encoder.identity()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


@torch.no_grad()
def encode_images(
    paths: Sequence[str | Path], encoder: ClipImageEncoder, batch_size: int = 64
) -> torch.Tensor:
    """Run CLIP over image files in batches; ``N x D`` float32 features on CPU."""
    device = next(encoder.parameters()).device
    chunks = []
    for start in range(0, len(paths), batch_size):
        pixels = torch.stack([encoder.preprocess(load_rgb(p)) for p in paths[start : start + batch_size]])
        chunks.append(encoder(pixels.to(device)).float().cpu())
    return torch.cat(chunks) if chunks else torch.zeros(0, encoder.embed_dim)


def feature_cache_path(paths: Sequence[str | Path], encoder: ClipImageEncoder, cache_dir: str | Path) -> Path:
    return Path(cache_dir) / f"clip_features-{cache_key(paths, encoder)[:20]}.pt"


def _load_features(path: Path, key: str, count: int) -> torch.Tensor:
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch's own text suggests weights_only=False: never for a cache
        raise ValueError(f"not a readable feature file ({type(error).__name__})") from None
    if stored.get("key") != key or stored["features"].shape[0] != count:
        raise ValueError(f"holds features for another image set ({stored['features'].shape[0]} rows)")
    return stored["features"]


def load_cached_features(
    paths: Sequence[str | Path], encoder: ClipImageEncoder, cache_dir: str | Path
) -> torch.Tensor | None:
    """The cached features of ``paths``, or None when there is no usable cache (a corrupt one is removed with
    one warning)."""
    key = cache_key(paths, encoder)
    path = Path(cache_dir) / f"clip_features-{key[:20]}.pt"
    return load_cache(path, lambda p: _load_features(p, key, len(paths)), what="caption CLIP feature cache")


def cached_features(
    paths: Sequence[str | Path], encoder: ClipImageEncoder, cache_dir: str | Path, batch_size: int = 64
) -> tuple[torch.Tensor, bool]:
    """Features of ``paths`` (in order) from ``cache_dir``, computing and storing them on a miss.

    Returns ``(features, hit)``. The file is written atomically (temp file + rename), so an interrupted run
    never leaves a truncated cache behind; a corrupt or truncated file is rebuilt with one warning.
    """
    features = load_cached_features(paths, encoder, cache_dir)
    if features is not None:
        return features, True
    key = cache_key(paths, encoder)
    path = Path(cache_dir) / f"clip_features-{key[:20]}.pt"
    rank_zero_info(f"caption: computing CLIP features for {len(paths)} images -> {path}")
    features = encode_images(paths, encoder, batch_size)
    with atomic_path(path) as temporary:
        torch.save({"key": key, "features": features}, temporary)
    return features, False
