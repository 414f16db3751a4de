"""The coco-caption metric set (BLEU-1..4, METEOR, ROUGE-L, CIDEr-D) as ``pycocoevalcap`` computes it.

What every COCO captioning paper (and ClipCap) reports is ``pycocoevalcap``'s numbers: captions tokenised by the
Stanford PTB tokenizer (lower-cased, punctuation tokens dropped), then

* BLEU-1..4: corpus counts, closest reference length, the scorer's own 1e-9 / 1e-15 guards (not smoothing);
* ROUGE-L: per image, LCS against each reference, max precision and max recall, F with beta 1.2; the mean;
* CIDEr-D: TF-IDF n-gram vectors (n = 1..4, document frequency over the corpus' reference sets), clipped
  cosine similarity, Gaussian length penalty (sigma 6; "length" is the bigram count, as the scorer has it),
  averaged over references, x10; the mean over images;
* METEOR 1.5 (``-l en -norm``) through the Java jar ``pycocoevalcap`` ships;
* SPICE is not offered: it needs Stanford CoreNLP 3.6.0 jars that ``pycocoevalcap`` downloads on first use (no
  network here) and it parses English only, so it has no meaning for Turkish captions.

BLEU, ROUGE-L and CIDEr-D are ``pycocoevalcap``'s own scorers (pure Python, no Java), fed captions tokenised here,
so only the tokenisation is this module's. Tokenisations (``tokenize``), named in the metric keys by suffix:

* ``coco`` (``_coco``): the PTB tokenizer itself (Java + ``pycocoevalcap``), exactly the published protocol.
  It lower-cases with Java's ``toLowerCase`` (``İ`` -> ``i̇``, ``I`` -> ``i``), wrong for Turkish.
* ``turkish`` (``_tr``): the Turkish-aware equivalent: Turkish lower-casing (``İ`` -> ``i``, ``I`` -> ``ı``), words
  with their apostrophe suffixes kept whole (``istanbul'da``), every punctuation token dropped (PTB drops
  ``. , ? ! : ; - -- ... ' '' ` ``` and brackets). Pure Python.
* ``13a`` (``_13a``): sacrebleu's ``13a`` (case-sensitive, punctuation kept as tokens).

``CocoCaptionScores`` is a ``torchmetrics.Metric``: the (id, prediction, references) triples are its state
(UTF-8 bytes in a tensor, gathered over processes) because CIDEr-D's document frequencies and METEOR need the
whole corpus; items seen twice (DDP's sampler pads ranks) are counted once when ids are given.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Sequence

import torch
from torchmetrics import Metric

from common.metrics.bleu import turkish_lower

TOKENIZATIONS = {"coco": "coco", "turkish": "tr", "13a": "13a"}
NAMES = ("bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider_d")
HEADERS = dict(
    zip(NAMES, ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D"), strict=True)
)
PTB_PUNCTUATION = {
    "''",
    "'",
    "``",
    "`",
    "-LRB-",
    "-RRB-",
    "-LCB-",
    "-RCB-",
    ".",
    "?",
    "!",
    ",",
    ":",
    "-",
    "--",
    "...",
}
PTB_PUNCTUATION.add(";")
WORD = re.compile(r"\w+(?:['’]\w+)*|[^\w\s]+")


# ---------------------------------------------------------------------------------------------- tokenisation
def java_available() -> bool:
    return shutil.which("java") is not None


def ptb_tokenize(captions: Sequence[str]) -> list[str]:
    """pycocoevalcap's ``PTBTokenizer`` (Stanford PTB, Java), one caption at a time in order."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tokenized = PTBTokenizer().tokenize({i: [{"caption": c}] for i, c in enumerate(captions)})
    return [tokenized[i][0] for i in range(len(captions))]


def turkish_tokenize(text: str) -> str:
    """Turkish lower-casing, words (with apostrophe suffixes) and punctuation split, punctuation dropped."""
    return " ".join(t for t in WORD.findall(turkish_lower(text)) if re.search(r"\w", t))


def sacrebleu_13a(text: str) -> str:
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    return Tokenizer13a()(text)


def tokenize_all(captions: Sequence[str], tokenize: str) -> list[str]:
    if tokenize == "coco":
        return ptb_tokenize(captions)
    if tokenize == "turkish":
        return [turkish_tokenize(c) for c in captions]
    if tokenize == "13a":
        return [sacrebleu_13a(c) for c in captions]
    raise ValueError(f"tokenize must be one of {sorted(TOKENIZATIONS)}, got '{tokenize}'")


# ---------------------------------------------------------------------------------------------- scorers
def bleu(gts: dict, res: dict, n: int = 4) -> list[float]:
    """pycocoevalcap's ``Bleu(n)`` (option ``closest``): BLEU-1..n on already tokenised captions."""
    from pycocoevalcap.bleu.bleu import Bleu

    return [float(x) for x in Bleu(n).compute_score(gts, res, verbose=0)[0]]


def rouge_l(gts: dict, res: dict) -> float:
    """pycocoevalcap's ``Rouge``: per image max-precision / max-recall LCS F-score (beta 1.2), averaged."""
    from pycocoevalcap.rouge.rouge import Rouge

    return float(Rouge().compute_score(gts, res)[0])


def cider_d(gts: dict, res: dict) -> float:
    """pycocoevalcap's ``Cider`` (which is CIDEr-D: clipping and the length penalty), averaged over images."""
    from pycocoevalcap.cider.cider import Cider

    return float(Cider().compute_score(gts, res)[0])


def meteor(gts: dict, res: dict) -> float:
    """METEOR 1.5 through pycocoevalcap's Java wrapper."""
    from pycocoevalcap.meteor.meteor import Meteor

    scorer = Meteor()
    try:
        return float(scorer.compute_score(gts, res)[0])
    finally:
        del scorer


def meteor_unavailable() -> str | None:
    """Why METEOR cannot run here (one line), or None."""
    if not java_available():
        return "METEOR: not computed: Java is not installed (apt install openjdk-17-jre-headless)"
    try:
        import pycocoevalcap.meteor.meteor  # noqa: F401
    except ImportError:
        return "METEOR: not computed: pycocoevalcap is not installed (pip install pycocoevalcap)"
    return None


SPICE_NOTE = (
    "SPICE: not computed: it needs Stanford CoreNLP 3.6.0 (downloaded by pycocoevalcap on first use; no network "
    "here) and parses English only"
)


def coco_scores(
    references: dict, predictions: dict, tokenize: str = "turkish", with_meteor: bool = True
) -> tuple[dict[str, float], str, list[str]]:
    """``(scores by name, tokenisation suffix, notes)`` for ``references[id] = [str, ...]`` and
    ``predictions[id] = str``. ``coco`` without Java or pycocoevalcap falls back to ``turkish`` with a note."""
    notes = []
    if tokenize == "coco" and (not java_available() or _missing("pycocoevalcap")):
        notes.append(
            "PTB tokenisation needs Java and pycocoevalcap: using the Turkish tokenisation (_tr) instead"
        )
        tokenize = "turkish"
    ids = list(references)
    flat = [c for i in ids for c in references[i]] + [predictions[i] for i in ids]
    tokens = tokenize_all(flat, tokenize)
    gts, position = {}, 0
    for i in ids:
        gts[i] = tokens[position : position + len(references[i])]
        position += len(references[i])
    res = {i: [tokens[position + k]] for k, i in enumerate(ids)}
    scores = dict(zip(NAMES[:4], bleu(gts, res), strict=True))
    if with_meteor:
        reason = meteor_unavailable()
        if reason is None:
            scores["meteor"] = meteor(gts, res)
        else:
            notes.append(reason)
    scores["rouge_l"] = rouge_l(gts, res)
    scores["cider_d"] = cider_d(gts, res)
    if with_meteor:
        notes.append(SPICE_NOTE)
    return scores, TOKENIZATIONS[tokenize], notes


def _missing(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is None


def format_table(
    scores: dict[str, float], suffix: str, notes: Sequence[str] = (), count: int | None = None
) -> str:
    """The table a COCO paper shows (x100, as papers print them), one row; notes below."""
    header = [HEADERS[name] for name in scores]
    lines = [
        f"coco-caption metrics (tokenisation: {suffix}{f', {count} images' if count is not None else ''}, x100)",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        "| " + " | ".join(f"{100 * v:.2f}" for v in scores.values()) + " |",
    ]
    return "\n".join(lines + list(notes))


# ---------------------------------------------------------------------------------------------- metric
class CocoCaptionScores(Metric):
    """The coco-caption set over the whole corpus; ``compute()`` returns ``{name_<suffix>: value}``."""

    full_state_update = False

    def __init__(self, tokenize: str = "turkish", with_meteor: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        if tokenize not in TOKENIZATIONS:
            raise ValueError(f"tokenize must be one of {sorted(TOKENIZATIONS)}, got '{tokenize}'")
        self.tokenize, self.with_meteor = tokenize, with_meteor
        self.notes: list[str] = []
        self.suffix = TOKENIZATIONS[tokenize]
        self.add_state("encoded", default=[], dist_reduce_fx="cat")

    def update(
        self, preds: Sequence[str], target: Sequence[Sequence[str]], ids: Sequence | None = None
    ) -> None:
        if len(preds) != len(target):
            raise ValueError(f"CocoCaptionScores: {len(preds)} predictions but {len(target)} reference lists")
        if any(len(refs) == 0 for refs in target):
            raise ValueError("CocoCaptionScores: every prediction needs at least one reference")
        items = [
            [None if ids is None else ids[k], p, list(r)]
            for k, (p, r) in enumerate(zip(preds, target, strict=True))
        ]
        data = json.dumps(items, ensure_ascii=False).encode() + b"\n"
        self.encoded.append(torch.frombuffer(bytearray(data), dtype=torch.uint8).to(self.device))

    def items(self) -> list[tuple]:
        encoded = self.encoded if isinstance(self.encoded, list) else [self.encoded]
        data = b"".join(bytes(t.cpu().numpy().tobytes()) for t in encoded)
        items, seen = [], set()
        for line in data.decode().splitlines():
            for image_id, pred, refs in json.loads(line):
                key = json.dumps(image_id) if image_id is not None else None
                if key is not None and key in seen:
                    continue
                seen.add(key)
                items.append((image_id, pred, refs))
        return items

    def compute(self) -> dict[str, torch.Tensor]:
        items = self.items()
        if not items:
            return {}
        references = {k: refs for k, (_, _, refs) in enumerate(items)}
        predictions = {k: pred for k, (_, pred, _) in enumerate(items)}
        scores, self.suffix, self.notes = coco_scores(
            references, predictions, self.tokenize, self.with_meteor
        )
        return {
            f"{name}_{self.suffix}": torch.tensor(value, dtype=torch.float64)
            for name, value in scores.items()
        }
