"""The judge: the character classifier whose features / logits give FID, IS and conditional accuracy.

The standard Inception network is not available offline, and it was trained on photos, not 28 x 28 glyphs; a
CNN trained on the same characters gives features that separate them. Its numbers are only as good as the
judge, so it is trained to convergence (epochs over the training images, so the budget grows with the data,
with early stopping on a held-out part of them, augmented with the small affine changes handwriting has) on the
trainer's device, batches coming from DataLoader workers, and its accuracy on the validation images is
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
from torch.utils.data import DataLoader

from common.errors import InputError, MissingInputError
from common.io import atomic_path, load_cache
from common.metrics.image_quality import ExtractorFID
from projects.diffusion.model import CharClassifier

ARCH_VERSION = 5  # part of the cache key: a changed architecture or training loop never loads a stale judge


@dataclass
class JudgeConfig:
    """How the judge is trained (every field is part of the cache key).

    Args:
        max_epochs: passes over the training images at most (AdamW, cosine decay to 0 over all their steps).
            Epochs, not steps: a fixed step cap left the judge at 0.037 accuracy at EMNIST-byclass size.
        patience: epochs without a better held-out accuracy before stopping early (evaluated every epoch).
        holdout_fraction: share of each class's training images kept out for early stopping.
        batch_size / lr / weight_decay: the optimiser.
        rotate_degrees / shift / scale: random affine augmentation (uniform in +-degrees, +- fraction of the
            side, 1 +- scale), the variation handwriting has; applied to every training batch.
        min_accuracy: below this validation accuracy the judge's FID / IS / accuracy are marked unreliable.
        floor_samples: the FID floor compares at most this many held-out and as many (random) training images:
            bounded cost at any data size (FID's bias at 10,000 samples is far below the figures it judges).
        seed: the judge's own generator (initial weights, batches, augmentation).
    """

    max_epochs: int = 40
    patience: int = 3
    holdout_fraction: float = 0.1
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 1e-4
    rotate_degrees: float = 12.0
    shift: float = 0.08
    scale: float = 0.1
    min_accuracy: float = 0.95
    floor_samples: int = 10_000
    seed: int = 0


@dataclass
class JudgeReport:
    """What the judge's cache file says about it (printed, logged as ``val/judge_acc``)."""

    val_acc: float  # on every held-out image of the chosen classes
    steps: int
    fid_floor: float  # held-out real images vs as many training images, in the judge's features
    num_train: int  # training images in the floor (at most floor_samples)
    num_heldout: int  # held-out images in the accuracy (all of them)
    min_accuracy: float
    device: str = "cpu"
    floor_heldout: int = 0  # held-out images in the floor (at most floor_samples)

    def summary(self) -> str:
        min_accuracy = self.min_accuracy
        verdict = "ok" if self.val_acc >= min_accuracy else f"BELOW {min_accuracy:.2f}: UNRELIABLE"
        return (
            f"judge accuracy {self.val_acc:.3f} on {self.num_heldout} held-out images ({verdict}), "
            f"{self.steps} steps on {self.device}; FID floor {self.fid_floor:.3f} ({self.floor_heldout} held-out real vs "
            f"{self.num_train} training images)"
        )


def unreliable_warning(acc: float, min_accuracy: float) -> str | None:
    """The loud line when the judge is too weak for its numbers to mean anything."""
    if acc >= min_accuracy:
        return None
    return (
        f"!!! the FID/IS/accuracy judge reaches only {acc:.3f} held-out accuracy (< {min_accuracy:.2f}): "
        "fid/is/cond_acc of this run are UNRELIABLE (train it longer: data.init_args.judge.max_epochs) !!!"
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
    grid = F.affine_grid(theta.to(images.device, images.dtype), list(images.shape), align_corners=False)
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
def accuracy(
    net: CharClassifier, dataset, device: str | torch.device = "cpu", batch_size: int = 512
) -> float:
    """Share of ``dataset`` (``CharacterImages``) that ``net`` classifies right, in batches on ``device``.
    Slices, not a DataLoader: creating a DataLoader iterator draws a seed from the global RNG, which would shift
    the diffusion run's random stream."""
    net.eval()
    labels = dataset.labels
    correct = 0
    for start in range(0, len(dataset), batch_size):
        images = dataset.images(slice(start, start + batch_size)).to(device)
        correct += int((net(images).argmax(1).cpu() == labels[start : start + batch_size]).sum())
    return correct / max(1, len(dataset))


def train_judge(
    train_set,
    num_classes: int,
    config: JudgeConfig,
    log: bool = True,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
) -> tuple[CharClassifier, int]:
    """Epochs over ``train_set`` (``CharacterImages``) on ``device``, batches from ``num_workers`` DataLoader
    workers, early stopping on a held-out share evaluated after every epoch; the best state is kept.

    Returns the net (eval mode, on CPU) and the step of its best held-out accuracy. Leaves the global RNG
    untouched (the loader's shuffling and worker seeds come from the judge's own generator)."""
    device = torch.device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)  # weight init draws from the global RNG (restored on exit)
        generator = torch.Generator().manual_seed(config.seed)
        fit_index, holdout_index = stratified_holdout(train_set.labels, config.holdout_fraction, generator)
        holdout = train_set.subset(holdout_index.numpy())
        fit_set = train_set.subset(fit_index.numpy())
        loader = DataLoader(
            fit_set,
            batch_size=config.batch_size,
            shuffle=True,
            drop_last=len(fit_set) > config.batch_size,
            num_workers=num_workers,
            generator=generator,
            pin_memory=device.type == "cuda",
        )
        net = CharClassifier(num_classes).to(device)
        optimizer = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        total = max(1, config.max_epochs * len(loader))
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
        )
        best_acc, best_step, best_state, waited, step = -1.0, 0, None, 0, 0
        for epoch in range(config.max_epochs):
            net.train()
            for images, labels in loader:
                images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
                loss = F.cross_entropy(net(augment(images, config, generator)), labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                step += 1
            acc = accuracy(net, holdout, device) if len(holdout) else 0.0
            if acc > best_acc:
                best_acc, best_step, waited = acc, step, 0
                best_state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
            else:
                waited += 1
            if log:
                print(
                    f"[diffusion] judge epoch {epoch} (step {step}): loss {loss.item():.3f}, early-stopping "
                    f"accuracy {acc:.3f} (best {best_acc:.3f} at step {best_step})",
                    flush=True,
                )
            if waited >= config.patience:
                break
        net = net.cpu()
        if best_state is not None:
            net.load_state_dict(best_state)
    return net.eval(), best_step


@torch.no_grad()
def fid_between(
    judge: CharClassifier,
    reference: Tensor,
    other: Tensor,
    batch_size: int = 512,
    device: str | torch.device = "cpu",
) -> float:
    """FID of ``other`` against ``reference`` (both ``N x 1 x S x S`` in [-1, 1]) in the judge's features."""
    fid = ExtractorFID(judge).to(device)
    for start in range(0, len(reference), batch_size):
        fid.update(reference[start : start + batch_size].to(device), real=True)
    for start in range(0, len(other), batch_size):
        fid.update(other[start : start + batch_size].to(device), real=False)
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
    try:
        net.load_state_dict(state)
    except RuntimeError:
        raise InputError(
            f"judge checkpoint '{path}' does not fit the judge network (model.CharClassifier uses BatchNorm since "
            "issue 24; a GroupNorm judge saved before cannot be loaded): retrain it with "
            "`tgm fit --config configs/diffusion/classifier.yaml`"
        ) from None
    return net.eval().requires_grad_(False), report


def ensure_judge(
    path: str | Path,
    train_set,
    heldout_set,
    class_names: list[str],
    config: JudgeConfig,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
) -> tuple[CharClassifier, JudgeReport]:
    """Load the cached judge, or train it on ``device``, measure it (accuracy on every ``heldout_set`` image,
    FID floor of at most ``config.floor_samples`` held-out vs as many training images) and cache it. A corrupt,
    truncated or empty cache is rebuilt with one warning."""
    path = Path(path)
    cached = load_cache(path, lambda p: load_judge(p, class_names), what="judge cache")
    if cached is not None and cached[1] is not None:
        net, report = cached
    else:
        print(
            f"[diffusion] training the FID/IS/accuracy judge on {len(train_set)} images (at most "
            f"{config.max_epochs} epochs, early stopping) on {device} -> {path}",
            flush=True,
        )
        net, steps = train_judge(train_set, len(class_names), config, device=device, num_workers=num_workers)
        net = net.to(device)
        pick = torch.Generator().manual_seed(config.seed)
        heldout_pick = torch.randperm(len(heldout_set), generator=pick)[: config.floor_samples].numpy()
        train_pick = torch.randperm(len(train_set), generator=pick)[: config.floor_samples].numpy()
        with torch.random.fork_rng(devices=[]):
            floor = fid_between(
                net, train_set.images(train_pick), heldout_set.images(heldout_pick), device=device
            )
        report = JudgeReport(
            accuracy(net, heldout_set, device),
            steps,
            floor,
            len(train_pick),
            len(heldout_set),
            config.min_accuracy,
            str(device),
            len(heldout_pick),
        )
        net = net.cpu()
        save_judge(net, path, class_names, report)
    print(f"[diffusion] {report.summary()}", flush=True)
    message = unreliable_warning(report.val_acc, report.min_accuracy)
    if message:
        warnings.warn(message, UserWarning, stacklevel=2)
    return net.requires_grad_(False), report
