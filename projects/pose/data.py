"""``PoseDataModule``: Progressive Transformers data folders (or the generated corpus) as batches.

Batches carry *tokens* (strings), not ids: the vocabulary lives in the model (prepared from the training split,
saved in the checkpoint), so ``predict`` works from a checkpoint without the training files.

Counter conventions. The original data has 0-based counters (``i / N``): frame 0 (counter 0) is the decoder's
start frame, never a target, and DTW is scored against ``frames[1:]``. This project's generated data has 1-based
counters (the last frame is exactly 1) and starts decoding from a zero frame. ``counter: auto`` tells them apart
per split (0-based when every sequence starts with counter 0, 1-based when none does, one error naming the line
when a split mixes them); a batch carries ``start_frames`` (frame 0, or zeros) and ``frames`` (the targets), so
the model never needs to know which convention the files use.

Preparation (``prepare_data``, rank 0, once): the generated corpus when ``synthetic`` is set; each split parsed
once, streamed line by line, into memory-mapped arrays (:class:`SplitArrays`, reused while the files' size and
mtime are unchanged); then the source vocabulary, its FastText embedding matrix, the mean pose, the start pose
and the counter's end gap, written atomically to ``prepared_path`` (reused while the settings and the training
files are unchanged). ``setup`` only opens what was prepared: a warm launch stats the files and reads no frame.
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
from common.io import atomic_dir, atomic_path, load_cache
from projects.pose.embeddings import (
    embedding_matrix,
    embedding_report,
    fasttext_cache_path,
    load_fasttext,
    train_fasttext,
)
from projects.pose.formats import Example, PoseDataError, iter_split, read_lines
from projects.pose.generate import generate_corpus
from projects.pose.vocabulary import Vocabulary, tokenize, unknown_share_message

COUNTER_CONVENTIONS = ("auto", "zero_based", "one_based")
SOURCE_EMBEDDINGS = ("fasttext", "random")
PREPARED_VERSION = 1
SPLIT_VERSION = 2


class SplitArrays:
    """A prepared split: every frame of every sequence in one memory-mapped float32 array (``frames.f32``, rows =
    frames, nanoGPT's ``train.bin`` habit) with ``offsets.npy`` (sequence ``i`` is rows ``offsets[i]:offsets[i+1]``)
    and the sentences and names in ``texts.json``. Opening it reads no frames; pages come from the file (shared by
    every process) as batches ask for them."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.meta = json.loads((self.folder / "meta.json").read_text(encoding="utf-8"))
        self.offsets = np.load(self.folder / "offsets.npy")
        expected = self.meta["frames"] * self.meta["width"] * np.dtype(np.float32).itemsize
        size = (self.folder / "frames.f32").stat().st_size
        if size != expected or len(self.offsets) < 1 or self.offsets[-1] != self.meta["frames"]:
            raise ValueError(f"frames.f32 has {size} bytes, expected {expected}")
        self._frames: np.ndarray | None = None  # opened on first use, in each DataLoader worker

    @property
    def frames(self) -> np.ndarray:
        if self._frames is None:
            shape = (self.meta["frames"], self.meta["width"])
            self._frames = (
                np.memmap(self.folder / "frames.f32", dtype=np.float32, mode="r", shape=shape)
                if shape[0]
                else np.zeros(shape, dtype=np.float32)
            )
        return self._frames

    def __getstate__(self) -> dict:  # spawned workers open their own map instead of receiving a copy
        return {**self.__dict__, "_frames": None}

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def length(self, index: int) -> int:
        return int(self.offsets[index + 1] - self.offsets[index])

    def sequence(self, index: int) -> np.ndarray:
        return np.array(self.frames[self.offsets[index] : self.offsets[index + 1]])

    def texts_and_names(self) -> tuple[list[str], list[str]]:
        data = json.loads((self.folder / "texts.json").read_text(encoding="utf-8"))
        return data["texts"], data["names"]


class PoseDataset(Dataset):
    """Examples of one split (``rows`` of its prepared arrays; None frames for prediction inputs).
    ``zero_based``: frame 0 is each sequence's start frame and the targets are the frames after it (the
    original); otherwise the start frame is zeros and every frame is a target."""

    def __init__(
        self,
        texts: list[str],
        names: list[str],
        lowercase: bool,
        punctuation: str,
        zero_based: bool = False,
        arrays: SplitArrays | None = None,
    ) -> None:
        self.texts = texts
        self.names = names
        self.tokens = [tokenize(text, lowercase, punctuation) for text in texts]
        self.zero_based = zero_based
        self.arrays = arrays
        self.rows = list(range(len(texts)))

    def keep(self, rows: list[int]) -> None:
        """Keep only these examples (by their position in the split)."""
        self.texts = [self.texts[i] for i in rows]
        self.names = [self.names[i] for i in rows]
        self.tokens = [self.tokens[i] for i in rows]
        self.rows = [self.rows[i] for i in rows]

    def __len__(self) -> int:
        return len(self.texts)

    def num_frames(self, index: int) -> int:
        return self.arrays.length(self.rows[index])

    def start_and_targets(self, index: int) -> tuple[np.ndarray | None, np.ndarray | None]:
        if self.arrays is None:
            return None, None
        frames = self.arrays.sequence(self.rows[index])
        if self.zero_based:
            return frames[0], frames[1:]
        return np.zeros(frames.shape[1], dtype=frames.dtype), frames

    def __getitem__(self, index: int) -> dict:
        start, targets = self.start_and_targets(index)
        return {
            "name": self.names[index],
            "text": self.texts[index],
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
    (``src_voc_min_freq``, ``src_voc_limit``). ``src_embeddings``: ``fasttext`` (default): ``fasttext_path``
    (``.bin`` / gensim ``.model``) or trained here on the training sentences (``fasttext_dim``,
    ``fasttext_epochs``), cached in ``cache_dir``; ``random``: PT's own randomly initialised source embeddings
    (the prepared artefact then has ``embeddings: None`` and no FastText model).
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
        src_embeddings: str = "fasttext",
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
        if src_embeddings not in SOURCE_EMBEDDINGS:
            raise InputError(
                f"data.init_args.src_embeddings must be one of {SOURCE_EMBEDDINGS}, got '{src_embeddings}'"
            )
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
        self.src_embeddings = src_embeddings
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
            "src_embeddings": self.src_embeddings,
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

    def _stamp(self, split: str) -> list:
        """Size and modification time of the split's files: what decides whether its prepared arrays are current
        (stat calls only, no reading)."""
        prefix = self.paths[split]
        return [
            [str(path), path.stat().st_size, path.stat().st_mtime_ns]
            for path in (Path(f"{prefix}.{ext}") for ext in (self.src, self.trg, self.files))
            if path.is_file()
        ]

    def _train_stamp(self) -> list:
        return self._stamp("train")

    def split_folder(self, split: str) -> Path:
        """Where ``prepare_data`` puts the split's memory-mapped arrays (by its files and reading settings)."""
        settings = {
            "version": SPLIT_VERSION,
            "prefix": str(Path(self.paths[split]).resolve()),
            "ext": [self.src, self.trg, self.files],
            "trg_size": self.trg_size,
            "skip_frames": self.skip_frames,
            "counter": self.counter,
        }
        digest = hashlib.sha1(json.dumps(settings, sort_keys=True).encode("utf-8")).hexdigest()[:16]
        return Path(self.cache_dir) / f"split_{digest}"

    def _current_split(self, split: str) -> SplitArrays | None:
        """The split's prepared arrays when they match its files now, else None (stat calls and a small json)."""
        folder = self.split_folder(split)
        meta = folder / "meta.json"
        if not meta.is_file():
            return None
        arrays = load_cache(folder, SplitArrays, f"prepared {split} split")
        return arrays if arrays is not None and arrays.meta["stamp"] == self._stamp(split) else None

    def prepare_split(self, split: str) -> SplitArrays:
        """Parse the split's files once into memory-mapped arrays (unless current ones exist) and open them."""
        if self.paths[split] is None:
            raise PoseDataError(f"data.init_args.{split} is not set")
        arrays = self._current_split(split)
        if arrays is not None:
            return arrays
        folder = self.split_folder(split)
        with atomic_dir(folder) as temporary:
            write_split_arrays(
                temporary,
                self.paths[split],
                self.trg_size,
                self.src,
                self.trg,
                self.files,
                self.skip_frames,
                self.counter,
                self._stamp(split),
            )
        rank_zero_info(f"data: prepared {split} split {self.paths[split]} -> {folder}")
        return SplitArrays(folder)

    @override
    def prepare_data(self) -> None:
        """Generate the corpus (when configured), parse each split once into memory-mapped arrays and prepare the
        source artefact; everything is reused while current (a warm launch only stats the files). ``predict``
        needs none of it: the checkpoint holds the vocabulary, so the training files may be gone."""
        if self.trainer is not None and self.trainer.state.fn == "predict":
            return
        if self.synthetic is not None:
            generate_corpus(Path(self.paths["train"]).parent, **self.synthetic)
        self.prepare_split("train")
        for split in ("dev", "test"):
            prefix = self.paths[split]
            if prefix is not None and Path(f"{prefix}.{self.trg}").is_file():
                self.prepare_split(split)  # a missing test split fails at `tgm test`, not at `fit`
        path = Path(self.prepared_path)
        cached = read_prepared(path)
        if cached is not None and cached.get("train_stamp") == self._train_stamp():
            return
        prepared = self._prepare(self._read("train"))
        with atomic_path(path) as temporary:
            torch.save(prepared, temporary)
        rank_zero_info(f"data: prepared vocabulary and source embeddings -> {path}")

    def _prepare(self, train: PoseDataset) -> dict:
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
        weights, counts, fasttext_file = None, None, None
        if self.src_embeddings == "fasttext":
            if self.fasttext_path:
                fasttext_file = str(Path(self.fasttext_path).expanduser())
                vectors = load_fasttext(fasttext_file)
            else:
                settings = {"vector_size": self.fasttext_dim, "epochs": self.fasttext_epochs}
                vectors = train_fasttext(tokens, Path(self.cache_dir) / "fasttext", **settings)
                fasttext_file = str(
                    fasttext_cache_path(tokens, Path(self.cache_dir) / "fasttext", **settings)
                )
            weights, counts = embedding_matrix(vocab, vectors)
            rank_zero_info(embedding_report(counts))
        else:
            rank_zero_info(
                f"source embeddings: {len(vocab)} tokens, randomly initialised (no FastText), as PT"
            )
        mean_pose, start_pose, end_gap = pose_statistics(train)
        return {
            "train_stamp": self._train_stamp(),
            "vocab": list(vocab.itos),
            "embeddings": weights,
            "embedding_counts": counts,
            "fasttext_path": fasttext_file,
            "mean_pose": mean_pose,
            "start_pose": start_pose,
            "counter_end_gap": end_gap,
            "zero_based": train.zero_based,
            "src_embeddings": self.src_embeddings,  # "random": embeddings and fasttext_path are None
        }

    def _read(self, split: str) -> PoseDataset:
        """Open the split's prepared arrays (preparing them first when ``prepare_data`` has not) as a dataset;
        training pairs longer than ``max_sent_length`` are dropped, as the original does."""
        arrays = self.prepare_split(split)
        prefix = self.paths[split]
        if not len(arrays):
            what = {"train": "training", "dev": "dev (validation)", "test": "test"}[split]
            hint = (
                " or set trainer.limit_val_batches: 0 to train without validation" if split == "dev" else ""
            )
            raise PoseDataError(
                f"{prefix}.{self.src}: the {what} split is empty (0 lines); give data.init_args."
                f"{split} a prefix with examples{hint}"
            )
        texts, names = arrays.texts_and_names()
        dataset = PoseDataset(
            texts, names, self.lowercase, self.punctuation, arrays.meta["zero_based"], arrays
        )
        if split == "train":  # the original filters training pairs only
            keep = [
                i
                for i, tokens in enumerate(dataset.tokens)
                if len(tokens) <= self.max_sent_length and arrays.length(i) <= self.max_sent_length
            ]
            self.num_filtered = len(dataset) - len(keep)
            if self.num_filtered:
                rank_zero_info(
                    f"data: skipped {self.num_filtered} of {len(dataset)} training pairs longer than "
                    f"max_sent_length={self.max_sent_length} (tokens or frames)"
                )
            if not keep:
                raise PoseDataError(
                    f"{prefix}: all {len(dataset)} training pairs are longer than "
                    f"max_sent_length={self.max_sent_length} (tokens or frames)"
                )
            dataset.keep(keep)
        return dataset

    @override
    def setup(self, stage: str | None = None) -> None:
        """Open what ``prepare_data`` wrote (memory-mapped; nothing is parsed when it is current)."""
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
        return PoseDataset(
            [e.text for e in examples], [e.name for e in examples], self.lowercase, self.punctuation
        )

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
    return counter_end_gap_of([(len(frames), float(frames[-1, -1])) for frames in targets])


def counter_end_gap_of(ends: list[tuple[int, float]]) -> float:
    """:func:`counter_end_gap` from each target sequence's (length, last counter)."""
    gaps = [(1.0 - last) / (last / length) for length, last in ends if last > 0]
    return float(np.median(gaps)) if gaps else 0.0


def write_split_arrays(
    folder: Path,
    prefix: str,
    trg_size: int,
    src: str,
    trg: str,
    files: str,
    skip_frames: int,
    counter: str,
    stamp: list,
) -> None:
    """Parse ``<prefix>.<src|trg|files>`` once, line by line, into ``folder``: ``frames.f32`` (all frames, float32),
    ``offsets.npy``, ``texts.json`` and ``meta.json`` (the files' stamp, the counter convention). Memory holds one
    line at a time plus the sentences.

    ``counter: auto`` is 0-based when every sequence starts with counter 0 and 1-based when none does; a split
    that mixes both (one sequence starting at 0.0001 among 0-based ones) is one error naming that line, since it
    would silently switch how the whole split is evaluated."""
    offsets, texts, names, sums, firsts, lasts = [0], [], [], [], [], []
    width = trg_size + 1
    with open(folder / "frames.f32", "wb") as handle:
        for example in iter_split(prefix, trg_size, src, trg, files, skip_frames):
            handle.write(np.ascontiguousarray(example.frames, dtype=np.float32).tobytes())
            offsets.append(offsets[-1] + len(example.frames))
            texts.append(example.text)
            names.append(example.name)
            sums.append(example.frames.sum(axis=0, dtype=np.float64))
            firsts.append(example.frames[0].copy())  # a view would keep the whole sequence alive
            lasts.append(float(example.frames[-1, -1]))
    first_counters = [float(frame[-1]) for frame in firsts]
    starts_at_zero = np.array(first_counters) == 0.0
    zero_based = counter == "zero_based" or (
        counter == "auto" and bool(starts_at_zero.size) and bool(starts_at_zero.all())
    )
    if counter == "auto" and starts_at_zero.any() and not starts_at_zero.all():
        majority = bool(starts_at_zero.sum() * 2 >= starts_at_zero.size)
        line = int(np.flatnonzero(starts_at_zero != majority)[0])
        zeros = int(starts_at_zero.sum())
        raise PoseDataError(
            f"{prefix}.{trg}:{line + 1}: the first counter is {first_counters[line]:g}, but {zeros} of "
            f"{len(first_counters)} sequences of this split start at counter 0 and the others do not: one counter "
            "convention per split (0-based: frame 0 has counter 0 and is the start frame, as the original; "
            "1-based: the first frame has counter 1/N); fix the line or set data.init_args.counter"
        )
    lengths = np.diff(offsets)
    if zero_based and lengths.size and lengths.min() < 2:
        line = int(np.argmin(lengths))
        raise PoseDataError(
            f"{prefix}.{trg}:{line + 1}: one frame after skip_frames; with 0-based counters frame 0 is the start "
            "frame and at least one target must follow"
        )
    np.save(folder / "offsets.npy", np.array(offsets, dtype=np.int64))
    np.savez(  # per-sequence figures: the pose statistics of any subset without reading the frames again
        folder / "sequences.npz",
        sums=np.array(sums, dtype=np.float64).reshape(-1, width),
        firsts=np.array(firsts, dtype=np.float32).reshape(-1, width),
        last_counters=np.array(lasts, dtype=np.float64),
    )
    (folder / "texts.json").write_text(
        json.dumps({"texts": texts, "names": names}, ensure_ascii=False), "utf-8"
    )
    meta = {"stamp": stamp, "width": width, "frames": int(offsets[-1]), "zero_based": zero_based}
    (folder / "meta.json").write_text(json.dumps(meta), encoding="utf-8")


def pose_statistics(train: PoseDataset) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The training targets' mean pose, the mean start frame and the counter's end gap of the kept training
    sequences, from the per-sequence sums the parse stored (no frame is read again)."""
    arrays = train.arrays
    with np.load(arrays.folder / "sequences.npz") as stored:
        sums, firsts, lasts = (stored[key][train.rows] for key in ("sums", "firsts", "last_counters"))
    lengths = np.diff(arrays.offsets)[train.rows]
    if train.zero_based:  # frame 0 is the start frame, the targets are the frames after it
        sums, lengths, starts = sums - firsts, lengths - 1, firsts.astype(np.float64)
    else:
        starts = np.zeros_like(sums)
    mean_pose = torch.from_numpy((sums[:, :-1].sum(axis=0) / lengths.sum()).astype(np.float32))
    start_pose = torch.from_numpy(starts.mean(axis=0).astype(np.float32))
    return mean_pose, start_pose, counter_end_gap_of(list(zip(lengths.tolist(), lasts.tolist(), strict=True)))
