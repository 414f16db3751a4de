"""Issue 14: the trainable mesh refinement (Mesh R-CNN style) and the mesh metrics.

F-score, normal consistency and Chamfer are checked against brute-force all-pairs references; the refinement losses
carry gradients to the refinement head, to the vertices and to the decoder's feature volumes; a refinement fitted
on one shape moves a too-small marching-cubes mesh onto the target surface; the CLI runs with refinement on."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from common.cli import run_cli
from common.geometry import voxel_grid_points, voxels_to_mesh
from projects.shape3d.model import (
    GraphConv,
    MeshRefinement,
    marching_cubes_meshes,
    mean_edge_length,
    mesh_scores,
    refinement_losses,
    surface_samples,
)

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "configs" / "shape3d" / "tiny.yaml")
REFINE = str(ROOT / "configs" / "shape3d" / "refine.yaml")
CSV = str(ROOT / "configs" / "logger" / "csv.yaml")


def brute_scores(pred, pred_normals, target, target_normals, tau):
    """The definitions written out over all pairs (no KD-tree), one point at a time."""
    precision_hits, recall_hits, cos_p, cos_t, sq_p, sq_t = 0, 0, [], [], [], []
    for p, n in zip(pred, pred_normals, strict=True):
        d = np.sqrt(((target - p) ** 2).sum(1))
        j = int(d.argmin())
        precision_hits += bool(d[j] <= tau)
        sq_p.append(d[j] ** 2)
        cos_p.append(abs(float(n @ target_normals[j])))
    for t, n in zip(target, target_normals, strict=True):
        d = np.sqrt(((pred - t) ** 2).sum(1))
        j = int(d.argmin())
        recall_hits += bool(d[j] <= tau)
        sq_t.append(d[j] ** 2)
        cos_t.append(abs(float(n @ pred_normals[j])))
    precision, recall = precision_hits / len(pred), recall_hits / len(target)
    f1 = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return {
        "chamfer": np.mean(sq_p) + np.mean(sq_t),
        "normal_consistency": 0.5 * (np.mean(cos_p) + np.mean(cos_t)),
        "f1": f1,
    }


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.mark.parametrize("tau", [0.005, 0.02, 0.1])
def test_mesh_scores_match_brute_force(tau):
    rng = np.random.default_rng(0)
    target = rng.uniform(-0.4, 0.4, (300, 3)).astype(np.float32)
    pred = (target[:250] + rng.normal(0, 0.02, (250, 3))).astype(np.float32)  # partial + noisy: P != R
    pred_normals = unit(rng.normal(size=(250, 3))).astype(np.float32)
    target_normals = unit(rng.normal(size=(300, 3))).astype(np.float32)
    scores = mesh_scores(pred, pred_normals, target, target_normals, (tau,))
    expected = brute_scores(pred, pred_normals, target, target_normals, tau)
    assert scores[f"f1@{tau:g}"] == pytest.approx(expected["f1"], abs=1e-12)
    assert scores["chamfer"] == pytest.approx(expected["chamfer"], rel=1e-5)
    assert scores["normal_consistency"] == pytest.approx(expected["normal_consistency"], rel=1e-5)
    assert 0 < scores[f"f1@{tau:g}"] < 1 or tau == 0.1


def test_mesh_scores_edge_cases():
    points = np.random.default_rng(1).uniform(-0.4, 0.4, (50, 3)).astype(np.float32)
    normals = unit(points).astype(np.float32)
    same = mesh_scores(points, normals, points, normals, (0.01,))
    assert (
        same["f1@0.01"] == 1.0 and same["chamfer"] == 0.0 and same["normal_consistency"] == pytest.approx(1.0)
    )
    far = mesh_scores(points + 5.0, normals, points, normals, (0.01,))
    assert far["f1@0.01"] == 0.0  # P = R = 0: F1 is 0, not NaN
    flipped = mesh_scores(points, -normals, points, normals, (0.01,))  # orientation does not count
    assert flipped["normal_consistency"] == pytest.approx(1.0)


def sphere_grid(radius: float, resolution: int = 32) -> torch.Tensor:
    """A soft occupancy grid of a sphere (0.5 level at ``radius``)."""
    centres = voxel_grid_points(resolution).reshape(resolution, resolution, resolution, 3)
    return torch.sigmoid((radius - centres.norm(dim=-1)) * 60.0)


def test_graph_conv_is_w0_self_plus_w1_sum_of_neighbours():
    torch.manual_seed(0)
    conv = GraphConv(4, 5)
    features = torch.randn(4, 4)
    edges = torch.tensor([[0, 1], [1, 2], [0, 2], [2, 3]])
    out = conv(features, edges)
    neighbours = {0: [1, 2], 1: [0, 2], 2: [1, 0, 3], 3: [2]}
    for i, js in neighbours.items():
        expected = conv.w0(features[i]) + sum(conv.w1(features[j]) for j in js)
        torch.testing.assert_close(out[i], expected)


def test_refinement_starts_as_identity_and_its_losses_carry_gradients(one_torch_thread):
    torch.manual_seed(0)
    prob = torch.stack([sphere_grid(0.3), sphere_grid(0.2)])
    meshes, kept = marching_cubes_meshes(prob, max_vertices=10_000)
    assert kept == [0, 1]
    # feature volumes as the decoder gives them (16^3, 32^3), here leaves so their gradient can be checked
    volumes = [
        torch.randn(2, 3, 16, 16, 16, requires_grad=True),
        torch.randn(2, 2, 32, 32, 32, requires_grad=True),
    ]
    refiner = MeshRefinement(feature_channels=5, hidden=8, stages=2, graph_convs=2, max_offset=0.05)
    stages = refiner(meshes, volumes + [prob[:, None]])
    torch.testing.assert_close(stages[-1].verts_packed(), meshes.verts_packed())  # zero-initialised offsets
    target = torch.stack([torch.from_numpy(surface_samples(trimesh.creation.icosphere(3, radius=r), 256)[0])
                          for r in (0.32, 0.22)])  # fmt: skip
    target_normals = torch.nn.functional.normalize(target, dim=-1)
    terms = refinement_losses(stages, target, target_normals, 256, mean_edge_length(meshes))
    assert set(terms) == {"chamfer", "normals", "edge", "laplacian"}
    assert all(torch.isfinite(v) and v.requires_grad for v in terms.values())
    (terms["chamfer"] + 1e-3 * terms["normals"] + terms["edge"] + 1e-2 * terms["laplacian"]).backward()
    offset_grads = [stage.offset.weight.grad for stage in refiner.stages]
    assert all(g is not None and g.abs().sum() > 0 for g in offset_grads)
    # once the offsets are non-zero, the gradient reaches the decoder's feature volumes through vert-align
    for stage in refiner.stages:
        torch.nn.init.normal_(stage.offset.weight, std=0.1)
    terms = refinement_losses(refiner(meshes, volumes + [prob[:, None]]), target, target_normals, 256, 0.03)
    terms["chamfer"].backward()
    assert all(v.grad is not None and v.grad.abs().sum() > 0 for v in volumes)


def test_marching_cubes_meshes_skips_empty_and_noisy_predictions():
    prob = torch.stack(
        [
            sphere_grid(0.3),
            torch.zeros(32, 32, 32),
            torch.rand(32, 32, 32, generator=torch.Generator().manual_seed(0)),
        ]
    )
    meshes, kept = marching_cubes_meshes(prob, max_vertices=6000)
    assert kept == [0] and len(meshes) == 1
    expected = voxels_to_mesh(prob[0], 0.5)
    np.testing.assert_allclose(meshes.verts_list()[0].numpy(), np.asarray(expected.vertices), atol=1e-6)


def test_refinement_fits_a_too_small_mesh_onto_the_target(one_torch_thread):
    """A tiny fit: the predicted grid is a sphere of radius 0.25, the target one of 0.3. The refinement (features:
    the occupancy probability only) learns to push the marching-cubes vertices outwards; Chamfer and F-score of the
    refined mesh beat those of marching cubes alone."""
    torch.manual_seed(0)
    prob = sphere_grid(0.25)[None]
    meshes, _ = marching_cubes_meshes(prob, max_vertices=10_000)
    target_mesh = trimesh.creation.icosphere(4, radius=0.3)
    target_points, target_normals = (
        torch.from_numpy(a)[None] for a in surface_samples(target_mesh, 1024, seed=0)
    )
    refiner = MeshRefinement(feature_channels=0, hidden=16, stages=2, graph_convs=2, max_offset=0.08)
    optimizer = torch.optim.Adam(refiner.parameters(), lr=3e-3)
    edge = mean_edge_length(meshes)
    for _ in range(30):
        terms = refinement_losses(refiner(meshes, [prob[:, None]]), target_points, target_normals, 512, edge)
        loss = terms["chamfer"] + 1e-3 * terms["normals"] + terms["edge"] + 1e-2 * terms["laplacian"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        final = refiner(meshes, [prob[:, None]])[-1]
    refined = trimesh.Trimesh(final.verts_list()[0].numpy(), final.faces_list()[0].numpy(), process=False)
    initial = trimesh.Trimesh(meshes.verts_list()[0].numpy(), meshes.faces_list()[0].numpy(), process=False)
    target = surface_samples(target_mesh, 2048, seed=1)
    before = mesh_scores(*surface_samples(initial, 2048, seed=2), *target, (0.02,))
    after = mesh_scores(*surface_samples(refined, 2048, seed=2), *target, (0.02,))
    assert after["chamfer"] < 0.2 * before["chamfer"]
    assert after["f1@0.02"] > before["f1@0.02"] + 0.4


def test_cli_fit_with_refinement_logs_mesh_metrics_and_predict_writes_refined_meshes(tmp_path):
    common = ["--config", TINY, "--config", REFINE, "--config", CSV, "--trainer.default_root_dir", str(tmp_path),
              "--trainer.logger.init_args.save_dir", str(tmp_path / "csv")]  # fmt: skip
    base = run_cli(["fit", "--config", TINY, "--config", CSV, "--trainer.default_root_dir", str(tmp_path / "base"),
                    "--trainer.logger.init_args.save_dir", str(tmp_path / "base"), "--trainer.max_epochs", "1",
                    "--checkpoint.dirpath", str(tmp_path / "base_ckpt")])  # fmt: skip
    base_state = {k: v.clone() for k, v in base.model.state_dict().items()}
    cli = run_cli(
        ["fit", *common, "--checkpoint.dirpath", str(tmp_path / "ckpt"), "--trainer.max_epochs", "1",
         "--model.init_args.refinement.base_checkpoint", str(tmp_path / "base_ckpt" / "last.ckpt")]
    )  # fmt: skip
    assert cli.model.refiner is not None
    # the staged recipe: the decoder run's weights, frozen; only the refinement head trained
    for key, value in cli.model.state_dict().items():
        if key.startswith("refiner."):
            continue
        torch.testing.assert_close(value, base_state[key], msg=key)
    assert all(p.requires_grad for p in cli.model.refiner.parameters())
    with next((tmp_path / "csv").rglob("metrics.csv")).open() as handle:
        rows = list(csv.DictReader(handle))
    for key in (
        "val/chamfer_mesh",
        "val/normal_consistency",
        "val/f1@0.01",
        "val/mc_f1@0.01",
        "val/mc_chamfer_mesh",
    ):
        values = [float(r[key]) for r in rows if r.get(key)]
        assert values and np.isfinite(values).all(), key
    # the marching-cubes scores are the same Chamfer as val/chamfer (same points, same definition)
    last = [r for r in rows if r.get("val/chamfer")][-1]
    assert float(last["val/mc_chamfer_mesh"]) == pytest.approx(float(last["val/chamfer"]), rel=1e-4)
    predicted = cli.model.predict_step(next(iter(cli.datamodule.val_dataloader())), 0)
    assert len(predicted["meshes"]) == len(predicted["prob"])


def test_staged_refinement_names_the_missing_decoder_run(tmp_path):
    from common.errors import MissingInputError
    from projects.shape3d.module import Refinement, Shape3DModule

    refinement = Refinement(enabled=True, base_checkpoint=str(tmp_path / "last.ckpt"))
    with pytest.raises(
        MissingInputError, match=r"refinement.base_checkpoint: .*last.ckpt' does not exist.*make train-3d"
    ):
        Shape3DModule(tokenizer_dir=str(tmp_path), text_vocab_size=50, refinement=refinement)
