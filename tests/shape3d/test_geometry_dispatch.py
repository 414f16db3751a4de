"""Which code runs with pytorch3d importable, hidden or broken: a stub ``pytorch3d`` in ``sys.modules`` records the
calls (pytorch3d cannot be installed here); ``RunIf(pytorch3d=True)`` tests run pytorch3d's own functions where it
is installed and compare them with the fallbacks."""

from __future__ import annotations

import sys
import types
import warnings

import numpy as np
import pytest
import torch
import trimesh

from common import geometry
from common.geometry import Meshes, chamfer, chamfer_distance, knn_backend, voxels_to_mesh
from tests.helpers.run_if import RunIf
from tests.shape3d.references import kdtree_chamfer


class StubMeshes:
    def __init__(self, verts, faces):
        self.verts, self.faces = verts, faces

    def verts_list(self):
        return self.verts

    def faces_list(self):
        return self.faces


def cubify_like_pytorch3d(voxels: torch.Tensor, thresh: float, align: str) -> StubMeshes:
    """What ``pytorch3d.ops.cubify(align="center")`` returns, built independently from trimesh boxes: a cube per
    occupied voxel (d, h, w) of a (1, D, H, W) grid, centred at x = w, y = h, z = d mapped linearly so voxel
    centres span [-1, 1], faces wound outwards (positive volume) in that frame."""
    assert align == "center"
    grid = voxels[0].numpy() > thresh
    size = grid.shape[0]
    boxes = []
    for d, h, w in np.argwhere(grid):
        centre = np.array([w, h, d]) * 2.0 / (size - 1) - 1.0
        box = trimesh.creation.box(
            [2.0 / (size - 1)] * 3, transform=trimesh.transformations.translation_matrix(centre)
        )
        boxes.append(box)
    mesh = trimesh.util.concatenate(boxes)
    assert mesh.volume > 0
    return StubMeshes([torch.tensor(mesh.vertices, dtype=torch.float32)], [torch.tensor(mesh.faces)])


def sample_like_pytorch3d(meshes: StubMeshes, num_samples: int, return_normals: bool = False):
    """What ``pytorch3d.ops.sample_points_from_meshes`` does with its output buffer: a float32 ``torch.zeros`` filled
    by an index put, which raises for float64 vertices ("Index put requires the source and destination dtypes
    match")."""
    verts = meshes.verts_list()
    samples = torch.zeros(len(verts), num_samples, 3, device=verts[0].device)
    valid = torch.ones(len(verts), dtype=torch.bool)
    samples[valid] = torch.stack([v[:1].expand(num_samples, 3) for v in verts])
    return (samples, torch.zeros_like(samples)) if return_normals else samples


@pytest.fixture
def stub_pytorch3d(monkeypatch):
    """An importable fake pytorch3d whose functions record their calls; geometry re-reads it like at import."""
    calls = []

    def recorder(name, result=None):
        def function(*args, **kwargs):
            calls.append(name)
            return result(*args, **kwargs) if result else torch.tensor(123.0)

        return function

    package = types.ModuleType("pytorch3d")
    loss = types.ModuleType("pytorch3d.loss")
    ops = types.ModuleType("pytorch3d.ops")
    structures = types.ModuleType("pytorch3d.structures")
    for name in ("chamfer_distance", "mesh_edge_loss", "mesh_laplacian_smoothing", "mesh_normal_consistency"):
        setattr(loss, name, recorder(name))
    ops.knn_points = recorder("knn_points")
    ops.sample_points_from_meshes = recorder("sample_points_from_meshes", sample_like_pytorch3d)
    ops.cubify = recorder("cubify", cubify_like_pytorch3d)
    structures.Meshes = StubMeshes
    package.loss, package.ops, package.structures = loss, ops, structures
    for name, module in {
        "pytorch3d": package,
        "pytorch3d.loss": loss,
        "pytorch3d.ops": ops,
        "pytorch3d.structures": structures,
    }.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(geometry, "_P3D", geometry._load_pytorch3d())
    assert geometry._P3D is not None
    return calls


def hide_pytorch3d(monkeypatch) -> None:
    """Make pytorch3d unimportable, even where it is installed and already imported: an import of
    ``pytorch3d.loss`` finds an imported submodule in ``sys.modules`` without looking at its parent, so every
    ``pytorch3d.*`` entry is hidden, not only the top-level one."""
    names = {"pytorch3d", "pytorch3d.loss", "pytorch3d.ops", "pytorch3d.structures"}
    names |= {name for name in sys.modules if name.startswith("pytorch3d.")}
    for name in names:
        monkeypatch.setitem(sys.modules, name, None)


@pytest.fixture
def hidden_pytorch3d(monkeypatch):
    """pytorch3d not importable, even where it is installed."""
    hide_pytorch3d(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not installed is no warning
        monkeypatch.setattr(geometry, "_P3D", geometry._load_pytorch3d())
    assert geometry._P3D is None


def reference(x: torch.Tensor, y: torch.Tensor) -> float:
    return float(
        np.mean([kdtree_chamfer(a, b) for a, b in zip(x.double().numpy(), y.double().numpy(), strict=True)])
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpu_chamfer_keeps_the_kdtree_with_pytorch3d_importable(stub_pytorch3d, dtype):
    """pytorch3d's CPU KNN is brute force (27x slower at 10k points) and float32-only: CPU tensors never reach it."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(2, 300, 3, generator=g, dtype=dtype), torch.rand(2, 200, 3, generator=g, dtype=dtype)
    loss, _ = chamfer_distance(x, y)
    assert stub_pytorch3d == []
    assert loss.dtype == dtype
    assert loss.item() == pytest.approx(reference(x, y), rel=1e-5 if dtype == torch.float32 else 1e-12)
    assert knn_backend("cpu") == "kdtree"
    assert knn_backend("cuda") == "pytorch3d"  # its CUDA kernel is the fast one
    assert knn_backend("cuda", "brute") == "brute"


def test_hiding_pytorch3d_also_hides_its_imported_submodules(stub_pytorch3d, monkeypatch):
    """With pytorch3d installed and imported (the stub puts its submodules in sys.modules), the fixture must still
    make it unimportable; hiding only the top-level name left ``from pytorch3d.loss import ...`` working."""
    assert geometry._load_pytorch3d() is not None
    hide_pytorch3d(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert geometry._load_pytorch3d() is None


def test_float64_sampling_keeps_its_dtype_with_pytorch3d_importable(stub_pytorch3d):
    """pytorch3d's sampler fills a float32 buffer: float64 meshes take the fallback and stay float64."""
    faces = [torch.tensor([[0, 1, 2], [0, 2, 3]])]
    verts = torch.tensor([[0.0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]])
    with pytest.raises(RuntimeError, match="dtypes match"):  # the stub behaves as pytorch3d does
        sample_like_pytorch3d(StubMeshes([verts.double()], faces), 5)
    points, normals = geometry.sample_points_from_meshes(
        Meshes([verts.double()], faces), 50, return_normals=True
    )
    assert points.dtype == normals.dtype == torch.float64 and stub_pytorch3d == []
    assert (points[..., 2] == 0).all() and ((points >= 0) & (points <= 1)).all()
    assert torch.allclose(normals.abs(), torch.tensor([0.0, 0, 1], dtype=torch.float64))
    assert geometry.sample_points_from_meshes(Meshes([verts], faces), 5).dtype == torch.float32
    assert stub_pytorch3d == ["sample_points_from_meshes"]  # float32 still goes to pytorch3d


def test_without_pytorch3d_gpus_take_the_brute_force_path(hidden_pytorch3d):
    assert knn_backend("cpu") == "kdtree"
    assert knn_backend("cuda") == "brute"
    x, y = torch.rand(1, 50, 3), torch.rand(1, 40, 3)
    assert chamfer(x, y).item() == pytest.approx(reference(x, y), rel=1e-5)


def test_mesh_losses_and_sampling_call_pytorch3d_when_importable(stub_pytorch3d):
    meshes = Meshes([torch.rand(4, 3)], [torch.tensor([[0, 1, 2], [0, 2, 3]])])
    geometry.mesh_edge_loss(meshes, 0.1)
    geometry.mesh_laplacian_smoothing(meshes, method="cot")
    geometry.mesh_normal_consistency(meshes)
    geometry.sample_points_from_meshes(meshes, 10)
    assert stub_pytorch3d == [
        "mesh_edge_loss",
        "mesh_laplacian_smoothing",
        "mesh_normal_consistency",
        "sample_points_from_meshes",
    ]
    # float64: pytorch3d's Laplacian builds float32 sparse matrices (mm would fail), so ours runs
    meshes64 = Meshes([torch.rand(4, 3, dtype=torch.float64)], [torch.tensor([[0, 1, 2], [0, 2, 3]])])
    assert geometry.mesh_laplacian_smoothing(meshes64).dtype == torch.float64
    assert stub_pytorch3d[-1] == "sample_points_from_meshes"


@RunIf(min_gpus=1)
def test_gpu_chamfer_calls_pytorch3d(stub_pytorch3d):  # pragma: no cover - needs a GPU
    x, y = torch.rand(1, 30, 3, device="cuda"), torch.rand(1, 20, 3, device="cuda")
    chamfer_distance(x, y)
    assert stub_pytorch3d == ["chamfer_distance"]


def test_broken_pytorch3d_warns_once_and_falls_back(monkeypatch):
    package = types.ModuleType("pytorch3d")
    monkeypatch.setitem(sys.modules, "pytorch3d", package)
    broken = types.ModuleType("pytorch3d.loss")

    def raise_import_error(name):
        raise ImportError("undefined symbol: _ZN3c10 (built for another torch)")

    broken.__getattr__ = raise_import_error
    monkeypatch.setitem(sys.modules, "pytorch3d.loss", broken)
    with pytest.warns(UserWarning, match="does not import"):
        assert geometry._load_pytorch3d() is None


def test_cubify_branch_writes_outward_faces_at_the_right_place(stub_pytorch3d):
    """The cubify branch mirrors pytorch3d's (z, y, x) frame into ours; before, it mirrored the vertices without
    reversing the faces: volume -V (inside-out mesh)."""
    resolution = 6
    grid = np.zeros((resolution,) * 3, dtype=np.float32)
    grid[1, 2, 3] = grid[1, 2, 4] = grid[4, 0, 0] = 1.0  # asymmetric: a wrong axis order moves the blocks
    mesh = voxels_to_mesh(grid, method="cubify")
    assert stub_pytorch3d == ["cubify"]
    voxel = 1.0 / resolution
    # cubify's cubes are as wide as the voxel-centre spacing mapped to [-1, 1]: 2 / (R - 1) -> our 1 / R
    assert mesh.volume == pytest.approx(3 * voxel**3, rel=1e-6)
    centres = -0.5 + (np.argwhere(grid > 0) + 0.5) * voxel
    for part, centre in zip(
        sorted(mesh.split(only_watertight=False), key=lambda m: tuple(m.centroid)),
        sorted(centres.tolist()),
        strict=True,
    ):
        np.testing.assert_allclose(part.centroid, centre, atol=1e-6)
        assert part.volume > 0
    fallback = geometry._cubify(grid > 0.5)  # the branch without pytorch3d builds the same solid
    assert fallback.volume == pytest.approx(mesh.volume, rel=1e-6)
    np.testing.assert_allclose(fallback.bounds, mesh.bounds, atol=1e-6)


@RunIf(pytorch3d=True)
def test_fallbacks_match_pytorch3d(monkeypatch):  # pragma: no cover - runs only where pytorch3d is installed
    """pytorch3d's own functions (CPU, float32) against the fallbacks, with pytorch3d hidden from those."""
    import pytorch3d.loss as p3d_loss
    from pytorch3d.structures import Meshes as P3DMeshes

    monkeypatch.setattr(geometry, "_P3D", None)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(2, 60, 3, generator=g), torch.rand(2, 50, 3, generator=g)
    xn, yn = torch.randn(2, 60, 3, generator=g), torch.randn(2, 50, 3, generator=g)
    lengths_x, lengths_y = torch.tensor([60, 31]), torch.tensor([17, 50])
    for norm in (1, 2):
        for point, batch in (("mean", "mean"), ("sum", "sum"), ("max", None), (None, None)):
            for single in (False, True):
                normals = {} if point == "max" else {"x_normals": xn, "y_normals": yn}
                kwargs = dict(
                    x_lengths=lengths_x,
                    y_lengths=lengths_y,
                    point_reduction=point,
                    batch_reduction=batch,
                    norm=norm,
                    single_directional=single,
                    **normals,
                )
                ours, theirs = chamfer_distance(x, y, **kwargs), p3d_loss.chamfer_distance(x, y, **kwargs)
                for a, b in zip(ours, theirs, strict=True):
                    for u, v in zip(
                        a if isinstance(a, tuple) else [a], b if isinstance(b, tuple) else [b], strict=True
                    ):
                        if u is None:
                            assert v is None
                        else:
                            torch.testing.assert_close(u, v, rtol=1e-5, atol=1e-6)
    box = trimesh.creation.box((1, 0.5, 0.7)).subdivide()
    sphere = trimesh.creation.icosphere(2, radius=0.4)
    verts = [torch.tensor(m.vertices, dtype=torch.float32) for m in (box, sphere)]
    verts[0] = torch.cat([verts[0], torch.tensor([[2.0, 0.0, 0.0]])])  # an isolated vertex
    faces = [torch.tensor(m.faces) for m in (box, sphere)]
    ours, theirs = Meshes(verts, faces), P3DMeshes(verts=verts, faces=faces)
    torch.testing.assert_close(geometry.mesh_edge_loss(ours, 0.1), p3d_loss.mesh_edge_loss(theirs, 0.1))
    for method in ("uniform", "cot", "cotcurv"):
        torch.testing.assert_close(
            geometry.mesh_laplacian_smoothing(ours, method), p3d_loss.mesh_laplacian_smoothing(theirs, method)
        )
    torch.testing.assert_close(
        geometry.mesh_normal_consistency(ours), p3d_loss.mesh_normal_consistency(theirs)
    )
