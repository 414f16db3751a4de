"""Issue 21: a pretrained (``from_pretrained``) text encoder trains in train mode once thawed, frozen pretrained
weights are not stored in every checkpoint; issue 23: the point-cloud encoder is loaded from a checkpoint and
frozen, as the design keeps Point-E's encoder."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from common.callbacks import FreezeUnfreeze
from common.errors import InputError
from projects.shape3d.data import ReferencePoints, ShapeDataModule
from projects.shape3d.generate import all_texts
from projects.shape3d.module import Architecture, Losses, Shape3DModule
from projects.shape3d.text_encoder import TURKISH_ALPHABET, TextEncoder, load_tokenizer, prepare_tokenizer
from tests.shape3d.test_data import write_splits

SMALL = dict(latent_dim=16, style_dim=8, channels=(8, 4), grow_resolutions=(16,), grow_channels=(4,))


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> str:
    directory = tmp_path_factory.mktemp("tokenizer") / "tokenizer"
    prepare_tokenizer(all_texts() + [TURKISH_ALPHABET, TURKISH_ALPHABET.upper()], directory)
    return str(directory)


def save_pretrained_t5(directory: Path, tokenizer_dir: str, seed: int = 0) -> str:
    """A random tiny T5 encoder + tokenizer written with ``save_pretrained``: loaded back by ``from_pretrained``,
    which returns it in eval mode, as a real mT5 folder would."""
    torch.manual_seed(seed)
    tiny = TextEncoder(
        "tiny", tokenizer_dir, len(load_tokenizer(tokenizer_dir)), d_model=16, num_layers=1, num_heads=2
    )
    tiny.encoder.save_pretrained(directory)
    tiny.tokenizer.save_pretrained(directory)
    return str(directory)


def datamodule(root: Path, **reference) -> ShapeDataModule:
    write_splits(root)
    return ShapeDataModule(
        data_dir=str(root),
        num_points=32,
        batch_size=3,
        resolution=8,
        eval_resolution=8,
        resolutions=(8,),
        reference=ReferencePoints(num_points=8, **reference),
    )


def module(text_encoder: str, **architecture) -> Shape3DModule:
    return Shape3DModule(
        text_encoder=text_encoder,
        architecture=Architecture(**SMALL | architecture),
        losses=Losses(surface_topk=16, surface_points=16, style_mixing_prob=0.0),
        torch_num_threads=1,
    )


class RecordModes(pl.Callback):
    def __init__(self) -> None:
        self.modes: dict[int, dict[str, bool]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.modes[trainer.current_epoch] = {
            name: getattr(pl_module, name).training for name in ("text_encoder", "point_encoder", "decoder")
        }


def fit(model: Shape3DModule, data: ShapeDataModule, epochs: int, *callbacks) -> pl.Trainer:
    trainer = pl.Trainer(
        max_epochs=epochs,
        limit_train_batches=1,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        callbacks=list(callbacks),
    )
    trainer.fit(model, data)
    return trainer


def test_pretrained_text_encoder_trains_in_train_mode_after_unfreezing(tmp_path, tokenizer_dir):
    model = module(save_pretrained_t5(tmp_path / "t5", tokenizer_dir))
    assert not model.text_encoder.encoder.training  # from_pretrained: eval mode
    record = RecordModes()
    fit(
        model, datamodule(tmp_path / "data"), 2, FreezeUnfreeze(["text_encoder"], unfreeze_at_epoch=1), record
    )
    assert record.modes[0]["text_encoder"] is False  # frozen: eval, as FreezeUnfreeze keeps it
    assert record.modes[1] == {"text_encoder": True, "point_encoder": True, "decoder": True}
    assert all(m.training for m in model.text_encoder.encoder.modules() if m is not model)


def test_frozen_pretrained_weights_are_a_hash_in_checkpoints(tmp_path, tokenizer_dir):
    pretrained = save_pretrained_t5(tmp_path / "t5", tokenizer_dir)
    model = module(pretrained)
    trainer = fit(model, datamodule(tmp_path / "data"), 1, FreezeUnfreeze(["text_encoder"]))
    trainer.save_checkpoint(tmp_path / "frozen.ckpt")
    stored = torch.load(tmp_path / "frozen.ckpt", weights_only=True)
    assert not any(key.startswith("text_encoder.") for key in stored["state_dict"])
    assert set(stored["frozen_weights"]) == {"text_encoder"}
    loaded = Shape3DModule.load_from_checkpoint(tmp_path / "frozen.ckpt", map_location="cpu")
    model.eval(), loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(["bir küre"], [""]), model(["bir küre"], [""]))
    save_pretrained_t5(tmp_path / "t5", tokenizer_dir, seed=1)  # other weights in the same folder
    with pytest.raises(InputError, match="frozen weights of 'text_encoder' differ"):
        Shape3DModule.load_from_checkpoint(tmp_path / "frozen.ckpt", map_location="cpu")


def test_thawed_text_encoder_is_stored_in_full(tmp_path, tokenizer_dir):
    model = module(save_pretrained_t5(tmp_path / "t5", tokenizer_dir))
    trainer = fit(
        model, datamodule(tmp_path / "data"), 1, FreezeUnfreeze(["text_encoder"], unfreeze_at_epoch=0)
    )
    trainer.save_checkpoint(tmp_path / "thawed.ckpt")
    stored = torch.load(tmp_path / "thawed.ckpt", weights_only=True)
    assert (
        any(key.startswith("text_encoder.") for key in stored["state_dict"])
        and "frozen_weights" not in stored
    )


def test_point_encoder_is_loaded_from_a_checkpoint_and_stays_frozen(tmp_path, tokenizer_dir):
    pretrained = save_pretrained_t5(tmp_path / "t5", tokenizer_dir)
    torch.manual_seed(3)
    donor = module(pretrained)
    torch.save({"state_dict": donor.state_dict()}, tmp_path / "donor.ckpt")  # a Lightning checkpoint's layout
    torch.save(donor.point_encoder.state_dict(), tmp_path / "point_encoder.pt")  # or a plain state_dict
    for source in ("donor.ckpt", "point_encoder.pt"):
        model = module(pretrained, point_encoder_checkpoint=str(tmp_path / source))
        for (name, a), b in zip(
            model.point_encoder.state_dict().items(), donor.point_encoder.state_dict().values(), strict=True
        ):
            torch.testing.assert_close(a, b, msg=name)
        assert not any(p.requires_grad for p in model.point_encoder.parameters())
    before = {k: v.clone() for k, v in model.point_encoder.state_dict().items()}
    decoder_before = model.decoder.fc.weight.detach().clone()
    record = RecordModes()
    fit(model, datamodule(tmp_path / "data", train_prob=1.0), 1, FreezeUnfreeze(["text_encoder"]), record)
    assert record.modes[0]["point_encoder"] is False and record.modes[0]["decoder"] is True
    for key, value in model.point_encoder.state_dict().items():
        torch.testing.assert_close(value, before[key], msg=key)
    assert not torch.equal(model.decoder.fc.weight, decoder_before)  # the rest did train
    thawed = module(
        pretrained, point_encoder_checkpoint=str(tmp_path / "donor.ckpt"), freeze_point_encoder=False
    )
    assert all(p.requires_grad for p in thawed.point_encoder.parameters())
    torch.save({"state_dict": {"decoder.fc.weight": torch.zeros(1)}}, tmp_path / "other.ckpt")
    with pytest.raises(InputError, match="holds no point_encoder weights"):
        module(pretrained, point_encoder_checkpoint=str(tmp_path / "other.ckpt"))
