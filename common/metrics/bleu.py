"""Corpus BLEU-1..4 for captioning, DDP-correct (a thin wrapper around torchmetrics' ``SacreBLEUScore``).

Definition (as in coco-caption and sacrebleu): BLEU-k is the brevity penalty times the geometric mean of the
modified (clipped) n-gram precisions for n = 1..k, with uniform weights 1/k, counted over the whole corpus;
with several references, clipping uses the maximum count over references and the brevity penalty uses the
reference length closest to each hypothesis, the shorter one on a tie (sacrebleu, nltk and coco-caption
agree on that tie-break; torchmetrics' own ``_bleu_score_update`` takes the first reference instead, which is why
``update`` below recounts with the shared n-gram counter rather than calling it).

Tokenisation: sacrebleu's ``13a`` tokenizer (the WMT ``mteval-v13a`` rules: punctuation split off, otherwise
whitespace), case-sensitive by default, so Turkish dotted/dotless ``i/ı/İ/I`` are never folded wrongly.
``turkish_lowercase=True`` compares lowercased text with Turkish rules (``İ -> i``, ``I -> ı``, then
``str.lower``); plain ``lowercase=True`` (sacrebleu's and coco-caption's ``str.lower``) turns ``İçinde`` into
``i̇çinde`` (i + combining dot above, U+0307) and ``IRMAK`` into ``irmak``, so it never matches Turkish text.
The n-gram counts for n = 1..4 are sum-reduced states, so one pass gives all four scores and DDP sums counts
across processes before the ratio is taken (not an average of per-process scores).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import torch
from torchmetrics.functional.text.bleu import _bleu_score_compute, _count_ngram
from torchmetrics.text import SacreBLEUScore


def turkish_lower(text: str) -> str:
    """Lowercase by Turkish rules: dotted capital ``İ`` -> ``i``, dotless capital ``I`` -> ``ı``, then the rest."""
    return text.replace("İ", "i").replace("I", "ı").lower()


class CorpusBLEU(SacreBLEUScore):
    """``compute()`` returns ``{"bleu1": ..., ..., "bleu{max_n}": ...}`` in [0, 1] (sacrebleu reports x100)."""

    def __init__(
        self,
        max_n: int = 4,
        tokenize: str = "13a",
        lowercase: bool = False,
        smooth: bool = False,
        turkish_lowercase: bool = False,
        **kwargs,
    ) -> None:
        if lowercase and turkish_lowercase:
            raise ValueError("CorpusBLEU: choose lowercase (str.lower) or turkish_lowercase, not both")
        super().__init__(n_gram=max_n, smooth=smooth, tokenize=tokenize, lowercase=lowercase, **kwargs)
        self.max_n = max_n
        self.turkish_lowercase = turkish_lowercase

    def update(self, preds: Sequence[str], target: Sequence[Sequence[str]]) -> None:
        if len(preds) != len(target):
            raise ValueError(f"CorpusBLEU: {len(preds)} predictions but {len(target)} reference lists")
        if any(len(refs) == 0 for refs in target):
            raise ValueError("CorpusBLEU: every prediction needs at least one reference")
        for pred, refs in zip(preds, target, strict=True):
            if self.turkish_lowercase:
                pred, refs = turkish_lower(pred), [turkish_lower(ref) for ref in refs]
            pred_tokens = self.tokenizer(pred) if pred else []
            ref_tokens = [self.tokenizer(ref) if ref else [] for ref in refs]
            self.preds_len += len(pred_tokens)
            # closest reference length, the shorter one on a tie (as sacrebleu / nltk / coco-caption)
            self.target_len += min((abs(len(r) - len(pred_tokens)), len(r)) for r in ref_tokens)[1]
            pred_counts = _count_ngram(pred_tokens, self.n_gram)
            max_ref_counts: Counter = Counter()
            for tokens in ref_tokens:
                max_ref_counts |= _count_ngram(tokens, self.n_gram)
            for ngram, count in (pred_counts & max_ref_counts).items():
                self.numerator[len(ngram) - 1] += count
            for ngram, count in pred_counts.items():
                self.denominator[len(ngram) - 1] += count

    def compute(self) -> dict[str, torch.Tensor]:
        scores = {}
        for k in range(1, self.max_n + 1):
            scores[f"bleu{k}"] = _bleu_score_compute(
                self.preds_len,
                self.target_len,
                self.numerator[:k],
                self.denominator[:k],
                k,
                [1.0 / k] * k,
                self.smooth,
            )
        return scores
