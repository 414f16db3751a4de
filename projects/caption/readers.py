"""Caption file readers (COCO / Karpathy JSON, CSV/TSV, JSONL), caption checks, and the predict image lists.

Every file format becomes a list of :class:`CaptionRecord` (one image, all its captions, optional split).
Bad input never disappears silently: each problem (missing or unreadable image, annotation for an unknown
image id, empty caption, caption longer than ``max_caption_tokens``, image without captions) is collected
with the file and the row/key it came from. ``on_bad_input: error`` (default) raises one error listing them;
``on_bad_input: skip`` drops the offending captions/images and logs how many were skipped and why.
Text files must be UTF-8 (``common.io.read_text``: anything else is one line naming file and line).
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from common.errors import InputError, MissingInputError
from common.io import read_text

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")
# COCO file names: COCO_val2014_000000391895.jpg (2014 sets) or 000000391895.jpg (2017 sets) -> image id 391895
COCO_NAME = re.compile(r"^(?:COCO_[A-Za-z]+\d{4}_)?(\d+)$")


@dataclass
class CaptionRecord:
    """One image and all of its captions; ``source`` says where it came from (for error messages)."""

    image_id: int | str
    path: Path
    captions: list[str] = field(default_factory=list)
    split: str | None = None
    source: str = ""


@dataclass
class Problems:
    """Bad-input findings: ``(reason, where)`` pairs, counted by reason."""

    items: list[tuple[str, str]] = field(default_factory=list)

    def add(self, reason: str, where: str) -> None:
        self.items.append((reason, where))

    def counts(self) -> Counter:
        return Counter(reason for reason, _ in self.items)

    def first(self, reason: str, count: int = 5) -> list[str]:
        return [where for r, where in self.items if r == reason][:count]

    def handle(self, policy: str, what: str) -> Counter:
        """Raise (policy ``error``) or log the counted skip (policy ``skip``); return the counts."""
        if not self.items:
            return Counter()
        counts = self.counts()
        listing = "\n".join(f"  - {reason}: {where}" for reason, where in self.items[:20])
        more = f"\n  ... and {len(self.items) - 20} more" if len(self.items) > 20 else ""
        summary = ", ".join(f"{n} x {reason}" for reason, n in counts.items())
        if policy == "error":
            raise InputError(
                f"{what}: bad input ({summary}):\n{listing}{more}\n"
                "Fix the data, or set data.init_args.on_bad_input: skip to drop these (counted) entries."
            )
        rank_zero_warn(f"{what}: skipped bad input ({summary}):\n{listing}{more}")
        return counts


def _resolve(image_root: Path, name: str) -> Path:
    path = Path(name)
    return path if path.is_absolute() else image_root / path


def _read_coco(data: dict, file: Path, image_root: Path, problems: Problems) -> list[CaptionRecord]:
    records: dict[Any, CaptionRecord] = {}
    for index, image in enumerate(data["images"]):
        if "id" not in image or "file_name" not in image:
            raise InputError(f"{file}: images[{index}] needs 'id' and 'file_name', got keys {sorted(image)}")
        path = _resolve(image_root, image["file_name"])
        records[image["id"]] = CaptionRecord(
            image["id"], path, split=image.get("split"), source=f"{file} images[{index}]"
        )
    for index, annotation in enumerate(data["annotations"]):
        where = f"{file} annotations[{index}] (id {annotation.get('id')})"
        if "image_id" not in annotation or "caption" not in annotation:
            raise InputError(f"{where} needs 'image_id' and 'caption', got keys {sorted(annotation)}")
        record = records.get(annotation["image_id"])
        if record is None:
            problems.add("annotation for unknown image id", f"{where}: image_id {annotation['image_id']!r}")
            continue
        record.captions.append(str(annotation["caption"]))
    return list(records.values())


def _read_karpathy(data: dict, file: Path, image_root: Path) -> list[CaptionRecord]:
    records = []
    for index, image in enumerate(data["images"]):
        name = image.get("filename") or image.get("file_name")
        if name is None:
            raise InputError(f"{file}: images[{index}] has no 'filename'")
        folder = image.get("filepath", "")
        split = image.get("split")
        records.append(
            CaptionRecord(
                image.get("cocoid", image.get("imgid", index)),
                _resolve(image_root, str(Path(folder) / name)),
                [s["raw"] if isinstance(s, dict) else str(s) for s in image.get("sentences", [])],
                "train" if split == "restval" else split,
                f"{file} images[{index}]",
            )
        )
    return records


def _read_rows(rows: list[tuple[str, dict]], image_root: Path) -> list[CaptionRecord]:
    by_image: dict[str, CaptionRecord] = {}
    for where, row in rows:
        if "image" not in row or "caption" not in row:
            raise InputError(f"{where}: needs 'image' and 'caption' fields, got {sorted(row)}")
        name = str(row["image"])
        record = by_image.get(name)
        if record is None:
            record = by_image[name] = CaptionRecord(
                image_id_from_name(name),
                _resolve(image_root, name),
                split=row.get("split") or None,
                source=where,
            )
        record.captions.append("" if row["caption"] is None else str(row["caption"]))
    return list(by_image.values())


def read_caption_file(
    file: str | Path, image_root: str | Path | None = None, problems: Problems | None = None
) -> list[CaptionRecord]:
    """Read a COCO caption JSON (``images`` + ``annotations``), a Karpathy split JSON (``images`` with
    ``sentences`` and ``split``), a CSV with ``image,caption[,split]`` columns, or JSONL with those keys.
    Image paths are relative to ``image_root`` (default: the file's folder)."""
    file = Path(file)
    if not file.exists():
        raise MissingInputError(f"caption file not found: {file}")
    root = Path(image_root) if image_root is not None else file.parent
    problems = problems if problems is not None else Problems()
    suffix = file.suffix.lower()
    if suffix == ".json":
        try:
            data = json.loads(read_text(file))
        except json.JSONDecodeError as error:
            raise InputError(f"{file}:{error.lineno}: not valid JSON ({error.msg})") from None
        if isinstance(data, dict) and "annotations" in data and "images" in data:
            return _read_coco(data, file, root, problems)
        if isinstance(data, dict) and "images" in data:
            return _read_karpathy(data, file, root)
        raise InputError(
            f"{file}: expected COCO ('images' + 'annotations') or Karpathy ('images' with 'sentences')"
        )
    if suffix == ".jsonl":
        rows = []
        for number, line in enumerate(read_text(file).splitlines(), start=1):
            if line.strip():
                try:
                    rows.append((f"{file} line {number}", json.loads(line)))
                except json.JSONDecodeError as error:
                    raise InputError(f"{file} line {number}: not valid JSON ({error})") from None
        return _read_rows(rows, root)
    if suffix in (".csv", ".tsv"):
        reader = csv.DictReader(
            io.StringIO(read_text(file), newline=""), delimiter="\t" if suffix == ".tsv" else ","
        )
        return _read_rows([(f"{file} row {number}", row) for number, row in enumerate(reader, start=2)], root)
    raise InputError(f"{file}: unknown caption file type '{suffix}' (use .json, .jsonl, .csv or .tsv)")


def check_records(records: list[CaptionRecord], problems: Problems) -> list[CaptionRecord]:
    """Drop (and report) empty captions and images without captions. Images are checked by the one decoding pass
    of ``features.scan_images`` (cached with the files' fingerprint), not here."""
    kept = []
    for record in records:
        captions = []
        for number, caption in enumerate(record.captions):
            if caption.strip():
                captions.append(caption.strip())
            else:
                problems.add(
                    "empty caption", f"{record.source} (image {record.image_id!r}), caption #{number}"
                )
        record.captions = captions
        if not captions:
            problems.add("image without captions", f"{record.source} (image {record.image_id!r})")
            continue
        kept.append(record)
    return kept


def image_id_from_name(name: str | Path) -> int | str:
    """COCO's integer id from a COCO file name (``COCO_val2014_000000391895.jpg`` or ``000000391895.jpg`` ->
    391895; any all-digit stem is read the same way), else the file stem."""
    stem = Path(name).stem
    match = COCO_NAME.match(stem)
    return int(match.group(1)) if match else stem


def predict_records_from_folder(folder: str | Path) -> list[CaptionRecord]:
    """Every image file of ``folder`` in name order, with ids from the names (:func:`image_id_from_name`)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingInputError(f"caption predict: data.init_args.predict_dir '{folder}' is not a folder")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise InputError(f"caption predict: no images ({', '.join(IMAGE_SUFFIXES)}) in '{folder}'")
    records = [CaptionRecord(image_id_from_name(p.name), p, source=str(p)) for p in paths]
    named = [r.path.name for r in records if isinstance(r.image_id, str)]
    if named:
        rank_zero_info(
            f"caption predict: {len(named)} of {len(records)} image names are not COCO ids ({', '.join(named[:3])}"
            f"{', ...' if len(named) > 3 else ''}): their image_id is the file stem"
        )
    return records
