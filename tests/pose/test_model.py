"""Attention layer, progressive decoding (cache, counter stop) and training steps of the pose model."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from common.errors import InputError
from projects.pose.model import MultiHeadAttention, ProgressiveTransformer
from projects.pose.module import PoseModule
from projects.pose.vocabulary import Vocabulary

TRG = 12


def direct_attention(layer: MultiHeadAttention, query, key_value, mask):
    """softmax(Q K^T / sqrt(d_k)) V per head, written out with plain tensor ops."""
    heads, size = layer.num_heads, layer.head_size
    q, k, v = layer.query(query), layer.key(key_value), layer.value(key_value)
    outputs = []
    for h in range(heads):
        qh, kh, vh = (t[..., h * size : (h + 1) * size] for t in (q, k, v))
        scores = qh @ kh.transpose(-1, -2) / math.sqrt(size)
        scores = scores.masked_fill(~mask[:, 0], float("-inf"))
        outputs.append(torch.softmax(scores, dim=-1) @ vh)
    return layer.output(torch.cat(outputs, dim=-1))


def test_attention_matches_formula():
    torch.manual_seed(0)
    layer = MultiHeadAttention(hidden_size=16, num_heads=4)
    query, key_value = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    mask = torch.ones(2, 1, 5, 7, dtype=torch.bool)
    mask[0, :, :, 5:] = False  # padded keys
    mask[1] = torch.ones(5, 7, dtype=torch.bool).tril()  # causal-like
    torch.testing.assert_close(
        layer(query, key_value, mask), direct_attention(layer, query, key_value, mask), rtol=1e-5, atol=1e-5
    )


def tiny_net(**kwargs) -> ProgressiveTransformer:
    torch.manual_seed(0)
    net = ProgressiveTransformer(
        trg_size=TRG,
        hidden_size=16,
        num_heads=2,
        encoder_layers=1,
        decoder_layers=2,
        ff_size=32,
        embedding_dim=8,
        **kwargs,
    )
    net.reset_parameters()
    net.set_source_embeddings(torch.randn(10, 8))
    return net.eval()


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"just_count_in": True, "decoder_positions": False},
        {"future_prediction": 3},
        {"decoder_heads": 4, "decoder_ff_size": 24},
    ],
)
def test_cached_decoding_equals_recomputation(options):
    net = tiny_net(**options)
    src = torch.tensor([[4, 5, 6, 3], [7, 3, 1, 1]])
    mask = src != 1
    start = torch.randn(2, TRG + 1)
    cached, lengths_cached = net.generate(src, mask, max_length=9, use_cache=True, start_frames=start)
    full, lengths_full = net.generate(src, mask, max_length=9, use_cache=False, start_frames=start)
    assert lengths_cached.tolist() == lengths_full.tolist()
    steps = int(lengths_cached.max())
    torch.testing.assert_close(cached[:, :steps], full[:, :steps], rtol=1e-4, atol=1e-5)


def counting_net(increments: float) -> ProgressiveTransformer:
    """A net whose predicted counter is exactly (input counter + increments): decoder layers and norms are
    bypassed and the output layer reads the counter straight from the embedded input frame."""
    net = tiny_net()
    for layer in net.decoder_layers:
        for parameter in layer.parameters():
            nn.init.zeros_(parameter)
    net.decoder_norm = nn.Identity()
    net.positions.zero_()
    with torch.no_grad():
        net.trg_embed.weight.zero_()
        net.trg_embed.bias.zero_()
        net.trg_embed.weight[0, -1] = 1.0  # hidden[0] = input counter
        net.output.weight.zero_()
        net.output.weight[-1, 0] = 1.0
        net.output.bias.zero_()
        net.output.bias[-1] = increments
    return net


def test_decoding_stops_when_counter_reaches_one():
    net = counting_net(0.25)
    src = torch.tensor([[4, 5, 3]])
    frames, lengths = net.generate(src, src != 1, max_length=50)
    assert lengths.tolist() == [4]
    torch.testing.assert_close(frames[0, :4, -1], torch.tensor([0.25, 0.5, 0.75, 1.0]))
    assert frames.shape[1] == 4  # stopped early: no work beyond the last sequence's end
    _, capped = net.generate(src, src != 1, max_length=3)
    assert capped.tolist() == [3]
    # the original code's evaluation: ground-truth counters fed in, reference length, no early stop
    gt = torch.linspace(0.1, 1.0, 10)[None]
    frames, lengths = net.generate(src, src != 1, gt_counter=gt)
    assert frames.shape[1] == 10
    torch.testing.assert_close(frames[0, 1:, -1], gt[0, :-1] + 0.25)


def make_batch(lengths, trg=TRG):
    frames = torch.zeros(len(lengths), max(lengths), trg + 1)
    for i, n in enumerate(lengths):
        t = torch.arange(1, n + 1, dtype=torch.float32) / n
        frames[i, :n, :trg] = torch.sin(t[:, None] * (i + 1) * torch.arange(1, trg + 1))
        frames[i, :n, -1] = t
    return {
        "tokens": [["ev", "okul"], ["su"]][: len(lengths)],
        "frames": frames,
        "lengths": torch.tensor(lengths),
        "start_frames": torch.zeros(len(lengths), trg + 1),
        "name": ["a", "b"][: len(lengths)],
        "text": ["Ev okul.", "Su."][: len(lengths)],
    }


def tiny_module(**kwargs) -> PoseModule:
    torch.manual_seed(0)
    module = PoseModule(
        trg_size=TRG,
        encoder={
            "hidden_size": 16,
            "num_heads": 2,
            "num_layers": 1,
            "ff_size": 32,
            "embeddings": {"embedding_dim": 8},
        },
        decoder={"hidden_size": 16, "num_heads": 2, "num_layers": 1, "ff_size": 32},
        **kwargs,
    )
    module.vocab = Vocabulary(["ev", "okul", "su"])
    module.net.set_source_embeddings(torch.randn(len(module.vocab), 8))
    return module


def test_masked_loss_ignores_padding():
    module = tiny_module()
    batch = make_batch([5, 3])
    output, targets, mask = module.forward_batch(batch)
    assert mask[1, 3:].sum() == 0 and mask[1, :3].all()
    changed = dict(batch, frames=batch["frames"].clone())
    changed["frames"][1, 3:] = 100.0  # padding content must not matter
    output2, targets2, mask2 = module.forward_batch(changed)
    assert module._loss(output, targets, mask).item() == pytest.approx(
        module._loss(output2, targets2, mask2).item()
    )


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"just_count_in": True},
        {"future_prediction": 3, "objective": {"loss": "l1"}},
        {"gaussian_noise": True, "noise_rate": 2.0},
    ],
)
def test_training_steps_reduce_loss(options):
    module = tiny_module(**options)
    batch = make_batch([6, 4])
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-2)
    losses = []
    for _ in range(25):
        output, targets, mask = module.forward_batch(batch, noise=True)
        loss = module._loss(output, targets, mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    if options.get("future_prediction"):
        assert output.shape[-1] == 3 * TRG + 1
    frames, lengths = module.generate(batch["tokens"])
    assert frames.shape[-1] == TRG + 1 and (lengths >= 1).all()


def test_gaussian_noise_uses_last_epoch_error_std():
    module = tiny_module(gaussian_noise=True, noise_rate=1.0)
    batch = make_batch([6, 4])
    torch.manual_seed(1)
    clean = module.forward_batch(batch, noise=True)[0]  # no statistics yet: no noise
    torch.testing.assert_close(clean, module.forward_batch(batch, noise=False)[0])

    class Strategy:
        @staticmethod
        def reduce(tensor, reduce_op):
            return tensor

    module._noise_stats = [torch.stack([torch.zeros(TRG), torch.full((TRG,), 4.0), torch.full((TRG,), 1.0)])]
    module._trainer = type("T", (), {"strategy": Strategy()})()
    module.on_train_epoch_end()
    module._trainer = None
    torch.testing.assert_close(module.out_stds, torch.full((TRG,), 2.0))
    noisy = module.forward_batch(batch, noise=True)[0]
    assert not torch.allclose(noisy, clean)


def test_trg_size_mismatch_between_model_and_data_is_named():
    module = tiny_module()
    with pytest.raises(InputError, match=r"the data has 100 joint values .* but model.init_args.trg_size=12"):
        module.forward_batch(make_batch([4], trg=100))


def test_decoder_block_keys_reach_the_decoder():
    """Base.yaml's decoder block has its own num_heads / ff_size / dropout; they must not be the encoder's."""
    from projects.pose.module import PoseModule

    module = PoseModule(
        trg_size=TRG,
        encoder={"num_heads": 4, "ff_size": 128, "dropout": 0.0},
        decoder={"num_layers": 3, "num_heads": 2, "ff_size": 48, "dropout": 0.3},
    )
    encoder_layer, decoder_layer = module.net.encoder_layers[0], module.net.decoder_layers[0]
    assert (encoder_layer.attention.num_heads, encoder_layer.feed_forward[0].out_features) == (4, 128)
    assert len(module.net.decoder_layers) == 3
    assert decoder_layer.self_attention.num_heads == decoder_layer.cross_attention.num_heads == 2
    assert decoder_layer.feed_forward[0].out_features == 48
    assert decoder_layer.drop.p == decoder_layer.self_attention.dropout == 0.3
