"""EMNIST (or the generated stand-in) as a LightningDataModule: ``(image in [-1, 1], label)`` batches."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from common.errors import InputError
from projects.diffusion.glyphs import ensure_generated
from projects.diffusion.idx import read_emnist, read_mapping


def prepare_images(images: np.ndarray, image_size: int) -> torch.Tensor:
    """uint8 ``N x 28 x 28`` -> float ``N x 1 x S x S`` in [-1, 1].

    EMNIST is 28 x 28, but a UNet with k downsamplings needs sides divisible by 2**k (28 -> 14 -> 7 -> 3 breaks
    the skip connections), so images are zero-padded to 32 x 32 first; ``image_size`` 16 then halves them
    (area average) for fast CPU runs.
    """
    x = torch.from_numpy(images).float().div(255.0).unsqueeze(1)
    x = F.pad(x, (2, 2, 2, 2))
    if image_size != 32:
        if 32 % image_size:
            raise InputError(f"data.init_args.image_size must divide 32 (8, 16 or 32), got {image_size}")
        x = F.avg_pool2d(x, 32 // image_size)
    return x * 2.0 - 1.0


class CharacterDataModule(pl.LightningDataModule):
    """Reads ``emnist-<split>-{train,test}-{images,labels}`` from ``data_dir``.

    Args:
        data_dir: folder with the EMNIST gzip IDX files and ``emnist-<split>-mapping.txt``.
        source: ``emnist`` (read what is there, clear error if missing) or ``generated`` (render the glyph
            stand-in into ``data_dir`` first if it is not there yet; only the ``balanced`` split exists).
        split: balanced, byclass, bymerge, letters, digits or mnist.
        classes: keep only these characters (e.g. ``"0123456789"``), relabelled 0..K-1 in the given order;
            ``null`` keeps every class of the split.
        image_size: 32 (28 padded) or 16 (padded then halved).
        train_per_class / val_per_class: cap the number of images per class (``null``: all). Validation
            uses the official test subset, the first ``val_per_class`` images of each class.
        predict_per_class: images per class that ``tgm predict`` generates.
    """

    def __init__(
        self,
        data_dir: str = "data/generated/diffusion/glyphs",
        source: str = "generated",
        split: str = "balanced",
        classes: str | None = None,
        image_size: int = 32,
        batch_size: int = 64,
        val_batch_size: int = 100,
        train_per_class: int | None = None,
        val_per_class: int | None = None,
        predict_per_class: int = 8,
        num_workers: int = 0,
        generated_train_per_class: int = 400,
        generated_test_per_class: int = 60,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if source not in ("emnist", "generated"):
            raise InputError(f"data.init_args.source must be 'emnist' or 'generated', got '{source}'")
        if source == "generated" and split != "balanced":
            raise InputError(f"data.init_args.split: the generated set only has 'balanced', got '{split}'")
        self.data_dir = Path(data_dir)
        self.source = source
        self.split = split
        self.classes = classes
        self.image_size = image_size
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size
        self.train_per_class = train_per_class
        self.val_per_class = val_per_class
        self.predict_per_class = predict_per_class
        self.num_workers = num_workers
        self.generated = (generated_train_per_class, generated_test_per_class, seed)
        self.class_names: list[str] = []
        self.train_set: TensorDataset | None = None
        self.val_set: TensorDataset | None = None

    def prepare_data(self) -> None:
        if self.source == "generated":
            ensure_generated(self.data_dir, *self.generated)

    def _select(self, images: np.ndarray, labels: np.ndarray, keep: list[int], per_class: int | None, subset: str):
        """Keep the chosen classes (relabelled 0..K-1), at most ``per_class`` each, in file order."""
        chosen = []
        for new_label, old_label in enumerate(keep):
            where = np.flatnonzero(labels == old_label)
            if len(where) == 0:
                raise InputError(f"class '{self.class_names[new_label]}' (label {old_label}) has no images in "
                                 f"the {subset} subset of {self.data_dir}")
            chosen.append(where[:per_class] if per_class else where)
        index = np.sort(np.concatenate(chosen))
        relabel = np.full(int(labels.max()) + 1, -1, dtype=np.int64)
        relabel[keep] = np.arange(len(keep))
        return TensorDataset(prepare_images(images[index], self.image_size), torch.from_numpy(relabel[labels[index]]))

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        if self.source == "generated":  # setup without prepare_data (Python callers): generate here
            ensure_generated(self.data_dir, *self.generated)
        mapping = read_mapping(self.data_dir, self.split)
        chars = [mapping[k] for k in sorted(mapping)]
        if self.classes is None:
            keep = sorted(mapping)
        else:
            unknown = [c for c in self.classes if c not in chars]
            if unknown or len(set(self.classes)) != len(self.classes):
                raise InputError(f"data.init_args.classes '{self.classes}': characters {unknown or 'repeated'} "
                                 f"are not (unique) classes of EMNIST-{self.split} ({''.join(chars)})")
            keep = [sorted(mapping)[chars.index(c)] for c in self.classes]
        self.class_names = [mapping[k] for k in keep]
        train_images, train_labels = read_emnist(self.data_dir, self.split, "train")
        test_images, test_labels = read_emnist(self.data_dir, self.split, "test")
        for name, labels in (("train", train_labels), ("test", test_labels)):
            bad = labels[~np.isin(labels, list(mapping))]
            if len(bad):
                raise InputError(f"EMNIST-{self.split} {name} labels contain {int(bad[0])}, which "
                                 f"emnist-{self.split}-mapping.txt in {self.data_dir} does not list")
        self.train_set = self._select(train_images, train_labels, keep, self.train_per_class, "train")
        self.val_set = self._select(test_images, test_labels, keep, self.val_per_class, "test")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, drop_last=True,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        # A private generator: creating a DataLoader iterator draws a base seed, and from the global RNG that
        # draw (in the sanity check of a resumed run) would shift training's random stream -> inexact resume.
        return DataLoader(self.val_set, batch_size=self.val_batch_size, shuffle=False, num_workers=self.num_workers,
                          generator=torch.Generator().manual_seed(0))

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        """Labels only: ``predict_per_class`` of each class, class by class (the model draws the images)."""
        labels = torch.arange(self.num_classes).repeat_interleave(self.predict_per_class)
        return DataLoader(TensorDataset(labels), batch_size=self.val_batch_size, shuffle=False,
                          generator=torch.Generator().manual_seed(0))
