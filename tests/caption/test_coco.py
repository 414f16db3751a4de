"""``tgm predict`` output that COCO tools accept: integer image ids from a COCO annotations file or from COCO file
names, checked with pycocotools' ``COCO.loadRes`` against a tiny ground-truth JSON."""

from __future__ import annotations

import json
import logging

import pytest
from PIL import Image

from common.cli import run_cli
from projects.caption.readers import image_id_from_name, predict_records_from_folder
from tests.caption.conftest import predict_args

pycocotools_coco = pytest.importorskip("pycocotools.coco", reason="pycocotools is a dev extra")

GT_IMAGES = [
    {"id": 391895, "file_name": "COCO_val2014_000000391895.jpg"},
    {"id": 522418, "file_name": "000000522418.jpg"},
    {"id": 7, "file_name": "kedi.png"},  # any name: the annotations give the id
]


def write_ground_truth(folder, images=GT_IMAGES) -> tuple:
    folder.mkdir(parents=True, exist_ok=True)
    annotations = []
    for k, image in enumerate(images):
        Image.new("RGB", (40, 48), (200 - 60 * k, 40 * k, 90)).save(folder / image["file_name"])
        annotations.append({"id": k + 1, "image_id": image["id"], "caption": f"kırmızı bir kare {k}"})
    gt = {"info": {}, "licenses": [], "images": images, "annotations": annotations, "type": "captions"}
    path = folder / "captions_val2014.json"
    path.write_text(json.dumps(gt, ensure_ascii=False), "utf-8")
    return path, pycocotools_coco.COCO(str(path))


def test_coco_ids_from_file_names():
    assert image_id_from_name("COCO_val2014_000000391895.jpg") == 391895
    assert image_id_from_name("COCO_train2014_000000000009.png") == 9
    assert image_id_from_name("000000391895.jpg") == 391895
    assert image_id_from_name("17.png") == 17
    assert (
        image_id_from_name("kedi.jpg") == "kedi"
        and image_id_from_name("COCO_val2014_kedi.jpg") == "COCO_val2014_kedi"
    )


def test_other_names_keep_the_stem_and_say_so_in_one_line(tmp_path, caplog):
    for name in ("000000522418.jpg", "kedi.jpg", "köpek.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    with caplog.at_level(logging.INFO):
        records = predict_records_from_folder(tmp_path)
    assert [r.image_id for r in records] == [522418, "kedi", "köpek"]
    lines = [r.getMessage() for r in caplog.records if "not COCO ids" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0] and "kedi.jpg" in lines[0] and "file stem" in lines[0]


def test_predict_on_coco_annotations_round_trips_through_load_res(tiny_fit, tmp_path):
    root, _ = tiny_fit
    gt_path, gt = write_ground_truth(tmp_path / "val2014")
    output = tmp_path / "results.json"
    run_cli(
        predict_args(root, root / "ckpt" / "last.ckpt", output, "--data.init_args.predict_file", str(gt_path))
    )
    results = json.loads(output.read_text("utf-8"))
    assert [r["image_id"] for r in results] == [391895, 522418, 7]
    assert all(set(r) == {"image_id", "caption"} and isinstance(r["caption"], str) for r in results)
    loaded = gt.loadRes(str(output))
    assert sorted(loaded.getImgIds()) == [7, 391895, 522418]
    assert [ann["caption"] for ann in loaded.loadAnns(loaded.getAnnIds(imgIds=[391895]))] == [
        results[0]["caption"]
    ]


def test_predict_on_coco_named_files_round_trips_through_load_res(tiny_fit, tmp_path):
    root, _ = tiny_fit
    gt_path, gt = write_ground_truth(tmp_path / "val2014", GT_IMAGES[:2])
    gt_path.unlink()  # a plain folder of COCO-named images
    output = tmp_path / "results.json"
    run_cli(
        predict_args(
            root,
            root / "ckpt" / "last.ckpt",
            output,
            "--data.init_args.predict_dir",
            str(tmp_path / "val2014"),
        )
    )
    results = json.loads(output.read_text("utf-8"))
    assert [r["image_id"] for r in results] == [522418, 391895]  # name order: 000000522418 < COCO_val2014_...
    assert sorted(gt.loadRes(results).getImgIds()) == [391895, 522418]


def test_predict_on_a_mixed_folder_still_loads_with_load_res(tiny_fit, tmp_path, caplog):
    root, _ = tiny_fit
    gt_path, gt = write_ground_truth(tmp_path / "val2014", GT_IMAGES[:2])
    Image.new("RGB", (40, 48), (10, 200, 10)).save(tmp_path / "val2014" / "kedi.png")  # no COCO id
    output = tmp_path / "results.json"
    with caplog.at_level(logging.INFO):
        run_cli(
            predict_args(
                root,
                root / "ckpt" / "last.ckpt",
                output,
                "--data.init_args.predict_dir",
                str(tmp_path / "val2014"),
            )
        )
    assert sorted(gt.loadRes(str(output)).getImgIds()) == [391895, 522418]  # used to raise for "kedi"
    assert [r["image_id"] for r in json.loads((tmp_path / "results.non_coco.json").read_text("utf-8"))] == [
        "kedi"
    ]
    lines = [r.getMessage() for r in caplog.records if "no COCO id" in r.getMessage()]
    assert len(lines) == 1 and "kedi" in lines[0] and "results.non_coco.json" in lines[0]
