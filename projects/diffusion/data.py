"""EMNIST (or the generated stand-in) as a LightningDataModule: ``(image in [-1, 1], label)`` batches.

``prepare_data`` (rank 0, once) renders the generated set when it is the source, decodes the gzip IDX files of
the chosen classes ONCE into uint8 ``.npy`` arrays (``<judge_cache_dir>/arrays_<fingerprint>/``, keyed by the
files' sizes and modification times, written atomically) and trains the FID/IS/accuracy judge (cached, see
``judge.py``). ``setup`` opens the arrays with ``mmap_mode="r"`` on every rank: a warm launch reads file
metadata, not the data, RSS does not grow with the data set, and all ranks share the page cache (nanoGPT's
``train.bin``). Images stay uint8 until a DataLoader worker turns one item into a float tensor
(``CharacterImages``, diffusers' ``train_unconditional`` per-item transform). ``num_classes``, ``class_names``
and ``judge_path`` are cheap properties the CLI links into the model (``DiffusionModule.linked_from_data``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset
from typing_extensions import override

from common.errors import InputError
from common.io import atomic_dir
from projects.diffusion.generate import BALANCED_CLASSES, VERSION, ensure_generated
from projects.diffusion.idx import emnist_paths, read_emnist, read_mapping
from projects.diffusion.judge import JudgeConfig, ensure_judge, judge_cache_path


def prepare_images(images: np.ndarray, image_size: int) -> torch.Tensor:
    """uint8 ``N x 28 x 28`` -> float ``N x 1 x S x S`` in [-1, 1].

    EMNIST is 28 x 28, but a UNet with k downsamplings needs sides divisible by 2**k (28 -> 14 -> 7 -> 3 breaks
    the skip connections), so images are zero-padded to 32 x 32 first; ``image_size`` 16 then halves them
    (area average) for fast CPU runs. NumPy, not torch: it runs per item in DataLoader workers, where a torch
    op on one small image costs its thread-pool synchronisation (16 ms per image on a loaded 2-core machine).
    """
    x = np.pad(np.asarray(images, dtype=np.float32) / 255.0, ((0, 0), (2, 2), (2, 2)))
    if image_size != 32:
        factor = 32 // image_size
        x = x.reshape(len(x), image_size, factor, image_size, factor).mean(axis=(2, 4), dtype=np.float32)
    return torch.from_numpy(x * 2.0 - 1.0).unsqueeze(1)


class CharacterImages(Dataset):
    """uint8 ``N x 28 x 28`` images (an array or a read-only memmap) and labels; ``index`` picks a subset.

    ``dataset[i]`` -> ``(float 1 x S x S in [-1, 1], label)``, converted on access (in DataLoader workers), so
    no float copy of the whole set exists anywhere. ``images(...)`` converts a slice in one call (metrics,
    the judge's evaluation); ``tensors`` converts everything and is meant for small sets and tests."""

    def __init__(
        self, images: np.ndarray, labels: np.ndarray, image_size: int, index: np.ndarray | None = None
    ) -> None:
        self.raw = images
        self.raw_labels = labels
        self.image_size = image_size
        self.index = np.arange(len(labels)) if index is None else np.asarray(index)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        j = self.index[i]
        return prepare_images(self.raw[j : j + 1], self.image_size)[0], torch.tensor(int(self.raw_labels[j]))

    @property
    def labels(self) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.raw_labels[self.index], dtype=np.int64))

    def images(self, positions: np.ndarray | slice | None = None) -> torch.Tensor:
        """Float images of ``positions`` (indices into this dataset; ``None``: all)."""
        chosen = self.index if positions is None else self.index[positions]
        return prepare_images(np.asarray(self.raw[chosen]), self.image_size)

    @property
    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images(), self.labels

    def subset(self, positions: np.ndarray) -> CharacterImages:
        return CharacterImages(self.raw, self.raw_labels, self.image_size, self.index[positions])


ARRAYS_VERSION = 1  # part of the prepared arrays' key


@dataclass
class GeneratedData:
    """The generated stand-in (``source: generated``): images per class and the seed of the renderer."""

    train_per_class: int = 400
    test_per_class: int = 60
    seed: int = 0


def as_dataclass(kind: type, value: Any) -> Any:
    """``None`` -> the defaults, a dict (Python callers) -> the dataclass, a dataclass -> itself."""
    if value is None:
        return kind()
    return kind(**value) if isinstance(value, dict) else value


class CharacterDataModule(pl.LightningDataModule):
    """Reads ``emnist-<split>-{train,test}-{images,labels}`` from ``data_dir``.

    Args:
        data_dir: folder with the EMNIST gzip IDX files and ``emnist-<split>-mapping.txt`` (optional for the
            ``digits`` and ``mnist`` splits, whose mapping is fixed).
        source: ``emnist`` (read what is there, clear error if missing) or ``generated`` (render the glyph
            stand-in into ``data_dir`` first if it is not there yet; only the ``balanced`` split exists).
        split: balanced, byclass, bymerge, letters, digits or mnist.
        classes: keep only these characters (e.g. ``"0123456789"``), relabelled 0..K-1 in the given order;
            ``null`` keeps every class of the split.
        image_size: 32 (28 padded), 16 or 8 (padded then averaged down).
        train_per_class / val_per_class: cap the number of images per class (``null``: all). Validation
            uses the official test subset, the first ``val_per_class`` images of each class; the test loader
            (final evaluation, judge accuracy, FID floor) uses every test image of the chosen classes.
        predict_per_class: images per class that ``tgm predict`` generates.
        generated: settings of the generated stand-in.
        judge: how the FID/IS/accuracy judge is trained (``judge.py``); ``judge_cache_dir`` holds it.
        judge_ckpt: use this judge instead (a ``tgm fit --config configs/diffusion/classifier.yaml`` checkpoint).
        prepare_judge: ``false`` skips the judge (the judge's own training config, the Inception extractor).
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
        generated: GeneratedData | None = None,
        judge: JudgeConfig | None = None,
        judge_cache_dir: str = "data/generated/diffusion",
        judge_ckpt: str | None = None,
        prepare_judge: bool = True,
    ) -> None:
        super().__init__()
        if source not in ("emnist", "generated"):
            raise InputError(f"data.init_args.source must be 'emnist' or 'generated', got '{source}'")
        if source == "generated" and split != "balanced":
            raise InputError(f"data.init_args.split: the generated set only has 'balanced', got '{split}'")
        if image_size not in (8, 16, 32):
            raise InputError(f"data.init_args.image_size must divide 32 (8, 16 or 32), got {image_size}")
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
        self.generated = as_dataclass(GeneratedData, generated)
        self.judge = as_dataclass(JudgeConfig, judge)
        self.judge_cache_dir = judge_cache_dir
        self.judge_ckpt = judge_ckpt
        self.prepare_judge = prepare_judge
        self._mapping: dict[int, str] | None = None
        self._identity: dict[str, Any] | None = None
        self.train_set: CharacterImages | None = None
        self.val_set: CharacterImages | None = None
        self.heldout_set: CharacterImages | None = None

    # ------------------------------------------------------------ what the model is linked to (cheap)
    def _label_mapping(self) -> dict[int, str]:
        if self._mapping is None:
            if self.source == "generated":
                self._mapping = dict(enumerate(BALANCED_CLASSES))
            else:
                self._mapping = read_mapping(self.data_dir, self.split)
        return self._mapping

    def _kept_labels(self) -> list[int]:
        mapping = self._label_mapping()
        labels = sorted(mapping)
        if self.classes is None:
            return labels
        chars = [mapping[k] for k in labels]
        unknown = [c for c in self.classes if c not in chars]
        if unknown or len(set(self.classes)) != len(self.classes):
            raise InputError(
                f"data.init_args.classes '{self.classes}': characters {unknown or 'repeated'} "
                f"are not (unique) classes of EMNIST-{self.split} ({''.join(chars)})"
            )
        return [labels[chars.index(c)] for c in self.classes]

    @property
    def class_names(self) -> list[str]:
        mapping = self._label_mapping()
        return [mapping[k] for k in self._kept_labels()]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def _source_files(self) -> list[Path]:
        files = [p for subset in ("train", "test") for p in emnist_paths(self.data_dir, self.split, subset)]
        return files + [self.data_dir / f"emnist-{self.split}-mapping.txt"]

    def data_identity(self) -> dict[str, Any]:
        """What the caches need to know about the data: the generator's settings (deterministic), or each source
        file's size and modification time (stat calls only: a warm launch never reads the data to hash it; a
        replaced or touched file rebuilds the arrays and retrains the judge); plus classes, image size and cap."""
        if self._identity is None:
            if self.source == "generated":
                files = {"generated": asdict(self.generated), "version": VERSION}
            else:
                stats = {}
                for path in self._source_files():
                    info = path.stat() if path.is_file() else None
                    stats[path.name] = [info.st_size, info.st_mtime_ns] if info else "missing"
                files = {"files": stats}
            self._identity = {
                **files,
                "classes": "".join(self.class_names),
                "image_size": self.image_size,
                "train_per_class": self.train_per_class,
            }
        return self._identity

    @property
    def judge_path(self) -> str | None:
        """The judge checkpoint the model loads: ``judge_ckpt``, or the cache file for this data and settings."""
        if self.judge_ckpt is not None:
            return self.judge_ckpt
        if not self.prepare_judge:
            return None
        return str(judge_cache_path(self.judge_cache_dir, self.data_identity(), self.judge))

    @property
    def arrays_dir(self) -> Path:
        """Where the decoded uint8 arrays of the chosen classes live (independent of image size and caps)."""
        identity = {
            k: v for k, v in self.data_identity().items() if k not in ("image_size", "train_per_class")
        }
        key = json.dumps([identity, self.split, str(self.data_dir.resolve()), ARRAYS_VERSION], sort_keys=True)
        return Path(self.judge_cache_dir) / f"arrays_{hashlib.sha1(key.encode()).hexdigest()[:12]}"

    # ------------------------------------------------------------ preparation (rank 0, once) and loading
    @override
    def prepare_data(self) -> None:
        if self.source == "generated":
            ensure_generated(self.data_dir, **asdict(self.generated))
        self._ensure_arrays()
        if self.prepare_judge and self.judge_ckpt is None:
            self._load()
            ensure_judge(
                self.judge_path,
                self.train_set,
                self.heldout_set,
                self.class_names,
                self.judge,
                self.num_workers,
                self._device(),
            )

    def _device(self) -> torch.device:
        """The trainer's device (the judge trains where the diffusion model will), CPU without a trainer."""
        trainer = self.trainer
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    def _ensure_arrays(self) -> Path:
        """Decode the IDX files once into ``{train,test}_{images,labels}.npy`` of the chosen classes
        (relabelled 0..K-1, file order kept); later launches find the folder and decode nothing."""
        folder = self.arrays_dir
        if (folder / "done.json").is_file():
            return folder
        mapping = self._label_mapping()
        keep = self._kept_labels()
        relabel = None
        with atomic_dir(folder) as temporary:
            counts = {}
            for subset in ("train", "test"):
                images, labels = read_emnist(self.data_dir, self.split, subset)
                bad = labels[~np.isin(labels, list(mapping))]
                if len(bad):
                    raise InputError(self._unknown_label_message(subset, int(bad[0])))
                if relabel is None:
                    relabel = np.full(max(int(labels.max()), max(keep)) + 1, -1, dtype=np.int64)
                    relabel[keep] = np.arange(len(keep))
                chosen = np.flatnonzero(np.isin(labels, keep))
                np.save(temporary / f"{subset}_images.npy", images[chosen])
                np.save(temporary / f"{subset}_labels.npy", relabel[labels[chosen]])
                counts[subset] = len(chosen)
                del images
            (temporary / "done.json").write_text(
                json.dumps({"identity": self.data_identity(), "counts": counts})
            )
        return folder

    def _unknown_label_message(self, subset: str, label: int) -> str:
        """Names the labels file that holds ``label`` and the mapping actually in use."""
        labels_file = emnist_paths(self.data_dir, self.split, subset)[1]
        mapping_file = self.data_dir / f"emnist-{self.split}-mapping.txt"
        mapping = (
            str(mapping_file)
            if self.source == "emnist" and mapping_file.is_file()
            else f"the built-in EMNIST-{self.split} mapping"
            + (" (labels 0-9)" if self.split in ("digits", "mnist") else "")
        )
        return f"{labels_file}: label {label} is not listed in {mapping}"

    def _select(
        self, images: np.ndarray, labels: np.ndarray, per_class: int | None, subset: str
    ) -> CharacterImages:
        """At most ``per_class`` images of each chosen class, in file order."""
        chosen = []
        for new_label in range(self.num_classes):
            where = np.flatnonzero(labels == new_label)
            if len(where) == 0:
                old_label = self._kept_labels()[new_label]
                raise InputError(
                    f"class '{self.class_names[new_label]}' (label {old_label}) has no images in "
                    f"the {subset} subset of {self.data_dir}"
                )
            chosen.append(where[:per_class] if per_class else where)
        return CharacterImages(images, labels, self.image_size, np.sort(np.concatenate(chosen)))

    def _load(self) -> None:
        """Open the prepared arrays read-only (memory-mapped images, labels in memory)."""
        if self.train_set is not None:
            return
        folder = self._ensure_arrays()  # present after prepare_data; built here for Python callers
        arrays = {
            name: np.load(folder / f"{name}.npy", mmap_mode="r" if name.endswith("images") else None)
            for name in ("train_images", "train_labels", "test_images", "test_labels")
        }
        train_images, train_labels = arrays["train_images"], arrays["train_labels"]
        test_images, test_labels = arrays["test_images"], arrays["test_labels"]
        self.train_set = self._select(train_images, train_labels, self.train_per_class, "train")
        self.val_set = self._select(test_images, test_labels, self.val_per_class, "test")
        self.heldout_set = self._select(test_images, test_labels, None, "test")

    @override
    def setup(self, stage: str | None = None) -> None:
        if (
            self.source == "generated"
        ):  # setup without prepare_data (Python callers): generating is idempotent
            ensure_generated(self.data_dir, **asdict(self.generated))
        self._load()

    def floor_images(self, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(the validation images, ``count`` training images drawn with a fixed seed): the real-vs-real FID floor
        at a sample count (``DiffusionModule`` logs it next to FID)."""
        self._load()
        pick = torch.randperm(len(self.train_set), generator=torch.Generator().manual_seed(0))[:count]
        return self.val_set.images(), self.train_set.images(pick.numpy())

    # ------------------------------------------------------------ loaders
    @override
    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.train_set,
            batch_size=self.batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    @override
    def val_dataloader(self) -> DataLoader:
        # A private generator: creating a DataLoader iterator draws a base seed, and from the global RNG that
        # draw (in the sanity check of a resumed run) would shift training's random stream -> inexact resume.
        return DataLoader(
            self.val_set,
            batch_size=self.val_batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            generator=torch.Generator().manual_seed(0),
        )

    @override
    def test_dataloader(self) -> DataLoader:
        """Every test image of the chosen classes: the reference of the final evaluation."""
        return DataLoader(
            self.heldout_set,
            batch_size=self.val_batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            generator=torch.Generator().manual_seed(0),
        )

    @override
    def predict_dataloader(self) -> DataLoader:
        """Labels only: ``predict_per_class`` of each class, class by class (the model draws the images)."""
        labels = torch.arange(self.num_classes).repeat_interleave(self.predict_per_class)
        return DataLoader(
            TensorDataset(labels),
            batch_size=self.val_batch_size,
            shuffle=False,
            generator=torch.Generator().manual_seed(0),
        )
