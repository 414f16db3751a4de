"""common.frozen: checkpoints store a hash of frozen pretrained weights instead of the weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from common.errors import InputError
from common.frozen import restore_frozen, strip_frozen


class Net(nn.Module):
    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.encoder = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
        self.encoder.requires_grad_(False)
        self.head = nn.Linear(4, 2)


def test_frozen_submodule_is_replaced_by_its_hash_and_restored_exactly():
    net = Net()
    checkpoint = {"state_dict": dict(net.state_dict())}
    strip_frozen(net, checkpoint, ["encoder"])
    assert not any(key.startswith("encoder.") for key in checkpoint["state_dict"])
    assert checkpoint["frozen_weights"]["encoder"]["tensors"] == 4
    with torch.no_grad():
        for p in net.head.parameters():
            p.add_(1.0)  # the trained part moves on; the checkpoint holds the earlier head
    saved_head = {k: v for k, v in checkpoint["state_dict"].items() if k.startswith("head.")}
    fresh = Net()  # built again from the same pretrained weights
    restore_frozen(fresh, checkpoint)
    fresh.load_state_dict(checkpoint["state_dict"], strict=True)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in saved_head.items())


def test_different_frozen_weights_are_one_clear_error():
    checkpoint = {"state_dict": dict(Net(seed=0).state_dict())}
    strip_frozen(Net(seed=0), checkpoint, ["encoder"])
    with pytest.raises(InputError, match="frozen weights of 'encoder' differ"):
        restore_frozen(Net(seed=1), checkpoint, source="best.ckpt")


def test_a_thawed_submodule_is_stored_in_full():
    net = Net()
    net.encoder.requires_grad_(True)
    checkpoint = {"state_dict": dict(net.state_dict())}
    strip_frozen(net, checkpoint, ["encoder"])
    assert "encoder.0.weight" in checkpoint["state_dict"] and "frozen_weights" not in checkpoint
