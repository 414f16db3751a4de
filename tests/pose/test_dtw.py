"""DTW metric against straightforward references (the original's pure-Python DP, and dtaidistance)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from common.metrics.dtw import DynamicTimeWarping, dtw_batch, dtw_many


def reference_dtw(x: np.ndarray, y: np.ndarray, dist) -> tuple[float, int]:
    """Textbook DP, as the ``dtw`` package used by Progressive Transformers; also the optimal path length."""
    n, m = len(x), len(y)
    acc = np.full((n + 1, m + 1), math.inf)
    steps = np.zeros((n + 1, m + 1))
    acc[0, 0] = 0.0
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            options = [
                (acc[i - 1, j - 1], steps[i - 1, j - 1]),
                (acc[i - 1, j], steps[i - 1, j]),
                (acc[i, j - 1], steps[i, j - 1]),
            ]
            best, best_steps = min(options, key=lambda o: o[0])
            acc[i, j] = dist(x[i - 1], y[j - 1]) + best
            steps[i, j] = best_steps + 1
    return float(acc[n, m]), int(steps[n, m])


def l1(a, b):
    return float(np.sum(np.abs(a - b)))


def euclid(a, b):
    return float(np.sqrt(np.sum((a - b) ** 2)))


def original_calculate_dtw(references: list[np.ndarray], hypotheses: list[np.ndarray]) -> list[float]:
    """Transcription of Progressive Transformers' ``helpers.calculate_dtw`` (numpy instead of torch)."""
    scores = []
    for ref, hyp in zip(references, hypotheses, strict=True):
        hyp = hyp[1:]  # remove the BOS frame from the hypothesis
        ref_max_idx = int(np.argmax(ref[:, -1])) or 1
        hyp_max_idx = int(np.argmax(hyp[:, -1])) or 1
        ref_count, hyp_count = ref[:ref_max_idx, :-1], hyp[:hyp_max_idx, :-1]
        d, _ = reference_dtw(ref_count, hyp_count, l1)
        scores.append(d / ref_count.shape[0])
    return scores


def random_sequences(rng, count, dim, low=3, high=12, counter=True):
    out = []
    for _ in range(count):
        length = int(rng.integers(low, high))
        frames = rng.normal(size=(length, dim))
        if counter:
            frames = np.concatenate([frames, (np.arange(1, length + 1) / length)[:, None]], axis=1)
        out.append(frames)
    return out


def test_known_sequence_by_hand():
    x = torch.tensor([[0.0], [1.0], [2.0]])
    y = torch.tensor([[0.0], [2.0]])
    # best path (0,0) (1,?) (2,1): 0 + min(|1-0|, |1-2|) + 0 = 1
    total, steps = dtw_batch([x], [y], frame_cost="l1", return_path_length=True)
    assert total.item() == pytest.approx(1.0)
    assert steps.item() == 3


@pytest.mark.parametrize("frame_cost,dist", [("l1", l1), ("euclidean", euclid)])
def test_batched_wavefront_matches_python_dp(frame_cost, dist):
    rng = np.random.default_rng(0)
    xs, ys = random_sequences(rng, 7, 5, counter=False), random_sequences(rng, 7, 5, counter=False)
    totals, steps = dtw_many(
        [torch.tensor(x) for x in xs],
        [torch.tensor(y) for y in ys],
        frame_cost,
        return_path_length=True,
        chunk_size=3,
    )
    for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
        expected, expected_steps = reference_dtw(x, y, dist)
        assert totals[i].item() == pytest.approx(expected, rel=1e-9)
        assert steps[i].item() == expected_steps


def test_squared_euclidean_matches_dtaidistance():
    dtw_ndim = pytest.importorskip("dtaidistance.dtw_ndim")
    rng = np.random.default_rng(1)
    xs, ys = random_sequences(rng, 5, 4, counter=False), random_sequences(rng, 5, 4, counter=False)
    totals, steps = dtw_batch(
        [torch.tensor(x) for x in xs], [torch.tensor(y) for y in ys], "sqeuclidean", return_path_length=True
    )
    for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
        # dtaidistance returns sqrt(sum of squared frame distances along the optimal path)
        assert math.sqrt(totals[i].item()) == pytest.approx(dtw_ndim.distance(x, y, use_c=True), rel=1e-9)
        _, paths = dtw_ndim.warping_paths(x, y)
        from dtaidistance import dtw as dtw1d

        assert steps[i].item() == len(dtw1d.best_path(paths))


def test_pt_definition_matches_original_code():
    rng = np.random.default_rng(2)
    refs = random_sequences(rng, 6, 6)
    hyps = random_sequences(rng, 6, 6)  # first frame plays the BOS frame and is dropped
    hyps[0][:, -1] = 0.0  # argmax 0 -> the original keeps one frame
    metric = DynamicTimeWarping("pt")
    assert metric.name == "dtw_pt_l1_ref_len"
    scores = metric.scores([torch.tensor(h) for h in hyps], [torch.tensor(r) for r in refs])
    np.testing.assert_allclose(scores.numpy(), original_calculate_dtw(refs, hyps), rtol=1e-9)
    metric.update([torch.tensor(h) for h in hyps[:2]], [torch.tensor(r) for r in refs[:2]])
    metric.update([torch.tensor(h) for h in hyps[2:]], [torch.tensor(r) for r in refs[2:]])
    assert metric.compute().item() == pytest.approx(
        float(np.mean(original_calculate_dtw(refs, hyps))), rel=1e-6
    )


def test_l2_path_definition_and_padded_input():
    rng = np.random.default_rng(3)
    refs = random_sequences(rng, 4, 3)
    hyps = random_sequences(rng, 4, 3)
    metric = DynamicTimeWarping("l2_path")
    assert metric.name == "dtw_l2_path_len"
    padded_h = torch.nn.utils.rnn.pad_sequence([torch.tensor(h) for h in hyps], batch_first=True)
    padded_r = torch.nn.utils.rnn.pad_sequence([torch.tensor(r) for r in refs], batch_first=True)
    scores = metric.scores(
        padded_h, padded_r, torch.tensor([len(h) for h in hyps]), torch.tensor([len(r) for r in refs])
    )
    for i in range(4):
        total, steps = reference_dtw(refs[i][:, :-1], hyps[i][:, :-1], euclid)
        assert scores[i].item() == pytest.approx(total / steps, rel=1e-9)


def test_identical_sequences_score_zero_and_states_sum_for_ddp():
    rng = np.random.default_rng(4)
    seqs = [torch.tensor(s) for s in random_sequences(rng, 3, 4)]
    metric = DynamicTimeWarping("l2_path")
    metric.update(seqs, seqs)
    assert metric.compute().item() == pytest.approx(0.0, abs=1e-9)
    # states are sums, so per-process metrics merge into the global mean (what DDP sync does)
    a, b = DynamicTimeWarping("pt"), DynamicTimeWarping("pt")
    refs = [torch.tensor(s) for s in random_sequences(rng, 4, 4)]
    hyps = [torch.tensor(s) for s in random_sequences(rng, 4, 4)]
    a.update(hyps[:1], refs[:1])
    b.update(hyps[1:], refs[1:])
    assert a._reductions["total"] is not None and a._reductions["count"] is not None
    a.merge_state(b)
    whole = DynamicTimeWarping("pt")
    whole.update(hyps, refs)
    assert a.compute().item() == pytest.approx(whole.compute().item(), rel=1e-6)
    assert a.count.item() == 4


def test_bad_arguments():
    with pytest.raises(ValueError, match="definition"):
        DynamicTimeWarping("cosine")
    with pytest.raises(ValueError, match="same D"):
        dtw_batch([torch.zeros(3, 2)], [torch.zeros(3, 4)])
