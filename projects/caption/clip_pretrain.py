"""The tiny CLIP vision encoder of the CPU runs, prepared once: random init, optionally followed by a short,
honest pre-training.

Why: real ClipCap freezes a CLIP that was trained on 400M image-text pairs. The default run cannot download it,
and a randomly initialised ViT, frozen, gives embeddings from which the scene (which colour and which shape
is on which side) is poorly recoverable (measured with ``python -m projects.caption.clip_pretrain``, see the
README). So, once, before captioning, the tiny encoder is trained for a few hundred steps to predict the
generated training scenes' attributes (layout, colour and shape of the first and second object: five
softmax heads on the projected image embedding), then saved and frozen like a real CLIP. Only training-split
images are used. The result is cached in ``<generated root>/clip_tiny-<hash>/`` (``save_pretrained``), keyed by
the encoder config, the training settings and the generated set's manifest; without ``pretrain`` the seeded
random init is saved the same way, so the feature cache and the model load the very same weights.

This is a stand-in for CLIP's pre-training, not CLIP: with real weights (``data.init_args.clip.name:
openai/clip-vit-base-patch32``) this step is off.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from common.io import atomic_dir, load_cache
from projects.caption import generate
from projects.caption.features import Preprocess, load_rgb


@dataclass(frozen=True)
class ClipPretrain:
    """Settings of the scene-attribute pre-training (AdamW, one-cycle schedule, batches of training images)."""

    steps: int = 600
    lr: float = 2e-3
    batch_size: int = 64
    seed: int = 0


def load_scene_set(root: Path, split: str, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Preprocessed pixels ``N x 3 x S x S`` and attribute targets ``N x 5`` of a generated split."""
    coco = json.loads((root / f"{split}.json").read_text("utf-8"))
    scenes = json.loads((root / "attributes.json").read_text("utf-8"))
    preprocess = Preprocess(image_size)
    pixels = torch.stack([preprocess(load_rgb(root / image["file_name"])) for image in coco["images"]])
    targets = torch.tensor([generate.attribute_targets(scenes[str(image["id"])]) for image in coco["images"]])
    return pixels, targets


def attribute_loss(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy over the five attribute heads, and per-head accuracy."""
    losses, accuracies, start = [], [], 0
    for head, classes in enumerate(generate.ATTRIBUTE_CLASSES):
        part = logits[:, start : start + classes]
        losses.append(nn.functional.cross_entropy(part, targets[:, head]))
        accuracies.append((part.argmax(-1) == targets[:, head]).float().mean())
        start += classes
    return torch.stack(losses).sum(), torch.stack(accuracies)


def probe_accuracy(
    train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor, steps: int = 300
) -> list[float]:
    """Linear-probe accuracy per attribute on frozen embeddings: how much of the scene they carry."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    probe = nn.Linear(train_x.shape[1], sum(generate.ATTRIBUTE_CLASSES))
    optimizer = torch.optim.Adam(probe.parameters(), lr=1e-2)
    for _ in range(steps):
        loss, _ = attribute_loss(probe((train_x - mean) / std), train_y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        _, accuracy = attribute_loss(probe((val_x - mean) / std), val_y)
    return [round(float(a), 3) for a in accuracy]


def tiny_clip_dir(clip_config: dict, pretrain: ClipPretrain | None, root: str | Path, manifest: dict) -> Path:
    """Where the prepared tiny CLIP of these settings lives (cheap: nothing is built)."""
    if pretrain is None:
        settings = {"config": clip_config, "seed": 0, "objective": "random-init-v1"}
    else:  # the same key as before the layout change, so existing prepared encoders are reused
        settings = {
            **{"config": clip_config},
            **asdict(pretrain),
            "data": manifest,
            "objective": "scene-attributes-v1",
        }
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    return Path(root) / f"clip_tiny-{key}"


def _train(
    clip_config: dict, pretrain: ClipPretrain, root: Path
) -> tuple[CLIPVisionModelWithProjection, list]:
    rank_zero_info(
        f"caption: pre-training the tiny CLIP encoder on scene attributes ({pretrain.steps} steps)"
    )
    model = CLIPVisionModelWithProjection(CLIPVisionConfig(**clip_config))
    head = nn.Linear(model.config.projection_dim, sum(generate.ATTRIBUTE_CLASSES))
    train_x, train_y = load_scene_set(root, "train", model.config.image_size)
    val_x, val_y = load_scene_set(root, "val", model.config.image_size)
    params = list(model.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=pretrain.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=pretrain.lr, total_steps=pretrain.steps, pct_start=0.1
    )
    generator = torch.Generator().manual_seed(pretrain.seed)
    model.train()
    for step in range(pretrain.steps):
        index = torch.randint(len(train_x), (pretrain.batch_size,), generator=generator)
        loss, accuracy = attribute_loss(head(model(pixel_values=train_x[index]).image_embeds), train_y[index])
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        if (step + 1) % 100 == 0:
            rank_zero_info(
                f"  clip pre-train step {step + 1}: loss {loss.item():.3f}, "
                f"batch attribute accuracy {[round(float(a), 2) for a in accuracy]}"
            )
    model.eval()
    with torch.no_grad():
        _, val_accuracy = attribute_loss(head(model(pixel_values=val_x).image_embeds), val_y)
    return model, [round(float(a), 3) for a in val_accuracy]


def prepare_tiny_clip(clip_config: dict, pretrain: ClipPretrain | None, root: str | Path) -> Path:
    """Build (once) and save the tiny CLIP; return its ``save_pretrained`` directory.

    ``root`` is the generated set (needed only with ``pretrain``). The directory is written under a temporary name
    and renamed, so a reader never sees half of it; a corrupt one is removed with one warning and rebuilt.
    """
    root = Path(root)
    manifest = generate.read_manifest(root) if pretrain is not None else {}
    out = tiny_clip_dir(clip_config, pretrain, root, manifest)
    if (
        load_cache(out, lambda p: CLIPVisionModelWithProjection.from_pretrained(str(p)), "tiny CLIP")
        is not None
    ):
        return out
    with torch.random.fork_rng():  # leave the run's global RNG untouched
        torch.manual_seed(0 if pretrain is None else pretrain.seed)
        if pretrain is None:
            model, report = CLIPVisionModelWithProjection(CLIPVisionConfig(**clip_config)), None
        else:
            model, accuracy = _train(clip_config, pretrain, root)
            report = {
                "settings": {"config": clip_config, **asdict(pretrain), "data": manifest},
                "val_attribute_accuracy": accuracy,
                "attributes": ["layout", "first colour", "first shape", "second colour", "second shape"],
            }
            rank_zero_info(f"caption: tiny CLIP val attribute accuracy {accuracy}")
    with atomic_dir(out) as temporary:  # save_pretrained writes several files: renamed as one folder
        model.save_pretrained(str(temporary))
        if report is not None:
            (temporary / "pretrain_report.json").write_text(json.dumps(report, indent=2))
    return out


def measure(clip_config: dict, pretrain: ClipPretrain, root: Path = generate.DEFAULT_ROOT) -> dict:
    """Linear-probe accuracy of frozen embeddings: random-init tiny CLIP vs the attribute-pre-trained one
    (``pretrain``: the settings of the config, so the prepared encoder of the run is reused)."""
    generate.generate(root)
    results = {}
    torch.manual_seed(0)
    pretrained = CLIPVisionModelWithProjection.from_pretrained(
        str(prepare_tiny_clip(clip_config, pretrain, root))
    )
    for name, model in (
        ("random_init", CLIPVisionModelWithProjection(CLIPVisionConfig(**clip_config))),
        ("pretrained", pretrained),
    ):
        model.eval()
        with torch.no_grad():
            train_x, train_y = load_scene_set(root, "train", model.config.image_size)
            val_x, val_y = load_scene_set(root, "val", model.config.image_size)
            train_f, val_f = model(pixel_values=train_x).image_embeds, model(pixel_values=val_x).image_embeds
        results[name] = probe_accuracy(train_f, train_y, val_f, val_y)
    return results


if __name__ == "__main__":
    import yaml

    clip = yaml.safe_load(Path("configs/caption/default.yaml").read_text())["data"]["init_args"]["clip"]
    print(
        "linear-probe val accuracy [layout, colour1, shape1, colour2, shape2]:",
        json.dumps(measure(clip["config"], ClipPretrain(**clip["pretrain"]))),
    )
