"""Issue 23 (caption part): every flag the caption README documents and every fix an error message suggests is
parsed and instantiated by ``tgm`` (the classes are built, nothing is run)."""

from __future__ import annotations

import pytest

from common.cli import TGMCLI, run_cli
from common.errors import InputError
from projects.caption.writer import CaptionPredictionWriter
from tests.caption.conftest import CSV
from tests.helpers import run_folders

DEFAULT = "configs/caption/default.yaml"


class Built(Exception):
    def __init__(self, cli: TGMCLI) -> None:
        self.cli = cli


class BuildOnly(TGMCLI):
    """``tgm`` up to the built model, datamodule and trainer; stops before the subcommand runs."""

    def _run_subcommand(self, subcommand: str) -> None:
        raise Built(self)


def build(tmp_path, *flags: str, subcommand: str = "fit", config: str = DEFAULT) -> TGMCLI:
    with pytest.raises(Built) as built:
        run_cli([subcommand, "--config", config, "--config", CSV, *run_folders(tmp_path), *flags], BuildOnly)
    return built.value.cli


def test_clip_pretrain_null_from_the_readme_and_the_error_text(tmp_path):
    data = build(tmp_path, "--data.init_args.clip.pretrain", "null").datamodule
    assert data.clip.pretrain is None
    train = tmp_path / "train.json"  # the error text's situation: own data with the default config
    with pytest.raises(InputError, match=r"clip.pretrain needs the generated set .*set it null"):
        build(tmp_path, "--data.init_args.train_file", str(train))
    fixed = build(
        tmp_path, "--data.init_args.train_file", str(train), "--data.init_args.clip.pretrain", "null"
    ).datamodule
    assert fixed.clip.pretrain is None and fixed.hparams.train_file == str(train)


def test_null_reaches_nested_optional_keys_as_none_not_as_the_string(tmp_path):
    data = build(tmp_path, "--data.init_args.tokenizer.name", "null", "--data.init_args.clip.name", "null")
    assert data.datamodule.tokenizer_spec.name is None and data.datamodule.clip.name is None


def test_predict_flags_from_the_readme(tmp_path):
    output = tmp_path / "p.json"
    cli = build(
        tmp_path,
        "--data.init_args.predict_dir",
        str(tmp_path),
        "--trainer.callbacks.init_args.output",
        str(output),
        "--model.init_args.decoding.num_beams",
        "3",
        "--model.init_args.decoding.max_new_tokens",
        "5",
        subcommand="predict",
    )
    (writer,) = [c for c in cli.trainer.callbacks if isinstance(c, CaptionPredictionWriter)]
    assert writer.output == output and cli.datamodule.hparams.predict_dir == str(tmp_path)
    assert (cli.model.decoding.num_beams, cli.model.decoding.max_new_tokens) == (3, 5)
    annotations = build(
        tmp_path,
        "--data.init_args.predict_file",
        "annotations/captions_val2014.json",
        "--data.init_args.image_root",
        "val2014",
        subcommand="predict",
    ).datamodule.hparams
    assert (annotations.predict_file, annotations.image_root) == (
        "annotations/captions_val2014.json",
        "val2014",
    )


def test_flags_that_error_messages_suggest(tmp_path):
    cli = build(
        tmp_path,
        "--data.init_args.on_bad_input",
        "skip",
        "--data.init_args.tokenizer.vocab_size",
        "256",
        "--data.init_args.image_root",
        str(tmp_path),
        "--model.init_args.evaluation.tokenize",
        "coco",
        "--model.init_args.evaluation.meteor_in_validation",
        "true",
    )
    data, model = cli.datamodule, cli.model
    assert data.hparams.on_bad_input == "skip" and data.tokenizer_spec.vocab_size == 256
    assert model.decoder.config.vocab_size == 256  # linked from the data
    assert model.evaluation.tokenize == "coco" and model.val_coco.with_meteor
    with pytest.raises(InputError, match="evaluation.tokenize must be one of"):
        build(tmp_path, "--model.init_args.evaluation.tokenize", "ptb")
