"""Issue 21: pretrained modules train in train mode (``from_pretrained`` returns eval mode) and checkpoints hold
a hash of the frozen pretrained CLIP instead of its weights, and still load and resume exactly."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection, GPT2Config, GPT2LMHeadModel

from common.errors import InputError
from projects.caption.data import collate
from projects.caption.model import MapperConfig
from projects.caption.module import CaptionModule, OptimizerConfig
from tests.caption.conftest import TINY_CLIP
from tests.caption.test_model import tiny_gpt2


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """``save_pretrained`` folders of a tiny GPT-2 and two tiny CLIPs (different seeds)."""
    root = tmp_path_factory.mktemp("pretrained")
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(**tiny_gpt2(64), resid_pdrop=0.1)).save_pretrained(root / "gpt2")
    no_dropout = {
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
    }  # resumed == straight, bit for bit
    GPT2LMHeadModel(GPT2Config(**tiny_gpt2(64), **no_dropout)).save_pretrained(root / "gpt2_no_dropout")
    for seed in (0, 1):
        torch.manual_seed(seed)
        CLIPVisionModelWithProjection(CLIPVisionConfig(**TINY_CLIP)).save_pretrained(root / f"clip{seed}")
    return root


def build(pretrained, clip: str = "clip0", decoder: str = "gpt2") -> CaptionModule:
    torch.manual_seed(0)
    return CaptionModule(
        decoder=str(pretrained / decoder),
        mapper=MapperConfig(kind="mlp", prefix_length=3),
        optimizer=OptimizerConfig(lr=1e-3, warmup_steps=1),
        clip_source=str(pretrained / clip),
    )


def batches(count: int = 8) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    items = [
        {
            "image_id": k,
            "features": torch.randn(16, generator=generator),
            "input_ids": torch.randint(2, 64, (5,), generator=generator).tolist() + [0],
        }
        for k in range(count)
    ]
    return DataLoader(items, batch_size=2, collate_fn=lambda b: collate(b, pad_id=1))


class Modes(pl.Callback):
    def __init__(self) -> None:
        self.seen: list[tuple[bool, bool, bool]] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.seen.append(
            (
                all(m.training for m in module.decoder.modules()),
                all(m.training for m in module.mapper.modules()),
                any(m.training for m in module.image_encoder.modules()),
            )
        )


class StopAfterFirstEpoch(pl.Callback):
    """Stops a run planned for ``max_steps`` after its first epoch (same lr schedule as the straight run)."""

    def on_train_epoch_end(self, trainer, module) -> None:
        trainer.should_stop = True


def trainer(tmp_path, max_steps: int, *callbacks) -> pl.Trainer:
    return pl.Trainer(
        default_root_dir=tmp_path,
        max_steps=max_steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=list(callbacks),
    )


def test_pretrained_decoder_and_mapper_train_in_train_mode_clip_in_eval(pretrained, tmp_path):
    assert not GPT2LMHeadModel.from_pretrained(pretrained / "gpt2").training  # what transformers returns
    modes = Modes()
    trainer(tmp_path, 2, modes).fit(build(pretrained), batches())
    assert modes.seen == [(True, True, False)] * 2


def test_checkpoint_holds_a_hash_not_the_frozen_clip_and_loads_and_resumes_exactly(pretrained, tmp_path):
    model = build(pretrained, decoder="gpt2_no_dropout")
    first = trainer(tmp_path, 4, StopAfterFirstEpoch())
    first.fit(model, batches(4))  # 2 of 4 steps
    assert first.global_step == 2
    path = tmp_path / "two.ckpt"
    first.save_checkpoint(path)
    stored = torch.load(path, map_location="cpu", weights_only=False)
    assert not [k for k in stored["state_dict"] if k.startswith("image_encoder.")]
    assert stored["frozen_weights"]["image_encoder"]["tensors"] == len(model.image_encoder.state_dict())
    assert [k for k in stored["state_dict"] if k.startswith("decoder.")]  # trained weights are all there

    loaded = CaptionModule.load_from_checkpoint(path, map_location="cpu", weights_only=False)  # strict
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0, msg=key)

    class AtResume(pl.Callback):
        def on_train_start(self, trainer, module) -> None:
            self.step, self.state = (
                trainer.global_step,
                {k: v.clone() for k, v in module.state_dict().items()},
            )

    at_resume = AtResume()
    resumed = trainer(tmp_path, 4, at_resume)
    resumed.fit(build(pretrained, decoder="gpt2_no_dropout"), batches(4), ckpt_path=path, weights_only=False)
    assert at_resume.step == 2 and resumed.global_step == 4
    for key, value in model.state_dict().items():  # the frozen CLIP included: put back from its folder
        torch.testing.assert_close(at_resume.state[key], value, rtol=0, atol=0, msg=key)

    with pytest.raises(InputError, match="frozen weights of 'image_encoder' differ"):
        trainer(tmp_path, 4).fit(
            build(pretrained, "clip1", "gpt2_no_dropout"), batches(), ckpt_path=path, weights_only=False
        )


def test_a_frozen_pretrained_decoder_is_not_stored_either(pretrained, tmp_path):
    model = build(pretrained, decoder="gpt2_no_dropout")
    model.decoder.requires_grad_(False)  # what FreezeUnfreeze(modules: [decoder]) does (frozen_gpt2.yaml)
    run = trainer(tmp_path, 2)
    run.fit(model, batches(4))
    path = tmp_path / "frozen.ckpt"
    run.save_checkpoint(path)
    stored = torch.load(path, map_location="cpu", weights_only=False)
    assert set(stored["frozen_weights"]) == {"image_encoder", "decoder"}
    assert {k.split(".")[0] for k in stored["state_dict"]} == {"mapper"}
    loaded = CaptionModule.load_from_checkpoint(path, map_location="cpu", weights_only=False)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0, msg=key)
