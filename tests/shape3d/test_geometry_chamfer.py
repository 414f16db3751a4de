"""``common.geometry.chamfer_distance`` (pytorch3d's signature and semantics) against an independent reference:
all pairwise distances by direct differences in float64, reductions written out per cloud, for every option, both
nearest-neighbour searches (KD-tree, brute force), values and gradients; the brute-force (GPU) path away from the
origin against scipy's KD-tree in float64."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from common.geometry import chamfer, chamfer_distance, nearest_neighbors
from tests.shape3d.references import kdtree_chamfer


def reference_chamfer(
    x,
    y,
    x_lengths,
    y_lengths,
    x_normals,
    y_normals,
    weights,
    batch_reduction,
    point_reduction,
    norm,
    single_directional,
    abs_cosine,
):
    """pytorch3d's documented semantics, one cloud and one point at a time, float64."""

    def one_way(a, b, la, lb, na, nb):
        per_point, per_normal = [], []
        for i in range(a.shape[0]):  # one cloud at a time: all pairwise distances by direct differences
            dist, cos_term = torch.zeros(a.shape[1], dtype=a.dtype), torch.zeros(a.shape[1], dtype=a.dtype)
            n, m = int(la[i]), int(lb[i])
            if n and m:
                diff = a[i, :n, None] - b[i, None, :m]  # (n, m, 3)
                d = diff.square().sum(2) if norm == 2 else diff.abs().sum(2)
                j = d.detach().argmin(1)
                dist[:n] = d[torch.arange(n), j]
                if na is not None:
                    n0, n1 = na[i, :n], nb[i, j]
                    cos = (n0 * n1).sum(1) / torch.clamp(n0.norm(dim=1) * n1.norm(dim=1), min=1e-6)
                    cos_term[:n] = 1 - (cos.abs() if abs_cosine else cos)
            elif n:  # nothing to match: distance 0, the neighbour's normal is 0 (cosine 0)
                cos_term[:n] = 1.0
            w = 1.0 if weights is None else weights[i]
            per_point.append(dist * w)
            per_normal.append(cos_term * w)
        per_point, per_normal = torch.stack(per_point), torch.stack(per_normal)
        if point_reduction is None:
            return per_point, per_normal if na is not None else None
        if point_reduction == "max":
            return per_point.max(1).values, None
        total, total_n = per_point.sum(1), per_normal.sum(1)
        if point_reduction == "mean":
            total, total_n = total / la.clamp(min=1), total_n / la.clamp(min=1)
        return total, total_n if na is not None else None

    loss, normals = one_way(x, y, x_lengths, y_lengths, x_normals, y_normals)
    if not single_directional:
        loss_y, normals_y = one_way(y, x, y_lengths, x_lengths, y_normals, x_normals)
        if point_reduction is None:
            return (loss, loss_y), (normals, normals_y) if normals is not None else None
        loss = torch.maximum(loss, loss_y) if point_reduction == "max" else loss + loss_y
        normals = normals + normals_y if normals is not None else None
    if batch_reduction is None:
        return loss, normals
    divisor = (x.shape[0] if weights is None else weights.sum()) if batch_reduction == "mean" else 1.0
    return loss.sum() / divisor, normals.sum() / divisor if normals is not None else None


def clouds(seed: int = 0, batch: int = 3, n: int = 17, m: int = 13):
    g = torch.Generator().manual_seed(seed)
    x, y = (
        torch.rand(batch, n, 3, generator=g, dtype=torch.float64),
        torch.rand(batch, m, 3, generator=g, dtype=torch.float64),
    )
    x_normals = torch.nn.functional.normalize(
        torch.randn(batch, n, 3, generator=g, dtype=torch.float64), dim=2
    )
    y_normals = torch.nn.functional.normalize(
        torch.randn(batch, m, 3, generator=g, dtype=torch.float64), dim=2
    )
    return x, y, x_normals, y_normals


def flatten(value):
    if value is None:
        return []
    return list(value) if isinstance(value, tuple) else [value]


# every reduction pair and norm, each once with (both directions, normals, |cos|, weights) and once with
# (single direction, normals, signed cos, no weights); "max" takes no normals
OPTIONS = [
    (norm, point, batch, single, use_normals and point != "max", abs_cosine, weighted)
    for norm, point, batch in itertools.product((1, 2), ("mean", "sum", "max", None), ("mean", "sum", None))
    if not (point is None and batch is not None)
    for single, use_normals, abs_cosine, weighted in ((False, True, True, True), (True, True, False, False))
]


@pytest.mark.parametrize("method", ["kdtree", "brute"])
@pytest.mark.parametrize(
    ("norm", "point", "batch", "single", "use_normals", "abs_cosine", "weighted"), OPTIONS
)
def test_every_option_matches_the_reference_values_and_gradients(
    method, norm, point, batch, single, use_normals, abs_cosine, weighted
):
    x, y, x_normals, y_normals = clouds()
    x.requires_grad_(True)
    y.requires_grad_(True)
    x_lengths, y_lengths = torch.tensor([17, 9, 0]), torch.tensor([13, 13, 5])  # padded clouds, one empty
    kwargs = dict(
        x_lengths=x_lengths,
        y_lengths=y_lengths,
        x_normals=x_normals if use_normals else None,
        y_normals=y_normals if use_normals else None,
        weights=torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64) if weighted else None,
        batch_reduction=batch,
        point_reduction=point,
        norm=norm,
        single_directional=single,
        abs_cosine=abs_cosine,
    )
    ours = chamfer_distance(x, y, method=method, **kwargs)
    expected = reference_chamfer(x, y, **kwargs)
    assert (ours[1] is None) == (expected[1] is None)
    got, want = flatten(ours[0]) + flatten(ours[1]), flatten(expected[0]) + flatten(expected[1])
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert a.dtype == torch.float64 and a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    total = sum(v.sum() for v in got)
    total_ref = sum(v.sum() for v in want)
    grads = torch.autograd.grad(total, (x, y), allow_unused=True)
    grads_ref = torch.autograd.grad(total_ref, (x, y), allow_unused=True)
    for a, b in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(
            a if a is not None else torch.zeros_like(x),
            b if b is not None else torch.zeros_like(x),
            rtol=1e-10,
            atol=1e-12,
        )


@pytest.mark.parametrize("method", ["kdtree", "brute"])
def test_an_empty_cloud_costs_zero_and_long_lengths_raise(method):
    x, y, _, _ = clouds(1)
    per_cloud = chamfer(x, y, x_lengths=torch.tensor([0, 17, 17]), batch_reduction=None, method=method)
    assert per_cloud[0].item() == 0.0  # pytorch3d: nothing to match in either direction
    assert per_cloud[1].item() > 0
    assert chamfer(x, y, y_lengths=torch.tensor([0, 0, 0]), method=method).item() == 0.0
    with pytest.raises(ValueError, match="padded to 17"):
        chamfer(x, y, x_lengths=torch.tensor([18, 17, 17]), method=method)
    with pytest.raises(ValueError, match="padded to 13"):
        chamfer(x, y, y_lengths=torch.tensor([3, 14, 1]), method=method)


def test_zero_weights_and_invalid_arguments_as_pytorch3d():
    x, y, _, _ = clouds(2)
    x.requires_grad_(True)
    loss, loss_normals = chamfer_distance(x, y, weights=torch.zeros(3, dtype=torch.float64))
    assert loss.item() == 0.0 and loss_normals.item() == 0.0 and loss.requires_grad
    for kwargs in (
        dict(point_reduction="median"),
        dict(batch_reduction="max"),
        dict(norm=3),
        dict(point_reduction=None),
        dict(point_reduction="max", x_normals=x),
        dict(weights=-torch.ones(3)),
    ):
        with pytest.raises(ValueError):
            chamfer_distance(x, y, **kwargs)


@pytest.mark.parametrize("offset", [0.0, 100.0, 1e3, 1e4])
@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
def test_brute_force_path_is_exact_at_any_offset_and_scale(offset, scale):
    """float32 clouds far from the origin: the brute-force (GPU) path must agree with a float64 KD-tree on the same
    points (before: relative error 0.35 at offset 100, 73 at 1000; cdist's |x|^2 - 2xy + |y|^2 form)."""
    rng = np.random.default_rng(int(offset) + int(1000 * scale))
    x = ((rng.random((1, 1000, 3)) - 0.5) * scale + offset).astype(np.float32)
    y = ((rng.random((1, 800, 3)) - 0.5) * scale + offset).astype(np.float32)
    expected = kdtree_chamfer(x[0].astype(np.float64), y[0].astype(np.float64))
    value = chamfer(torch.from_numpy(x), torch.from_numpy(y), method="brute").item()
    assert value == pytest.approx(expected, rel=1e-5)
    # the nearest neighbours themselves, in float64 (x64 inputs are searched and measured in float64)
    x64, y64 = torch.from_numpy(x.astype(np.float64)), torch.from_numpy(y.astype(np.float64))
    _, dist = nearest_neighbors(x64, y64, method="brute", chunk_elements=800 * 97)
    d_ref, _ = cKDTree(y[0].astype(np.float64)).query(x[0].astype(np.float64))
    np.testing.assert_allclose(dist[0].numpy(), d_ref**2, rtol=1e-12, atol=0)


@pytest.mark.parametrize("method", ["auto", "kdtree", "brute"])
def test_float64_is_accepted_and_kept(method):
    x, y, _, _ = clouds(3, n=200, m=150)
    loss = chamfer(x, y, method=method)
    assert loss.dtype == torch.float64
    assert loss.item() == pytest.approx(
        np.mean([kdtree_chamfer(a, b) for a, b in zip(x.numpy(), y.numpy(), strict=True)]), rel=1e-12
    )
