"""The explicit preparation step of every project, outside training:

    python -m projects.<name>.prepare --config configs/<name>/default.yaml [--config overlay.yaml ...]

builds the datamodule of the tgm config files (``data.class_path`` + ``init_args``; later files win, nested groups
merged key by key) and runs its ``prepare_data``: what ``tgm fit/validate/test`` do on rank 0 anyway, each step
only when its cached result is missing. Useful on a cluster: prepare once, then start every rank on prepared files.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import lightning.pytorch as pl
import yaml
from jsonargparse import ArgumentParser

from common.cli import import_class
from common.errors import InputError
from common.io import read_text

SECTIONS = ("model", "data")


def merge(base: dict, update: dict) -> dict:
    """``update`` over ``base``; nested mappings are merged key by key, as stacked ``--config`` files are."""
    out = dict(base)
    for key, value in update.items():
        both_mappings = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = merge(out[key], value) if both_mappings else value
    return out


def config_sections(configs: list[str]) -> dict[str, dict]:
    """The ``model`` and ``data`` sections of tgm config files, merged in order."""
    merged: dict[str, dict] = {}
    for path in configs:
        content = yaml.safe_load(read_text(path)) or {}
        if not isinstance(content, dict):
            raise InputError(f"{path}: expected a mapping of tgm config keys")
        for key in SECTIONS:
            section = content.get(key)
            if section is None:
                continue
            if not isinstance(section, dict):
                raise InputError(f"{path}: '{key}' must be a mapping with class_path / init_args")
            merged[key] = merge(merged.get(key, {}), section)
    return merged


def _instantiate(key: str, base_class: type, section: dict) -> Any:
    """``section`` ({class_path, init_args}) built by jsonargparse, exactly as ``tgm`` builds it."""
    if "class_path" not in section:
        raise InputError(f"the configs give no {key}.class_path")
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument(f"--{key}", type=base_class)
    try:
        return getattr(parser.instantiate_classes(parser.parse_object({key: section})), key)
    except Exception as error:  # jsonargparse's messages are long; the first line names the key
        if isinstance(error, InputError):
            raise
        raise InputError(f"{key}: {str(error).strip().splitlines()[0]}") from error


def build_data(configs: list[str], **overrides: Any) -> pl.LightningDataModule:
    """The datamodule of tgm config files (``overrides``: init args on top)."""
    section = merge(config_sections(configs).get("data", {}), {"init_args": overrides})
    return _instantiate("data", pl.LightningDataModule, section)


def build_model(configs: list[str], data: pl.LightningDataModule) -> pl.LightningModule:
    """The model of tgm config files with the datamodule's ``linked_from_data`` values applied, as ``tgm`` does."""
    section = config_sections(configs).get("model", {})
    if "class_path" not in section:
        raise InputError("the configs give no model.class_path")
    model_class = import_class(section["class_path"])
    links = {arg: getattr(data, name) for arg, name in getattr(model_class, "linked_from_data", {}).items()}
    return _instantiate("model", pl.LightningModule, merge(section, {"init_args": links}))


def main(argv: list[str] | None = None) -> pl.LightningDataModule:
    """``python -m projects.<name>.prepare --config ...``: bad config or data is one line, exit 2."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", "-c", action="append", required=True, help="a tgm config (repeatable)")
    configs = parser.parse_args(argv).config
    try:
        data = build_data(configs)
        data.prepare_data()
    except InputError as error:
        print(f"prepare: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"prepared {type(data).__name__} for {', '.join(configs)}")
    return data
