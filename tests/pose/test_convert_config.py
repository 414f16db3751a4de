"""An original Progressive Transformers ``Configs/Base.yaml`` translates key by key into a config tgm parses."""

from __future__ import annotations

import pytest
import yaml

from common.cli import run_cli
from projects.pose.convert_config import convert, main

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
    assert model["loss"] == "mse" and model["noise_rate"] == 5 and model["encoder"]["hidden_size"] == 512
    assert config["trainer"]["gradient_clip_val"] == 5.0 and config["trainer"]["max_epochs"] == 20000
    assert config["trainer"]["val_check_interval"] == 10 and config["trainer"]["check_val_every_n_epoch"] is None
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
    with pytest.raises(KeyError, match=r"Base.yaml: unknown Progressive Transformers keys \['model.attention'\]"):
        convert({"model": {"attention": "luong"}}, "Base.yaml")
