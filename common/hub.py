"""Load Hugging Face weights by hub name or local directory, with one clear error when they are missing.

Respects ``HF_HUB_OFFLINE`` (the Makefile sets it to 1 unless the user sets it): names are then resolved
from the local cache only. Projects build tiny random models for tests and CPU runs; this is the path
real users take with real weights.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class PretrainedNotAvailable(RuntimeError):
    """The requested weights are neither a local directory nor in the local hub cache (or downloadable)."""


def looks_like_path(name_or_path: str) -> bool:
    """Hub names are ``name`` or ``org/name``; anything else (``./x``, ``/x``, ``a/b/c``) is a directory."""
    return name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1


def load_pretrained(loader: Callable[..., T], name_or_path: str, what: str, **kwargs: Any) -> T:
    """``loader(name_or_path, **kwargs)`` (e.g. ``T5EncoderModel.from_pretrained``) with a readable failure.

    ``what`` names the config key for the message, e.g. ``"model.init_args.text_encoder"``.
    """
    path = Path(name_or_path).expanduser()
    if path.exists():
        return loader(str(path), **kwargs)
    if looks_like_path(name_or_path):
        raise PretrainedNotAvailable(f"{what}: local directory '{name_or_path}' does not exist")
    try:
        return loader(name_or_path, **kwargs)
    except (OSError, ValueError) as error:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        raise PretrainedNotAvailable(
            f"{what}: could not load '{name_or_path}' "
            f"({'HF_HUB_OFFLINE=1, so only the local cache was searched' if offline else 'hub unreachable or name unknown'}). "
            f"Fetch it once where the hub is reachable (`hf download {name_or_path}`), or set {what} to a local "
            f"directory made with save_pretrained(). Original error: {type(error).__name__}: {error}"
        ) from error
