"""Small shared pieces: W&B mode choice, media files, the Hugging Face loading error."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from common.errors import InputError
from common.hub import PretrainedNotAvailable, load_pretrained, looks_like_path
from common.loggers import resolve_wandb_mode
from common.media import Image, Mesh, Table, Video, write_media


def test_wandb_mode_offline_without_login(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "missing"))
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_wandb_mode() == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_wandb_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_wandb_mode() == "disabled"
    with pytest.raises(ValueError, match="sometimes"):
        resolve_wandb_mode("sometimes")


def test_media_files_are_written_and_readable(tmp_path):
    box = trimesh.creation.box()
    written = [
        write_media(Image(np.zeros((8, 8), dtype=np.float32)), tmp_path / "img"),
        write_media(Video(np.zeros((3, 8, 8, 3), dtype=np.uint8), fps=5), tmp_path / "clip"),
        write_media(Mesh(box.vertices, box.faces), tmp_path / "mesh"),
        write_media(Table(["a", "b"], [[1, "x"]]), tmp_path / "tab"),
    ]
    assert [p.suffix for p in written] == [".png", ".gif", ".obj", ".csv"]
    assert len(trimesh.load(written[2], force="mesh").faces) == 12
    assert written[3].read_text().splitlines() == ["a,b", "1,x"]


def test_missing_pretrained_weights_give_one_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from transformers import AutoConfig

    with pytest.raises(
        PretrainedNotAvailable,
        match=r"model.init_args.text_encoder: could not load 'google/mt5-small'.*HF_HUB_OFFLINE=1",
    ):
        load_pretrained(AutoConfig.from_pretrained, "google/mt5-small", what="model.init_args.text_encoder")
    with pytest.raises(PretrainedNotAvailable, match="local directory './nowhere/model' does not exist"):
        load_pretrained(AutoConfig.from_pretrained, "./nowhere/model", what="x")
    assert looks_like_path("/abs/dir") and not looks_like_path("openai/clip-vit-base-patch32")


def test_local_directory_is_loaded(tmp_path):
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_embd=8, n_head=2).save_pretrained(tmp_path)
    config = load_pretrained(GPT2Config.from_pretrained, str(tmp_path), what="x")
    assert config.n_embd == 8


def test_atomic_path_leaves_either_nothing_or_the_whole_file(tmp_path):
    from common.io import atomic_path

    target = tmp_path / "cache" / "features.pt"
    with pytest.raises(RuntimeError), atomic_path(target) as temporary:
        temporary.write_bytes(b"half")
        raise RuntimeError("killed while writing")
    assert not target.exists() and list(target.parent.iterdir()) == []
    with atomic_path(target) as temporary:
        assert temporary.parent == target.parent and temporary != target
        temporary.write_bytes(b"whole")
        assert not target.exists()  # not visible until the write finished
    assert target.read_bytes() == b"whole" and list(target.parent.iterdir()) == [target]


def test_wandb_unreachable_server_falls_back_to_offline(monkeypatch, tmp_path):
    """Logged in (a key is set) but no network: the run must go on offline, not fail or hang."""
    from unittest import mock

    import wandb

    from common.loggers import WandbLogger

    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    modes = []

    def fake_init(**kwargs):
        modes.append(kwargs["mode"])
        if kwargs["mode"] == "online":
            raise wandb.errors.CommError("Run initialization has timed out after 60.0 sec.")
        return mock.MagicMock()

    monkeypatch.setattr(wandb, "init", fake_init)
    monkeypatch.setattr(wandb, "run", None)  # another test's run may still be open in this process
    monkeypatch.setattr(
        "common.loggers.wandb_unreachable", lambda: None
    )  # the server answers, the run times out
    logger = WandbLogger(save_dir=str(tmp_path))
    assert logger.mode == "online"
    with pytest.warns(UserWarning, match="offline instead"):
        logger.experiment  # noqa: B018 - starting the run is the point
    assert modes == ["online", "offline"] and logger.mode == "offline"

    explicit = WandbLogger(save_dir=str(tmp_path), mode="online")  # asked for online: one line for the user
    modes.clear()
    with pytest.raises(InputError, match=r"could not start the online run \(CommError: Run initialization"):
        explicit.experiment  # noqa: B018
    assert modes == ["online"]
