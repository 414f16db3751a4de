"""Caption data: the tokenizer, the datasets, and the LightningDataModule (readers are in ``readers.py``).

Preparation runs once, in ``prepare_data`` (Lightning calls it on one process per node while the others wait;
``python -m projects.caption.prepare`` does the same): generate the default set, build the tiny CLIP
(``clip_pretrain.py``), train the BPE tokenizer, tokenize the captions, and scan the images once (decoded in
DataLoader workers, CLIP in batches on the trainer's device; ``features.scan_images``). Every artefact is cached by
what it depends on and written atomically. ``setup`` only reads the caption files and loads those artefacts on
every rank: a warm launch costs one ``stat`` per image, never a decode.

What the model must agree on (CLIP, its embedding size, the tokenizer, vocabulary size, the caption length
limit) is exposed as attributes that ``tgm`` links into the model (``CaptionModule.linked_from_data``); they are
cheap to read right after ``__init__``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset
from typing_extensions import override

from common.errors import InputError
from common.io import atomic_path, load_cache
from projects.caption import generate
from projects.caption.clip_pretrain import ClipPretrain, prepare_tiny_clip, tiny_clip_dir
from projects.caption.features import (
    BadImageError,
    ClipImageEncoder,
    ImageScan,
    Preprocess,
    directory_identity,
    encode_images,
    load_rgb,
    scan_images,
)
from projects.caption.readers import (
    CaptionRecord,
    Problems,
    check_records,
    predict_records_from_folder,
    read_caption_file,
)

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<pad>"


# ---------------------------------------------------------------------------------------------- settings
def _null(spec: Any, *fields: str) -> None:
    """``"None"`` / ``"null"`` -> None. ``tgm ... --data.init_args.clip.pretrain null`` (a nested key under a
    ``class_path``'s ``init_args``) reaches the dataclass as the *string* ``"None"`` (jsonargparse 4.53 turns the
    nested value into text): without this the documented flag was a 28-line type error, and
    ``--data.init_args.tokenizer.name null`` silently asked the hub for a tokenizer called "None"."""
    for name in fields:
        if getattr(spec, name) in ("None", "null"):
            object.__setattr__(spec, name, None)


@dataclass(frozen=True)
class ClipSpec:
    """The frozen image encoder: a hub name / ``save_pretrained`` directory, or a tiny ``CLIPVisionConfig``
    (``config``) built once by ``prepare_data``, optionally with the scene-attribute ``pretrain``."""

    name: str | None = None
    config: dict | None = None
    pretrain: ClipPretrain | None | Literal["None", "null"] = None  # the strings: see _null

    def __post_init__(self) -> None:
        _null(self, "name", "pretrain")


@dataclass(frozen=True)
class GeneratedSet:
    """The shipped default data (used when ``train_file`` is null): where and how many images per split."""

    root: str = str(generate.DEFAULT_ROOT)
    sizes: dict[str, int] = field(default_factory=lambda: {"train": 2000, "val": 200, "test": 200})


@dataclass(frozen=True)
class TokenizerSpec:
    """A pretrained GPT-2 tokenizer (``name``: hub name or directory), or null to train a byte-level BPE of
    ``vocab_size`` tokens on the training captions."""

    name: str | None = None
    vocab_size: int = 512

    def __post_init__(self) -> None:
        _null(self, "name")


# ---------------------------------------------------------------------------------------------- tokenizer
def bpe_tokenizer(captions: Sequence[str], vocab_size: int):
    """A GPT-2 style byte-level BPE trained on ``captions``: ``<|endoftext|>`` (id 0, end) and ``<pad>`` (id 1)."""
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer(add_prefix_space=True)
    bpe.train_from_iterator(
        list(captions),
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        show_progress=False,
    )
    return bpe


def wrap_tokenizer(backend):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=EOS_TOKEN,
        bos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
    )


def load_bpe_file(path: str | Path):
    """A BPE tokenizer saved by :func:`train_tokenizer`, as ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer

    return wrap_tokenizer(Tokenizer.from_file(str(path)))


def train_tokenizer(
    captions: Sequence[str], vocab_size: int, cache_dir: str | Path, path: str | Path | None = None
):
    """The BPE of :func:`bpe_tokenizer`, cached at ``path`` (default: by content hash in ``cache_dir``); a corrupt
    cache file is rebuilt with one warning."""
    if path is None:
        digest = hashlib.sha256(
            json.dumps([vocab_size, sorted(captions)], ensure_ascii=False).encode()
        ).hexdigest()
        path = Path(cache_dir) / f"tokenizer-{digest[:16]}.json"
    cached = load_cache(path, load_bpe_file, what="caption BPE tokenizer")
    if cached is not None:
        return cached
    bpe = bpe_tokenizer(captions, vocab_size)
    with atomic_path(path) as temporary:  # readers never see half a file
        bpe.save(str(temporary))
    return load_bpe_file(path)


def load_tokenizer(name_or_path: str):
    """A tokenizer by hub name / directory (e.g. ``redrussianarmy/gpt2-turkish-cased``; pad = eos if unset), or a
    BPE tokenizer JSON file written by :func:`train_tokenizer`."""
    if name_or_path.endswith(".json") and Path(name_or_path).is_file():
        return load_bpe_file(name_or_path)
    from transformers import AutoTokenizer

    from common.hub import load_pretrained

    tokenizer = load_pretrained(
        AutoTokenizer.from_pretrained, name_or_path, what="data.init_args.tokenizer.name"
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _load_token_ids(path: Path, count: int) -> list[list[int]]:
    with np.load(path) as stored:
        flat, lengths = stored["flat"], stored["lengths"]
    if len(lengths) != count or int(lengths.sum()) != len(flat):
        raise ValueError(f"holds token ids of {len(lengths)} captions, expected {count}")
    values, ends = flat.tolist(), np.cumsum(lengths).tolist()
    return [values[end - n : end] for end, n in zip(ends, lengths.tolist(), strict=True)]


def tokenize_captions(captions: Sequence[str], tokenizer, cache_dir: str | Path) -> list[list[int]]:
    """Token ids of each caption plus the end token, cached by (tokenizer, captions): a warm launch of COCO's
    590k captions reads one file instead of tokenizing again (in ``prepare_data`` and in ``setup`` on every rank)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    digest = hashlib.sha256((backend.to_str() if backend is not None else tokenizer.name_or_path).encode())
    digest.update(str(tokenizer.eos_token_id).encode() + b"\0" + "\0".join(captions).encode())
    path = Path(cache_dir) / f"tokens-{digest.hexdigest()[:20]}.npz"
    stored = load_cache(path, lambda f: _load_token_ids(f, len(captions)), what="caption token cache")
    if stored is not None:
        return stored
    eos = tokenizer.eos_token_id
    ids = (
        [x + [eos] for x in tokenizer(list(captions), add_special_tokens=False)["input_ids"]]
        if captions
        else []
    )
    with atomic_path(path) as temporary, open(temporary, "wb") as handle:
        np.savez(
            handle,
            flat=np.fromiter((t for x in ids for t in x), dtype=np.int32),
            lengths=np.array([len(x) for x in ids], dtype=np.int64),
        )
    return ids


# ---------------------------------------------------------------------------------------------- datasets
class ImageDataset(Dataset):
    """Validation / test / predict: one item per image with all its reference captions (if any)."""

    def __init__(
        self,
        records: list[CaptionRecord],
        token_ids: list[list[list[int]]] | None,
        features: np.ndarray | None,
        preprocess: Preprocess | None,
        rows: list[int] | None = None,
    ) -> None:
        self.records, self.token_ids = records, token_ids
        self.features, self.preprocess = features, preprocess
        self.rows = rows if rows is not None else list(range(len(records)))  # record -> row of ``features``

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        item = {"image_id": record.image_id, "references": record.captions, "path": str(record.path)}
        if self.token_ids is not None:
            item["input_ids"] = self.token_ids[index][0]  # teacher-forced val loss on the first reference
        return item | image_input(record.path, self.rows[index], self.features, self.preprocess)


class PairDataset(ImageDataset):
    """Training: one item per (image, caption) pair, so each epoch sees every caption once (as ClipCap)."""

    def __init__(
        self,
        records: list[CaptionRecord],
        token_ids: list[list[list[int]]],
        features: np.ndarray | None,
        preprocess: Preprocess | None,
        rows: list[int] | None = None,
    ) -> None:
        super().__init__(records, token_ids, features, preprocess, rows)
        self.pairs = [(i, j) for i, caps in enumerate(token_ids) for j in range(len(caps))]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        i, j = self.pairs[index]
        item = {"input_ids": self.token_ids[i][j], "image_id": self.records[i].image_id}
        return item | image_input(self.records[i].path, self.rows[i], self.features, self.preprocess)


def image_input(path: Path, row: int, features: np.ndarray | None, preprocess: Preprocess | None) -> dict:
    if features is not None:  # a copy of one row of the memory-mapped scan
        return {"features": torch.from_numpy(np.array(features[row]))}
    if preprocess is None:
        raise RuntimeError("caption data: neither cached features nor a CLIP preprocessing is set up")
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


def _fingerprint(path: str | None) -> list | None:
    if path is None:
        return None
    try:
        stat = os.stat(path)
    except OSError:
        return [str(path)]
    return [str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns]


def _hub_snapshot(name: str) -> Path | None:
    """The local hub-cache folder of a hub model, when it is there (its files identify the weights)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(name, "config.json")
    except Exception:  # noqa: BLE001 - not a valid repo id: the caller hashes the loaded weights instead
        return None
    return Path(found).parent if isinstance(found, str) else None


# ---------------------------------------------------------------------------------------------- datamodule
class CaptionDataModule(pl.LightningDataModule):
    """Image-caption data for :class:`projects.caption.module.CaptionModule`.

    With no ``train_file``, the shipped shapes set (``generated``) is used. Splits: each record's own ``split``
    (Karpathy JSON, a CSV/JSONL ``split`` column; ``restval`` counts as train) wins; otherwise the file it came
    from (``train_file`` / ``val_file`` / ``test_file``) decides. Image embeddings come from the feature cache
    (``use_feature_cache``) or CLIP runs on pixels every step. ``num_workers`` null: 0 for loaders that read
    cached features (a row of a memory map: workers would only add start-up and copies), ``min(4, cores - 1)``
    for loaders that decode images; ``prepare_workers`` null: ``min(8, cores)`` decode during preparation. ``predict_file`` (a caption file, e.g. COCO
    annotations: its images and ids) or ``predict_dir`` (every image of a folder) is what ``tgm predict`` captions.
    """

    def __init__(
        self,
        train_file: str | None = None,
        val_file: str | None = None,
        test_file: str | None = None,
        image_root: str | None = None,
        predict_dir: str | None = None,
        predict_file: str | None = None,
        clip: ClipSpec | None = None,
        tokenizer: TokenizerSpec | None = None,
        generated: GeneratedSet | None = None,
        max_caption_tokens: int = 40,
        on_bad_input: str = "error",
        use_feature_cache: bool = True,
        cache_dir: str | None = None,
        batch_size: int = 64,
        eval_batch_size: int = 128,
        num_workers: int | None = None,
        prepare_workers: int | None = None,
        prepare_batch_size: int = 256,
    ) -> None:
        super().__init__()
        if on_bad_input not in ("error", "skip"):
            raise InputError(f"data.init_args.on_bad_input must be 'error' or 'skip', got '{on_bad_input}'")
        self.clip = clip or ClipSpec()
        if self.clip.name is None and self.clip.config is None:
            raise InputError("data.init_args.clip: give name (hub name or directory) or config (a tiny CLIP)")
        if self.clip.name is None and self.clip.pretrain is not None and train_file is not None:
            raise InputError(
                "data.init_args.clip.pretrain needs the generated set (train_file: null); set it null"
            )
        self.tokenizer_spec = tokenizer or TokenizerSpec()
        self.generated = generated or GeneratedSet()
        self.max_caption_tokens = max_caption_tokens
        self.save_hyperparameters()
        self.records: dict[str, list[CaptionRecord]] = {}
        self.token_ids: dict[str, list[list[list[int]]]] = {}
        self.tokenizer = None
        self.skipped: Counter = Counter()
        self.cache_hits: dict[str, bool] = {}
        self.rows: dict[str, list[int]] = {}  # record -> row of the split's scan
        self._features: dict[str, np.ndarray] = {}
        self._encoder: ClipImageEncoder | None = None
        self._read: tuple | None = None  # the caption files as read once in this process
        self._prepared: tuple | None = None  # what prepare_data prepared, for setup in the same process

    # -- what the model is linked to (cheap: nothing is built)
    @property
    def uses_generated_set(self) -> bool:
        return self.hparams.train_file is None

    @property
    def cache_root(self) -> Path:
        if self.hparams.cache_dir is not None:
            return Path(self.hparams.cache_dir)
        if self.uses_generated_set:
            return Path(self.generated.root) / "cache"
        return Path(self.hparams.train_file).parent / ".caption_cache"

    @property
    def clip_source(self) -> str:
        """Hub name or directory of the CLIP both the feature cache and the model load."""
        if self.clip.name is not None:
            return self.clip.name
        root = Path(self.generated.root) if self.clip.pretrain is not None else self.cache_root
        manifest = generate.manifest_for(self.generated.sizes) if self.clip.pretrain is not None else {}
        return str(tiny_clip_dir(self.clip.config, self.clip.pretrain, root, manifest))

    @property
    def clip_config(self) -> dict | None:
        """The tiny CLIP's architecture (null for hub CLIPs): lets a checkpoint be loaded without the prepared data."""
        return self.clip.config if self.clip.name is None else None

    def _clip_vision_config(self):
        from transformers import CLIPVisionConfig

        from common.hub import load_pretrained

        if self.clip.name is None:
            return CLIPVisionConfig(**self.clip.config)
        return load_pretrained(
            CLIPVisionConfig.from_pretrained, self.clip.name, what="data.init_args.clip.name"
        )

    @property
    def clip_dim(self) -> int:
        """The CLIP embedding size (the mapper's input)."""
        return int(self._clip_vision_config().projection_dim)

    @property
    def tokenizer_source(self) -> str:
        """Hub name / directory of a pretrained tokenizer, or the path of the BPE file ``prepare_data`` trains."""
        if self.tokenizer_spec.name is not None:
            return self.tokenizer_spec.name
        h = self.hparams
        sources = (
            generate.manifest_for(self.generated.sizes)
            if self.uses_generated_set
            else [_fingerprint(f) for f in (h.train_file, h.val_file, h.test_file)]
            + [h.image_root, h.on_bad_input]
        )
        key = json.dumps({"vocab_size": self.tokenizer_spec.vocab_size, "sources": sources}, sort_keys=True)
        return str(self.cache_root / f"tokenizer-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json")

    @property
    def vocab_size(self) -> int:
        """Tokens the decoder must embed: the BPE's size, or the pretrained tokenizer's length."""
        if self.tokenizer_spec.name is None:
            return self.tokenizer_spec.vocab_size
        return len(load_tokenizer(self.tokenizer_spec.name))

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id) if self.tokenizer is not None else 0

    # -- preparation (rank 0, once)
    def _predicting(self) -> bool:
        return self.trainer is not None and self.trainer.state.fn == TrainerFn.PREDICTING

    @override
    def prepare_data(self) -> None:
        """Generate the default set, build the tiny CLIP, train the tokenizer, tokenize the captions and scan the
        images (checks, CLIP features on the trainer's device), each only when its cache is missing. Bad input
        with ``on_bad_input: error`` stops here, before training. ``predict`` needs none of it (the checkpoint
        holds CLIP, mapper, GPT-2 and tokenizer)."""
        if self._predicting():
            return
        if self.uses_generated_set:
            generate.generate(self.generated.root, self.generated.sizes)
        if self.clip.name is None:
            root = self.generated.root if self.clip.pretrain is not None else self.cache_root
            prepare_tiny_clip(self.clip.config, self.clip.pretrain, root)
        if self.tokenizer_spec.name is None:
            by_split, _, _ = self._read_splits()
            captions = [c for record in by_split["train"] for c in record.captions]
            train_tokenizer(captions, self.tokenizer_spec.vocab_size, self.cache_root, self.tokenizer_source)
        splits, problems = self._prepared_splits()
        if self.hparams.on_bad_input == "error":  # "skip" is reported once, by setup
            problems.handle("error", "caption data")
        self._prepared = (splits, problems)  # setup in this process reuses it (other ranks load from disk)
        if self._encoder is not None:  # only needed to compute features: free it (and the device's memory)
            self._encoder = None
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    # -- loading (every rank)
    def encoder(self) -> ClipImageEncoder:
        """The prepared CLIP the feature cache is computed with (the model loads the same ``clip_source``)."""
        if self._encoder is None:
            from transformers import CLIPVisionModelWithProjection

            from common.hub import load_pretrained

            source = self.clip_source
            if self.clip.name is None and not Path(source, "config.json").exists():
                raise RuntimeError(
                    f"caption data: the tiny CLIP {source} is not prepared; run prepare_data() "
                    "(tgm does) or python -m projects.caption.prepare --config ..."
                )
            model = load_pretrained(
                CLIPVisionModelWithProjection.from_pretrained, source, what="data.init_args.clip"
            )
            self._encoder = ClipImageEncoder(model, self.clip.name or "tiny-clip")
        return self._encoder

    def clip_identity(self) -> dict:
        """What the cached features depend on, without loading CLIP: the source, its weight files' (name, size,
        mtime) (a ``save_pretrained`` folder or the hub cache's snapshot; otherwise a hash of the loaded weights)
        and the preprocessing."""
        source = self.clip_source
        folder = Path(source) if Path(source).is_dir() else _hub_snapshot(source)
        weights = directory_identity(folder) if folder is not None else self.encoder().identity()
        return {"source": source, "weights": weights, "preprocess": asdict(self._preprocess())}

    def _device(self) -> torch.device:
        """The trainer's device (its root device under DDP), CPU without a trainer."""
        trainer = self.trainer
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    def _workers(self, decodes: bool) -> int:
        if self.hparams.num_workers is not None:
            return self.hparams.num_workers
        return min(4, max((os.cpu_count() or 1) - 1, 0)) if decodes else 0

    def _prepare_workers(self) -> int:
        if self.hparams.prepare_workers is not None:
            return self.hparams.prepare_workers
        return min(8, os.cpu_count() or 1)

    def _scan(self, paths: list[Path]) -> ImageScan:
        """The stored scan of ``paths`` (computed once: every image decoded once, CLIP on the trainer's device)."""
        features = self.hparams.use_feature_cache
        return scan_images(
            paths,
            self.cache_root,
            self.clip_identity() if features else None,
            self.encoder if features else None,
            self.hparams.prepare_batch_size,
            self._prepare_workers(),
            self._device(),
        )

    def _load_tokenizer(self):
        source = self.tokenizer_source
        if self.tokenizer_spec.name is None and not Path(source).is_file():
            raise RuntimeError(
                f"caption data: the tokenizer {source} is not prepared; run prepare_data() (tgm "
                "does) or python -m projects.caption.prepare --config ..."
            )
        return load_tokenizer(source)

    def _sources(self) -> list[tuple[str, str | None]]:
        h = self.hparams
        if self.uses_generated_set:
            root = Path(self.generated.root)
            return [
                (split, str(root / f"{split}.json"))
                for split in ("train", "val", "test")
                if split in self.generated.sizes
            ]
        return [("train", h.train_file), ("val", h.val_file), ("test", h.test_file)]

    def _read_splits(self) -> tuple[dict[str, list[CaptionRecord]], Problems, int]:
        """Records per split after the caption checks (images are checked by the scan), the problems so far and
        how many records were listed."""
        if self._read is not None:  # prepare_data reads them for the tokenizer and for the checks
            by_split, problems, listed = self._read
            return dict(by_split), Problems(list(problems.items)), listed
        problems = Problems()
        by_split: dict[str, list[CaptionRecord]] = {"train": [], "val": [], "test": []}
        for default_split, file in self._sources():
            if file is None:
                continue
            image_root = self.hparams.image_root if not self.uses_generated_set else None
            for record in read_caption_file(file, image_root, problems):
                split = record.split or default_split
                if split not in by_split:
                    raise InputError(
                        f"{record.source}: unknown split '{split}' (use train, val, test or restval)"
                    )
                by_split[split].append(record)
        listed = sum(len(records) for records in by_split.values())
        for split in by_split:
            by_split[split] = check_records(by_split[split], problems)
        self._read = (dict(by_split), Problems(list(problems.items)), listed)
        return by_split, problems, listed

    def _prepared_splits(self) -> tuple[dict[str, dict], Problems]:
        """Per split: records, token ids, their rows in the split's scan and the scan's features (None without
        the feature cache), after every check; and all problems found. Cheap when prepared: the caption files are
        read, each image is ``stat``-ed, token ids and scans are read from the cache."""
        by_split, problems, listed = self._read_splits()
        tokenizer = self._load_tokenizer()
        captions = [c for records in by_split.values() for record in records for c in record.captions]
        ids = iter(tokenize_captions(captions, tokenizer, self.cache_root))
        splits = {}
        for split, records in by_split.items():
            kept, kept_ids = self._drop_long(records, ids, problems)
            scan = self._scan([r.path for r in kept]) if kept else ImageScan(None, {}, True)
            for row, (reason, detail) in sorted(scan.problems.items()):
                problems.add(reason, f"{kept[row].source}: {detail}")
            rows = [row for row in range(len(kept)) if row not in scan.problems]
            splits[split] = {
                "records": [kept[row] for row in rows],
                "token_ids": [kept_ids[row] for row in rows],
                "rows": rows,
                "features": scan.features,
                "hit": scan.hit,
            }
        if not splits["train"]["records"]:
            missing = problems.counts()["missing image file"]
            if missing:  # typically a wrong image_root: say which files were looked for
                root = self.hparams.image_root or "null: each caption file's folder"
                raise InputError(
                    f"caption data: no training images: {missing} of {listed} listed image files are missing, "
                    f"first: {'; '.join(problems.first('missing image file', 3))} "
                    f"(check data.init_args.image_root: {root})"
                )
            raise InputError("caption data: no training images (check data.init_args.train_file)")
        if not splits["val"]["records"]:
            raise InputError("caption data: no validation images; give val_file or records with split 'val'")
        self.tokenizer = tokenizer
        return splits, problems

    def _drop_long(self, records: list[CaptionRecord], ids, problems: Problems):
        """Records and their captions' token ids (``ids`` yields them in order); captions over
        ``max_caption_tokens`` (end token included) are bad input, records left without captions are dropped."""
        kept_records, kept_ids = [], []
        for record in records:
            ids_per_caption, captions = [], []
            for caption in record.captions:
                tokens = next(ids)
                if len(tokens) > self.max_caption_tokens:
                    problems.add(
                        f"caption longer than max_caption_tokens={self.max_caption_tokens}",
                        f"{record.source} (image {record.image_id!r}): {len(tokens)} tokens: {caption[:60]!r}",
                    )
                    continue
                ids_per_caption.append(tokens)
                captions.append(caption)
            if ids_per_caption:
                kept_records.append(
                    CaptionRecord(record.image_id, record.path, captions, record.split, record.source)
                )
                kept_ids.append(ids_per_caption)
        return kept_records, kept_ids

    @override
    def setup(self, stage: str | None = None) -> None:
        """Load what ``prepare_data`` prepared (every rank): no image is decoded and no CLIP runs when it did."""
        if stage == "predict":
            self._setup_predict()
            return
        if "train" in self.records:  # already set up (fit, then validate or test)
            return
        # what prepare_data found in this process (its scans are memory maps of the stored files), else from disk
        splits, problems = self._prepared if self._prepared is not None else self._prepared_splits()
        for split, prepared in splits.items():
            self.records[split], self.token_ids[split] = prepared["records"], prepared["token_ids"]
            self.rows[split] = prepared["rows"]
            if prepared["features"] is not None and prepared["records"]:
                self._features[split] = prepared["features"]
                self.cache_hits[split] = (
                    self._prepared is not None or prepared["hit"]
                )  # read, not computed here
        self.skipped = problems.handle(self.hparams.on_bad_input, "caption data")
        rank_zero_info(
            "caption data: "
            + ", ".join(
                f"{s}={len(r)} images/{sum(len(x.captions) for x in r)} captions"
                for s, r in self.records.items()
            )
            + f", vocab={len(self.tokenizer)}"
            + (f", skipped={dict(self.skipped)}" if self.skipped else "")
        )

    def _setup_predict(self) -> None:
        h = self.hparams
        if h.predict_file is not None:
            records = read_caption_file(h.predict_file, h.image_root)
        elif h.predict_dir is not None:
            records = predict_records_from_folder(h.predict_dir)
        else:
            raise InputError(
                "caption predict: set data.init_args.predict_dir (a folder of images) or "
                "data.init_args.predict_file (COCO annotations / a caption file)"
            )
        problems = (
            Problems()
        )  # no captions needed in predict: only the image checks apply (not cached: nothing
        bad = encode_images([r.path for r in records], None, 64, self._workers(decodes=True))  # is prepared)
        for row, (reason, detail) in sorted(bad.items()):
            problems.add(reason, f"{records[row].source}: {detail}")
        self.skipped = problems.handle(h.on_bad_input, "caption predict")
        self.records["predict"] = [
            CaptionRecord(r.image_id, r.path, [], None, r.source)
            for row, r in enumerate(records)
            if row not in bad
        ]

    # -- loaders
    def _preprocess(self) -> Preprocess:
        return Preprocess(image_size=int(self._clip_vision_config().image_size))

    def _loader(self, dataset: ImageDataset, batch_size: int, shuffle: bool) -> DataLoader:
        workers = self._workers(decodes=dataset.features is None)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=workers,
            collate_fn=partial(collate, pad_id=self.pad_id),
            persistent_workers=workers > 0,
        )

    @override
    def train_dataloader(self) -> DataLoader:
        dataset = PairDataset(
            self.records["train"],
            self.token_ids["train"],
            self._features.get("train"),
            self._preprocess(),
            self.rows["train"],
        )
        return self._loader(dataset, self.hparams.batch_size, shuffle=True)

    def _eval_loader(self, split: str) -> DataLoader:
        if not self.records.get(split):
            raise InputError(f"caption data: the '{split}' split is empty")
        dataset = ImageDataset(
            self.records[split],
            self.token_ids[split],
            self._features.get(split),
            self._preprocess(),
            self.rows[split],
        )
        return self._loader(dataset, self.hparams.eval_batch_size, shuffle=False)

    @override
    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    @override
    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    @override
    def predict_dataloader(self) -> DataLoader:
        dataset = ImageDataset(self.records["predict"], None, None, self._preprocess())
        return self._loader(dataset, self.hparams.eval_batch_size, shuffle=False)
