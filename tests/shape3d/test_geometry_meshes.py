"""``Meshes`` and the mesh losses of common/geometry.py (the fallbacks: pytorch3d is hidden) against references
written as loops over vertices, edges and faces (trimesh for the mesh topology), with pytorch3d's documented
weighting: every mesh counts the same, isolated vertices have -1 on the Laplacian's diagonal."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import trimesh

from common import geometry
from common.geometry import (
    Meshes,
    mesh_edge_loss,
    mesh_laplacian_smoothing,
    mesh_normal_consistency,
    sample_points_from_meshes,
)


@pytest.fixture(autouse=True)
def no_pytorch3d(monkeypatch):
    monkeypatch.setattr(geometry, "_P3D", None)


def jittered(mesh: trimesh.Trimesh, seed: int, scale: float = 0.02) -> np.ndarray:
    return mesh.vertices + np.random.default_rng(seed).normal(scale=scale, size=mesh.vertices.shape)


@pytest.fixture
def batch():
    """Three meshes of different sizes: a subdivided box with an unused (isolated) vertex, an icosphere, and a
    non-manifold fan (three triangles on one edge); float64 vertices."""
    box = trimesh.creation.box((1.0, 0.6, 0.8)).subdivide()
    box_verts = np.vstack([jittered(box, 0), [[0.9, 0.1, -0.2]]])
    sphere = trimesh.creation.icosphere(1, radius=0.5)
    fan_verts = np.array([[0, 0, 0], [1, 0, 0], [0.5, 1, 0], [0.5, -1, 0.2], [0.4, 0.3, 1.0]], dtype=float)
    fan_faces = np.array([[0, 1, 2], [1, 0, 3], [0, 1, 4]])
    verts = [box_verts, jittered(sphere, 1), fan_verts]
    faces = [box.faces, sphere.faces, fan_faces]
    return verts, faces


def as_meshes(verts, faces, dtype=torch.float64) -> Meshes:
    return Meshes([torch.tensor(v, dtype=dtype) for v in verts], [torch.tensor(f) for f in faces])


def unique_edges(faces: np.ndarray) -> list[tuple[int, int]]:
    return sorted({tuple(sorted((int(f[i]), int(f[(i + 1) % 3])))) for f in faces for i in range(3)})


def test_packed_indices_match_per_mesh_topology(batch):
    verts, faces = batch
    meshes = as_meshes(verts, faces)
    offsets = np.cumsum([0] + [len(v) for v in verts])
    expected = [(a + offsets[i], b + offsets[i]) for i, f in enumerate(faces) for a, b in unique_edges(f)]
    assert sorted(map(tuple, meshes.edges_packed().tolist())) == sorted(expected)
    assert meshes.num_edges_per_mesh().tolist() == [len(unique_edges(f)) for f in faces]
    assert meshes.num_edges_per_mesh()[0] == len(
        trimesh.Trimesh(verts[0], faces[0], process=False).edges_unique
    )
    assert meshes.verts_packed_to_mesh_idx().tolist() == sum(([i] * len(v) for i, v in enumerate(verts)), [])
    # column k of faces_packed_to_edges_packed is the edge opposite corner k
    faces_packed, edges = meshes.faces_packed(), meshes.edges_packed()
    for face, face_edges in zip(
        faces_packed.tolist(), meshes.faces_packed_to_edges_packed().tolist(), strict=True
    ):
        for k in range(3):
            assert sorted(edges[face_edges[k]].tolist()) == sorted(face[:k] + face[k + 1 :])
    padded = Meshes(torch.zeros(2, 4, 3), torch.tensor([[[0, 1, 2], [-1, -1, -1]], [[0, 1, 2], [1, 2, 3]]]))
    assert padded.num_faces_per_mesh().tolist() == [1, 2] and padded.num_verts_per_mesh().tolist() == [4, 4]
    moved = meshes.offset_verts(torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(moved.verts_list()[1], torch.tensor(verts[1]) + 1)


def test_edge_loss_matches_loops(batch):
    verts, faces = batch
    per_mesh = []
    for v, f in zip(verts, faces, strict=True):
        lengths = [np.linalg.norm(v[a] - v[b]) for a, b in unique_edges(f)]
        per_mesh.append(np.mean([(length - 0.3) ** 2 for length in lengths]))
    assert mesh_edge_loss(as_meshes(verts, faces), 0.3).item() == pytest.approx(np.mean(per_mesh), rel=1e-12)


def laplacian_reference(v: np.ndarray, f: np.ndarray, method: str) -> float:
    """Mean over vertices of |L v_i| with pytorch3d's definitions, by loops; cotangents from the corner angles."""
    weights = {}  # (i, j) -> w_ij
    area_around = np.zeros(len(v))
    for face in f:
        area = 0.5 * np.linalg.norm(np.cross(v[face[1]] - v[face[0]], v[face[2]] - v[face[0]]))
        for k in range(3):
            i, j, corner = face[(k + 1) % 3], face[(k + 2) % 3], face[k]
            area_around[face[k]] += area
            if method == "uniform":
                weights[(i, j)] = weights[(j, i)] = 1.0
            else:
                a, b = v[i] - v[corner], v[j] - v[corner]
                cot = np.dot(a, b) / np.linalg.norm(np.cross(a, b))
                weights[(i, j)] = weights.get((i, j), 0.0) + cot
                weights[(j, i)] = weights.get((j, i), 0.0) + cot
    norms = []
    for i in range(len(v)):
        neighbours = [(j, w) for (a, j), w in weights.items() if a == i]
        total = sum(w for _, w in neighbours)
        weighted = sum((w * v[j] for j, w in neighbours), np.zeros(3))
        if method == "uniform":
            value = weighted / len(neighbours) - v[i] if neighbours else -v[i]
        elif method == "cot":
            scale = 1.0 / total if total > 0 else total  # pytorch3d keeps a non-positive sum as it is
            value = weighted * scale - v[i]
        else:
            inverse_area = 1.0 / area_around[i] if area_around[i] > 0 else 0.0
            value = (weighted - total * v[i]) * 0.25 * inverse_area
        norms.append(np.linalg.norm(value))
    return float(np.mean(norms))


@pytest.mark.parametrize("method", ["uniform", "cot", "cotcurv"])
def test_laplacian_smoothing_matches_loops(batch, method):
    verts, faces = batch
    expected = np.mean([laplacian_reference(v, f, method) for v, f in zip(verts, faces, strict=True)])
    meshes = as_meshes(verts, faces)
    assert mesh_laplacian_smoothing(meshes, method).item() == pytest.approx(expected, rel=1e-9)
    # the weights are constants: the gradient is that of sum |L v| with L fixed, the same in float32
    assert mesh_laplacian_smoothing(as_meshes(verts, faces, torch.float32), method).item() == pytest.approx(
        expected, rel=1e-4
    )


def test_isolated_vertex_counts_like_pytorch3d():
    """pytorch3d's uniform Laplacian has -1 on the diagonal of an unused vertex, so it adds |v| (before: 0)."""
    box = trimesh.creation.box((1.0, 1.0, 1.0))
    verts = np.vstack([box.vertices, [[2.0, 0.0, 0.0]]])
    value = mesh_laplacian_smoothing(as_meshes([verts], [box.faces])).item()
    with_box_only = laplacian_reference(box.vertices, box.faces, "uniform")
    assert value == pytest.approx((8 * with_box_only + 2.0) / 9, rel=1e-12)


def test_normal_consistency_matches_loops(batch):
    verts, faces = batch
    per_mesh = []
    for v, f in zip(verts, faces, strict=True):
        around = {}
        for face in f:
            for k in range(3):
                edge = tuple(sorted((int(face[(k + 1) % 3]), int(face[(k + 2) % 3]))))
                around.setdefault(edge, []).append(int(face[k]))  # the vertex opposite the edge
        values = []
        for (a, b), opposite in around.items():
            for c, d in itertools.combinations(opposite, 2):  # every pair of faces on the edge
                e = v[b] - v[a]
                n0, n1 = np.cross(e, v[c] - v[a]), np.cross(v[d] - v[a], e)
                values.append(1 - np.dot(n0, n1) / (np.linalg.norm(n0) * np.linalg.norm(n1)))
        per_mesh.append(np.mean(values))
    assert mesh_normal_consistency(as_meshes(verts, faces)).item() == pytest.approx(
        np.mean(per_mesh), rel=1e-9
    )
    # a flat, consistently meshed surface has consistency 0 whatever the winding of its faces
    plane = trimesh.creation.box((1, 1, 1)).subdivide()
    flipped = plane.faces.copy()
    flipped[::2] = flipped[::2, ::-1]
    curved = mesh_normal_consistency(as_meshes([plane.vertices], [plane.faces])).item()
    assert mesh_normal_consistency(as_meshes([plane.vertices], [flipped])).item() == pytest.approx(
        curved, abs=1e-12
    )


def test_losses_of_empty_batches_are_zero_with_grad():
    empty = Meshes([torch.zeros(0, 3)], [torch.zeros(0, 3, dtype=torch.long)])
    for loss in (mesh_edge_loss(empty), mesh_laplacian_smoothing(empty), mesh_normal_consistency(empty)):
        assert loss.shape == (1,) and loss.item() == 0.0 and loss.requires_grad


def test_sample_points_lie_on_the_surface_uniformly_with_normals():
    torch.manual_seed(0)
    sphere = trimesh.creation.icosphere(3, radius=0.3)
    verts = torch.tensor(sphere.vertices, dtype=torch.float32, requires_grad=True)
    faces = torch.tensor(sphere.faces)
    tall = trimesh.creation.box((0.1, 0.1, 1.0))  # two big sides: most samples fall on the long faces
    meshes = Meshes(
        [verts, torch.tensor(tall.vertices, dtype=torch.float32)], [faces, torch.tensor(tall.faces)]
    )
    points, normals = sample_points_from_meshes(meshes, 4000, return_normals=True)
    assert points.shape == normals.shape == (2, 4000, 3)
    radius = points[0].norm(dim=1)
    assert (radius <= 0.3 + 1e-6).all() and (radius > 0.29).all()  # on the flat faces inside the sphere
    torch.testing.assert_close(normals.norm(dim=2), torch.ones(2, 4000))
    assert (normals[0] * points[0] / radius[:, None]).sum(1).min() > 0.99  # outward face normals
    on_ends = (points[1, :, 2].abs() > 0.5 - 1e-6).float().mean().item()
    assert on_ends == pytest.approx(2 * 0.01 / tall.area, abs=0.01)  # area-uniform
    points[0].sum().backward()
    assert verts.grad is not None and verts.grad.abs().sum() > 0
