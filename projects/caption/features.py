"""CLIP image encoder, its preprocessing, and the on-disk cache of image embeddings.

The encoder is always frozen, so its output for a given image never changes during training: computing it once
per (image set, CLIP weights, preprocessing) and reading it back from disk saves the ViT forward on every step.
The cache file name is a hash of exactly those three things (file paths with sizes and mtimes; the model's name,
config and a hash of its weights; image size and normalisation), so changing any of them computes a new file
instead of reusing stale features.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_info
from PIL import Image, UnidentifiedImageError
from torch import nn

from common.errors import InputError
from common.io import atomic_path

CACHE_VERSION = 1
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class BadImageError(InputError):
    """An image file that is missing or cannot be decoded; the message names the file."""


def load_rgb(path: str | Path) -> Image.Image:
    """Open an image as RGB, or raise :class:`BadImageError` naming the file."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except FileNotFoundError as error:
        raise BadImageError(f"image file not found: {path}") from error
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
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
            image = image.resize((max(self.image_size, round(width * scale)), max(self.image_size, round(height * scale))),
                                 Image.Resampling.BICUBIC)
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
def encode_images(paths: Sequence[str | Path], encoder: ClipImageEncoder, batch_size: int = 64) -> torch.Tensor:
    """Run CLIP over image files in batches; ``N x D`` float32 features on CPU."""
    device = next(encoder.parameters()).device
    chunks = []
    for start in range(0, len(paths), batch_size):
        pixels = torch.stack([encoder.preprocess(load_rgb(p)) for p in paths[start:start + batch_size]])
        chunks.append(encoder(pixels.to(device)).float().cpu())
    return torch.cat(chunks) if chunks else torch.zeros(0, encoder.embed_dim)


def cached_features(
    paths: Sequence[str | Path], encoder: ClipImageEncoder, cache_dir: str | Path, batch_size: int = 64
) -> tuple[torch.Tensor, bool]:
    """Features of ``paths`` (in order) from ``cache_dir``, computing and storing them on a miss.

    Returns ``(features, hit)``. The file is written atomically (temp file + rename), so an interrupted run
    never leaves a truncated cache behind.
    """
    key = cache_key(paths, encoder)
    path = Path(cache_dir) / f"clip_features-{key[:20]}.pt"
    if path.exists():
        stored = torch.load(path, map_location="cpu", weights_only=True)
        if stored.get("key") == key and stored["features"].shape[0] == len(paths):
            return stored["features"], True
    rank_zero_info(f"caption: computing CLIP features for {len(paths)} images -> {path}")
    features = encode_images(paths, encoder, batch_size)
    with atomic_path(path) as temporary:
        torch.save({"key": key, "features": features}, temporary)
    return features, False
