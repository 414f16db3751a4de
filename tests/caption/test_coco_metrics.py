"""Issue 22: the coco-caption set equals pycocoevalcap on the same captions (1e-6), for each tokenisation."""

from __future__ import annotations

import random

import pytest

from common.metrics.coco_caption import (
    CocoCaptionScores,
    coco_scores,
    java_available,
    tokenize_all,
    turkish_tokenize,
)

pycocoevalcap = pytest.importorskip("pycocoevalcap", reason="pycocoevalcap is a dev extra")
needs_java = pytest.mark.skipif(not java_available(), reason="PTB tokenizer and METEOR need Java")

WORDS = (
    "kırmızı mavi bir kare daire üçgen solunda sağında altında üstünde ve yan yana İstanbul'da Irmak".split()
)


def corpus(seed: int, images: int = 12) -> tuple[dict, dict]:
    """Sentence-case Turkish with commas and final periods, 1-5 references per image."""
    rng = random.Random(seed)

    def sentence() -> str:
        words = [rng.choice(WORDS) for _ in range(rng.randrange(2, 9))]
        if rng.random() < 0.4:
            words[rng.randrange(len(words))] += ","
        return " ".join(words)[0].upper() + " ".join(words)[1:] + rng.choice([".", "", " ."])

    references = {1000 + i: [sentence() for _ in range(rng.randrange(1, 6))] for i in range(images)}
    predictions = {i: sentence() for i in references}
    return references, predictions


def reference_scores(gts: dict, res: dict, meteor: bool) -> dict[str, float]:
    """pycocoevalcap's scorers on already tokenised text."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    scores = dict(
        zip(["bleu1", "bleu2", "bleu3", "bleu4"], Bleu(4).compute_score(gts, res, verbose=0)[0], strict=True)
    )
    scores["rouge_l"] = Rouge().compute_score(gts, res)[0]
    scores["cider_d"] = Cider().compute_score(gts, res)[0]
    if meteor:
        from pycocoevalcap.meteor.meteor import Meteor

        scores["meteor"] = Meteor().compute_score(gts, res)[0]
    return scores


def check_against_pycocoevalcap(seed: int, with_meteor: bool) -> None:
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    references, predictions = corpus(seed)
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({i: [{"caption": c} for c in refs] for i, refs in references.items()})
    res = tokenizer.tokenize({i: [{"caption": predictions[i]}] for i in references})
    expected = reference_scores(gts, res, meteor=with_meteor)
    scores, suffix, notes = coco_scores(references, predictions, "coco", with_meteor=with_meteor)
    assert suffix == "coco" and set(scores) == set(expected)
    for name, value in expected.items():
        assert scores[name] == pytest.approx(value, abs=1e-6), name


@needs_java
@pytest.mark.parametrize("seed", [0, 1])
def test_coco_tokenisation_equals_pycocoevalcap_end_to_end(seed):
    check_against_pycocoevalcap(seed, with_meteor=False)


@needs_java
@pytest.mark.slow
def test_coco_tokenisation_and_meteor_equal_pycocoevalcap_end_to_end():
    check_against_pycocoevalcap(0, with_meteor=True)  # METEOR's jar loads its paraphrase table: ~50 s


@pytest.mark.parametrize("tokenize", ["turkish", "13a"])
@pytest.mark.parametrize("seed", [2, 3, 4])
def test_scorers_equal_pycocoevalcap_on_each_tokenisation(seed, tokenize):
    references, predictions = corpus(seed, images=20)
    flat = tokenize_all([c for refs in references.values() for c in refs], tokenize)
    gts, position = {}, 0
    for i, refs in references.items():
        gts[i], position = flat[position : position + len(refs)], position + len(refs)
    res = {i: tokenize_all([predictions[i]], tokenize) for i in references}
    expected = reference_scores(gts, res, meteor=False)
    scores, suffix, _ = coco_scores(references, predictions, tokenize, with_meteor=False)
    assert suffix == {"turkish": "tr", "13a": "13a"}[tokenize]
    for name, value in expected.items():
        assert scores[name] == pytest.approx(value, abs=1e-6), name


def test_turkish_tokenisation_folds_case_by_turkish_rules_and_drops_punctuation():
    assert (
        turkish_tokenize("İstanbul'da IRMAK kenarında, bir kedi.") == "istanbul'da ırmak kenarında bir kedi"
    )
    references, predictions = {1: ["İçinde bir kedi var."]}, {1: "içinde bir kedi var"}
    assert coco_scores(references, predictions, "turkish", with_meteor=False)[0]["bleu4"] == pytest.approx(
        1.0
    )


def test_metric_split_updates_and_duplicates_equal_the_whole_corpus():
    references, predictions = corpus(5, images=10)
    ids = list(references)
    whole = CocoCaptionScores("turkish", with_meteor=False)
    whole.update([predictions[i] for i in ids], [references[i] for i in ids], ids)
    parts = CocoCaptionScores("turkish", with_meteor=False)
    parts.update([predictions[i] for i in ids[:6]], [references[i] for i in ids[:6]], ids[:6])
    parts.update([predictions[i] for i in ids[4:]], [references[i] for i in ids[4:]], ids[4:])  # 2 repeated
    assert whole.compute() == parts.compute()
    assert set(whole.compute()) == {
        f"{n}_tr" for n in ("bleu1", "bleu2", "bleu3", "bleu4", "rouge_l", "cider_d")
    }


def test_without_java_meteor_is_one_line_and_the_rest_runs(monkeypatch):
    from common.metrics import coco_caption

    monkeypatch.setattr(coco_caption.shutil, "which", lambda name: None)
    references, predictions = corpus(6)
    scores, suffix, notes = coco_scores(references, predictions, "coco")
    assert suffix == "tr" and "meteor" not in scores and {"cider_d", "rouge_l", "bleu4"} <= set(scores)
    assert any(n.startswith("METEOR: not computed: Java") for n in notes)
    assert any(n.startswith("SPICE: not computed") for n in notes)
    assert all("\n" not in n for n in notes)


def test_tgm_test_and_the_evaluate_command_print_the_same_table(tiny_fit, tmp_path, capsys):
    import json

    from common.cli import run_cli
    from projects.caption.evaluate import main
    from tests.caption.conftest import CSV, TINY
    from tests.helpers import checkpoint_run

    root, _ = tiny_fit
    tested = run_cli(
        ["test", "--config", TINY, "--config", CSV, *checkpoint_run(root, root / "ckpt" / "last.ckpt")]
    )
    model = tested.model
    assert {"test/cider_d_tr", "test/rouge_l_tr", "test/bleu4_tr", "test/bleu4_13a"} <= set(
        tested.trainer.callback_metrics
    )
    results = tmp_path / "results.json"
    results.write_text(json.dumps([{"image_id": i, "caption": p} for i, p, _ in model.test_items]), "utf-8")
    annotations = tested.datamodule._sources()[2][1]  # the generated test split's COCO file
    capsys.readouterr()
    assert main([str(results), annotations, "--no-meteor"]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed == model.test_report.strip()
    assert printed.splitlines()[1] == "| BLEU-1 | BLEU-2 | BLEU-3 | BLEU-4 | ROUGE-L | CIDEr-D |"
    cider = float(printed.splitlines()[3].split("|")[-2])
    assert cider == pytest.approx(100 * float(tested.trainer.callback_metrics["test/cider_d_tr"]), abs=0.01)
