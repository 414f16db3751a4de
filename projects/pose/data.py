"""``PoseDataModule``: Progressive Transformers data folders (or the generated synthetic corpus) as batches.

Batches carry *tokens* (strings), not ids: the vocabulary lives in the model (built from the training split,
saved in the checkpoint), so ``predict`` works from a checkpoint without the training files.
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset

from common.errors import InputError
from projects.pose.formats import Example, PoseDataError, read_lines, read_split
from projects.pose.synthetic import generate_corpus
from projects.pose.text import tokenize


class PoseDataset(Dataset):
    def __init__(self, examples: list[Example], lowercase: bool, punctuation: str) -> None:
        self.examples = examples
        self.tokens = [tokenize(e.text, lowercase, punctuation) for e in examples]

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict:
        example = self.examples[index]
        return {"name": example.name, "text": example.text, "tokens": self.tokens[index], "frames": example.frames}


def collate(items: list[dict]) -> dict:
    """Lists of names/texts/tokens; frames padded to ``B x T x (trg_size + 1)`` with ``lengths`` (or None)."""
    batch = {key: [item[key] for item in items] for key in ("name", "text", "tokens")}
    if items[0]["frames"] is None:
        batch["frames"], batch["lengths"] = None, None
    else:
        frames = [torch.from_numpy(item["frames"]) for item in items]
        batch["frames"] = torch.nn.utils.rnn.pad_sequence(frames, batch_first=True)
        batch["lengths"] = torch.tensor([len(f) for f in frames])
    return batch


class PoseDataModule(pl.LightningDataModule):
    """Reads ``<train|dev|test>.<src|trg|files>`` (key names as in the original ``Configs/Base.yaml``).

    ``synthetic``: keyword arguments of :func:`projects.pose.synthetic.generate_corpus`; when set, the corpus
    is generated into the folder of ``train`` on first use (reused while its manifest matches). Leave it null
    for your own data. ``predict_file``: a UTF-8 text file with one sentence per line, for ``tgm predict``.
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
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        shuffle: bool = True,
        lowercase: bool = True,
        punctuation: str = "split",
        predict_file: str | None = None,
        synthetic: dict | None = None,
    ) -> None:
        super().__init__()
        if skip_frames < 1:
            raise InputError(f"data.skip_frames must be >= 1, got {skip_frames}")
        self.paths = {"train": train, "dev": dev, "test": test}
        self.src, self.trg, self.files = src, trg, files
        self.trg_size = trg_size
        self.skip_frames = skip_frames
        self.max_sent_length = max_sent_length
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.shuffle = shuffle
        self.lowercase = lowercase
        self.punctuation = punctuation
        self.predict_file = predict_file
        self.synthetic = synthetic
        self.datasets: dict[str, PoseDataset] = {}
        self.num_filtered = 0

    @property
    def fps(self) -> int:
        """Frames per second of the (skipped) sequences: 25 // skip_frames, as in the original."""
        return max(1, 25 // self.skip_frames)

    def prepare_data(self) -> None:
        if self.synthetic is not None:
            generate_corpus(Path(self.paths["train"]).parent, **self.synthetic)

    def _read(self, split: str) -> PoseDataset:
        prefix = self.paths[split]
        if prefix is None:
            raise PoseDataError(f"data.{split} is not set")
        examples = read_split(prefix, self.trg_size, self.src, self.trg, self.files, self.skip_frames)
        dataset = PoseDataset(examples, self.lowercase, self.punctuation)
        if split == "train":  # the original filters training pairs only
            keep = [i for i, (e, t) in enumerate(zip(examples, dataset.tokens, strict=True))
                    if len(t) <= self.max_sent_length and len(e.frames) <= self.max_sent_length]
            self.num_filtered = len(examples) - len(keep)
            if self.num_filtered:
                rank_zero_info(f"data: skipped {self.num_filtered} of {len(examples)} training pairs longer than "
                               f"max_sent_length={self.max_sent_length} (tokens or frames)")
            dataset.examples = [examples[i] for i in keep]
            dataset.tokens = [dataset.tokens[i] for i in keep]
            if not keep:
                raise PoseDataError(f"{prefix}: no training pair is within max_sent_length={self.max_sent_length}")
        return dataset

    def setup(self, stage: str | None = None) -> None:
        if self.synthetic is not None:
            self.prepare_data()  # cheap when the manifest matches; covers callers that skip prepare_data
        wanted = {"fit": ["train", "dev"], "validate": ["dev"], "test": ["test"], "predict": []}.get(stage or "fit",
                                                                                               ["train", "dev"])
        for split in wanted:
            if split not in self.datasets:
                self.datasets[split] = self._read(split)
        if stage == "predict":
            self.datasets["predict"] = self._read_predict()

    def _read_predict(self) -> PoseDataset:
        if not self.predict_file:
            raise PoseDataError("predict needs data.init_args.predict_file: a text file with one sentence per line")
        lines = read_lines(self.predict_file, "predict_file")
        examples = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                raise PoseDataError(f"{self.predict_file}:{number}: empty sentence")
            examples.append(Example(name=f"sentence_{number:05d}", text=line.strip(), frames=None))
        if not examples:
            raise PoseDataError(f"{self.predict_file}: no sentences")
        return PoseDataset(examples, self.lowercase, self.punctuation)

    def train_tokens(self) -> list[list[str]]:
        """Tokenised training sentences (vocabulary and FastText are built from these only)."""
        if "train" not in self.datasets:
            self.setup("fit")
        return self.datasets["train"].tokens

    def mean_pose(self) -> np.ndarray:
        """Mean joint values over every training frame (the "mean pose" baseline), counter excluded."""
        frames = np.concatenate([e.frames for e in self.datasets["train"].examples])
        return frames[:, :-1].mean(axis=0)

    def _loader(self, split: str, shuffle: bool = False) -> DataLoader:
        batch_size = self.batch_size if split == "train" else self.eval_batch_size
        return DataLoader(self.datasets[split], batch_size=batch_size, shuffle=shuffle, collate_fn=collate,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=self.shuffle)

    def val_dataloader(self) -> DataLoader:
        return self._loader("dev")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict")
