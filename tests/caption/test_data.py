"""Reading caption data, and every bad-input case: a clear error by default, a counted skip on request."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from projects.caption import generate as shapes
from projects.caption.data import CaptionDataModule, ClipSpec, TokenizerSpec, collate
from projects.caption.readers import read_caption_file
from tests.caption.conftest import TINY_CLIP

SMALL = {"tokenizer": TokenizerSpec(vocab_size=300), "clip": ClipSpec(config=TINY_CLIP)}


def write_image(path: Path, colour=(200, 30, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), colour).save(path)


def coco_split(root: Path, name: str, ids: list[int], captions_per_image: int = 2) -> Path:
    images, annotations = [], []
    for image_id in ids:
        write_image(root / "img" / f"{image_id}.png", (image_id * 20 % 255, 40, 90))
        images.append({"id": image_id, "file_name": f"img/{image_id}.png"})
        for k in range(captions_per_image):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "caption": f"kırmızı bir kare {image_id} numara {k}",
                }
            )
    path = root / f"{name}.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations}, ensure_ascii=False), "utf-8")
    return path


def datamodule(root: Path, **kwargs) -> CaptionDataModule:
    files = {
        "train_file": str(coco_split(root, "train", [1, 2, 3, 4])),
        "val_file": str(coco_split(root, "val", [5, 6])),
    }
    return CaptionDataModule(**(files | SMALL | {"cache_dir": str(root / "cache")} | kwargs))


def test_generated_set_is_deterministic_and_learnable_text(tmp_path):
    root = shapes.generate(tmp_path / "a", {"train": 6, "val": 2})
    again = shapes.generate(tmp_path / "b", {"train": 6, "val": 2})
    assert (root / "train.json").read_text() == (again / "train.json").read_text()
    records = read_caption_file(root / "train.json")
    assert len(records) == 6 and all(len(r.captions) == 4 for r in records)
    scene = {"layout": "yatay", "first": [0, 0], "second": [1, 1]}
    assert shapes.captions_for(scene)[0] == "mavi bir dairenin solunda kırmızı bir kare"


def test_coco_reading_tokenizing_and_batches(tmp_path):
    dm = datamodule(tmp_path, use_feature_cache=False)
    dm.prepare_data()
    dm.setup("fit")
    assert [r.image_id for r in dm.records["train"]] == [1, 2, 3, 4]
    assert len(dm.records["val"]) == 2 and dm.records["val"][0].captions[1].endswith("numara 1")
    ids = dm.token_ids["train"][0][0]
    assert ids[-1] == dm.tokenizer.eos_token_id
    assert (
        dm.tokenizer.decode(ids[:-1]).strip() == "kırmızı bir kare 1 numara 0"
    )  # Turkish letters round-trip
    batch = collate([{"input_ids": [5, 6, 7], "image_id": 1}, {"input_ids": [8], "image_id": 2}], pad_id=1)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 1, 1]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_csv_jsonl_and_karpathy_splits(tmp_path):
    for name in ("a.png", "b.png", "c.png"):
        write_image(tmp_path / name)
    (tmp_path / "caps.csv").write_text(
        "image,caption,split\na.png,bir kare,train\na.png,iki kare,train\nb.png,bir daire,val\n", "utf-8"
    )
    records = read_caption_file(tmp_path / "caps.csv")
    assert [(r.image_id, r.captions, r.split) for r in records] == [
        ("a", ["bir kare", "iki kare"], "train"),
        ("b", ["bir daire"], "val"),
    ]
    (tmp_path / "caps.jsonl").write_text('{"image": "c.png", "caption": "sarı bir yıldız"}\n', "utf-8")
    assert read_caption_file(tmp_path / "caps.jsonl")[0].captions == ["sarı bir yıldız"]
    karpathy = {
        "images": [
            {"filename": "a.png", "split": "restval", "cocoid": 7, "sentences": [{"raw": "x y"}]},
            {"filename": "b.png", "split": "test", "cocoid": 8, "sentences": [{"raw": "z"}]},
        ]
    }
    (tmp_path / "k.json").write_text(json.dumps(karpathy))
    assert [(r.image_id, r.split) for r in read_caption_file(tmp_path / "k.json")] == [
        (7, "train"),
        (8, "test"),
    ]


def break_missing_image(root: Path) -> None:
    (root / "img" / "3.png").unlink()


def break_unreadable_image(root: Path) -> None:
    (root / "img" / "3.png").write_bytes(b"this is not a png")


def break_unknown_id(root: Path) -> None:
    data = json.loads((root / "train.json").read_text("utf-8"))
    data["annotations"].append({"id": 99, "image_id": 12345, "caption": "kayıp"})
    (root / "train.json").write_text(json.dumps(data, ensure_ascii=False), "utf-8")


def break_empty_caption(root: Path) -> None:
    data = json.loads((root / "train.json").read_text("utf-8"))
    data["annotations"][0]["caption"] = "   "
    (root / "train.json").write_text(json.dumps(data, ensure_ascii=False), "utf-8")


def break_long_caption(root: Path) -> None:
    data = json.loads((root / "train.json").read_text("utf-8"))
    data["annotations"][0]["caption"] = " ".join(["kırmızı bir kare"] * 30)
    (root / "train.json").write_text(json.dumps(data, ensure_ascii=False), "utf-8")


@pytest.mark.parametrize(
    ("breaker", "reason", "where", "images_left", "captions_left"),
    [
        (break_missing_image, "missing image file", "3.png", 3, 6),
        (break_unreadable_image, "unreadable image file", "3.png", 3, 6),
        (break_unknown_id, "annotation for unknown image id", "12345", 4, 8),
        (break_empty_caption, "empty caption", "image 1", 4, 7),
        (break_long_caption, "caption longer than max_caption_tokens=20", "image 1", 4, 7),
    ],
)
def test_bad_input_errors_or_counted_skip(tmp_path, breaker, reason, where, images_left, captions_left):
    datamodule(tmp_path)  # writes the files
    breaker(tmp_path)
    strict = CaptionDataModule(
        train_file=str(tmp_path / "train.json"),
        val_file=str(tmp_path / "val.json"),
        max_caption_tokens=20,
        cache_dir=str(tmp_path / "c"),
        **SMALL,
    )
    with pytest.raises(ValueError, match=reason) as error:
        strict.prepare_data()
    assert where in str(error.value) and "train.json" in str(error.value) + str(tmp_path / "img")

    lenient = CaptionDataModule(
        train_file=str(tmp_path / "train.json"),
        val_file=str(tmp_path / "val.json"),
        max_caption_tokens=20,
        cache_dir=str(tmp_path / "c"),
        on_bad_input="skip",
        **SMALL,
    )
    lenient.prepare_data()
    with pytest.warns(UserWarning, match="skipped bad input"):
        lenient.setup("fit")
    assert lenient.skipped == {reason: 1}
    assert len(lenient.records["train"]) == images_left
    assert sum(len(r.captions) for r in lenient.records["train"]) == captions_left


def test_predict_folder_lists_images_and_rejects_broken_ones(tmp_path):
    write_image(tmp_path / "p" / "17.png")
    write_image(tmp_path / "p" / "kedi.jpg")
    (tmp_path / "p" / "notes.txt").write_text("not an image")
    dm = CaptionDataModule(predict_dir=str(tmp_path / "p"), **SMALL)
    dm.setup("predict")
    assert [r.image_id for r in dm.records["predict"]] == [17, "kedi"]
    (tmp_path / "p" / "bad.png").write_bytes(b"broken")
    with pytest.raises(ValueError, match="bad.png"):
        CaptionDataModule(predict_dir=str(tmp_path / "p"), **SMALL).setup("predict")


def test_datamodule_feeds_cached_features_and_reuses_the_cache(tmp_path, monkeypatch):
    from projects.caption import features as feats

    calls = []
    real = feats.encode_images
    monkeypatch.setattr(
        feats,
        "encode_images",
        lambda paths, enc, *args: calls.append(len(paths)) or real(paths, enc, *args),
    )
    dm = datamodule(tmp_path, batch_size=3)
    dm.prepare_data()  # computes the features of train (4 images) and val (2 images) once
    assert calls == [4, 2]
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["features"].shape == (3, 16) and "pixel_values" not in batch
    assert dm.cache_hits == {"train": True, "val": True} and calls == [4, 2]  # setup only loads
    val = next(iter(dm.val_dataloader()))
    assert val["references"][0] == ["kırmızı bir kare 5 numara 0", "kırmızı bir kare 5 numara 1"]
    encoder = dm.encoder()  # the cache holds exactly what the prepared CLIP gives on the pixels
    pixels = torch.stack([encoder.preprocess(Image.open(r.path).convert("RGB")) for r in dm.records["val"]])
    torch.testing.assert_close(val["features"], encoder(pixels))

    again = CaptionDataModule(**dict(dm.hparams))  # same files, same encoder: read back from disk
    again.prepare_data()
    again.setup("fit")
    again.train_dataloader()
    assert again.cache_hits == {"train": True, "val": True} and calls == [4, 2]

    no_cache = CaptionDataModule(**(dict(dm.hparams) | {"use_feature_cache": False}))
    no_cache.prepare_data()
    no_cache.setup("fit")
    assert next(iter(no_cache.train_dataloader()))["pixel_values"].shape == (3, 3, 32, 32)
