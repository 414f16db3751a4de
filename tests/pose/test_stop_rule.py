"""Issue 23: the end-of-sequence decision survives a counter that levels off short of its end value.

A counter that plateaus 0.01 below its end never meets the "counter reached its end" rule (``stop_rule="pt"``),
so decoding ran to ``max_output_length``: 4.2 x the reference for 50-99 frames, 2.1 x for 100-199. The default
``plateau`` rule ends such sequences where the counter stopped rising, and still stops perfect counters exactly.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from projects.pose.evaluation import LENGTH_BUCKETS, LengthRatio, bucket_name
from projects.pose.formats import progress_counter
from projects.pose.model import ProgressiveTransformer, plateau_start

TRG = 6
LENGTHS = [10, 17, 25, 33, 49, 50, 64, 80, 99, 100, 130, 150, 199, 200, 250, 299]


class SimulatedCounter(ProgressiveTransformer):
    """Predicts each sequence's reference counter for output frame ``step`` (``step / N`` after the 0-based or
    1-based convention), capped at ``end - shortfall`` (the counter levels off short of its end), with optional
    noise of ``noise`` counter steps."""

    def __init__(self, lengths: list[int], zero_based: bool, shortfall: float, noise: float = 0.0) -> None:
        super().__init__(
            trg_size=TRG,
            hidden_size=8,
            num_heads=2,
            encoder_layers=1,
            decoder_layers=1,
            ff_size=8,
            embedding_dim=8,
        )
        self.counter_steps = torch.tensor([1.0 / n for n in lengths])
        ends = [progress_counter(n, zero_based=zero_based)[-1] for n in lengths]
        self.caps = torch.tensor(ends) - shortfall
        self.noise = noise
        self.generator = torch.Generator().manual_seed(0)
        self.step = 0

    def _decoder_input(self, frames, offset=0):
        self.step = offset + 1
        return super()._decoder_input(frames, offset)

    def next_frame(self, output):
        counter = self.counter_steps * self.step
        if self.noise:
            jitter = torch.rand(len(counter), generator=self.generator) * 2 - 1
            counter = counter + self.noise * self.counter_steps * jitter
        frame = torch.zeros(output.shape[0], 1, TRG + 1)
        frame[:, 0, -1] = torch.minimum(counter, self.caps)
        return frame


def simulate(
    zero_based: bool, shortfall: float, stop_rule: str, noise: float = 0.0, max_length: int = 300
) -> tuple[np.ndarray, np.ndarray]:
    """Decoded and reference (target) lengths for :data:`LENGTHS` under a simulated counter."""
    net = SimulatedCounter(LENGTHS, zero_based, shortfall, noise).eval()
    src = torch.full((len(LENGTHS), 2), 2)  # ids within the placeholder embedding
    gap = 1.0 if zero_based else 0.0
    _, lengths = net.generate(src, src != 1, max_length=max_length, end_gap=gap, stop_rule=stop_rule)
    targets = np.array(
        [n - 1 if zero_based else n for n in LENGTHS]
    )  # frame 0 is the start frame when 0-based
    return lengths.numpy(), targets


def bucket_ratios(decoded: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    metric = LengthRatio()
    metric.update(torch.from_numpy(decoded), torch.from_numpy(reference))
    return {name: float(value) for name, value in metric.compute().items()}


@pytest.mark.parametrize("zero_based", [False, True])
def test_pt_rule_runs_to_the_cap_on_a_plateau(zero_based):
    """The cliff as filed: with the original rule the 50-99 bucket decodes about 4 x its length."""
    ratios = bucket_ratios(*simulate(zero_based, 0.01, "pt"))
    assert ratios["length_ratio_50_99"] > 3.5 and ratios["length_ratio_100_199"] > 1.8


@pytest.mark.parametrize("zero_based", [False, True])
def test_plateau_rule_stops_where_the_counter_levels_off(zero_based):
    decoded, reference = simulate(zero_based, 0.01, "plateau")
    ratios = bucket_ratios(decoded, reference)
    for name, value in ratios.items():
        assert 0.95 <= value <= 1.05, (name, value)
    assert np.all(np.abs(decoded - reference) <= np.maximum(2, 0.02 * reference)), list(
        zip(decoded, reference, strict=True)
    )


@pytest.mark.parametrize("zero_based", [False, True])
@pytest.mark.parametrize("noise", [0.0, 0.3])
def test_plateau_rule_keeps_exact_stops_of_good_counters(zero_based, noise):
    """No plateau, a counter that reaches its end (with +-0.3 steps of jitter): every length stops within a frame
    of the reference, as with the original rule -- the plateau test never fires early."""
    decoded, reference = simulate(zero_based, 0.0, "plateau", noise=noise)
    assert np.abs(decoded - reference).max() <= 1, list(zip(decoded, reference, strict=True))
    pt_decoded, _ = simulate(zero_based, 0.0, "pt", noise=noise)
    np.testing.assert_array_equal(decoded, pt_decoded)


def test_plateau_start_by_hand():
    # rises by 0.16 per frame to 0.96 at frame 6, then flat: at frame 11 the counter rose by nothing over 5 frames
    # (under a quarter of 5 average steps) and the sequence ends where the plateau began, at frame 6
    counters = torch.tensor([[0.0, 0.16, 0.32, 0.48, 0.64, 0.8, 0.96, 0.96, 0.96, 0.96, 0.96, 0.96]])
    seen = [int(plateau_start(counters[:, : k + 1], window=5)) for k in range(counters.shape[1])]
    assert seen == [0] * 11 + [6]
    # the window grows with the sequence (a fifth of it): a 40-frame counter that stalls for 6 frames above 0.9
    # and then rises again is not ended (trained counters do that in long sequences); a longer stall is
    stall = torch.cat([torch.arange(0, 37) / 40, torch.full((6,), 36 / 40), torch.arange(37, 41) / 40])[None]
    assert all(int(plateau_start(stall[:, : k + 1])) == 0 for k in range(stall.shape[1]))
    assert int(plateau_start(stall[:, :42], fraction=0.0)) == 36
    # a counter that stalls mid-way (below min_counter, 0.9 of its range) is no end: trained counters do that
    stalled = torch.tensor([[0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]])
    assert int(plateau_start(stalled, window=5)) == 0
    assert int(plateau_start(stalled, window=5, min_counter=0.5)) == 5


def test_length_ratio_buckets():
    metric = LengthRatio()
    metric.update(torch.tensor([20, 30, 120, 5, 300]), torch.tensor([10, 30, 150, 5, 200]))
    ratios = metric.compute()
    assert list(ratios) == [bucket_name(*b) for b in LENGTH_BUCKETS]
    assert float(ratios["length_ratio_10_49"]) == pytest.approx(1.5)
    assert np.isnan(float(ratios["length_ratio_50_99"]))
    assert float(ratios["length_ratio_100_199"]) == pytest.approx(0.8)  # reference 5: in no bucket
    assert float(ratios["length_ratio_200_plus"]) == pytest.approx(1.5)


def test_references_longer_than_max_output_length_are_reported(tmp_path):
    """Issue 21: a cap below the data's lengths (the former default 100 against 190-frame dev sequences) cut
    decoding silently; now one warning names the longest reference and the key to raise."""
    from tests.pose.pt_fixture import pt_datamodule, quiet_trainer, tiny_module

    dm, _, _ = pt_datamodule(tmp_path, [12, 15], [31, 14], TRG, eval_batch_size=2)
    dm.prepare_data()
    module = tiny_module(dm, TRG, decoding={"max_output_length": 20})
    module.setup("fit")
    with pytest.warns(UserWarning, match=r"a reference has 30 frames but .*max_output_length=20"):
        quiet_trainer().validate(module, dm, verbose=False)


def test_length_rule_stops_at_the_predicted_length():
    """``stop_rule="length"``: each sequence ends at the length the length head predicts, whatever the counter
    does (here a counter that never gets anywhere)."""
    net = ProgressiveTransformer(
        trg_size=TRG, hidden_size=8, num_heads=2, encoder_layers=1, decoder_layers=1, ff_size=8, embedding_dim=8,
        length_head=True,
    ).eval()  # fmt: skip
    with torch.no_grad():
        net.length_head[-1].weight.zero_()
        net.length_head[-1].bias.fill_(float(np.log(37.0)))
    src = torch.full((3, 2), 2)
    _, lengths = net.generate(src, src != 1, max_length=100, stop_rule="length")
    assert lengths.tolist() == [37, 37, 37]
    _, capped = net.generate(src, src != 1, max_length=20, stop_rule="length")
    assert capped.tolist() == [20, 20, 20]


def test_length_rule_needs_a_trained_length_head(tmp_path):
    from common.errors import InputError
    from tests.pose.pt_fixture import pt_datamodule, tiny_module

    dm, _, _ = pt_datamodule(tmp_path, [12, 15], [11, 14], TRG)
    with pytest.raises(InputError, match="objective.length_weight > 0"):
        tiny_module(dm, TRG, decoding={"stop_rule": "length"})


def test_length_head_trains_alone(tmp_path):
    """The length loss trains the head on the detached encoder output: Adam steps on one batch cut it 100-fold,
    and the pose model's own weights get no gradient from it (how well a trained model's head predicts lengths:
    projects/pose/README.md, "Evaluation")."""
    from projects.pose.data import collate
    from tests.pose.pt_fixture import pt_datamodule, tiny_module

    dm, _, _ = pt_datamodule(tmp_path, [12, 15, 20, 40, 60, 90], [11, 14], TRG)
    dm.prepare_data()
    dm.setup("fit")
    module = tiny_module(dm, TRG, objective={"length_weight": 1.0}, decoding={"stop_rule": "length"})
    module.setup("fit")
    batch = collate([dm.datasets["train"][i] for i in range(len(dm.datasets["train"]))])
    src, src_mask, _, _ = module.encode_tokens(batch["tokens"])
    optimizer = torch.optim.Adam(module.net.parameters(), lr=1e-2)
    first = float(module._length_loss(src, src_mask, batch["lengths"]))
    for _ in range(600):
        loss = module._length_loss(src, src_mask, batch["lengths"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(loss) < 0.01 * first
    assert all(
        p.grad is None for name, p in module.net.named_parameters() if not name.startswith("length_head")
    )
