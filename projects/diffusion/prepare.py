"""The explicit preparation step: render the generated data (if that is the source) and train + cache the judge.

    python -m projects.diffusion.prepare --config configs/diffusion/default.yaml [--config overlay.yaml ...]

does what ``CharacterDataModule.prepare_data`` does at the start of ``tgm fit / validate / test`` (which skip
everything that is already cached), so a cluster job can prepare on one node before the training starts.
"""

from __future__ import annotations

import argparse

import yaml

from common.io import read_text
from projects.diffusion.data import CharacterDataModule


def data_args(configs: list[str]) -> dict:
    """``data.init_args`` of the stacked configs (later files update earlier ones, nested keys merged)."""
    merged: dict = {}

    def update(into: dict, new: dict) -> None:
        for key, value in new.items():
            if isinstance(value, dict) and isinstance(into.get(key), dict):
                update(into[key], value)
            else:
                into[key] = value

    for path in configs:
        update(merged, ((yaml.safe_load(read_text(path)) or {}).get("data") or {}).get("init_args") or {})
    return merged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", action="append", required=True, help="a tgm config (repeatable)")
    args = parser.parse_args()
    data = CharacterDataModule(**data_args(args.config))
    data.prepare_data()
    print(f"[diffusion] prepared: data in {data.data_dir}, judge {data.judge_path}")


if __name__ == "__main__":
    main()
