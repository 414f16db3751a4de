"""Translate an original Progressive Transformers ``Configs/Base.yaml`` into a ``tgm`` config, key by key.

    python -m projects.pose.convert_config Configs/Base.yaml > configs/pose/mine.yaml
    tgm fit --config configs/pose/mine.yaml

Data files are used as they are (same ``.text/.gloss/.skels/.files``); only the YAML is rearranged into the
``model`` / ``data`` / ``trainer`` / ``checkpoint`` sections of LightningCLI. The mapping is :data:`MAPPING`
(documented in ``projects/pose/README.md``); keys with no counterpart are listed in a comment at the top of the
output instead of being dropped silently, and unknown keys raise an error naming them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

# original "section.key" -> tgm dotted key. ``None``: accepted, nothing to set (reported in the output).
MAPPING: dict[str, str | None] = {
    "data.src": "data.init_args.src",
    "data.trg": "data.init_args.trg",
    "data.files": "data.init_args.files",
    "data.train": "data.init_args.train",
    "data.dev": "data.init_args.dev",
    "data.test": "data.init_args.test",
    "data.max_sent_length": "data.init_args.max_sent_length",
    "data.skip_frames": "data.init_args.skip_frames",
    "data.src_vocab": "model.init_args.src_vocab",
    "training.random_seed": "seed_everything",
    "training.optimizer": None,  # Adam, as the original default
    "training.learning_rate": "model.init_args.learning_rate",
    "training.learning_rate_min": "model.init_args.learning_rate_min",
    "training.weight_decay": "model.init_args.weight_decay",
    "training.clip_grad_norm": "trainer.gradient_clip_val",
    "training.batch_size": "data.init_args.batch_size",
    "training.scheduling": None,  # plateau, as the original default
    "training.patience": "model.init_args.patience",
    "training.decrease_factor": "model.init_args.decrease_factor",
    "training.early_stopping_metric": None,  # the checkpoint/scheduler monitor is the DTW
    "training.epochs": "trainer.max_epochs",
    "training.validation_freq": "trainer.val_check_interval",  # steps, as in the original
    "training.logging_freq": "trainer.log_every_n_steps",
    "training.eval_metric": None,
    "training.model_dir": "checkpoint.dirpath",
    "training.overwrite": None,
    "training.continue": None,  # use --ckpt_path last
    "training.shuffle": "data.init_args.shuffle",
    "training.use_cuda": None,  # trainer.accelerator is chosen from the hardware
    "training.max_output_length": "model.init_args.max_output_length",
    "training.keep_last_ckpts": "checkpoint.save_top_k",
    "training.loss": "model.init_args.loss",
    "model.initializer": "model.init_args.initializer",
    "model.init_gain": "model.init_args.init_gain",
    "model.bias_initializer": None,  # zeros
    "model.embed_initializer": None,  # FastText (or xavier for specials), never re-initialised after loading
    "model.embed_init_gain": None,  # embeddings come from FastText
    "model.trg_size": "model.init_args.trg_size",
    "model.just_count_in": "model.init_args.just_count_in",
    "model.gaussian_noise": "model.init_args.gaussian_noise",
    "model.noise_rate": "model.init_args.noise_rate",
    "model.future_prediction": "model.init_args.future_prediction",
    "model.encoder": "model.init_args.encoder",
    "model.decoder": "model.init_args.decoder",
}


def _set(config: dict, dotted: str, value: Any) -> None:
    node = config
    *parents, last = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value


def convert(original: dict, source: str = "<config>") -> tuple[dict, list[str]]:
    """The ``tgm`` config for an original config dict, and notes on keys that have no counterpart."""
    config: dict[str, Any] = {
        "model": {"class_path": "projects.pose.module.PoseModule", "init_args": {}},
        "data": {"class_path": "projects.pose.data.PoseDataModule", "init_args": {"synthetic": None}},
        "trainer": {"num_sanity_val_steps": -1},
        "checkpoint": {"monitor": "val/dtw_pt_l1_ref_len", "mode": "min"},
    }
    notes, unknown = [], []
    for section in ("data", "training", "model"):
        for key, value in (original.get(section) or {}).items():
            name = f"{section}.{key}"
            if name not in MAPPING:
                unknown.append(name)
            elif MAPPING[name] is None:
                notes.append(f"{name}: {value!r} has no setting here (see projects/pose/README.md)")
            else:
                if name == "training.loss":
                    value = str(value).lower()
                if name == "training.validation_freq":  # steps, possibly more than one epoch
                    _set(config, "trainer.check_val_every_n_epoch", None)
                _set(config, MAPPING[name], value)
    extra_sections = sorted(set(original) - {"name", "data", "training", "model", "testing"})
    unknown += extra_sections
    if unknown:
        raise KeyError(f"{source}: unknown Progressive Transformers keys {unknown}; known: {sorted(MAPPING)}")
    trg_size = config["model"]["init_args"].get("trg_size")
    if trg_size is not None:
        config["data"]["init_args"]["trg_size"] = trg_size
    return config, notes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Original Progressive Transformers config -> tgm config")
    parser.add_argument("config", type=Path)
    args = parser.parse_args(argv)
    if not args.config.is_file():
        raise SystemExit(f"config file '{args.config}' does not exist")
    original = yaml.safe_load(args.config.read_text(encoding="utf-8")) or {}
    config, notes = convert(original, str(args.config))
    header = [f"# converted from {args.config} by projects/pose/convert_config.py"] + [f"# {n}" for n in notes]
    sys.stdout.write("\n".join(header) + "\n" + yaml.safe_dump(config, sort_keys=False, allow_unicode=True))


if __name__ == "__main__":
    main()
