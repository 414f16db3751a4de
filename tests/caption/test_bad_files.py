"""Issue 11 for caption: real-format broken files end in one line (bad text) or are handled (bad images, broken
caches). Fixtures are small files in the real formats: a truncated JPEG, a 16-bit PNG, a CMYK JPEG, a palette PNG
with a transparent index, an LA PNG, cp1254 text."""

from __future__ import annotations

import io
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from common.errors import InputError
from projects.caption.data import CaptionDataModule, ClipSpec, GeneratedSet, TokenizerSpec, train_tokenizer
from projects.caption.features import cached_features, load_rgb
from projects.caption.readers import read_caption_file
from tests.caption.test_data import SMALL, TINY_CLIP, coco_split, write_image
from tests.caption.test_features import encoder

CP1254 = "kırmızı bir kare, şık ve güzel".encode("cp1254")  # ı = 0xfd, ş = 0xfe: not UTF-8


def truncated_jpeg(path: Path) -> Path:
    buffer = io.BytesIO()
    pixels = (np.random.RandomState(0).rand(48, 48, 3) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    data = buffer.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[: len(data) // 2])
    return path


# ---------------------------------------------------------------------------------------------- text encodings
@pytest.mark.parametrize(
    ("name", "content", "line"),
    [
        ("caps.csv", b"image,caption\na.png,bir kare\na.png," + CP1254 + b"\n", 3),
        (
            "caps.jsonl",
            b'{"image": "a.png", "caption": "bir kare"}\n{"image": "a.png", "caption": "' + CP1254 + b'"}\n',
            2,
        ),
        (
            "caps.json",
            b'{"images": [{"id": 1, "file_name": "a.png"}],\n"annotations": [\n{"id": 1, "image_id": 1, '
            b'"caption": "' + CP1254 + b'"}]}',
            3,
        ),
    ],
)
def test_non_utf8_caption_files_name_file_and_line(tmp_path, name, content, line):
    write_image(tmp_path / "a.png")
    (tmp_path / name).write_bytes(content)
    with pytest.raises(InputError, match=rf"{name}:{line}: not UTF-8") as error:
        read_caption_file(tmp_path / name)
    assert "\n" not in str(error.value)


def test_non_utf8_predict_file_and_tgm_exit_2(tmp_path, monkeypatch, capsys):
    from common.cli import main

    (tmp_path / "gt.json").write_bytes(
        b'{"images": [{"id": 7, "file_name": "' + CP1254 + b'.png"}], "annotations": []}'
    )
    dm = CaptionDataModule(predict_file=str(tmp_path / "gt.json"), **SMALL)
    with pytest.raises(InputError, match="gt.json:1: not UTF-8"):
        dm.setup("predict")

    (tmp_path / "caps.csv").write_bytes(b"image,caption\na.png," + CP1254 + b"\n")
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "tgm",
            "fit",
            "--config",
            "configs/caption/tiny.yaml",
            "--config",
            "configs/logger/csv.yaml",
            "--trainer.default_root_dir",
            str(tmp_path),
            "--trainer.logger.init_args.save_dir",
            str(tmp_path / "csv"),
            "--data.init_args.train_file",
            str(tmp_path / "caps.csv"),
        ],
    )
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("tgm: ")]
    assert len(lines) == 1 and "caps.csv:2: not UTF-8" in lines[0] and "Traceback" not in err


# ---------------------------------------------------------------------------------------------- images
def test_16_bit_png_is_scaled_not_clipped_to_white(tmp_path):
    values = np.linspace(0, 65535, 24 * 32).reshape(24, 32).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as image:
        assert image.mode in ("I;16", "I")  # what Pillow makes of a 16-bit grey PNG
    rgb = np.asarray(load_rgb(tmp_path / "g16.png")).astype(int)
    expected = np.round(values / 257.0).astype(int)
    assert rgb.shape == (24, 32, 3) and (rgb == expected[..., None]).all()
    assert 120 < rgb.mean() < 135  # a mid-grey ramp, not "almost white"


def test_mixed_modes_become_the_right_rgb(tmp_path):
    palette = Image.new("P", (8, 8), 0)  # index 0 = black, transparent; index 1 = red
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0, 0, 0] * 254)
    palette.paste(1, (0, 0, 4, 8))
    palette.save(tmp_path / "p.png", transparency=0)
    rgb = np.asarray(load_rgb(tmp_path / "p.png"))
    assert (rgb[:, :4] == [255, 0, 0]).all() and (rgb[:, 4:] == [255, 255, 255]).all()  # transparent -> white

    la = Image.merge("LA", [Image.new("L", (4, 4), 0), Image.new("L", (4, 4), 0)])  # black, fully transparent
    la.save(tmp_path / "la.png")
    assert (np.asarray(load_rgb(tmp_path / "la.png")) == 255).all()

    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=95)  # red in CMYK
    assert np.abs(np.asarray(load_rgb(tmp_path / "cmyk.jpg")).astype(int) - [255, 0, 0]).max() <= 8
    Image.new("L", (4, 4), 77).save(tmp_path / "l.png")
    assert (np.asarray(load_rgb(tmp_path / "l.png")) == 77).all()


def test_truncated_jpeg_is_caught_by_the_skip_policy_in_fit(tmp_path):
    coco_split(tmp_path, "train", [1, 2, 3, 4])
    coco_split(tmp_path, "val", [5, 6])
    truncated_jpeg(tmp_path / "img" / "3.png")  # the name does not matter: PIL reads the content
    files = {"train_file": str(tmp_path / "train.json"), "val_file": str(tmp_path / "val.json"), **SMALL}
    with pytest.raises(InputError, match=r"unreadable image file.*3\.png"):
        CaptionDataModule(**files, cache_dir=str(tmp_path / "c1")).prepare_data()

    dm = CaptionDataModule(
        **files, on_bad_input="skip", use_feature_cache=False, batch_size=2, cache_dir=str(tmp_path / "c2")
    )
    dm.prepare_data()
    with pytest.warns(UserWarning, match="skipped bad input"):
        dm.setup("fit")
    assert dm.skipped == {"unreadable image file": 1}
    assert [r.image_id for r in dm.records["train"]] == [1, 2, 4]
    assert sum(len(batch["image_id"]) for batch in dm.train_dataloader()) == 6  # every pair decodes


def test_truncated_jpeg_is_caught_by_the_skip_policy_in_predict(tmp_path):
    write_image(tmp_path / "p" / "000000000001.png")
    truncated_jpeg(tmp_path / "p" / "000000000002.jpg")
    with pytest.raises(InputError, match="000000000002.jpg"):
        CaptionDataModule(predict_dir=str(tmp_path / "p"), **SMALL).setup("predict")
    dm = CaptionDataModule(predict_dir=str(tmp_path / "p"), on_bad_input="skip", **SMALL)
    with pytest.warns(UserWarning, match="skipped bad input"):
        dm.setup("predict")
    assert [r.image_id for r in dm.records["predict"]] == [1] and dm.skipped == {"unreadable image file": 1}
    assert len(next(iter(dm.predict_dataloader()))["pixel_values"]) == 1


def test_wrong_image_root_lists_the_first_missing_files(tmp_path):
    coco_split(tmp_path, "train", [1, 2, 3, 4])
    coco_split(tmp_path, "val", [5, 6])
    for policy in ("error", "skip"):
        dm = CaptionDataModule(
            train_file=str(tmp_path / "train.json"),
            val_file=str(tmp_path / "val.json"),
            image_root=str(tmp_path / "wrong"),
            on_bad_input=policy,
            **SMALL,
        )
        with pytest.raises(
            InputError, match="no training images: 6 of 6 listed image files are missing"
        ) as error:
            dm.prepare_data()
        message = str(error.value)
        assert str(tmp_path / "wrong" / "img" / "1.png") in message and "data.init_args.image_root" in message


# ---------------------------------------------------------------------------------------------- caches
def corruptions() -> list:
    return [
        ("random bytes", lambda data: bytes(np.random.RandomState(0).randint(0, 256, 300, dtype=np.uint8))),
        ("truncated", lambda data: data[: len(data) // 2]),
        ("empty", lambda data: b""),
    ]


@pytest.mark.parametrize("name", ["features.npy", "scan.json"])
@pytest.mark.parametrize(("kind", "corrupt"), corruptions(), ids=[c[0] for c in corruptions()])
def test_corrupt_feature_cache_is_rebuilt_with_one_warning(tmp_path, kind, corrupt, name):
    paths = []
    for k in range(3):
        write_image(tmp_path / f"{k}.png", (60 * k, 100, 200))
        paths.append(tmp_path / f"{k}.png")
    enc = encoder()
    first, _ = cached_features(paths, enc, tmp_path / "cache")
    (folder,) = (tmp_path / "cache").glob("clip_features-*")
    file = folder / name
    file.write_bytes(corrupt(file.read_bytes()))
    with pytest.warns(UserWarning) as record:
        again, hit = cached_features(paths, enc, tmp_path / "cache")
    assert (
        len(record) == 1 and folder.name in str(record[0].message) and "rebuilding" in str(record[0].message)
    )
    assert "weights_only" not in str(record[0].message)  # torch's advice to load unsafely is not passed on
    assert not hit
    torch.testing.assert_close(again, first)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cached_features(paths, enc, tmp_path / "cache")[1]  # the rebuilt file loads


@pytest.mark.parametrize(("kind", "corrupt"), corruptions(), ids=[c[0] for c in corruptions()])
def test_corrupt_bpe_tokenizer_is_rebuilt_with_one_warning(tmp_path, kind, corrupt):
    captions = ["kırmızı bir kare", "mavi bir daire", "sarı bir üçgen"] * 5
    path = tmp_path / "tokenizer.json"
    first = train_tokenizer(captions, 300, tmp_path, path)
    path.write_bytes(corrupt(path.read_bytes()))
    with pytest.warns(
        UserWarning, match="caption BPE tokenizer .*tokenizer.json could not be loaded"
    ) as record:
        again = train_tokenizer(captions, 300, tmp_path, path)
    assert len(record) == 1
    assert again("mavi bir kare")["input_ids"] == first("mavi bir kare")["input_ids"]


def test_corrupt_prepared_tiny_clip_is_rebuilt_with_one_warning(tmp_path):
    dm = CaptionDataModule(
        clip=ClipSpec(config=TINY_CLIP),
        tokenizer=TokenizerSpec(vocab_size=300),
        generated=GeneratedSet(str(tmp_path / "gen"), {"train": 6, "val": 2}),
    )
    dm.prepare_data()
    weights = dm.encoder().identity()["weights_sha256"]
    (Path(dm.clip_source) / "config.json").write_text("{ broken")
    fresh = CaptionDataModule(**dict(dm.hparams))
    with pytest.warns(UserWarning, match="tiny CLIP .*clip_tiny-.* could not be loaded"):
        fresh.prepare_data()
    assert fresh.encoder().identity()["weights_sha256"] == weights  # the seeded random init again
    assert json.loads((Path(fresh.clip_source) / "config.json").read_text())["projection_dim"] == 16
