"""Translate an original Progressive Transformers ``Configs/Base.yaml`` into a ``tgm`` config, key by key.

    python -m projects.pose.convert_config Configs/Base.yaml > configs/pose/mine.yaml
    python -m projects.pose.convert_config --flavour turkish-fork Configs/Base.yaml > configs/pose/fork.yaml
    tgm fit --config configs/pose/mine.yaml

Data files are used as they are (same ``.text/.gloss/.skels/.files``); only the YAML is rearranged into the
``model`` / ``data`` / ``trainer`` / ``checkpoint`` sections of LightningCLI. A config does not say how its code
tokenises, so the code it goes with is named (``--flavour``, :data:`FLAVOURS`): ``pt`` (default, the original
``data.py``: whitespace split, case kept) or ``turkish-fork`` (the Turkish fork's ``data.py``: lower-cased and
``string.punctuation`` stripped); the output's first lines say which. Every key the original's code reads (``training.py``, ``data.py``, ``model.py``,
``builders.py``, ``initialization.py``, ``loss.py``, ``embeddings.py``, ``encoders.py``, ``decoders.py``) is in
:data:`MAPPING`: set here, or accepted with a note saying why nothing needs setting, or refused with one line
when its value asks for something this project does not do. Unknown keys end in one line naming them (exit 2).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from common.errors import InputError, MissingInputError
from common.io import read_text

NOTE = None  # accepted: nothing to set here (the reason is in NOTES)

# the code a config goes with -> the data keys that tokenise as that code does, and what it does
FLAVOURS: dict[str, tuple[dict[str, Any], str]] = {
    "pt": (
        {"lowercase": False, "punctuation": "whitespace"},
        "the original Progressive Transformers data.py: str.split(), case and punctuation kept",
    ),
    "turkish-fork": (
        {"lowercase": True, "punctuation": "strip"},
        "the Turkish fork's data.py: lower-cased (Turkish İ->i, I->ı) and string.punctuation stripped, "
        "then str.split()",
    ),
}
SELECTION_METRIC = (
    "val/dtw_pt_l1_ref_len_length_penalised"  # DTW charged for wrong lengths (pose/evaluation.py)
)

# original "section.key" -> tgm dotted key, or NOTE
MAPPING: dict[str, str | None] = {
    "name": NOTE,
    # data (data.py: load_data)
    "data.src": "data.init_args.src",
    "data.trg": "data.init_args.trg",
    "data.files": "data.init_args.files",
    "data.train": "data.init_args.train",
    "data.dev": "data.init_args.dev",
    "data.test": "data.init_args.test",
    "data.max_sent_length": "data.init_args.max_sent_length",
    "data.skip_frames": "data.init_args.skip_frames",
    "data.src_vocab": "data.init_args.src_vocab",
    "data.src_voc_limit": "data.init_args.src_voc_limit",
    "data.src_voc_min_freq": "data.init_args.src_voc_min_freq",
    "data.val_on_train": NOTE,
    # training (training.py: TrainManager, builders.py)
    "training.random_seed": "seed_everything",
    "training.optimizer": NOTE,
    "training.adam_betas": "model.init_args.optimiser.adam_betas",
    "training.learning_rate": "model.init_args.optimiser.learning_rate",
    "training.learning_rate_min": "model.init_args.optimiser.learning_rate_min",
    "training.weight_decay": "model.init_args.optimiser.weight_decay",
    "training.clip_grad_norm": "trainer.gradient_clip_val",
    "training.clip_grad_val": "trainer.gradient_clip_val",
    "training.batch_size": "data.init_args.batch_size",
    "training.eval_batch_size": "data.init_args.eval_batch_size",
    "training.batch_type": NOTE,
    "training.eval_batch_type": NOTE,
    "training.batch_multiplier": "trainer.accumulate_grad_batches",
    "training.scheduling": NOTE,
    "training.patience": "model.init_args.optimiser.patience",
    "training.decrease_factor": "model.init_args.optimiser.decrease_factor",
    "training.decaying_step_size": NOTE,
    "training.learning_rate_factor": NOTE,
    "training.learning_rate_warmup": NOTE,
    "training.early_stopping_metric": NOTE,
    "training.eval_metric": NOTE,
    "training.epochs": "trainer.max_epochs",
    "training.validation_freq": "trainer.val_check_interval",
    "training.logging_freq": "trainer.log_every_n_steps",
    "training.model_dir": "checkpoint.dirpath",
    "training.overwrite": NOTE,
    "training.continue": NOTE,
    "training.shuffle": "data.init_args.shuffle",
    "training.use_cuda": NOTE,
    "training.max_output_length": "model.init_args.decoding.max_output_length",
    "training.keep_last_ckpts": "checkpoint.save_top_k",
    "training.loss": "model.init_args.objective.loss",
    # model (model.py: build_model, initialization.py, loss.py)
    "model.initializer": "model.init_args.init.initializer",
    "model.init_weight": "model.init_args.init.init_weight",
    "model.init_gain": "model.init_args.init.init_gain",
    "model.bias_initializer": "model.init_args.init.bias_initializer",
    "model.bias_init_weight": "model.init_args.init.bias_init_weight",
    "model.embed_initializer": "model.init_args.init.embed_initializer",
    "model.embed_init_weight": "model.init_args.init.embed_init_weight",
    "model.embed_init_gain": "model.init_args.init.embed_init_gain",
    "model.trg_size": "data.init_args.trg_size",  # the model takes it from the data (linked)
    "model.count_in": NOTE,
    "model.just_count_in": "model.init_args.just_count_in",
    "model.gaussian_noise": "model.init_args.gaussian_noise",
    "model.noise_rate": "model.init_args.noise_rate",
    "model.future_prediction": "model.init_args.future_prediction",
    "model.loss_scale": "model.init_args.objective.loss_scale",
    "model.encoder": "model.init_args.encoder",
    "model.decoder": "model.init_args.decoder",
}

# why an accepted key needs no setting
NOTES = {
    "name": "the run's name: use --trainer.logger.init_args.name (W&B) or the CSV logger's version",
    "data.val_on_train": "false only (validation runs on the dev split)",
    "training.optimizer": "Adam (adam only)",
    "training.batch_type": "sentence batches (sentence only)",
    "training.eval_batch_type": "sentence batches (sentence only)",
    "training.scheduling": "the plateau scheduler on the dev DTW (plateau only)",
    "training.decaying_step_size": "used by the 'decaying' scheduler only; plateau here",
    "training.learning_rate_factor": "used by the 'noam' scheduler only; plateau here",
    "training.learning_rate_warmup": "used by the 'noam' scheduler only; plateau here",
    "training.early_stopping_metric": (
        f"the dev DTW charged for wrong lengths ({SELECTION_METRIC}) selects checkpoints and drives the "
        "scheduler (dtw only)"
    ),
    "training.eval_metric": (
        "the dev DTW: the original's protocol (ground-truth counter, first ceil(20/eval_batch_size)+1 "
        "batches) as val/dtw_pt_l1_ref_len_pt_protocol, free-running over the whole dev set as "
        "val/dtw_pt_l1_ref_len (dtw only)"
    ),
    "training.overwrite": "runs never delete a folder; checkpoints go to checkpoint.dirpath",
    "training.continue": "resume with --ckpt_path last",
    "training.use_cuda": "the accelerator is chosen from the hardware (--trainer.accelerator cpu|gpu)",
    "model.count_in": "read but never used by the original",
}

# values that select something this project does not do: refused with one line instead of silently ignored
ALLOWED = {
    "data.val_on_train": (False,),
    "training.optimizer": ("adam",),
    "training.batch_type": ("sentence",),
    "training.eval_batch_type": ("sentence",),
    "training.scheduling": ("plateau",),
    "training.early_stopping_metric": ("dtw",),
    "training.eval_metric": ("dtw",),
}
NESTED = ("model.encoder", "model.decoder")  # blocks passed through; PoseModule checks their keys


def _set(config: dict, dotted: str, value: Any) -> None:
    node = config
    *parents, last = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value


def _flatten(original: dict) -> dict[str, Any]:
    """``{"training": {"epochs": 3}}`` -> ``{"training.epochs": 3}``; encoder/decoder blocks stay whole."""
    flat: dict[str, Any] = {}
    for key, value in original.items():
        if isinstance(value, dict) and key in ("data", "training", "model", "testing"):
            for inner, inner_value in value.items():
                name = f"{key}.{inner}"
                if isinstance(inner_value, dict) and name not in NESTED:
                    flat.update({f"{name}.{k}": v for k, v in inner_value.items()})
                else:
                    flat[name] = inner_value
        else:
            flat[key] = value
    return flat


def convert(original: dict, source: str = "<config>", flavour: str = "pt") -> tuple[dict, list[str]]:
    """The ``tgm`` config for an original config dict, and one note per key that needs no setting. ``flavour``
    names the code the config goes with (:data:`FLAVOURS`), which decides the tokenisation keys."""
    if flavour not in FLAVOURS:
        raise InputError(f"--flavour must be one of {sorted(FLAVOURS)}, got '{flavour}'")
    config: dict[str, Any] = {
        "model": {
            "class_path": "projects.pose.module.PoseModule",
            # both numbers: the original code's protocol and the free-running one (projects/pose/README.md)
            "init_args": {"decoding": {"pt_protocol": True}},
        },
        "data": {
            "class_path": "projects.pose.data.PoseDataModule",
            "init_args": {"synthetic": None, **FLAVOURS[flavour][0]},
        },
        "trainer": {
            "num_sanity_val_steps": -1,
            "callbacks": [
                {
                    "class_path": "projects.pose.writer.PosePredictionWriter",
                    "init_args": {"output_dir": "runs/pose/predictions"},
                }
            ],
        },
        "checkpoint": {"monitor": SELECTION_METRIC, "mode": "min"},
    }
    notes: list[str] = []
    flat = _flatten(original)
    unknown = sorted(name for name in flat if name not in MAPPING and not name.startswith("testing."))
    if unknown:
        raise InputError(
            f"{source}: unknown Progressive Transformers keys {unknown} (none of the original's code "
            "reads them); remove them or check the spelling"
        )
    if "training.clip_grad_norm" in flat and "training.clip_grad_val" in flat:
        raise InputError(
            f"{source}: training.clip_grad_norm and training.clip_grad_val are both set; the original "
            "allows one of them"
        )
    for name, value in flat.items():
        if name.startswith("testing."):
            notes.append(f"{name}: {value!r} -- the original's training and test code never read testing.*")
            continue
        allowed = ALLOWED.get(name)
        if allowed is not None and (str(value).lower() if isinstance(value, str) else value) not in allowed:
            raise InputError(
                f"{source}: {name}: {value!r} is not supported here (only {', '.join(map(str, allowed))})"
            )
        target = MAPPING[name]
        if target is None:
            notes.append(f"{name}: {value!r} -- {NOTES[name]}")
            continue
        if name == "training.loss":
            value = str(value).lower()
        if name == "training.adam_betas":
            value = [float(v) for v in value]
        if name == "training.validation_freq":  # steps, across epochs, as the original
            _set(config, "trainer.check_val_every_n_epoch", None)
        if name == "training.clip_grad_val":
            _set(config, "trainer.gradient_clip_algorithm", "value")
        if name == "training.clip_grad_norm":
            _set(config, "trainer.gradient_clip_algorithm", "norm")
        if name == "training.model_dir":
            config["trainer"]["callbacks"][0]["init_args"]["output_dir"] = f"{value}/predictions"
            _set(config, "trainer.default_root_dir", value)
        _set(config, target, value)
    width = (flat.get("model.encoder") or {}).get("embeddings", {}).get("embedding_dim")
    if width is not None:  # the FastText trained here gives the source embeddings the original's width
        config["data"]["init_args"]["fasttext_dim"] = width
    return config, notes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Original Progressive Transformers config -> tgm config")
    parser.add_argument("config", type=Path)
    parser.add_argument(
        "--flavour",
        default="pt",
        choices=sorted(FLAVOURS),
        help="the code the config goes with, which decides the tokenisation (default: pt, the original)",
    )
    args = parser.parse_args(argv)
    try:
        if not args.config.is_file():
            raise MissingInputError(f"config file '{args.config}' does not exist")
        original = yaml.safe_load(read_text(args.config)) or {}
        if not isinstance(original, dict):
            raise InputError(f"{args.config}: not a YAML mapping")
        config, notes = convert(original, str(args.config), args.flavour)
    except (InputError, yaml.YAMLError) as error:
        sys.stderr.write(f"{str(error).splitlines()[0]}\n")
        raise SystemExit(2) from None
    keys = ", ".join(f"{k}: {v}" for k, v in FLAVOURS[args.flavour][0].items())
    header = [
        f"# converted from {args.config} by projects/pose/convert_config.py",
        f"# flavour {args.flavour}: tokenised as {FLAVOURS[args.flavour][1]} ({keys})",
        "# keys with nothing to set:",
    ]
    header += [f"#   {note}" for note in notes]
    sys.stdout.write("\n".join(header) + "\n" + yaml.safe_dump(config, sort_keys=False, allow_unicode=True))


if __name__ == "__main__":
    main()
