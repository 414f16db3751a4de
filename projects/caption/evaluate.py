"""Score a COCO results file against COCO caption annotations and print the table a COCO paper shows:

    python -m projects.caption.evaluate RESULTS.json ANNOTATIONS.json [--tokenize turkish|coco|13a]

RESULTS.json is what ``tgm predict`` writes (``[{"image_id": 391895, "caption": "..."}]``), ANNOTATIONS.json a COCO
captions file (``captions_val2014.json`` style). The images scored are those of the results (as
pycocoevalcap's ``COCOEvalCap`` does); a result whose id the annotations lack is one line naming it (exit 2).
``tgm test`` prints the same table through :func:`report` (same code, same numbers).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from common.errors import InputError
from common.io import read_text
from common.metrics.bleu import CorpusBLEU
from common.metrics.coco_caption import TOKENIZATIONS, coco_scores, format_table


def report(
    items: Sequence[tuple], tokenize: str = "turkish", with_meteor: bool = True
) -> tuple[dict[str, float], str]:
    """``(metrics by key, table text)`` for ``(image_id, prediction, references)`` triples: the coco-caption set
    (keys ``<name>_<tokenisation>``) and sacrebleu's 13a BLEU-1..4 (keys ``bleu<k>_13a``, a second family)."""
    references = {k: list(refs) for k, (_, _, refs) in enumerate(items)}
    predictions = {k: pred for k, (_, pred, _) in enumerate(items)}
    scores, suffix, notes = coco_scores(references, predictions, tokenize, with_meteor)
    sacre = CorpusBLEU(max_n=4, tokenize="13a")
    sacre.update([pred for _, pred, _ in items], [list(refs) for _, _, refs in items])
    sacre_scores = {f"{name}_13a": float(value) for name, value in sacre.compute().items()}
    if suffix == "13a":  # the coco BLEU on 13a tokens would share the sacrebleu family's names
        scores = {k: v for k, v in scores.items() if not k.startswith("bleu")}
    metrics = {f"{name}_{suffix}": value for name, value in scores.items()} | sacre_scores
    sacre_line = "sacrebleu 13a (case-sensitive, x100): " + ", ".join(
        f"BLEU-{k} {100 * sacre_scores[f'bleu{k}_13a']:.2f}" for k in range(1, 5)
    )
    return metrics, format_table(scores, suffix, [sacre_line, *notes], count=len(items))


def _read_json(path: str | Path):
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as error:
        raise InputError(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from None


def read_items(results_file: str | Path, annotations_file: str | Path) -> list[tuple]:
    """``(image_id, prediction, references)`` per result, references from the annotations."""
    results, annotations = _read_json(results_file), _read_json(annotations_file)
    if not isinstance(results, list) or not all(
        isinstance(r, dict) and {"image_id", "caption"} <= set(r) for r in results
    ):
        raise InputError(f"{results_file}: expected a COCO results list [{{'image_id', 'caption'}}, ...]")
    if not isinstance(annotations, dict) or "annotations" not in annotations:
        raise InputError(f"{annotations_file}: expected COCO caption annotations ('annotations': [...])")
    references: dict = {}
    for annotation in annotations["annotations"]:
        references.setdefault(annotation["image_id"], []).append(str(annotation["caption"]).strip())
    unknown = [r["image_id"] for r in results if r["image_id"] not in references]
    if unknown:
        raise InputError(
            f"{results_file}: {len(unknown)} result(s) have image ids that {annotations_file} lacks, first: "
            f"{', '.join(map(repr, unknown[:5]))}"
        )
    return [(r["image_id"], str(r["caption"]), references[r["image_id"]]) for r in results]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("results")
    parser.add_argument("annotations")
    parser.add_argument("--tokenize", default="turkish", choices=sorted(TOKENIZATIONS))
    parser.add_argument("--no-meteor", action="store_true", help="skip METEOR (starts Java, ~1 min)")
    args = parser.parse_args(argv)
    try:
        items = read_items(args.results, args.annotations)
    except InputError as error:
        print(f"caption evaluate: {error}", file=sys.stderr)
        return 2
    print(report(items, args.tokenize, not args.no_meteor)[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
