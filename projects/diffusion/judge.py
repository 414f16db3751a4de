"""The judge: the character classifier whose features / logits give FID, IS and conditional accuracy.

The standard Inception network is not available offline, and it was trained on photos, not 28 x 28 glyphs; a
CNN trained on the same characters gives features that separate them. Its numbers are only as good as the
judge, so it is trained to convergence (optimiser steps with early stopping on a held-out part of the training
images, augmented with the small affine changes handwriting has) and its accuracy on the validation images is
reported with every validation (``val/judge_acc``); below ``min_accuracy`` every run warns that FID / IS /
accuracy are unreliable.

Preparation runs once: ``CharacterDataModule.prepare_data`` (or ``python -m projects.diffusion.prepare``) calls
:func:`ensure_judge`, which trains it unless the cache file for exactly this data and these settings loads.
Training uses its own generator inside ``torch.random.fork_rng``: the diffusion run's randomness is the same
whether the judge was trained in this process or loaded from the cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import TensorDataset

from common.errors import InputError, MissingInputError
from common.io import atomic_path, load_cache
from common.metrics.image_quality import ExtractorFID
from projects.diffusion.model import CharClassifier

ARCH_VERSION = 3  # part of the cache key: a changed architecture or training loop never loads a stale judge


@dataclass
class JudgeConfig:
    """How the judge is trained (every field is part of the cache key).

    Args:
        max_steps: optimiser steps at most (AdamW, cosine decay to 0 over ``max_steps``).
        eval_every: steps between held-out evaluations.
        patience: evaluations without a better held-out accuracy before stopping early.
        holdout_fraction: share of each class's training images kept out for early stopping.
        batch_size / lr / weight_decay: the optimiser.
        rotate_degrees / shift / scale: random affine augmentation (uniform in +-degrees, +- fraction of the
            side, 1 +- scale), the variation handwriting has; applied to every training batch.
        min_accuracy: below this validation accuracy the judge's FID / IS / accuracy are marked unreliable.
        seed: the judge's own generator (initial weights, batches, augmentation).
    """

    max_steps: int = 2000
    eval_every: int = 100
    patience: int = 3
    holdout_fraction: float = 0.1
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 1e-4
    rotate_degrees: float = 12.0
    shift: float = 0.08
    scale: float = 0.1
    min_accuracy: float = 0.95
    seed: int = 0


@dataclass
class JudgeReport:
    """What the judge's cache file says about it (printed, logged as ``val/judge_acc``)."""

    val_acc: float  # on every held-out image of the chosen classes
    steps: int
    fid_floor: float  # held-out real images vs the training images, in the judge's features
    num_train: int
    num_heldout: int
    min_accuracy: float

    def summary(self) -> str:
        min_accuracy = self.min_accuracy
        verdict = "ok" if self.val_acc >= min_accuracy else f"BELOW {min_accuracy:.2f}: UNRELIABLE"
        return (
            f"judge accuracy {self.val_acc:.3f} on {self.num_heldout} held-out images ({verdict}), "
            f"{self.steps} steps; FID floor {self.fid_floor:.3f} ({self.num_heldout} held-out real vs "
            f"{self.num_train} training images)"
        )


def unreliable_warning(acc: float, min_accuracy: float) -> str | None:
    """The loud line when the judge is too weak for its numbers to mean anything."""
    if acc >= min_accuracy:
        return None
    return (
        f"!!! the FID/IS/accuracy judge reaches only {acc:.3f} held-out accuracy (< {min_accuracy:.2f}): "
        "fid/is/cond_acc of this run are UNRELIABLE (train it longer: data.init_args.judge.max_steps) !!!"
    )


def augment(images: Tensor, config: JudgeConfig, generator: torch.Generator) -> Tensor:
    """Random rotation, shift and scale per image (one bilinear resampling); background stays at -1."""
    n = len(images)
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(config.rotate_degrees)
    scale = 1 + (torch.rand(n, generator=generator) * 2 - 1) * config.scale
    shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * config.shift * 2  # grid units: side = 2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    ink = F.grid_sample(images + 1, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return ink - 1


def stratified_holdout(labels: Tensor, fraction: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Indices (train, holdout): ``fraction`` of each class (at least one image when a class has two)."""
    train, holdout = [], []
    for label in labels.unique():
        where = torch.nonzero(labels == label).flatten()
        where = where[torch.randperm(len(where), generator=generator)]
        cut = min(len(where) - 1, max(1, round(fraction * len(where)))) if len(where) > 1 else 0
        holdout.append(where[:cut])
        train.append(where[cut:])
    return torch.cat(train).sort().values, torch.cat(holdout).sort().values


@torch.no_grad()
def accuracy(net: CharClassifier, dataset: TensorDataset) -> float:
    """Share of ``dataset`` that ``net`` classifies right. Slices, not a DataLoader: creating a DataLoader
    iterator draws a seed from the global RNG, which would shift the diffusion run's random stream."""
    net.eval()
    images, labels = dataset.tensors
    correct = sum(
        int((net(images[i : i + 512]).argmax(1) == labels[i : i + 512]).sum())
        for i in range(0, len(images), 512)
    )
    return correct / max(1, len(images))


def train_judge(
    train_set: TensorDataset, num_classes: int, config: JudgeConfig, log: bool = True
) -> tuple[CharClassifier, int]:
    """Optimiser steps with early stopping on a held-out share of ``train_set``; the best state is kept.

    Returns the net (eval mode) and the step of its best held-out accuracy. Leaves the global RNG untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)  # weight init draws from the global RNG (restored on exit)
        generator = torch.Generator().manual_seed(config.seed)
        images, labels = train_set.tensors
        fit_index, holdout_index = stratified_holdout(labels, config.holdout_fraction, generator)
        holdout = TensorDataset(images[holdout_index], labels[holdout_index])
        net = CharClassifier(num_classes)
        optimizer = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda step: 0.5 * (1 + math.cos(math.pi * min(step, config.max_steps) / config.max_steps)),
        )
        best_acc, best_step, best_state, waited, step = -1.0, 0, None, 0, 0
        while step < config.max_steps and waited < config.patience:
            order = fit_index[torch.randperm(len(fit_index), generator=generator)]
            for start in range(0, max(1, len(order) - config.batch_size + 1), config.batch_size):
                batch = order[start : start + config.batch_size]
                net.train()
                loss = F.cross_entropy(net(augment(images[batch], config, generator)), labels[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                step += 1
                if step % config.eval_every == 0 or step == config.max_steps:
                    acc = accuracy(net, holdout) if len(holdout) else 0.0
                    if acc > best_acc:
                        best_acc, best_step, waited = acc, step, 0
                        best_state = {k: v.clone() for k, v in net.state_dict().items()}
                    else:
                        waited += 1
                    if log:
                        print(
                            f"[diffusion] judge step {step}: loss {loss.item():.3f}, early-stopping "
                            f"accuracy {acc:.3f} (best {best_acc:.3f} at {best_step})",
                            flush=True,
                        )
                if step >= config.max_steps or waited >= config.patience:
                    break
        if best_state is not None:
            net.load_state_dict(best_state)
    return net.eval(), best_step


@torch.no_grad()
def fid_between(judge: CharClassifier, reference: Tensor, other: Tensor, batch_size: int = 512) -> float:
    """FID of ``other`` against ``reference`` (both ``N x 1 x S x S`` in [-1, 1]) in the judge's features."""
    fid = ExtractorFID(judge)
    for start in range(0, len(reference), batch_size):
        fid.update(reference[start : start + batch_size], real=True)
    for start in range(0, len(other), batch_size):
        fid.update(other[start : start + batch_size], real=False)
    return float(fid.compute())


def judge_cache_path(cache_dir: str | Path, identity: dict[str, Any], config: JudgeConfig) -> Path:
    """File name keyed by everything that changes the judge: the data's identity (a hash of its files, or the
    generator's settings), classes, image size, architecture and every training setting."""
    key = json.dumps([identity, dataclasses.asdict(config), ARCH_VERSION], sort_keys=True)
    return Path(cache_dir) / f"judge_{hashlib.sha1(key.encode()).hexdigest()[:12]}.pt"


def save_judge(net: CharClassifier, path: str | Path, class_names: list[str], report: JudgeReport) -> None:
    with atomic_path(path) as temporary:  # an interrupted run leaves no truncated judge behind
        torch.save(
            {
                "state_dict": net.state_dict(),
                "num_classes": net.num_classes,
                "num_features": net.num_features,
                "class_names": "".join(class_names),
                "report": dataclasses.asdict(report),
            },
            temporary,
        )


def _read(path: Path) -> dict[str, Any]:
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError("not a judge checkpoint (no state_dict)")
    return checkpoint


def load_judge(
    path: str | Path, class_names: list[str] | None = None
) -> tuple[CharClassifier, JudgeReport | None]:
    """The judge saved by :func:`save_judge`, or a ``tgm fit`` checkpoint of ``JudgeModule`` (no report).

    A user-given file that is missing or unreadable is an input error (not silently replaced); a judge trained on
    other classes is refused.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(
            f"judge checkpoint '{path}' not found (run `python -m projects.diffusion.prepare --config ...` or "
            "`tgm fit --config configs/diffusion/classifier.yaml`)"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file is one line naming it
        raise InputError(f"judge checkpoint '{path}' cannot be read ({type(error).__name__})") from None
    report = None
    if "hyper_parameters" in checkpoint:  # a Lightning checkpoint of JudgeModule
        hparams = checkpoint["hyper_parameters"]
        state = {
            k.removeprefix("net."): v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")
        }
        num_classes, names = hparams["num_classes"], hparams.get("class_names")
        if isinstance(names, list):
            names = "".join(names)
        num_features = state["head.weight"].shape[1]
    else:
        state, num_classes = checkpoint["state_dict"], checkpoint["num_classes"]
        names, num_features = checkpoint.get("class_names"), checkpoint["num_features"]
        report = JudgeReport(**checkpoint["report"]) if "report" in checkpoint else None
    if class_names is not None and names is not None and names != "".join(class_names):
        raise InputError(
            f"judge '{path}' was trained on classes '{names}', the data has '{''.join(class_names)}'; its "
            "features and labels would not match"
        )
    with torch.random.fork_rng(devices=[]):  # the initial weights (overwritten) would consume the run's RNG
        net = CharClassifier(num_classes, num_features)
    net.load_state_dict(state)
    return net.eval().requires_grad_(False), report


def ensure_judge(
    path: str | Path,
    train_set: TensorDataset,
    heldout_set: TensorDataset,
    class_names: list[str],
    config: JudgeConfig,
) -> tuple[CharClassifier, JudgeReport]:
    """Load the cached judge, or train, measure (accuracy on ``heldout_set``, FID floor of ``heldout_set`` vs
    ``train_set``) and cache it. A corrupt, truncated or empty cache is rebuilt with one warning."""
    path = Path(path)
    cached = load_cache(path, lambda p: load_judge(p, class_names), what="judge cache")
    if cached is not None and cached[1] is not None:
        net, report = cached
    else:
        print(
            f"[diffusion] training the FID/IS/accuracy judge on {len(train_set)} images (at most "
            f"{config.max_steps} steps, early stopping) -> {path}",
            flush=True,
        )
        net, steps = train_judge(train_set, len(class_names), config)
        floor = fid_between(net, train_set.tensors[0], heldout_set.tensors[0])
        report = JudgeReport(
            accuracy(net, heldout_set), steps, floor, len(train_set), len(heldout_set), config.min_accuracy
        )
        save_judge(net, path, class_names, report)
    print(f"[diffusion] {report.summary()}", flush=True)
    message = unreliable_warning(report.val_acc, report.min_accuracy)
    if message:
        warnings.warn(message, UserWarning, stacklevel=2)
    return net.requires_grad_(False), report
