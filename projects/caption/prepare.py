"""Run caption's preparation once, outside training (what ``tgm fit`` does in ``prepare_data`` anyway):

    python -m projects.caption.prepare --config configs/caption/default.yaml [--config more.yaml ...]

generates the default set, builds (and pre-trains) the tiny CLIP, trains the BPE tokenizer and computes the CLIP
feature caches, each only when its cache is missing. Useful before a multi-GPU or multi-node run.
"""

from __future__ import annotations

import argparse

import yaml
from jsonargparse import ArgumentParser

from common.io import read_text
from projects.caption.data import CaptionDataModule


def load_sections(configs: list[str]) -> dict:
    """The ``model`` and ``data`` sections of tgm config files, merged key by key (later files win)."""
    merged: dict = {}
    for path in configs:
        content = yaml.safe_load(read_text(path)) or {}
        merged = _merge(merged, {key: content[key] for key in ("model", "data") if content.get(key)})
    return merged


def build_data(configs: list[str], **overrides) -> CaptionDataModule:
    """The datamodule of tgm config files, as ``tgm`` builds it (``overrides``: init args)."""
    section = load_sections(configs)["data"]
    section = _merge(section, {"init_args": overrides})
    parser = ArgumentParser()
    parser.add_argument("--data", type=CaptionDataModule)
    return parser.instantiate_classes(parser.parse_object({"data": section})).data


def build_model(configs: list[str], data: CaptionDataModule):
    """The model of tgm config files with the datamodule's links applied, as ``tgm`` does."""
    from projects.caption.module import CaptionModule

    section = load_sections(configs)["model"]
    links = {arg: getattr(data, attribute) for arg, attribute in CaptionModule.linked_from_data.items()}
    parser = ArgumentParser()
    parser.add_argument("--model", type=CaptionModule)
    return parser.instantiate_classes(
        parser.parse_object({"model": _merge(section, {"init_args": links})})
    ).model


def main(args: list[str] | None = None) -> CaptionDataModule:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument(
        "--config", "-c", action="append", required=True, help="tgm config file(s), merged in order"
    )
    data = build_data(cli.parse_args(args).config)
    data.prepare_data()
    print(
        f"caption: prepared {data.clip_source}, {data.tokenizer_source} and the feature caches in {data.cache_root}"
    )
    return data


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        out[key] = (
            _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


if __name__ == "__main__":
    main()
