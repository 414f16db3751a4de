"""CorpusBLEU against sacrebleu (the reference implementation), and its DDP-style state merge."""

from __future__ import annotations

import random

import pytest
import torch
from sacrebleu.metrics import BLEU

from common.metrics.bleu import CorpusBLEU

WORDS = "kırmızı mavi yeşil sarı bir kare daire üçgen solunda sağında üstte altta , ve".split()


def random_corpus(seed: int, n: int = 30, refs: int = 3) -> tuple[list[str], list[list[str]]]:
    rng = random.Random(seed)

    def sentence() -> list[str]:
        return [rng.choice(WORDS) for _ in range(rng.randint(3, 12))]

    target = [[sentence() for _ in range(refs)] for _ in range(n)]
    preds = []  # a reference with some words replaced, dropped or added: partial n-gram overlap
    for refs_ in target:
        words = [w if rng.random() < 0.75 else rng.choice(WORDS) for w in rng.choice(refs_)]
        preds.append(" ".join(words[: rng.randint(2, len(words))] + sentence()[: rng.randint(0, 2)]))
    return preds, [[" ".join(r) for r in refs_] for refs_ in target]


def sacrebleu_scores(preds, target) -> list[float]:
    streams = [list(stream) for stream in zip(*target, strict=True)]
    return [
        BLEU(max_ngram_order=k, tokenize="13a", smooth_method="none").corpus_score(preds, streams).score / 100
        for k in range(1, 5)
    ]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_sacrebleu_on_random_corpora(seed):
    preds, target = random_corpus(seed)
    metric = CorpusBLEU()
    metric.update(preds, target)
    scores = metric.compute()
    ours = [float(scores[f"bleu{k}"]) for k in range(1, 5)]
    assert ours == pytest.approx(sacrebleu_scores(preds, target), abs=1e-6)
    assert ours[3] > 0.05  # not a degenerate all-zero case


def test_brevity_penalty_tie_breaks_to_the_shorter_reference():
    preds = ["sarı bir üçgen, solda yeşil bir kare"]  # 8 tokens; references of 9 and 7 tokens
    target = [["solda yeşil bir kare, sağda sarı bir üçgen", "yeşil bir karenin sağında sarı bir üçgen"]]
    metric = CorpusBLEU()
    metric.update(preds, target)
    assert float(metric.compute()["bleu1"]) == pytest.approx(sacrebleu_scores(preds, target)[0], abs=1e-6)
    assert float(metric.compute()["bleu1"]) == pytest.approx(1.0)


def test_perfect_and_empty_predictions():
    metric = CorpusBLEU()
    metric.update(["mavi bir daire"], [["mavi bir daire", "bir mavi daire"]])
    assert float(metric.compute()["bleu4"]) == 0.0  # only 3 tokens: no 4-gram at all
    assert float(metric.compute()["bleu3"]) == pytest.approx(1.0)
    metric = CorpusBLEU()
    metric.update([""], [["mavi bir daire"]])
    assert float(metric.compute()["bleu1"]) == 0.0


def test_split_updates_summed_like_ddp_equal_the_whole_corpus():
    preds, target = random_corpus(5, n=20)
    whole, rank0, rank1 = CorpusBLEU(), CorpusBLEU(), CorpusBLEU()
    whole.update(preds, target)
    rank0.update(preds[:7], target[:7])
    rank1.update(preds[7:], target[7:])
    for name in ("preds_len", "target_len", "numerator", "denominator"):  # what dist_reduce_fx="sum" does
        setattr(rank0, name, getattr(rank0, name) + getattr(rank1, name))
    assert {k: float(v) for k, v in rank0.compute().items()} == pytest.approx(
        {k: float(v) for k, v in whole.compute().items()}
    )
    assert all(rank0._reductions[n] is not None for n in ("numerator", "denominator"))
    assert torch.equal(rank0.numerator, whole.numerator)


def test_mismatched_lengths_are_rejected():
    with pytest.raises(ValueError, match="2 predictions but 1"):
        CorpusBLEU().update(["a", "b"], [["a"]])


def _ddp_worker(rank: int, world: int, port: int, preds, target, out_file: str) -> None:
    import json
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    metric = CorpusBLEU()
    metric.update(preds[rank::world], target[rank::world])  # uneven shards: 20 items over 3 ranks
    scores = {k: float(v) for k, v in metric.compute().items()}  # torchmetrics syncs the states here
    if rank == 0:
        with open(out_file, "w") as handle:
            json.dump(scores, handle)
    dist.destroy_process_group()


@pytest.mark.slow
def test_real_ddp_sync_over_gloo_equals_the_whole_corpus(tmp_path):
    import json
    import socket

    import torch.multiprocessing as mp

    preds, target = random_corpus(7, n=20)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_ddp_worker, args=(3, port, preds, target, str(tmp_path / "scores.json")), nprocs=3, join=True)
    whole = CorpusBLEU()
    whole.update(preds, target)
    expected = {k: float(v) for k, v in whole.compute().items()}
    assert json.loads((tmp_path / "scores.json").read_text()) == pytest.approx(expected)


TURKISH = (
    "İçinde IRMAK ırmak Işık ışık İstanbul istanbul ŞEHİR şehir ÇİÇEK çiçek ĞÜÖ ğüö kedi KEDİ bir Bir".split()
)


def turkish_corpus(seed: int, n: int = 25) -> tuple[list[str], list[list[str]]]:
    rng = random.Random(seed)
    refs = [
        [" ".join(rng.choice(TURKISH) for _ in range(rng.randint(4, 10))) for _ in range(2)] for _ in range(n)
    ]
    preds = [
        " ".join(w if rng.random() < 0.8 else rng.choice(TURKISH) for w in rng.choice(r).split())
        for r in refs
    ]
    return preds, refs


@pytest.mark.parametrize("seed", [0, 1])
def test_turkish_lowercase_matches_sacrebleu_on_pre_lowercased_text(seed):
    preds, target = turkish_corpus(seed)

    def lower(text: str) -> str:  # the Turkish rule written out: İ -> i, I -> ı, then everything else
        return "".join({"İ": "i", "I": "ı"}.get(c, c) for c in text).lower()

    metric = CorpusBLEU(turkish_lowercase=True)
    metric.update(preds, target)
    ours = [float(metric.compute()[f"bleu{k}"]) for k in range(1, 5)]
    expected = sacrebleu_scores([lower(p) for p in preds], [[lower(r) for r in refs] for refs in target])
    assert ours == pytest.approx(expected, abs=1e-6)
    case_sensitive = CorpusBLEU()  # the default stays case-sensitive 13a
    case_sensitive.update(preds, target)
    assert float(case_sensitive.compute()["bleu1"]) == pytest.approx(
        sacrebleu_scores(preds, target)[0], abs=1e-6
    )
    assert float(case_sensitive.compute()["bleu1"]) < ours[0]


def test_coco_style_lowercasing_mangles_turkish_and_the_turkish_option_does_not():
    from common.metrics.bleu import turkish_lower

    assert "İçinde".lower() == "i\u0307çinde" != "içinde"  # what str.lower (sacrebleu, coco-caption) does
    assert "IRMAK".lower() == "irmak" and turkish_lower("IRMAK") == "ırmak"
    assert turkish_lower("İçinde Işık") == "içinde ışık"
    pred, refs = ["İçinde bir kedi var"], [["içinde bir kedi var"]]
    plain, turkish = CorpusBLEU(lowercase=True), CorpusBLEU(turkish_lowercase=True)
    plain.update(pred, refs)
    turkish.update(pred, refs)
    assert float(turkish.compute()["bleu1"]) == pytest.approx(1.0)
    assert float(plain.compute()["bleu1"]) == pytest.approx(0.75)  # "i̇çinde" != "içinde": 3 of 4 words match
