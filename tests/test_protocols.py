"""The hooks common callbacks call are declared as Protocols; the tiny module satisfies them."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest

from common.callbacks import ProgressiveResolution
from common.protocols import HasFadeAlpha, HasMediaSamples, HasResolution
from tests.helpers.tiny import TinyDataModule, TinyModule


def test_tiny_module_and_data_implement_the_hooks():
    assert all(isinstance(TinyModule(), hook) for hook in (HasMediaSamples, HasResolution, HasFadeAlpha))
    assert isinstance(TinyDataModule(), HasResolution)
    assert not isinstance(TinyDataModule(), HasMediaSamples | HasFadeAlpha)


class NoResolutionData(TinyDataModule):
    set_resolution = None  # a non-callable attribute does not satisfy the protocol's method either


def test_progressive_resolution_names_the_missing_protocol(tmp_path):
    trainer = pl.Trainer(
        default_root_dir=tmp_path,
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        callbacks=[ProgressiveResolution({0: 32})],
        enable_progress_bar=False,
        enable_checkpointing=False,
    )
    with pytest.raises(TypeError, match="NoResolutionData.set_resolution.*HasResolution"):
        trainer.fit(TinyModule(), NoResolutionData())
