"""The hooks that common callbacks call on a project's LightningModule or DataModule, declared once.

A project opts in by defining the method with this name and signature; no base class is needed. The callbacks
check with ``isinstance(obj, Protocol)`` (``runtime_checkable`` checks that the method exists, not its
signature), so a missing hook is reported by the callback with the Protocol's name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from common.media import Media


@runtime_checkable
class HasMediaSamples(Protocol):
    """Called by :class:`common.callbacks.MediaLogger` after a validation: a few pictures, videos, meshes or
    tables keyed by name (see :mod:`common.media`). Modules without it get no media."""

    def media_samples(self) -> dict[str, Media]: ...


@runtime_checkable
class HasResolution(Protocol):
    """Called by :class:`common.callbacks.ProgressiveResolution` on the module and on the datamodule when the
    resolution of the schedule changes (e.g. voxel grid 32 -> 48)."""

    def set_resolution(self, resolution: int) -> None: ...


@runtime_checkable
class HasFadeAlpha(Protocol):
    """Called by :class:`common.callbacks.ProgressiveResolution` before every training batch while a new
    resolution is faded in: ``alpha`` goes from 0 (previous resolution) to 1 (new one). Optional."""

    def set_fade_alpha(self, alpha: float) -> None: ...


__all__ = ["HasFadeAlpha", "HasMediaSamples", "HasResolution"]
