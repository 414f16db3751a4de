"""Caption data: readers for COCO / Karpathy JSON, CSV and JSONL, the tokenizer, and the LightningDataModule.

Every file format becomes a list of :class:`CaptionRecord` (one image, all its captions, optional split).
Bad input never disappears silently: each problem (missing or unreadable image, annotation for an unknown
image id, empty caption, caption longer than ``max_caption_tokens``, image without captions) is collected
with the file and the row/key it came from. ``on_bad_input: error`` (default) raises one error listing them;
``on_bad_input: skip`` drops the offending captions/images and logs how many were skipped and why
(``CaptionDataModule.skipped`` keeps the counts). Everything is checked in ``setup``, before the first epoch.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from common.errors import InputError, MissingInputError
from common.io import atomic_path
from projects.caption import shapes
from projects.caption.features import BadImageError, ClipImageEncoder, Preprocess, cached_features, load_rgb

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<pad>"


@dataclass
class CaptionRecord:
    """One image and all of its captions; ``source`` says where it came from (for error messages)."""

    image_id: int | str
    path: Path
    captions: list[str] = field(default_factory=list)
    split: str | None = None
    source: str = ""


@dataclass
class Problems:
    """Bad-input findings: ``(reason, where)`` pairs, counted by reason."""

    items: list[tuple[str, str]] = field(default_factory=list)

    def add(self, reason: str, where: str) -> None:
        self.items.append((reason, where))

    def counts(self) -> Counter:
        return Counter(reason for reason, _ in self.items)

    def handle(self, policy: str, what: str) -> Counter:
        """Raise (policy ``error``) or log the counted skip (policy ``skip``); return the counts."""
        if not self.items:
            return Counter()
        counts = self.counts()
        listing = "\n".join(f"  - {reason}: {where}" for reason, where in self.items[:20])
        more = f"\n  ... and {len(self.items) - 20} more" if len(self.items) > 20 else ""
        summary = ", ".join(f"{n} x {reason}" for reason, n in counts.items())
        if policy == "error":
            raise InputError(
                f"{what}: bad input ({summary}):\n{listing}{more}\n"
                "Fix the data, or set data.init_args.on_bad_input: skip to drop these (counted) entries."
            )
        rank_zero_warn(f"{what}: skipped bad input ({summary}):\n{listing}{more}")
        return counts


def _resolve(image_root: Path, name: str) -> Path:
    path = Path(name)
    return path if path.is_absolute() else image_root / path


def _read_coco(data: dict, file: Path, image_root: Path, problems: Problems) -> list[CaptionRecord]:
    records: dict[Any, CaptionRecord] = {}
    for index, image in enumerate(data["images"]):
        if "id" not in image or "file_name" not in image:
            raise InputError(f"{file}: images[{index}] needs 'id' and 'file_name', got keys {sorted(image)}")
        split = image.get("split")
        records[image["id"]] = CaptionRecord(image["id"], _resolve(image_root, image["file_name"]),
                                             split=split, source=f"{file} images[{index}]")
    for index, annotation in enumerate(data["annotations"]):
        where = f"{file} annotations[{index}] (id {annotation.get('id')})"
        if "image_id" not in annotation or "caption" not in annotation:
            raise InputError(f"{where} needs 'image_id' and 'caption', got keys {sorted(annotation)}")
        record = records.get(annotation["image_id"])
        if record is None:
            problems.add("annotation for unknown image id", f"{where}: image_id {annotation['image_id']!r}")
            continue
        record.captions.append(str(annotation["caption"]))
    return list(records.values())


def _read_karpathy(data: dict, file: Path, image_root: Path) -> list[CaptionRecord]:
    records = []
    for index, image in enumerate(data["images"]):
        name = image.get("filename") or image.get("file_name")
        if name is None:
            raise InputError(f"{file}: images[{index}] has no 'filename'")
        folder = image.get("filepath", "")
        split = image.get("split")
        records.append(CaptionRecord(
            image.get("cocoid", image.get("imgid", index)), _resolve(image_root, str(Path(folder) / name)),
            [s["raw"] if isinstance(s, dict) else str(s) for s in image.get("sentences", [])],
            "train" if split == "restval" else split, f"{file} images[{index}]",
        ))
    return records


def _read_rows(rows: list[tuple[str, dict]], file: Path, image_root: Path) -> list[CaptionRecord]:
    by_image: dict[str, CaptionRecord] = {}
    for where, row in rows:
        if "image" not in row or "caption" not in row:
            raise InputError(f"{where}: needs 'image' and 'caption' fields, got {sorted(row)}")
        name = str(row["image"])
        record = by_image.get(name)
        if record is None:
            record = by_image[name] = CaptionRecord(Path(name).stem, _resolve(image_root, name),
                                                    split=row.get("split") or None, source=where)
        record.captions.append("" if row["caption"] is None else str(row["caption"]))
    return list(by_image.values())


def read_caption_file(file: str | Path, image_root: str | Path | None = None,
                      problems: Problems | None = None) -> list[CaptionRecord]:
    """Read a COCO caption JSON (``images`` + ``annotations``), a Karpathy split JSON (``images`` with
    ``sentences`` and ``split``), a CSV with ``image,caption[,split]`` columns, or JSONL with those keys.
    Image paths are relative to ``image_root`` (default: the file's folder)."""
    file = Path(file)
    if not file.exists():
        raise MissingInputError(f"caption file not found: {file}")
    root = Path(image_root) if image_root is not None else file.parent
    problems = problems if problems is not None else Problems()
    suffix = file.suffix.lower()
    if suffix == ".json":
        try:
            data = json.loads(file.read_text("utf-8"))
        except json.JSONDecodeError as error:
            raise InputError(f"{file}: not valid JSON ({error})") from error
        if isinstance(data, dict) and "annotations" in data and "images" in data:
            return _read_coco(data, file, root, problems)
        if isinstance(data, dict) and "images" in data:
            return _read_karpathy(data, file, root)
        raise InputError(f"{file}: expected COCO ('images' + 'annotations') or Karpathy ('images' with 'sentences')")
    if suffix == ".jsonl":
        rows = []
        for number, line in enumerate(file.read_text("utf-8").splitlines(), start=1):
            if line.strip():
                try:
                    rows.append((f"{file} line {number}", json.loads(line)))
                except json.JSONDecodeError as error:
                    raise InputError(f"{file} line {number}: not valid JSON ({error})") from error
        return _read_rows(rows, file, root)
    if suffix in (".csv", ".tsv"):
        with file.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle, delimiter="\t" if suffix == ".tsv" else ",")
            rows = [(f"{file} row {number}", row) for number, row in enumerate(reader, start=2)]
        return _read_rows(rows, file, root)
    raise InputError(f"{file}: unknown caption file type '{suffix}' (use .json, .jsonl, .csv or .tsv)")


def check_records(records: list[CaptionRecord], problems: Problems, check_images: bool = True) -> list[CaptionRecord]:
    """Drop (and report) empty captions, images without captions and missing/unreadable images."""
    kept = []
    for record in records:
        captions = []
        for number, caption in enumerate(record.captions):
            if caption.strip():
                captions.append(caption.strip())
            else:
                problems.add("empty caption", f"{record.source} (image {record.image_id!r}), caption #{number}")
        record.captions = captions
        if not captions:
            problems.add("image without captions", f"{record.source} (image {record.image_id!r})")
            continue
        if check_images:
            try:
                with Image.open(record.path) as image:
                    image.verify()
            except FileNotFoundError:
                problems.add("missing image file", f"{record.source}: {record.path}")
                continue
            except Exception as error:  # PIL raises many types for broken files
                problems.add("unreadable image file", f"{record.source}: {record.path} ({type(error).__name__})")
                continue
        kept.append(record)
    return kept


# ---------------------------------------------------------------------------------------------- tokenizer
def train_tokenizer(captions: Sequence[str], vocab_size: int, cache_dir: str | Path):
    """A GPT-2 style byte-level BPE trained on ``captions`` (cached by content hash), wrapped as a
    ``PreTrainedTokenizerFast`` with ``<|endoftext|>`` (id 0, end of caption) and ``<pad>`` (id 1)."""
    from tokenizers import ByteLevelBPETokenizer, Tokenizer
    from transformers import PreTrainedTokenizerFast

    digest = hashlib.sha256(json.dumps([vocab_size, sorted(captions)], ensure_ascii=False).encode()).hexdigest()
    path = Path(cache_dir) / f"tokenizer-{digest[:16]}.json"
    if path.exists():
        backend = Tokenizer.from_file(str(path))
    else:
        bpe = ByteLevelBPETokenizer(add_prefix_space=True)
        bpe.train_from_iterator(list(captions), vocab_size=vocab_size, min_frequency=2,
                                special_tokens=[EOS_TOKEN, PAD_TOKEN], show_progress=False)
        with atomic_path(path) as temporary:  # every DDP rank may train it; readers never see half a file
            bpe.save(str(temporary))
        backend = Tokenizer.from_file(str(path))
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=EOS_TOKEN, bos_token=EOS_TOKEN,
                                   unk_token=EOS_TOKEN, pad_token=PAD_TOKEN)


def load_tokenizer(name_or_path: str):
    """The pretrained GPT-2's own tokenizer (e.g. ``redrussianarmy/gpt2-turkish-cased``); pad = eos if unset."""
    from transformers import AutoTokenizer

    from common.hub import load_pretrained

    tokenizer = load_pretrained(AutoTokenizer.from_pretrained, name_or_path, what="data.init_args.tokenizer")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


# ---------------------------------------------------------------------------------------------- datasets
class PairDataset(Dataset):
    """Training: one item per (image, caption) pair, so each epoch sees every caption once (as ClipCap)."""

    def __init__(self, records: list[CaptionRecord], token_ids: list[list[list[int]]],
                 features: torch.Tensor | None, preprocess: Preprocess | None) -> None:
        self.records, self.token_ids, self.features, self.preprocess = records, token_ids, features, preprocess
        self.pairs = [(i, j) for i, caps in enumerate(token_ids) for j in range(len(caps))]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        i, j = self.pairs[index]
        item = {"input_ids": self.token_ids[i][j], "image_id": self.records[i].image_id}
        return item | image_input(self.records[i].path, i, self.features, self.preprocess)


class ImageDataset(Dataset):
    """Validation / test / predict: one item per image with all its reference captions (if any)."""

    def __init__(self, records: list[CaptionRecord], token_ids: list[list[list[int]]] | None,
                 features: torch.Tensor | None, preprocess: Preprocess | None) -> None:
        self.records, self.token_ids, self.features, self.preprocess = records, token_ids, features, preprocess

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        item = {"image_id": record.image_id, "references": record.captions, "path": str(record.path)}
        if self.token_ids is not None:
            item["input_ids"] = self.token_ids[index][0]  # teacher-forced val loss on the first reference
        return item | image_input(record.path, index, self.features, self.preprocess)


def image_input(path: Path, index: int, features: torch.Tensor | None, preprocess: Preprocess | None) -> dict:
    if features is not None:
        return {"features": features[index]}
    if preprocess is None:
        raise RuntimeError("caption data: neither cached features nor a CLIP preprocessing was attached")
    try:
        return {"pixel_values": preprocess(load_rgb(path))}
    except BadImageError as error:  # checked in setup; reaching this means the file changed since then
        raise BadImageError(f"{error} (the file was readable when the data was set up)") from error


def collate(items: list[dict], pad_id: int) -> dict:
    """Stack image inputs, right-pad token ids with ``pad_id`` and build the attention mask."""
    batch: dict[str, Any] = {"image_id": [item["image_id"] for item in items]}
    for key in ("features", "pixel_values"):
        if key in items[0]:
            batch[key] = torch.stack([item[key] for item in items])
    for key in ("references", "path"):
        if key in items[0]:
            batch[key] = [item[key] for item in items]
    if "input_ids" in items[0]:
        length = max(len(item["input_ids"]) for item in items)
        ids = torch.full((len(items), length), pad_id, dtype=torch.long)
        mask = torch.zeros((len(items), length), dtype=torch.long)
        for row, item in enumerate(items):
            ids[row, : len(item["input_ids"])] = torch.tensor(item["input_ids"], dtype=torch.long)
            mask[row, : len(item["input_ids"])] = 1
        batch["input_ids"], batch["attention_mask"] = ids, mask
    return batch


# ---------------------------------------------------------------------------------------------- datamodule
class CaptionDataModule(pl.LightningDataModule):
    """Image-caption data for :class:`projects.caption.model.CaptionModule`.

    With no ``train_file``, the shipped shapes set is generated into ``data/generated/caption`` and used.
    Splits: each record's own ``split`` (Karpathy JSON, a CSV/JSONL ``split`` column; ``restval`` counts as
    train) wins; otherwise the file it came from (``train_file`` / ``val_file`` / ``test_file``) decides.
    ``tokenizer``: a pretrained GPT-2 tokenizer by name/path, or null to train a byte-level BPE on the
    training captions. The CaptionModule attaches its frozen CLIP encoder in ``setup``; image embeddings are
    then read from the feature cache (``use_feature_cache``) or computed from pixels on every step.
    """

    def __init__(
        self,
        train_file: str | None = None,
        val_file: str | None = None,
        test_file: str | None = None,
        image_root: str | None = None,
        predict_dir: str | None = None,
        predict_output: str = "runs/caption/predictions.json",
        generated_root: str = str(shapes.DEFAULT_ROOT),
        generated_sizes: dict[str, int] | None = None,
        tokenizer: str | None = None,
        tokenizer_vocab_size: int = 512,
        max_caption_tokens: int = 40,
        on_bad_input: str = "error",
        use_feature_cache: bool = True,
        cache_dir: str | None = None,
        batch_size: int = 64,
        eval_batch_size: int = 128,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if on_bad_input not in ("error", "skip"):
            raise InputError(f"data.init_args.on_bad_input must be 'error' or 'skip', got '{on_bad_input}'")
        self.save_hyperparameters()
        self.records: dict[str, list[CaptionRecord]] = {}
        self.token_ids: dict[str, list[list[list[int]]]] = {}
        self.tokenizer = None
        self.encoder: ClipImageEncoder | None = None
        self.skipped: Counter = Counter()
        self.cache_hits: dict[str, bool] = {}
        self._features: dict[str, torch.Tensor] = {}

    # -- wiring with the model
    def attach_encoder(self, encoder: ClipImageEncoder) -> None:
        """Called by the CaptionModule in ``setup``: the frozen CLIP whose features feed the model."""
        self.encoder = encoder
        self._features.clear()

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id) if self.tokenizer is not None else 0

    @property
    def cache_root(self) -> Path:
        if self.hparams.cache_dir is not None:
            return Path(self.hparams.cache_dir)
        if self.hparams.train_file is None:
            return Path(self.hparams.generated_root) / "cache"
        return Path(self.hparams.train_file).parent / ".caption_cache"

    # -- reading
    def _sources(self) -> list[tuple[str, str | None]]:
        h = self.hparams
        if h.train_file is None:
            root = shapes.generate(h.generated_root, h.generated_sizes)
            return [("train", str(root / "train.json")), ("val", str(root / "val.json")),
                    ("test", str(root / "test.json"))]
        return [("train", h.train_file), ("val", h.val_file), ("test", h.test_file)]

    def setup(self, stage: str | None = None) -> None:
        if stage == "predict":
            self._setup_predict()
            return
        if "train" in self.records:  # already set up (fit, then validate or test)
            return
        problems = Problems()
        by_split: dict[str, list[CaptionRecord]] = {"train": [], "val": [], "test": []}
        for default_split, file in self._sources():
            if file is None:
                continue
            image_root = self.hparams.image_root if self.hparams.train_file is not None else None
            for record in read_caption_file(file, image_root, problems):
                split = record.split or default_split
                if split not in by_split:
                    raise InputError(f"{record.source}: unknown split '{split}' (use train, val, test or restval)")
                by_split[split].append(record)
        for split in by_split:
            by_split[split] = check_records(by_split[split], problems)
        if not by_split["train"]:
            raise InputError("caption data: no training images (check data.init_args.train_file)")
        if not by_split["val"]:
            raise InputError("caption data: no validation images; give val_file or records with split 'val'")
        train_captions = [c for r in by_split["train"] for c in r.captions]
        if self.hparams.tokenizer is None:
            self.tokenizer = train_tokenizer(train_captions, self.hparams.tokenizer_vocab_size, self.cache_root)
        else:
            self.tokenizer = load_tokenizer(self.hparams.tokenizer)
        for split, records in by_split.items():
            self.records[split], self.token_ids[split] = self._tokenize(records, problems)
        self.skipped = problems.handle(self.hparams.on_bad_input, "caption data")
        rank_zero_info("caption data: " + ", ".join(
            f"{s}={len(r)} images/{sum(len(x.captions) for x in r)} captions" for s, r in self.records.items()
        ) + f", vocab={len(self.tokenizer)}" + (f", skipped={dict(self.skipped)}" if self.skipped else ""))

    def _tokenize(self, records: list[CaptionRecord], problems: Problems):
        """Token ids (caption + end token) per caption; captions over ``max_caption_tokens`` are bad input."""
        eos = self.tokenizer.eos_token_id
        kept_records, kept_ids = [], []
        for record in records:
            ids_per_caption, captions = [], []
            for caption in record.captions:
                ids = self.tokenizer(caption, add_special_tokens=False)["input_ids"] + [eos]
                if len(ids) > self.hparams.max_caption_tokens:
                    problems.add(f"caption longer than max_caption_tokens={self.hparams.max_caption_tokens}",
                                 f"{record.source} (image {record.image_id!r}): {len(ids)} tokens: {caption[:60]!r}")
                    continue
                ids_per_caption.append(ids)
                captions.append(caption)
            if ids_per_caption:
                record.captions = captions
                kept_records.append(record)
                kept_ids.append(ids_per_caption)
        return kept_records, kept_ids

    def _setup_predict(self) -> None:
        folder = self.hparams.predict_dir
        if folder is None:
            raise InputError("caption predict: set data.init_args.predict_dir to a folder of images")
        folder = Path(folder)
        if not folder.is_dir():
            raise MissingInputError(f"caption predict: data.init_args.predict_dir '{folder}' is not a folder")
        paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise InputError(f"caption predict: no images ({', '.join(IMAGE_SUFFIXES)}) in '{folder}'")
        records = [CaptionRecord(int(p.stem) if p.stem.isdigit() else p.stem, p, source=str(p)) for p in paths]
        problems, readable = Problems(), []
        for record in records:  # no captions in predict: only the image checks apply
            try:
                with Image.open(record.path) as image:
                    image.verify()
                readable.append(record)
            except Exception as error:  # PIL raises many types for broken files
                problems.add("unreadable image file", f"{record.path} ({type(error).__name__})")
        self.skipped = problems.handle(self.hparams.on_bad_input, "caption predict")
        self.records["predict"] = readable

    # -- loaders
    def features(self, split: str) -> torch.Tensor | None:
        """Cached CLIP features for a split (None when the cache is off): computed once, then read from disk."""
        if not self.hparams.use_feature_cache or split == "predict":
            return None
        if split not in self._features:
            if self.encoder is None:
                raise RuntimeError("caption data: no CLIP encoder attached; CaptionModule.setup attaches it")
            paths = [r.path for r in self.records[split]]
            self._features[split], self.cache_hits[split] = cached_features(paths, self.encoder, self.cache_root)
        return self._features[split]

    def _preprocess(self) -> Preprocess | None:
        return self.encoder.preprocess if self.encoder is not None else None

    def _loader(self, dataset: Dataset, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=self.hparams.num_workers,
                          collate_fn=partial(collate, pad_id=self.pad_id),
                          persistent_workers=self.hparams.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        dataset = PairDataset(self.records["train"], self.token_ids["train"], self.features("train"),
                              self._preprocess())
        return self._loader(dataset, self.hparams.batch_size, shuffle=True)

    def _eval_loader(self, split: str) -> DataLoader:
        if not self.records.get(split):
            raise InputError(f"caption data: the '{split}' split is empty")
        dataset = ImageDataset(self.records[split], self.token_ids[split], self.features(split), self._preprocess())
        return self._loader(dataset, self.hparams.eval_batch_size, shuffle=False)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        if self.encoder is None:
            raise RuntimeError("caption predict: no CLIP encoder attached; CaptionModule.setup attaches it")
        dataset = ImageDataset(self.records["predict"], None, None, self._preprocess())
        return self._loader(dataset, self.hparams.eval_batch_size, shuffle=False)
