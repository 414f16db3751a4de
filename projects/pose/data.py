"""``PoseDataModule``: Progressive Transformers data folders (or the generated corpus) as batches.

Batches carry *tokens* (strings), not ids: the vocabulary lives in the model (prepared from the training split,
saved in the checkpoint), so ``predict`` works from a checkpoint without the training files.

Counter conventions. The original data has 0-based counters (``i / N``): frame 0 (counter 0) is the decoder's
start frame, never a target, and DTW is scored against ``frames[1:]``. This project's generated data has 1-based
counters (the last frame is exactly 1) and starts decoding from a zero frame. ``counter: auto`` tells them apart
per split (0-based when every sequence starts with counter 0); a batch carries ``start_frames`` (frame 0, or
zeros) and ``frames`` (the targets), so the model never needs to know which convention the files use.

Preparation (``prepare_data``, rank 0, once): the generated corpus when ``synthetic`` is set, then the source
vocabulary, its FastText embedding matrix, the mean pose, the start pose and the counter's end gap, written
atomically to ``prepared_path`` (reused while the settings and the training files are unchanged). ``setup`` only
reads files.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset
from typing_extensions import override

from common.errors import InputError
from common.io import atomic_path, load_cache
from projects.pose.embeddings import embedding_matrix, fasttext_cache_path, load_fasttext, train_fasttext
from projects.pose.formats import Example, PoseDataError, counters_are_zero_based, read_lines, read_split
from projects.pose.generate import generate_corpus
from projects.pose.vocabulary import Vocabulary, tokenize, unknown_share_message

COUNTER_CONVENTIONS = ("auto", "zero_based", "one_based")
PREPARED_VERSION = 1


class PoseDataset(Dataset):
    """Examples of one split. ``zero_based``: frame 0 is each sequence's start frame and the targets are the
    frames after it (the original); otherwise the start frame is zeros and every frame is a target."""

    def __init__(
        self, examples: list[Example], lowercase: bool, punctuation: str, zero_based: bool = False
    ) -> None:
        self.examples = examples
        self.tokens = [tokenize(e.text, lowercase, punctuation) for e in examples]
        self.zero_based = zero_based

    def __len__(self) -> int:
        return len(self.examples)

    def start_and_targets(self, index: int) -> tuple[np.ndarray | None, np.ndarray | None]:
        frames = self.examples[index].frames
        if frames is None:
            return None, None
        if self.zero_based:
            return frames[0], frames[1:]
        return np.zeros(frames.shape[1], dtype=frames.dtype), frames

    def __getitem__(self, index: int) -> dict:
        example = self.examples[index]
        start, targets = self.start_and_targets(index)
        return {
            "name": example.name,
            "text": example.text,
            "tokens": self.tokens[index],
            "frames": targets,
            "start": start,
        }


def collate(items: list[dict]) -> dict:
    """Lists of names/texts/tokens; target frames padded to ``B x T x (trg_size + 1)`` with ``lengths`` and the
    decoder's ``start_frames`` (``B x (trg_size + 1)``), or None for prediction inputs."""
    batch = {key: [item[key] for item in items] for key in ("name", "text", "tokens")}
    if items[0]["frames"] is None:
        batch["frames"], batch["lengths"], batch["start_frames"] = None, None, None
    else:
        frames = [torch.from_numpy(item["frames"]) for item in items]
        batch["frames"] = torch.nn.utils.rnn.pad_sequence(frames, batch_first=True)
        batch["lengths"] = torch.tensor([len(f) for f in frames])
        batch["start_frames"] = torch.stack([torch.from_numpy(item["start"]) for item in items])
    return batch


class PoseDataModule(pl.LightningDataModule):
    """Reads ``<train|dev|test>.<src|trg|files>`` (key names as in the original ``Configs/Base.yaml``).

    ``synthetic``: keyword arguments of :func:`projects.pose.generate.generate_corpus`; when set, the corpus is
    generated into the folder of ``train`` on first use (reused while its manifest matches). Leave it null for
    your own data. ``predict_file``: a UTF-8 text file with one sentence per line, for ``tgm predict``.
    Vocabulary: ``src_vocab`` (one token per line, as the original) or built from the training split
    (``src_voc_min_freq``, ``src_voc_limit``). FastText: ``fasttext_path`` (``.bin`` / gensim ``.model``) or
    trained here on the training sentences (``fasttext_dim``, ``fasttext_epochs``), cached in ``cache_dir``.
    """

    def __init__(
        self,
        train: str = "data/generated/pose/train",
        dev: str = "data/generated/pose/dev",
        test: str | None = "data/generated/pose/test",
        src: str = "text",
        trg: str = "skels",
        files: str = "files",
        trg_size: int = 150,
        skip_frames: int = 1,
        max_sent_length: int = 300,
        counter: str = "auto",
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        shuffle: bool = True,
        lowercase: bool = True,
        punctuation: str = "split",
        src_vocab: str | None = None,
        src_voc_min_freq: int = 1,
        src_voc_limit: int | None = None,
        fasttext_path: str | None = None,
        fasttext_dim: int = 64,
        fasttext_epochs: int = 30,
        cache_dir: str = "data/generated/pose/prepared",
        predict_file: str | None = None,
        synthetic: dict | None = None,
    ) -> None:
        super().__init__()
        if skip_frames < 1:
            raise InputError(f"data.init_args.skip_frames must be >= 1, got {skip_frames}")
        if counter not in COUNTER_CONVENTIONS:
            raise InputError(f"data.init_args.counter must be one of {COUNTER_CONVENTIONS}, got '{counter}'")
        self.paths = {"train": train, "dev": dev, "test": test}
        self.src, self.trg, self.files = src, trg, files
        self.trg_size = trg_size
        self.skip_frames = skip_frames
        self.max_sent_length = max_sent_length
        self.counter = counter
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.shuffle = shuffle
        self.lowercase = lowercase
        self.punctuation = punctuation
        self.src_vocab = src_vocab
        self.src_voc_min_freq = src_voc_min_freq
        self.src_voc_limit = src_voc_limit
        self.fasttext_path = fasttext_path
        self.fasttext_dim = fasttext_dim
        self.fasttext_epochs = fasttext_epochs
        self.cache_dir = cache_dir
        self.predict_file = predict_file
        self.synthetic = synthetic
        self.datasets: dict[str, PoseDataset] = {}
        self.num_filtered = 0

    @property
    def fps(self) -> int:
        """Frames per second of the (skipped) sequences: 25 // skip_frames, as in the original."""
        return max(1, 25 // self.skip_frames)

    def _settings(self) -> dict:
        return {
            "version": PREPARED_VERSION,
            "train": str(Path(self.paths["train"]).resolve()),
            "src": self.src,
            "trg": self.trg,
            "files": self.files,
            "trg_size": self.trg_size,
            "skip_frames": self.skip_frames,
            "max_sent_length": self.max_sent_length,
            "counter": self.counter,
            "lowercase": self.lowercase,
            "punctuation": self.punctuation,
            "src_vocab": self.src_vocab,
            "min_freq": self.src_voc_min_freq,
            "limit": self.src_voc_limit,
            "fasttext_path": self.fasttext_path,
            "fasttext_dim": self.fasttext_dim,
            "fasttext_epochs": self.fasttext_epochs,
            "synthetic": self.synthetic,
        }

    @property
    def prepared_path(self) -> str:
        """The prepared source artefact (vocabulary, FastText embedding matrix, pose statistics) for these
        settings; ``prepare_data`` writes it, the model loads it. Known right after ``__init__``."""
        digest = hashlib.sha1(json.dumps(self._settings(), sort_keys=True).encode("utf-8")).hexdigest()[:16]
        return str(Path(self.cache_dir) / f"prepared_{digest}.pt")

    def _train_stamp(self) -> list:
        prefix = self.paths["train"]
        return [
            [str(path), path.stat().st_size, path.stat().st_mtime_ns]
            for path in (Path(f"{prefix}.{ext}") for ext in (self.src, self.trg))
            if path.is_file()
        ]

    @override
    def prepare_data(self) -> None:
        """Generate the corpus (when configured) and prepare the source artefact; both are reused when current."""
        if self.synthetic is not None:
            generate_corpus(Path(self.paths["train"]).parent, **self.synthetic)
        path = Path(self.prepared_path)
        cached = read_prepared(path)
        if cached is not None and cached.get("train_stamp") == self._train_stamp():
            return
        prepared = self._prepare()
        with atomic_path(path) as temporary:
            torch.save(prepared, temporary)
        rank_zero_info(f"data: prepared vocabulary and source embeddings -> {path}")

    def _prepare(self) -> dict:
        train = self._read("train")
        tokens = train.tokens
        if self.src_vocab:
            vocab = Vocabulary.from_file(self.src_vocab)
        else:
            vocab = Vocabulary.build(tokens, min_freq=self.src_voc_min_freq, max_size=self.src_voc_limit)
        message = unknown_share_message(
            f"{self.paths['train']}.{self.src} (training)", *vocab.unknown(tokens)
        )
        if message:
            warnings.warn(message, UserWarning, stacklevel=2)
        if self.fasttext_path:
            fasttext_file = str(Path(self.fasttext_path).expanduser())
            vectors = load_fasttext(fasttext_file)
        else:
            settings = {"vector_size": self.fasttext_dim, "epochs": self.fasttext_epochs}
            vectors = train_fasttext(tokens, Path(self.cache_dir) / "fasttext", **settings)
            fasttext_file = str(fasttext_cache_path(tokens, Path(self.cache_dir) / "fasttext", **settings))
        weights, counts = embedding_matrix(vocab, vectors)
        rank_zero_info(f"source embeddings from FastText: {len(vocab)} tokens, {counts}")
        starts, targets = zip(*(train.start_and_targets(i) for i in range(len(train))), strict=True)
        return {
            "train_stamp": self._train_stamp(),
            "vocab": list(vocab.itos),
            "embeddings": weights,
            "embedding_counts": counts,
            "fasttext_path": fasttext_file,
            "mean_pose": torch.from_numpy(np.concatenate(targets)[:, :-1].mean(axis=0)),
            "start_pose": torch.from_numpy(np.stack(starts).mean(axis=0)),
            "counter_end_gap": counter_end_gap(list(targets)),
            "zero_based": train.zero_based,
        }

    def _read(self, split: str) -> PoseDataset:
        prefix = self.paths[split]
        if prefix is None:
            raise PoseDataError(f"data.init_args.{split} is not set")
        examples = read_split(prefix, self.trg_size, self.src, self.trg, self.files, self.skip_frames)
        if not examples:
            what = {"train": "training", "dev": "dev (validation)", "test": "test"}[split]
            hint = (
                " or set trainer.limit_val_batches: 0 to train without validation" if split == "dev" else ""
            )
            raise PoseDataError(
                f"{prefix}.{self.src}: the {what} split is empty (0 lines); give data.init_args."
                f"{split} a prefix with examples{hint}"
            )
        zero_based = self.counter == "zero_based" or (
            self.counter == "auto" and counters_are_zero_based([e.frames for e in examples])
        )
        if zero_based:
            for number, example in enumerate(examples, start=1):
                if len(example.frames) < 2:
                    raise PoseDataError(
                        f"{prefix}.{self.trg}:{number}: one frame after skip_frames; with 0-based "
                        "counters frame 0 is the start frame and at least one target must follow"
                    )
        dataset = PoseDataset(examples, self.lowercase, self.punctuation, zero_based)
        if split == "train":  # the original filters training pairs only
            keep = [
                i
                for i, (e, t) in enumerate(zip(examples, dataset.tokens, strict=True))
                if len(t) <= self.max_sent_length and len(e.frames) <= self.max_sent_length
            ]
            self.num_filtered = len(examples) - len(keep)
            if self.num_filtered:
                rank_zero_info(
                    f"data: skipped {self.num_filtered} of {len(examples)} training pairs longer than "
                    f"max_sent_length={self.max_sent_length} (tokens or frames)"
                )
            dataset.examples = [examples[i] for i in keep]
            dataset.tokens = [dataset.tokens[i] for i in keep]
            if not keep:
                raise PoseDataError(
                    f"{prefix}: all {len(examples)} training pairs are longer than "
                    f"max_sent_length={self.max_sent_length} (tokens or frames)"
                )
        return dataset

    @override
    def setup(self, stage: str | None = None) -> None:
        wanted = {"fit": ["train", "dev"], "validate": ["dev"], "test": ["test"], "predict": []}.get(
            stage or "fit", ["train", "dev"]
        )
        for split in wanted:
            if split not in self.datasets:
                self.datasets[split] = self._read(split)
        if stage == "predict":
            self.datasets["predict"] = self._read_predict()

    def _read_predict(self) -> PoseDataset:
        if not self.predict_file:
            raise PoseDataError(
                "predict needs data.init_args.predict_file: a text file with one sentence per line"
            )
        lines = read_lines(self.predict_file, "predict_file")
        examples = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                raise PoseDataError(f"{self.predict_file}:{number}: empty sentence")
            examples.append(Example(name=f"sentence_{number:05d}", text=line.strip(), frames=None))
        if not examples:
            raise PoseDataError(f"{self.predict_file}: no sentences")
        return PoseDataset(examples, self.lowercase, self.punctuation)

    def _loader(self, split: str, shuffle: bool = False) -> DataLoader:
        batch_size = self.batch_size if split == "train" else self.eval_batch_size
        return DataLoader(
            self.datasets[split],
            batch_size=batch_size,
            shuffle=shuffle,
            collate_fn=collate,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    @override
    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=self.shuffle)

    @override
    def val_dataloader(self) -> DataLoader:
        return self._loader("dev")

    @override
    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    @override
    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict")


def read_prepared(path: str | Path) -> dict | None:
    """The artefact ``prepare_data`` writes, or None when it is missing (a corrupt one is removed, one warning)."""
    return load_cache(path, lambda p: torch.load(p, map_location="cpu", weights_only=True), "prepared data")


def counter_end_gap(targets: list[np.ndarray]) -> float:
    """How many counter steps the last target frame lies before counter 1, the median over sequences.

    Target ``k`` (1-based) has counter ``k * step``; the last one is 1 with 1-based counters (gap 0) and
    ``1 - step`` once frame 0 is the start frame of 0-based data (gap 1). Decoding stops by this gap.
    """
    gaps = []
    for frames in targets:
        last = float(frames[-1, -1])
        if last > 0:
            step = last / len(frames)
            gaps.append((1.0 - last) / step)
    return float(np.median(gaps)) if gaps else 0.0
