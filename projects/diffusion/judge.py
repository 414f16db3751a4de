"""A small character classifier: the feature extractor for FID / IS and the judge of conditional samples.

The standard Inception network is not available offline, and it was trained on photos, not 28 x 28 glyphs;
a CNN trained on the same characters gives features that actually separate them. Train it with
``tgm fit --config configs/diffusion/classifier.yaml`` or let :func:`ensure_classifier` train it on first use.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from common.errors import InputError, MissingInputError
from common.io import atomic_path
from common.metrics.image_quality import Extractor

ARCH_VERSION = 2  # part of the cache key: a changed architecture never loads a stale checkpoint


class CharClassifier(Extractor):
    """conv(16) -> conv(32) -> conv(64) (two 3x3 convs each) -> global average -> 64-d features -> linear -> logits.

    Small on purpose: it is trained on CPU before the first diffusion epoch. Input ``N x 1 x S x S`` in
    [-1, 1], any S >= 8 (global pooling). GroupNorm, not BatchNorm, so a sample's features never depend on the
    other samples in its batch (or on running statistics).
    """

    name = "charclf"

    def __init__(self, num_classes: int, num_features: int = 64) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.num_features = num_features
        width = num_features // 4

        def block(c_in: int, c_out: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.GroupNorm(4, c_out), nn.SiLU(),
                                 nn.Conv2d(c_out, c_out, 3, padding=1), nn.GroupNorm(4, c_out), nn.SiLU())

        self.body = nn.Sequential(block(1, width), nn.MaxPool2d(2), block(width, 2 * width), nn.MaxPool2d(2),
                                  block(2 * width, num_features), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(num_features, num_classes)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.body(images))

    def extract(self, images: Tensor) -> tuple[Tensor, Tensor]:
        features = self.body(images)
        return features, self.head(features)


class CharClassifierModule(pl.LightningModule):
    """Lightning wrapper so the classifier trains with ``tgm fit`` like everything else."""

    def __init__(self, num_classes: int, class_names: str | None = None, lr: float = 2e-3,
                 weight_decay: float = 1e-4) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = CharClassifier(num_classes)

    def setup(self, stage: str) -> None:
        data = getattr(self.trainer, "datamodule", None)
        if data is not None and getattr(data, "class_names", None):
            if len(data.class_names) != self.hparams.num_classes:
                raise InputError(f"model.init_args.num_classes={self.hparams.num_classes} but the data has "
                                 f"{len(data.class_names)} classes ({''.join(data.class_names)})")
            self.hparams.class_names = "".join(data.class_names)

    def training_step(self, batch, batch_idx):
        images, labels = batch
        loss = F.cross_entropy(self.net(augment(images)), labels)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        images, labels = batch
        logits = self.net(images)
        self.log("val/loss", F.cross_entropy(logits, labels))
        self.log("val/acc", (logits.argmax(1) == labels).float().mean(), prog_bar=True)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)


def augment(images: Tensor) -> Tensor:
    """Random shifts of up to 2 pixels: cheap robustness so the classifier judges shapes, not positions."""
    shift = torch.randint(-2, 3, (2,)).tolist()
    return torch.roll(images, shifts=shift, dims=(2, 3))


def classifier_path(cache_dir: str | Path, data_dir: str | Path, class_names: list[str], image_size: int) -> Path:
    """Cache file name keyed by what the classifier was trained on, so a config change never reuses a stale one."""
    key = json.dumps([str(Path(data_dir).resolve()), "".join(class_names), image_size, ARCH_VERSION])
    return Path(cache_dir) / f"charclf_{hashlib.sha1(key.encode()).hexdigest()[:10]}.ckpt"


def train_classifier(train_set: TensorDataset, val_set: TensorDataset, num_classes: int, epochs: int = 4,
                     batch_size: int = 128, lr: float = 2e-3, seed: int = 0) -> tuple[CharClassifier, float]:
    """Plain PyTorch loop (no nested Trainer inside the diffusion run). Returns the net and its val accuracy.

    Runs inside ``torch.random.fork_rng`` with its own seed, so it does not shift the diffusion run's RNG.
    """
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = CharClassifier(num_classes)
        optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
        loader = DataLoader(train_set, batch_size=batch_size, shuffle=True)
        total = epochs * len(loader)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total)
        net.train()
        for _ in range(epochs):
            for images, labels in loader:
                loss = F.cross_entropy(net(augment(images)), labels)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                scheduler.step()
    return net.eval(), evaluate(net, val_set)


@torch.no_grad()
def evaluate(net: CharClassifier, dataset: TensorDataset) -> float:
    net.eval()
    correct = sum(int((net(x).argmax(1) == y).sum()) for x, y in DataLoader(dataset, batch_size=256))
    return correct / len(dataset)


def save_classifier(net: CharClassifier, path: Path, class_names: list[str], val_acc: float) -> None:
    with atomic_path(path) as temporary:  # an interrupted run leaves no truncated classifier behind
        torch.save({"state_dict": net.state_dict(), "num_classes": net.num_classes,
                    "num_features": net.num_features, "class_names": "".join(class_names), "val_acc": val_acc},
                   temporary)


def load_classifier(path: str | Path, class_names: list[str] | None = None) -> CharClassifier:
    """Load a checkpoint written by :func:`save_classifier` or by ``tgm fit`` with ``CharClassifierModule``."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"classifier checkpoint '{path}' not found "
                                "(train one with `tgm fit --config configs/diffusion/classifier.yaml`)")
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    if "hyper_parameters" in checkpoint:  # a Lightning checkpoint of CharClassifierModule
        hparams = checkpoint["hyper_parameters"]
        state = {k.removeprefix("net."): v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}
        num_classes, names = hparams["num_classes"], hparams.get("class_names")
        num_features = state["head.weight"].shape[1]
    else:
        state, num_classes = checkpoint["state_dict"], checkpoint["num_classes"]
        names, num_features = checkpoint.get("class_names"), checkpoint["num_features"]
    if class_names is not None and names is not None and names != "".join(class_names):
        raise InputError(f"classifier '{path}' was trained on classes '{names}', the data has "
                         f"'{''.join(class_names)}'; its features and labels would not match")
    net = CharClassifier(num_classes, num_features)
    net.load_state_dict(state)
    return net.eval().requires_grad_(False)


def ensure_classifier(path: str | Path, train_set: TensorDataset, val_set: TensorDataset, class_names: list[str],
                      epochs: int = 4) -> CharClassifier:
    """Load the cached classifier, or train and cache it first (logged, takes well under a minute on CPU)."""
    path = Path(path)
    if not path.is_file():
        print(f"[diffusion] no classifier checkpoint at {path}: training the FID/IS/accuracy character "
              f"classifier on {len(train_set)} images ({epochs} epochs) ...", flush=True)
        net, acc = train_classifier(train_set, val_set, len(class_names), epochs=epochs)
        save_classifier(net, path, class_names, acc)
        print(f"[diffusion] classifier saved to {path} (validation accuracy {acc:.3f})", flush=True)
    return load_classifier(path, class_names)
