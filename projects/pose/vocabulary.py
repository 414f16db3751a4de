"""Turkish-aware tokenisation and the source vocabulary (built from training data only)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from common.errors import InputError, MissingInputError

UNK, PAD, BOS, EOS = "<unk>", "<pad>", "<bos>", "<eos>"
SPECIALS = (UNK, PAD, BOS, EOS)
# words may carry a Turkish suffix after an apostrophe (İstanbul'a); every other punctuation mark is a token
TOKEN_PATTERN = re.compile(r"\w+(?:['’]\w+)*|[^\w\s]")
PUNCTUATION_MODES = ("split", "drop")


def turkish_lower(text: str) -> str:
    """Lower-case with Turkish dotted/dotless i: ``İ -> i``, ``I -> ı`` (Python's ``lower`` maps ``I -> i`` and
    ``İ -> i̇`` with a combining dot, which splits one word into two vocabulary entries)."""
    return text.replace("İ", "i").replace("I", "ı").lower()


def turkish_upper_first(text: str) -> str:
    """Capitalise the first letter the Turkish way (``i -> İ``, ``ı -> I``)."""
    if not text:
        return text
    first = {"i": "İ", "ı": "I"}.get(text[0], text[0].upper())
    return first + text[1:]


def tokenize(text: str, lowercase: bool = True, punctuation: str = "split") -> list[str]:
    """Split a sentence into word tokens; ``punctuation`` either keeps marks as own tokens or drops them."""
    if punctuation not in PUNCTUATION_MODES:
        raise InputError(f"punctuation must be one of {PUNCTUATION_MODES}, got '{punctuation}'")
    if lowercase:
        text = turkish_lower(text)
    tokens = TOKEN_PATTERN.findall(text)
    if punctuation == "drop":
        tokens = [t for t in tokens if re.match(r"\w", t)]
    return tokens


class Vocabulary:
    """Token <-> id, specials first (``<unk>=0, <pad>=1, <bos>=2, <eos>=3`` as in JoeyNMT / the original)."""

    def __init__(self, tokens: Iterable[str]) -> None:
        self.itos = list(SPECIALS) + [t for t in dict.fromkeys(tokens) if t not in SPECIALS]
        self.stoi = {token: index for index, token in enumerate(self.itos)}

    @classmethod
    def build(cls, sentences: Iterable[list[str]], min_freq: int = 1, max_size: int | None = None) -> Vocabulary:
        """From tokenised *training* sentences: tokens seen at least ``min_freq`` times, most frequent first."""
        counts = Counter(token for sentence in sentences for token in sentence)
        ranked = sorted((t for t, c in counts.items() if c >= min_freq), key=lambda t: (-counts[t], t))
        return cls(ranked[:max_size] if max_size else ranked)

    @classmethod
    def from_file(cls, path: str | Path) -> Vocabulary:
        """One token per line (the original ``src_vocab`` file)."""
        path = Path(path)
        if not path.is_file():
            raise MissingInputError(f"src_vocab file '{path}' does not exist")
        return cls(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())

    def __len__(self) -> int:
        return len(self.itos)

    @property
    def pad_index(self) -> int:
        return self.stoi[PAD]

    def encode(self, tokens: list[str], add_eos: bool = True) -> list[int]:
        ids = [self.stoi.get(token, self.stoi[UNK]) for token in tokens]
        return ids + [self.stoi[EOS]] if add_eos else ids
