"""Small data in the original Progressive Transformers format, for tests.

As the original's ``Data/tmp`` files: gloss sources in upper case with hyphenated glosses (``ES-BEDEUTET``),
0-based counters ``i / N`` (frame 0 has counter 0 and is the decoder's start frame; the last frame's counter is
``(N - 1) / N``), every frame's joints followed by its counter on one line.
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch

from projects.pose.data import PoseDataModule
from projects.pose.formats import progress_counter, write_split
from projects.pose.module import PoseModule

GLOSSES = [
    "ES-BEDEUTET",
    "VIEL",
    "WOLKE",
    "DRUCK",
    "TIEF",
    "KOMMEN",
    "JETZT",
    "WETTER",
    "WIE-AUSSEHEN",
    "MORGEN",
]


def pt_sequence(rng: np.random.Generator, length: int, trg_size: int) -> np.ndarray:
    """A smooth motion of ``length`` frames starting from a rest pose, with 0-based counters."""
    rest = np.linspace(-0.5, 0.5, trg_size)
    time = np.linspace(0.0, 1.0, length)[:, None]
    phases = rng.uniform(0, 2 * np.pi, trg_size)
    joints = rest + 0.3 * np.sin(2 * np.pi * time + phases) - 0.3 * np.sin(phases)  # frame 0 = rest
    return np.concatenate([joints, progress_counter(length, zero_based=True)[:, None]], axis=1)


def write_pt_split(
    prefix: str | Path, lengths: list[int], trg_size: int = 6, seed: int = 0, words: tuple[int, int] = (1, 3)
) -> list[np.ndarray]:
    """Write ``<prefix>.gloss/.text/.skels/.files`` with one sequence per length; returns the sequences."""
    rng = np.random.default_rng(seed)
    sequences = [pt_sequence(rng, n, trg_size) for n in lengths]
    glosses = [" ".join(rng.choice(GLOSSES, size=int(rng.integers(words[0], words[1] + 1)))) for _ in lengths]
    names = [f"dev/{i:05d}" for i in range(len(lengths))]
    write_split(prefix, glosses, sequences, names, src="gloss", decimals=6)
    write_split(prefix, [g.lower() for g in glosses], sequences, names, src="text", decimals=6)
    return sequences


def pt_datamodule(
    tmp_path: Path, train_lengths: list[int], dev_lengths: list[int], trg_size: int = 6, **kwargs
) -> tuple[PoseDataModule, list[np.ndarray], list[np.ndarray]]:
    """Gloss-source train/dev splits under ``tmp_path`` and a datamodule over them (a tiny 1-epoch FastText);
    returns it with the train and dev sequences."""
    train = write_pt_split(tmp_path / "train", list(train_lengths), trg_size, seed=1)
    dev = write_pt_split(tmp_path / "dev", list(dev_lengths), trg_size, seed=2)
    dm = PoseDataModule(
        train=str(tmp_path / "train"),
        dev=str(tmp_path / "dev"),
        test=None,
        src="gloss",
        trg_size=trg_size,
        lowercase=False,
        punctuation="whitespace",
        fasttext_dim=8,
        fasttext_epochs=1,
        cache_dir=str(tmp_path / "prepared"),
        **kwargs,
    )
    return dm, train, dev


BLOCK = {"hidden_size": 16, "num_heads": 2, "num_layers": 1, "ff_size": 16}


def tiny_module(dm: PoseDataModule, trg_size: int = 6, **kwargs) -> PoseModule:
    """A seeded 16-wide one-layer PoseModule over ``dm``'s prepared data; ``kwargs`` replace its settings."""
    torch.manual_seed(0)
    kwargs = {
        "encoder": {**BLOCK, "embeddings": {"embedding_dim": 8}},
        "decoder": BLOCK,
        "decoding": {"max_output_length": 20},
        **kwargs,
    }
    return PoseModule(trg_size=trg_size, prepared=dm.prepared_path, **kwargs)


def quiet_trainer(**kwargs) -> pl.Trainer:
    """A CPU trainer without logger, checkpoints, progress bar, summary or sanity validation."""
    return pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **kwargs,
    )


def write_src_vocab(path: str | Path) -> Path:
    """The original's ``Configs/src_vocab.txt`` layout: one gloss per line, specials first."""
    path = Path(path)
    path.write_text("\n".join(["<unk>", "<pad>", "<s>", "</s>", *GLOSSES]) + "\n", encoding="utf-8")
    return path


def write_pt_corpus(
    out_dir: str | Path, counts: dict[str, int], trg_size: int = 6, seed: int = 0, max_glosses: int = 6
) -> dict[str, list[np.ndarray]]:
    """A learnable PT-format corpus: each gloss has its own duration (10-50 frames) and motion, a sentence is
    1-``max_glosses`` glosses, so lengths span about 10-300 frames and follow from the source."""
    rng = np.random.default_rng(seed)
    durations = {g: int(rng.integers(10, 51)) for g in GLOSSES}
    targets = {g: rng.uniform(-0.8, 0.8, trg_size) for g in GLOSSES}
    rest = np.linspace(-0.5, 0.5, trg_size)
    out = {}
    for split, count in counts.items():
        texts, sequences = [], []
        for _ in range(count):
            words = list(rng.choice(GLOSSES, size=int(rng.integers(1, max_glosses + 1))))
            pieces, current = [rest[None]], rest
            for word in words:
                ramp = np.linspace(0.0, 1.0, durations[word])[1:, None]
                pieces.append(current + ramp * (targets[word] - current))
                current = targets[word]
            joints = np.concatenate(pieces)[:300]
            sequences.append(
                np.concatenate([joints, progress_counter(len(joints), zero_based=True)[:, None]], 1)
            )
            texts.append(" ".join(words))
        write_split(
            Path(out_dir) / split,
            texts,
            sequences,
            [f"{split}/{i:05d}" for i in range(count)],
            src="gloss",
            decimals=5,
        )
        out[split] = sequences
    return out


def pt_load_split(prefix: str | Path, src: str, trg_size: int, skip_frames: int = 1) -> list[dict]:
    """The original loader, transcribed: ``SignProdDataset`` (``data.py``: ``line.strip()``, ``split(" ")``,
    ``float(joint) + 1e-8``, frames cut every ``trg_size + 1`` values, lines of one value skipped) followed by
    ``Batch`` (``batch.py``: ``trg_input = trg[:, :-1]``, ``trg = trg[:, 1:]``), one example at a time. Returns
    the source line, the decoder's start frame (``trg_input[0]``) and the target frames (``trg``)."""
    size = trg_size + 1  # "Target size is plus one due to the counter required for the model"
    examples = []
    with (
        open(f"{prefix}.{src}", encoding="utf-8") as src_file,
        open(f"{prefix}.skels", encoding="utf-8") as trg_file,
        open(f"{prefix}.files", encoding="utf-8") as files_file,
    ):
        for src_line, trg_line, files_line in zip(src_file, trg_file, files_file, strict=False):
            src_line, trg_line, files_line = src_line.strip(), trg_line.strip(), files_line.strip()
            trg_line = trg_line.split(" ")
            if len(trg_line) == 1:
                continue
            trg_line = [(float(joint) + 1e-8) for joint in trg_line]
            trg_frames = [trg_line[i : i + size] for i in range(0, len(trg_line), size * skip_frames)]
            if src_line != "" and trg_line != "":
                trg = torch.tensor(trg_frames, dtype=torch.float32)
                examples.append({"src": src_line, "start": trg[0], "trg": trg[1:], "file": files_line})
    return examples
