"""Checkpoints without the frozen pretrained weights: a hash instead of hundreds of megabytes per file.

A frozen CLIP or mT5 is loaded from its ``save_pretrained`` folder (or hub name) whenever the module is built, so
storing it again in every checkpoint only costs disk (a published-size caption checkpoint was 2.22 GB, most of it
the frozen CLIP, twice: best and last). ``strip_frozen`` replaces those tensors by a SHA-256 of them;
``restore_frozen`` checks that the freshly built module has exactly those weights and puts them back into the
loaded state dict, so Lightning's strict loading and exact resume work unchanged. A submodule with any trainable
parameter (e.g. after ``FreezeUnfreeze`` thawed it) is stored in full as usual.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from common.errors import InputError

CHECKPOINT_KEY = "frozen_weights"


def _entries(module: nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    """The state-dict entries of ``module.<prefix>`` with their full keys."""
    submodule = module.get_submodule(prefix)
    return {f"{prefix}.{key}": value for key, value in submodule.state_dict().items()}


def _is_frozen(module: nn.Module, prefix: str) -> bool:
    parameters = list(module.get_submodule(prefix).parameters())
    return bool(parameters) and not any(p.requires_grad for p in parameters)


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes, in key order: equal iff the weights are bit-identical."""
    digest = hashlib.sha256()
    for key in sorted(tensors):
        tensor = tensors[key].detach().to("cpu").contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def strip_frozen(module: nn.Module, checkpoint: dict[str, Any], prefixes: Sequence[str]) -> None:
    """Remove the entries of every fully frozen ``module.<prefix>`` from ``checkpoint["state_dict"]``.

    Call from ``LightningModule.on_save_checkpoint``. Each removed prefix is recorded in
    ``checkpoint["frozen_weights"]`` with the hash and count of its tensors. The hash is computed once per module
    object and prefix (frozen weights do not change), so step checkpoints stay cheap.
    """
    state = checkpoint.get("state_dict")
    if state is None:
        return
    cache: dict[str, str] = module.__dict__.setdefault("_frozen_sha256_cache", {})
    record: dict[str, dict[str, Any]] = {}
    for prefix in prefixes:
        if not _is_frozen(module, prefix):
            cache.pop(prefix, None)
            continue
        entries = _entries(module, prefix)
        if prefix not in cache:
            cache[prefix] = tensors_sha256(entries)
        for key in entries:
            state.pop(key, None)
        record[prefix] = {"sha256": cache[prefix], "tensors": len(entries)}
    if record:
        checkpoint[CHECKPOINT_KEY] = record


def restore_frozen(module: nn.Module, checkpoint: dict[str, Any], source: str = "checkpoint") -> None:
    """Put the module's own frozen tensors back into ``checkpoint["state_dict"]`` after checking their hash.

    Call from ``LightningModule.on_load_checkpoint``. Different weights (another CLIP, another mT5 folder than
    the run was trained with) are one ``InputError`` naming the submodule, instead of a silently different model.
    """
    record = checkpoint.get(CHECKPOINT_KEY) or {}
    state = checkpoint.get("state_dict")
    if state is None:
        return
    for prefix, expected in record.items():
        entries = _entries(module, prefix)
        actual = tensors_sha256(entries)
        if actual != expected["sha256"]:
            raise InputError(
                f"{source}: the frozen weights of '{prefix}' differ from those the checkpoint was trained with "
                f"(sha256 {actual[:12]} here, {expected['sha256'][:12]} in the checkpoint); build the model from "
                "the same pretrained folder or hub name"
            )
        for key, value in entries.items():
            state[key] = value
