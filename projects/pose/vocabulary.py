"""Source tokenisation (Turkish-aware, or whitespace-only as Progressive Transformers) and the source vocabulary
(built from training data only)."""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from common.errors import InputError, MissingInputError
from common.io import read_lines

# the original's specials (constants.py): a src_vocab file that lists them first keeps PT's size (1089, not 1091)
UNK, PAD, BOS, EOS = "<unk>", "<pad>", "<s>", "</s>"
SPECIALS = (UNK, PAD, BOS, EOS)
# words may carry a Turkish suffix after an apostrophe (İstanbul'a); every other punctuation mark is a token
TOKEN_PATTERN = re.compile(r"\w+(?:['’]\w+)*|[^\w\s]")
# split: marks are tokens of their own; drop: marks are removed; whitespace: split on whitespace only, nothing
# else (the original's ``str.split()``: ``ES-BEDEUTET`` and ``gut,`` stay one token each); strip: every character
# of ``string.punctuation`` is deleted, then whitespace split (the Turkish fork: ``İstanbul'a`` -> ``istanbula``)
PUNCTUATION_MODES = ("split", "drop", "whitespace", "strip")
STRIP_PUNCTUATION = str.maketrans("", "", string.punctuation)


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
    """Split a sentence into tokens; ``punctuation`` keeps marks as own tokens (``split``), drops them (``drop``),
    leaves the text alone and splits on whitespace only (``whitespace``, as the original) or deletes the ASCII
    marks of ``string.punctuation`` wherever they are and splits on whitespace (``strip``, the Turkish fork)."""
    if punctuation not in PUNCTUATION_MODES:
        raise InputError(f"data.punctuation must be one of {PUNCTUATION_MODES}, got '{punctuation}'")
    if lowercase:
        text = turkish_lower(text)
    if punctuation == "whitespace":
        return text.split()
    if punctuation == "strip":
        return text.translate(STRIP_PUNCTUATION).split()
    tokens = TOKEN_PATTERN.findall(text)
    if punctuation == "drop":
        tokens = [t for t in tokens if re.match(r"\w", t)]
    return tokens


class Vocabulary:
    """Token <-> id, specials first (``<unk>=0, <pad>=1, <s>=2, </s>=3`` as in JoeyNMT / the original); a token
    list (or ``src_vocab`` file) that contains them keeps one of each, as the original's ``add_tokens``."""

    def __init__(self, tokens: Iterable[str]) -> None:
        self.itos = list(SPECIALS) + [t for t in dict.fromkeys(tokens) if t not in SPECIALS]
        self.stoi = {token: index for index, token in enumerate(self.itos)}

    @classmethod
    def build(
        cls, sentences: Iterable[list[str]], min_freq: int = 1, max_size: int | None = None
    ) -> Vocabulary:
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
        return cls(line.strip() for line in read_lines(path) if line.strip())

    def __len__(self) -> int:
        return len(self.itos)

    @property
    def pad_index(self) -> int:
        return self.stoi[PAD]

    def encode(self, tokens: list[str], add_eos: bool = True) -> list[int]:
        ids = [self.stoi.get(token, self.stoi[UNK]) for token in tokens]
        return ids + [self.stoi[EOS]] if add_eos else ids

    def unknown(self, sentences: Iterable[list[str]]) -> tuple[int, int, Counter]:
        """(tokens not in the vocabulary, all tokens, the unknown ones counted) over ``sentences``."""
        missing: Counter = Counter()
        total = 0
        for sentence in sentences:
            total += len(sentence)
            missing.update(token for token in sentence if token not in self.stoi)
        return sum(missing.values()), total, missing


UNKNOWN_SHARE_WARNING = 0.05  # warn when more than this share of source tokens is unknown


def unknown_share_message(what: str, unknown: int, total: int, missing: Counter) -> str | None:
    """A warning line when more than ``UNKNOWN_SHARE_WARNING`` of ``what``'s tokens are unknown, else None."""
    if not total or unknown / total <= UNKNOWN_SHARE_WARNING:
        return None
    examples = ", ".join(repr(token) for token, _ in missing.most_common(5))
    return (
        f"{what}: {unknown} of {total} source tokens ({100 * unknown / total:.1f} %) are not in the "
        f"vocabulary and become <unk> (most frequent: {examples}); check the tokenisation "
        "(data.lowercase / data.punctuation) against the vocabulary"
    )
