"""The explicit preparation step: ``python -m projects.shape3d.prepare --config configs/shape3d/default.yaml``.

Writes what the data section of the config needs before training (the generated motif set when ``data_dir`` is
null, the tiny text encoder's tokenizer), exactly as :meth:`ShapeDataModule.prepare_data` does inside ``tgm fit``.
Useful on a cluster: prepare once on a login node, then start every rank on prepared files.
"""

from __future__ import annotations

import argparse
import sys

import yaml

from common.errors import InputError
from common.io import read_text
from projects.shape3d.data import ShapeDataModule


def data_init_args(configs: list[str]) -> dict:
    """``data.init_args`` of the configs, later files overriding earlier ones (nested groups key by key)."""
    merged: dict = {}
    for path in configs:
        config = yaml.safe_load(read_text(path)) or {}
        data = config.get("data") or {}
        if not isinstance(data, dict):
            raise InputError(f"{path}: 'data' must be a mapping with class_path / init_args")
        for key, value in (data.get("init_args") or {}).items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = merged[key] | value
            else:
                merged[key] = value
    return merged


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", "-c", action="append", required=True, help="a tgm config (repeatable)")
    args = parser.parse_args(argv)
    try:
        datamodule = ShapeDataModule(**data_init_args(args.config))
        datamodule.prepare_data()
    except InputError as error:  # bad config or data: one line, exit 2, as `tgm` does
        print(f"prepare: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"[shape3d] prepared {datamodule.root} (tokenizer: {datamodule.tokenizer_dir})")


if __name__ == "__main__":
    main()
