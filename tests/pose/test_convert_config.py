"""An original Progressive Transformers ``Configs/Base.yaml`` translates key by key into a config tgm parses."""

from __future__ import annotations

import pytest
import yaml

from common.cli import run_cli
from common.errors import InputError
from projects.pose.convert_config import MAPPING, NOTES, convert, main

BASE_YAML = """
name: "Base"
data:
    src: "gloss"
    trg: "skels"
    files: "files"
    train: "./Data/tmp/train"
    dev: "./Data/tmp/dev"
    test: "./Data/tmp/test"
    max_sent_length: 300
    skip_frames: 1
    src_vocab: "./Configs/src_vocab.txt"
training:
    random_seed: 27
    optimizer: "adam"
    learning_rate: 0.001
    learning_rate_min: 0.0002
    weight_decay: 0.0
    clip_grad_norm: 5.0
    batch_size: 8
    scheduling: "plateau"
    patience: 7
    decrease_factor: 0.7
    early_stopping_metric: "dtw"
    epochs: 20000
    validation_freq: 10
    logging_freq: 250
    eval_metric: "dtw"
    model_dir: "./Models/Base"
    overwrite: False
    continue: True
    shuffle: True
    use_cuda: True
    max_output_length: 300
    keep_last_ckpts: 1
    loss: "MSE"
model:
    initializer: "xavier"
    bias_initializer: "zeros"
    embed_initializer: "xavier"
    trg_size: 150
    just_count_in: False
    gaussian_noise: False
    noise_rate: 5
    future_prediction: 0
    encoder:
        type: "transformer"
        num_layers: 2
        num_heads: 4
        embeddings: {embedding_dim: 512, dropout: 0.0}
        hidden_size: 512
        ff_size: 2048
        dropout: 0.0
    decoder:
        type: "transformer"
        num_layers: 2
        num_heads: 4
        embeddings: {embedding_dim: 512, dropout: 0.0}
        hidden_size: 512
        ff_size: 2048
        dropout: 0.0
"""


def test_base_yaml_maps_one_to_one(tmp_path, capsys):
    config, notes = convert(yaml.safe_load(BASE_YAML))
    data, model = config["data"]["init_args"], config["model"]["init_args"]
    assert data["src"] == "gloss" and data["train"] == "./Data/tmp/train" and data["skip_frames"] == 1
    assert data["batch_size"] == 8 and data["trg_size"] == 150 and data["synthetic"] is None
    assert "trg_size" not in model  # linked from the data module
    assert data["fasttext_dim"] == 512 and data["src_vocab"] == "./Configs/src_vocab.txt"
    assert (
        model["objective"]["loss"] == "mse"
        and model["noise_rate"] == 5
        and model["encoder"]["hidden_size"] == 512
    )
    assert config["trainer"]["gradient_clip_val"] == 5.0 and config["trainer"]["max_epochs"] == 20000
    assert (
        config["trainer"]["val_check_interval"] == 10 and config["trainer"]["check_val_every_n_epoch"] is None
    )
    assert config["seed_everything"] == 27 and config["checkpoint"]["dirpath"] == "./Models/Base"
    assert any(note.startswith("training.use_cuda") for note in notes)

    path = tmp_path / "Base.yaml"
    path.write_text(BASE_YAML)
    main([str(path)])
    converted = tmp_path / "converted.yaml"
    converted.write_text(capsys.readouterr().out)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["fit", "--config", str(converted), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["init_args"]["decoder"]["ff_size"] == 2048
    assert printed["data"]["init_args"]["src"] == "gloss"


def test_unknown_key_is_named():
    with pytest.raises(
        InputError, match=r"Base.yaml: unknown Progressive Transformers keys \['model.attention'\]"
    ):
        convert({"model": {"attention": "luong"}}, "Base.yaml")


def test_unknown_key_is_one_line_and_exit_2(tmp_path, capsys):
    path = tmp_path / "Base.yaml"
    path.write_text("training:\n  epochs: 3\n  learning_rate_minimum: 0.1\n")
    with pytest.raises(SystemExit) as exit_info:
        main([str(path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "training.learning_rate_minimum" in err


PT_READ_KEYS = {  # keys the original's code reads that the converter used to reject with a KeyError traceback
    "name": "Base",
    "data": {"src_voc_limit": 1000, "src_voc_min_freq": 2, "val_on_train": False},
    "training": {
        "eval_batch_size": 16,
        "clip_grad_val": 1.0,
        "adam_betas": [0.9, 0.98],
        "batch_multiplier": 2,
        "batch_type": "sentence",
        "eval_batch_type": "sentence",
    },
    "model": {
        "init_weight": 0.02,
        "bias_init_weight": 0.01,
        "embed_init_weight": 0.1,
        "count_in": True,
        "loss_scale": 2.0,
    },
    "testing": {"beam_size": 1, "alpha": -1},
}


def test_every_key_the_original_reads_is_mapped():
    config, notes = convert(PT_READ_KEYS)
    data, model, trainer = config["data"]["init_args"], config["model"]["init_args"], config["trainer"]
    assert (data["src_voc_limit"], data["src_voc_min_freq"], data["eval_batch_size"]) == (1000, 2, 16)
    assert (trainer["gradient_clip_val"], trainer["gradient_clip_algorithm"]) == (1.0, "value")
    assert trainer["accumulate_grad_batches"] == 2 and model["optimiser"]["adam_betas"] == [0.9, 0.98]
    assert model["init"] == {"init_weight": 0.02, "bias_init_weight": 0.01, "embed_init_weight": 0.1}
    assert model["objective"]["loss_scale"] == 2.0
    assert {note.split(":")[0] for note in notes} >= {
        "name",
        "testing.beam_size",
        "testing.alpha",
        "model.count_in",
    }
    assert {name for name, target in MAPPING.items() if target is None} == set(NOTES)  # every note says why


@pytest.mark.parametrize(
    "key, value",
    [
        ("training.optimizer", "sgd"),
        ("training.scheduling", "noam"),
        ("training.eval_metric", "bleu"),
        ("data.val_on_train", True),
    ],
)
def test_values_that_select_something_else_are_refused(key, value):
    section, name = key.split(".")
    with pytest.raises(InputError, match=rf"{key}: .* is not supported here"):
        convert({section: {name: value}})


def test_converted_config_tokenises_as_the_original_and_writes_predictions():
    config, _ = convert(yaml.safe_load(BASE_YAML))
    data = config["data"]["init_args"]
    assert data["lowercase"] is False and data["punctuation"] == "whitespace"
    writers = [c for c in config["trainer"]["callbacks"] if c["class_path"].endswith("PosePredictionWriter")]
    assert writers and writers[0]["init_args"]["output_dir"] == "./Models/Base/predictions"


def test_converted_config_trains_on_original_data_and_predict_writes(tmp_path, capsys):
    """The original's data, src_vocab and Base.yaml through the converter: no gloss is <unk> (PT tokenisation),
    fit runs, and ``tgm predict`` writes the same outputs as the default config."""
    import warnings

    from projects.pose.data import PoseDataModule
    from projects.pose.formats import read_split
    from projects.pose.vocabulary import Vocabulary
    from tests.pose.pt_fixture import write_pt_split, write_src_vocab

    for split, seed in (("train", 1), ("dev", 2), ("test", 3)):
        write_pt_split(tmp_path / "Data" / split, [12, 15, 20], trg_size=6, seed=seed)
    write_src_vocab(tmp_path / "src_vocab.txt")
    text = BASE_YAML.replace("./Data/tmp", str(tmp_path / "Data")).replace(
        "./Configs/src_vocab.txt", str(tmp_path / "src_vocab.txt")
    )
    text = text.replace("./Models/Base", str(tmp_path / "Models")).replace("trg_size: 150", "trg_size: 6")
    config, _ = convert(yaml.safe_load(text))
    data = PoseDataModule(**config["data"]["init_args"], cache_dir=str(tmp_path / "p"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no unknown-share warning
        data.prepare_data()
    data.setup("fit")
    vocab = Vocabulary.from_file(tmp_path / "src_vocab.txt")
    assert vocab.unknown(data.datasets["train"].tokens)[0] == 0  # "ES-BEDEUTET" is one known token
    assert "ES-BEDEUTET" in vocab.stoi

    for part in ("encoder", "decoder"):  # a fresh dict each: no YAML aliases in the dump
        config["model"]["init_args"][part] = {
            "num_layers": 1,
            "num_heads": 2,
            "hidden_size": 16,
            "ff_size": 16,
            "embeddings": {"embedding_dim": 16},
        }
    config["trainer"].update(
        max_epochs=1,
        val_check_interval=None,
        check_val_every_n_epoch=1,
        logger=False,
        enable_progress_bar=False,
    )
    config["data"]["init_args"].update(cache_dir=str(tmp_path / "p"), fasttext_dim=8, fasttext_epochs=1)
    path = tmp_path / "converted.yaml"
    path.write_text(yaml.safe_dump(config))
    run_cli(["fit", "--config", str(path)])
    sentences = tmp_path / "glosses.txt"
    sentences.write_text("ES-BEDEUTET VIEL WOLKE\nDRUCK TIEF\n", encoding="utf-8")
    run_cli(
        [
            "predict",
            "--config",
            str(path),
            "--ckpt_path",
            str(tmp_path / "Models" / "last.ckpt"),
            "--data.init_args.predict_file",
            str(sentences),
        ]
    )
    written = read_split(tmp_path / "Models" / "predictions" / "predict", trg_size=6, src="gloss")
    assert [e.text for e in written] == ["ES-BEDEUTET VIEL WOLKE", "DRUCK TIEF"]
    assert len(list((tmp_path / "Models" / "predictions" / "videos").glob("*.gif"))) == 2


def turkish_fork_tokens(line: str) -> list[str]:
    """Transcription of the Turkish fork's tokenisation: lower-cased, ``string.punctuation`` stripped, split."""
    import string

    from projects.pose.vocabulary import turkish_lower

    return turkish_lower(line).translate(str.maketrans("", "", string.punctuation)).split()


def test_flavour_names_the_code_the_config_goes_with(tmp_path, capsys):
    """The Turkish fork's config converts to its own tokenisation (lower-case, punctuation stripped), the
    original's to whitespace splitting with case kept; the output says which."""
    pt, _ = convert(yaml.safe_load(BASE_YAML))
    fork, _ = convert(yaml.safe_load(BASE_YAML), flavour="turkish-fork")
    assert (pt["data"]["init_args"]["lowercase"], pt["data"]["init_args"]["punctuation"]) == (
        False,
        "whitespace",
    )
    assert (fork["data"]["init_args"]["lowercase"], fork["data"]["init_args"]["punctuation"]) == (
        True,
        "strip",
    )
    with pytest.raises(InputError, match="--flavour must be one of"):
        convert({}, flavour="joeynmt")
    path = tmp_path / "Base.yaml"
    path.write_text(BASE_YAML)
    main(["--flavour", "turkish-fork", str(path)])
    out = capsys.readouterr().out
    assert "# flavour turkish-fork: tokenised as the Turkish fork's data.py" in out
    assert yaml.safe_load(out)["data"]["init_args"]["punctuation"] == "strip"
    main([str(path)])
    assert (
        "# flavour pt: tokenised as the original Progressive Transformers data.py" in capsys.readouterr().out
    )


def _has_strip() -> bool:
    from projects.pose.vocabulary import PUNCTUATION_MODES

    return "strip" in PUNCTUATION_MODES


@pytest.mark.skipif(
    not _has_strip(), reason="punctuation: strip is added to vocabulary.py by the pose-data change"
)
def test_turkish_fork_flavour_tokenises_as_the_fork():
    from projects.pose.vocabulary import tokenize

    fork, _ = convert(yaml.safe_load(BASE_YAML), flavour="turkish-fork")
    keys = fork["data"]["init_args"]
    for line in (
        "Merhaba, İstanbul'a gidiyorum!",
        "ES-BEDEUTET VIEL WOLKE.",
        'Işık (yeşil) "yandı"; ÇOK güzel...',
    ):
        assert tokenize(line, keys["lowercase"], keys["punctuation"]) == turkish_fork_tokens(line), line


def test_converted_config_reports_both_dtw_protocols():
    config, notes = convert(yaml.safe_load(BASE_YAML))
    assert config["model"]["init_args"]["decoding"] == {"pt_protocol": True, "max_output_length": 300}
    assert config["checkpoint"]["monitor"] == "val/dtw_pt_l1_ref_len_length_penalised"
    (eval_note,) = [n for n in notes if n.startswith("training.eval_metric")]
    assert "val/dtw_pt_l1_ref_len_pt_protocol" in eval_note and "val/dtw_pt_l1_ref_len " in eval_note
