"""Each geometry op in common/geometry.py (the torch / numpy fallback: pytorch3d is not installed here) against
an independent reference: scipy's cKDTree for Chamfer, trimesh volumes for voxelisation and IoU."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh
from scipy.spatial import cKDTree

from common import geometry
from common.geometry import (
    Meshes,
    chamfer,
    mesh_edge_loss,
    mesh_laplacian_smoothing,
    sample_surface_points,
    transform_voxels,
    voxel_iou,
    voxelize_mesh,
    voxels_to_mesh,
)
from common.metrics.geometry import ChamferDistance, VoxelIoU
from tests.helpers.run_if import RunIf
from tests.shape3d.references import kdtree_chamfer


@pytest.mark.parametrize("method", ["brute", "kdtree"])
def test_chamfer_matches_kdtree_batched_and_chunked(method):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 700, 3)).astype(np.float32)
    y = rng.normal(size=(3, 500, 3)).astype(np.float32) * 0.5 + 0.3
    expected = [kdtree_chamfer(a, b) for a, b in zip(x, y, strict=True)]
    per_cloud = chamfer(torch.from_numpy(x), torch.from_numpy(y), batch_reduction=None, method=method)
    np.testing.assert_allclose(per_cloud.numpy(), expected, rtol=1e-4)
    mean = chamfer(torch.from_numpy(x), torch.from_numpy(y), method=method)
    assert mean.item() == pytest.approx(np.mean(expected), rel=1e-4)
    # a tiny chunk budget (many row chunks) must give the same nearest neighbours
    idx_full, d_full = geometry.nearest_neighbors(torch.from_numpy(x), torch.from_numpy(y), method=method)
    idx_chunk, d_chunk = geometry.nearest_neighbors(
        torch.from_numpy(x), torch.from_numpy(y), chunk_elements=3 * 500 * 50, method="brute"
    )
    assert torch.equal(idx_full, idx_chunk)
    torch.testing.assert_close(d_full, d_chunk)


@pytest.mark.parametrize("method", ["brute", "kdtree"])
def test_chamfer_reductions_lengths_and_gradient(method):
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.normal(size=(2, 60, 3)).astype(np.float32)).requires_grad_(True)
    y = torch.from_numpy(rng.normal(size=(2, 80, 3)).astype(np.float32))
    d_xy, _ = cKDTree(y[0].numpy()).query(x[0].detach().numpy())
    one_way = chamfer(
        x[:1], y[:1], single_directional=True, point_reduction="sum", batch_reduction="sum", method=method
    )
    assert one_way.item() == pytest.approx(float((d_xy**2).sum()), rel=1e-4)
    # padded clouds: only the first 40 / 50 points count
    lengths = chamfer(
        x,
        y,
        x_lengths=torch.tensor([40, 60]),
        y_lengths=torch.tensor([50, 80]),
        batch_reduction=None,
        method=method,
    )
    assert lengths[0].item() == pytest.approx(
        kdtree_chamfer(x[0, :40].detach().numpy(), y[0, :50].numpy()), rel=1e-4
    )
    assert lengths[1].item() == pytest.approx(kdtree_chamfer(x[1].detach().numpy(), y[1].numpy()), rel=1e-4)
    chamfer(x, y, method=method).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    # moving x along -grad lowers the distance: the gradient is the real one
    with torch.no_grad():
        before = chamfer(x, y, method=method).item()
        after = chamfer(x - 0.5 * x.grad, y, method=method).item()
    assert after < before


@RunIf(pytorch3d=True)
def test_chamfer_matches_pytorch3d():  # pragma: no cover - runs only where pytorch3d is installed
    from pytorch3d.loss import chamfer_distance as p3d_chamfer

    x, y = torch.rand(2, 100, 3), torch.rand(2, 90, 3)
    assert chamfer(x, y).item() == pytest.approx(p3d_chamfer(x, y)[0].item(), rel=1e-5)


def box(extents, center=(0.0, 0.0, 0.0)) -> trimesh.Trimesh:
    return trimesh.creation.box(extents, transform=trimesh.transformations.translation_matrix(center))


def test_voxelize_fills_volume_of_watertight_meshes():
    resolution = 48
    for mesh in (
        trimesh.creation.icosphere(3, radius=0.4),
        box((0.6, 0.3, 0.5)),
        trimesh.creation.torus(0.3, 0.1),
    ):
        grid = voxelize_mesh(mesh, resolution)
        volume = grid.sum() / resolution**3
        assert volume == pytest.approx(mesh.volume, rel=0.08)
    # an axis-aligned box whose faces lie between voxel centres is voxelised exactly
    grid = voxelize_mesh(box((0.5, 0.25, 0.75)), 16)
    assert grid.sum() == 8 * 4 * 12


def test_voxel_iou_matches_trimesh_volumes():
    resolution = 64
    a, b = box((0.5, 0.5, 0.5), (-0.1, 0, 0)), box((0.5, 0.4, 0.5), (0.1, 0.05, 0))
    overlap = box((0.3, 0.4, 0.5))  # the intersection of a and b, as a mesh for its volume
    expected = overlap.volume / (a.volume + b.volume - overlap.volume)
    grids = torch.from_numpy(np.stack([voxelize_mesh(a, resolution), voxelize_mesh(b, resolution)]))
    iou = voxel_iou(grids[:1].float(), grids[1:].float())
    assert iou.item() == pytest.approx(expected, abs=0.03)
    assert voxel_iou(grids[:1].float(), grids[:1].float()).item() == 1.0
    assert voxel_iou(torch.zeros(1, 4, 4, 4), torch.zeros(1, 4, 4, 4)).item() == 1.0  # both empty


def test_non_watertight_mesh_is_voxelised_by_surface_with_a_warning():
    sphere = trimesh.creation.icosphere(3, radius=0.4)
    open_mesh = trimesh.Trimesh(sphere.vertices, sphere.faces[:-20], process=False)
    assert not open_mesh.is_watertight
    with pytest.warns(UserWarning, match="not watertight"):
        grid = voxelize_mesh(open_mesh, 32, name="row 7")
    # a shell: the centre is empty, voxels on the radius are full
    assert not grid[16, 16, 16]
    assert 0 < grid.sum() < 0.5 * voxelize_mesh(sphere, 32).sum()


def test_voxels_to_mesh_recovers_the_shape():
    sphere = trimesh.creation.icosphere(3, radius=0.35)
    grid = voxelize_mesh(sphere, 48)
    mesh = voxels_to_mesh(grid.astype(np.float32))
    assert mesh.is_watertight
    assert mesh.volume == pytest.approx(sphere.volume, rel=0.1)  # positive volume: normals point outwards
    # Chamfer between the two surfaces is within about a voxel
    a = torch.from_numpy(sample_surface_points(mesh, 2000))[None]
    b = torch.from_numpy(sample_surface_points(sphere, 2000))[None]
    assert chamfer(a, b).item() < 2 * (1 / 48) ** 2
    assert len(voxels_to_mesh(np.zeros((8, 8, 8))).faces) == 0


def test_sample_surface_points_lie_on_the_surface():
    points = sample_surface_points(trimesh.creation.icosphere(4, radius=0.3), 1000, seed=3)
    assert points.shape == (1000, 3) and points.dtype == np.float32
    assert np.abs(np.linalg.norm(points, axis=1) - 0.3).max() < 0.003


def test_mesh_edge_and_laplacian_losses_match_loops():
    mesh = trimesh.creation.icosphere(1, radius=0.5)
    rng = np.random.default_rng(0)
    verts_np = mesh.vertices + rng.normal(scale=0.02, size=mesh.vertices.shape)
    verts = torch.tensor(verts_np, dtype=torch.float32)
    faces = torch.tensor(mesh.faces, dtype=torch.long)
    edges = mesh.edges_unique
    lengths = np.linalg.norm(verts_np[edges[:, 0]] - verts_np[edges[:, 1]], axis=1)
    assert mesh_edge_loss(Meshes([verts], [faces]), 0.1).item() == pytest.approx(
        float(((lengths - 0.1) ** 2).mean()), rel=1e-4
    )
    neighbours = {i: set() for i in range(len(verts_np))}
    for i, j in edges:
        neighbours[i].add(j)
        neighbours[j].add(i)
    reference = np.mean(
        [np.linalg.norm(verts_np[list(n)].mean(0) - verts_np[i]) for i, n in neighbours.items()]
    )
    assert mesh_laplacian_smoothing(Meshes([verts], [faces])).item() == pytest.approx(reference, rel=1e-4)
    flat = trimesh.creation.box((1, 1, 1)).subdivide().subdivide()
    assert (
        mesh_laplacian_smoothing(
            Meshes([torch.tensor(flat.vertices).float()], [torch.tensor(flat.faces)])
        ).item()
        > 0
    )


def test_transform_voxels_matches_voxelising_the_transformed_mesh():
    mesh = box((0.5, 0.2, 0.3))
    angle = np.radians(25)
    matrix = 1.1 * np.array(
        [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    )
    moved = mesh.copy()
    transform = np.eye(4)
    transform[:3, :3] = matrix
    moved.apply_transform(transform)
    grid = torch.from_numpy(voxelize_mesh(mesh, 48)).float()[None, None]
    resampled = transform_voxels(grid, torch.tensor(matrix, dtype=torch.float32)[None])[0]
    iou = voxel_iou(resampled, torch.from_numpy(voxelize_mesh(moved, 48)).float()[None])
    assert iou.item() > 0.9


def test_metrics_average_over_every_sample():
    iou = VoxelIoU()
    a = torch.zeros(2, 4, 4, 4)
    a[0, :2] = 1
    a[1, :] = 1
    b = torch.zeros(2, 4, 4, 4)
    b[0, :1] = 1
    b[1, :] = 1
    iou.update(a[:1], b[:1])
    iou.update(a[1:], b[1:])
    assert iou.compute().item() == pytest.approx((0.5 + 1.0) / 2)
    chamfer = ChamferDistance()
    x, y = [torch.rand(30, 3), torch.rand(20, 3)], [torch.rand(25, 3), torch.rand(40, 3)]
    chamfer.update(x[:1], y[:1])
    chamfer.update(x[1:], y[1:])
    expected = np.mean([kdtree_chamfer(p.numpy(), t.numpy()) for p, t in zip(x, y, strict=True)])
    assert chamfer.compute().item() == pytest.approx(expected, rel=1e-4)


def inside_convex(mesh: trimesh.Trimesh, points: np.ndarray) -> np.ndarray:
    """Exact containment in a convex closed mesh: behind every face plane."""
    offsets = np.einsum("fk,fk->f", mesh.face_normals, mesh.triangles[:, 0])
    return (points @ mesh.face_normals.T <= offsets[None] + 1e-12).all(1)


def grid_centres(resolution: int) -> np.ndarray:
    axis = geometry.voxel_centers(resolution)
    return np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)


def rotated(mesh: trimesh.Trimesh, degrees: float, axis=(1.0, 2.0, 0.5)) -> trimesh.Trimesh:
    return mesh.copy().apply_transform(trimesh.transformations.rotation_matrix(np.radians(degrees), axis))


@pytest.mark.parametrize("shape", ["two boxes", "mushroom", "table", "inside-out part"])
def test_overlapping_closed_parts_are_filled_as_their_union(shape):
    """Artists model a mushroom as cap + stem, a table as top + legs: closed parts that overlap. Ray parity hollowed
    every overlap; the fill must equal the union of the parts (exact point-in-convex reference)."""
    if shape == "two boxes":
        parts = [
            rotated(box((0.5, 0.3, 0.4), (-0.08, 0, 0)), 20),
            rotated(box((0.4, 0.4, 0.3), (0.1, 0.05, 0)), 20),
        ]
    elif shape == "mushroom":
        cap = trimesh.creation.icosphere(2, radius=0.3).apply_translation((0, 0, 0.12))
        parts = [cap, trimesh.creation.cylinder(0.08, 0.5, sections=24).apply_translation((0, 0, -0.1))]
    elif shape == "table":
        top = box((0.8, 0.6, 0.08), (0, 0, 0.2))
        legs = [box((0.08, 0.08, 0.5), (x, y, -0.02)) for x in (-0.3, 0.3) for y in (-0.2, 0.2)]
        parts = [rotated(p, 10) for p in [top, *legs]]
    else:  # one part wound inside out (negative volume): still a closed part
        inverted = box((0.3, 0.3, 0.6), (0.1, 0, 0))
        inverted.faces = inverted.faces[:, ::-1]
        parts = [box((0.6, 0.3, 0.3)), inverted]
    mesh = trimesh.util.concatenate(parts)
    assert mesh.is_watertight
    resolution = 40
    expected = np.zeros(resolution**3, dtype=bool)
    for part in parts:
        convex = part.copy()
        convex.fix_normals()
        expected |= inside_convex(convex, grid_centres(resolution))
    grid = voxelize_mesh(mesh, resolution).reshape(-1)
    assert (grid != expected).sum() <= 2e-4 * resolution**3  # centres on a face may go either way
    assert (
        voxel_iou(torch.from_numpy(grid)[None].float(), torch.from_numpy(expected)[None].float()).item()
        > 0.999
    )


def test_inconsistently_wound_mesh_falls_back_to_parity():
    mesh = box((0.5, 0.25, 0.75))
    mesh.faces[3] = mesh.faces[
        3, ::-1
    ]  # one flipped triangle: winding numbers are meaningless, parity is not
    assert mesh.is_watertight and not mesh.is_winding_consistent
    assert voxelize_mesh(mesh, 16).sum() == 8 * 4 * 12


def test_full_grid_gives_a_closed_box():
    mesh = voxels_to_mesh(np.ones((8, 8, 8), dtype=np.float32))
    assert mesh.is_watertight
    assert mesh.volume == pytest.approx(
        1.0, rel=0.05
    )  # the surface runs half a voxel outside the outer centres
    np.testing.assert_allclose(mesh.bounds, [[-0.5] * 3, [0.5] * 3], atol=1e-6)


def test_cubify_fallback_is_the_exact_outward_voxel_surface():
    """Without pytorch3d, ``method="cubify"`` builds the blocky surface itself: volume = occupied voxels, area = the
    faces between occupied and empty voxels (counted by loops), normals outwards."""
    rng = np.random.default_rng(0)
    grid = (rng.random((7, 7, 7)) > 0.6).astype(np.float32)
    grid[3, 3, 3] = 1.0
    exposed = 0
    for i, j, k in np.argwhere(grid > 0.5):
        for axis, step in ((0, 1), (0, -1), (1, 1), (1, -1), (2, 1), (2, -1)):
            n = [i, j, k]
            n[axis] += step
            exposed += not (0 <= n[axis] < 7 and grid[tuple(n)] > 0.5)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(geometry, "_P3D", None)
        mesh = voxels_to_mesh(grid, method="cubify")
    assert mesh.volume == pytest.approx((grid > 0.5).sum() / 7**3, rel=1e-12)
    assert mesh.area == pytest.approx(exposed / 7**2, rel=1e-12)
    single = voxels_to_mesh(np.pad(np.ones((1, 1, 1)), ((2, 1), (0, 3), (1, 2))), method="cubify")
    assert single.is_watertight and single.volume == pytest.approx(1 / 4**3)
    np.testing.assert_allclose(single.bounds, [[0.0, -0.5, -0.25], [0.25, -0.25, 0.0]])
