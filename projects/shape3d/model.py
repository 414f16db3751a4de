"""The networks of text (+ optional reference point cloud, + style text) -> occupancy voxels -> mesh.

Read top to bottom: point-cloud encoder, AdaIN-3D, the growing voxel decoder, the losses, the mesh helpers the
LightningModule (:mod:`projects.shape3d.module`) and the writer use, then the trainable mesh refinement (Mesh R-CNN's
graph-convolution stages) with its losses and the mesh metrics (Chamfer, normal consistency, F-score). The T5 text encoder is in
:mod:`projects.shape3d.text_encoder`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
import trimesh
from scipy.spatial import cKDTree
from torch import nn
from torch.utils.checkpoint import checkpoint

from common.geometry import (
    Meshes,
    chamfer_distance,
    mesh_edge_loss,
    mesh_laplacian_smoothing,
    sample_grid,
    sample_points_from_meshes,
    sample_surface_points,
    voxel_grid_points,
    voxels_to_mesh,
)

# ----------------------------------------------------------------------------------------------- encoders


class PointEncoder(nn.Module):
    """PointNet: a shared MLP on every xyz point, max-pooled, so the code does not depend on point order.

    Stands in for Point-E's point-cloud encoder (not installable here): loads a local state dict when given."""

    def __init__(self, dim: int = 128, hidden: int = 64) -> None:
        super().__init__()
        self.point_mlp = nn.Sequential(
            nn.Linear(3, hidden),
            nn.GELU(),
            nn.Linear(hidden, 2 * hidden),
            nn.GELU(),
            nn.Linear(2 * hidden, dim),
        )
        self.out = nn.Sequential(nn.GELU(), nn.Linear(dim, dim))

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        return self.out(self.point_mlp(points).max(dim=1).values)


class AdaIN3d(nn.Module):
    """Adaptive instance norm for 3D feature maps: normalise each channel, then scale and shift it with values
    predicted from the style code (StyleGAN's style injection, in 3D)."""

    def __init__(self, channels: int, style_dim: int) -> None:
        super().__init__()
        self.norm = nn.InstanceNorm3d(channels, affine=False)
        self.to_scale_shift = nn.Linear(style_dim, 2 * channels)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        scale, shift = self.to_scale_shift(style)[:, :, None, None, None].chunk(2, dim=1)
        return self.norm(x) * (1 + scale) + shift


class UpBlock(nn.Module):
    """Trilinear resize to an exact size (so 32 -> 48 works, not only doublings), 3x3x3 conv, AdaIN-3D, LeakyReLU."""

    def __init__(self, in_channels: int, out_channels: int, style_dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size=3, padding=1)
        self.adain = AdaIN3d(out_channels, style_dim)

    def forward(self, x: torch.Tensor, size: int, style: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=(size,) * 3, mode="trilinear", align_corners=False)
        return F.leaky_relu(self.adain(self.conv(x), style), 0.2)


# ----------------------------------------------------------------------------------------------- decoder


class VoxelDecoder(nn.Module):
    """Latent -> occupancy logits. A base pyramid 4 -> 8 -> 16 -> 32 and growth stages (48, 64) added on top.
    At resolution R the stages up to R run; each growth stage resizes the coarser logits to its size and adds a
    residual from its own 1x1x1 head (zero at first). The newest stage is faded in ProGAN-style,
    ``alpha * new + (1 - alpha) * resize(previous)`` = ``resize(previous) + alpha * head_R``, with alpha from the
    growing callback.
    """

    def __init__(
        self,
        latent_dim: int,
        style_dim: int,
        channels: tuple[int, ...] = (64, 32, 16, 8),
        grow_resolutions: tuple[int, ...] = (48, 64),
        grow_channels: tuple[int, ...] = (8, 8),
        base_size: int = 4,
        gradient_checkpointing: bool = False,
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        if len(grow_resolutions) != len(grow_channels):
            raise ValueError(
                f"grow_resolutions {grow_resolutions} and grow_channels {grow_channels} differ in length"
            )
        self.base_size = base_size
        self.base_sizes = [base_size * 2 ** (i + 1) for i in range(len(channels) - 1)]
        self.base_resolution = self.base_sizes[-1]
        self.grow_resolutions = list(grow_resolutions)
        self.gradient_checkpointing = gradient_checkpointing
        self.fc = nn.Linear(latent_dim, channels[0] * base_size**3)
        self.blocks = nn.ModuleList(
            UpBlock(channels[i], channels[i + 1], style_dim) for i in range(len(channels) - 1)
        )
        grow_in = [channels[-1], *grow_channels[:-1]]
        self.grow_blocks = nn.ModuleList(
            UpBlock(c_in, c_out, style_dim) for c_in, c_out in zip(grow_in, grow_channels, strict=True)
        )
        self.heads = nn.ModuleDict({str(self.base_resolution): nn.Conv3d(channels[-1], 1, 1)})
        for resolution, c in zip(grow_resolutions, grow_channels, strict=True):
            self.heads[str(resolution)] = nn.Conv3d(c, 1, 1)
            # a growth stage adds a residual to the resized coarser logits; starting at zero means growing never
            # throws away what the coarser stage has learned
            nn.init.zeros_(self.heads[str(resolution)].weight)
            nn.init.zeros_(self.heads[str(resolution)].bias)
        self.num_style_layers = len(self.blocks) + len(self.grow_blocks)
        # channels-last 3D tensors take oneDNN's fast conv kernels: about 2x faster training on CPU
        self.memory_format = torch.channels_last_3d if channels_last else torch.contiguous_format
        self.to(memory_format=self.memory_format)

    def _run(self, block: UpBlock, x: torch.Tensor, size: int, style: torch.Tensor) -> torch.Tensor:
        if self.gradient_checkpointing and self.training:
            return checkpoint(block, x, size, style, use_reentrant=False)
        return block(x, size, style)

    def forward(
        self,
        latent: torch.Tensor,
        styles: list[torch.Tensor],
        resolution: int,
        alpha: float = 1.0,
        features: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``styles``: one style code per layer (``num_style_layers``), so layers can take different styles.
        ``features``: when a list is given, the base pyramid's feature volumes (8^3, 16^3, 32^3) are appended to it
        (the mesh refinement samples them at vertex positions)."""
        x = (
            self.fc(latent)
            .view(len(latent), -1, *(self.base_size,) * 3)
            .contiguous(memory_format=self.memory_format)
        )
        for layer, (block, size) in enumerate(zip(self.blocks, self.base_sizes, strict=True)):
            x = self._run(block, x, size, styles[layer])
            if features is not None:
                features.append(x)
        logits = self.heads[str(self.base_resolution)](x)
        for stage, (block, size) in enumerate(zip(self.grow_blocks, self.grow_resolutions, strict=True)):
            if size > resolution:
                break
            x = self._run(block, x, size, styles[len(self.blocks) + stage])
            detail = self.heads[str(size)](x)
            if size == resolution:  # fade the newest stage in: alpha * new + (1 - alpha) * resized old
                detail = alpha * detail
            logits = F.interpolate(logits, size=(size,) * 3, mode="trilinear", align_corners=False) + detail
        if logits.shape[-1] != resolution:  # a resolution between stages: resize to it exactly
            logits = F.interpolate(logits, size=(resolution,) * 3, mode="trilinear", align_corners=False)
        return logits[:, 0]


# ----------------------------------------------------------------------------------------------- losses


def occupancy_loss(
    logits: torch.Tensor, target: torch.Tensor, focal_gamma: float = 0.0, dice_weight: float = 1.0
) -> torch.Tensor:
    """BCE (focal when ``focal_gamma > 0``) + soft Dice on voxels: the decoder's main training signal.
    Dice keeps thin shapes (few occupied voxels) from collapsing to empty."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    if focal_gamma > 0:
        p_t = torch.exp(-bce)
        bce = (1 - p_t) ** focal_gamma * bce
    prob = torch.sigmoid(logits).flatten(1)
    target = target.flatten(1)
    dice = 1 - (2 * (prob * target).sum(1) + 1) / (prob.sum(1) + target.sum(1) + 1)
    return bce.mean() + dice_weight * dice.mean()


def soft_surface(prob: torch.Tensor) -> torch.Tensor:
    """Soft probability that a voxel is on the surface: occupied while some 3x3x3 neighbour is empty."""
    neighbour_min = -F.max_pool3d(-prob[:, None], kernel_size=3, stride=1, padding=1)[:, 0]
    return prob * (1 - neighbour_min)


def surface_chamfer_loss(
    prob: torch.Tensor,
    distances: torch.Tensor,
    target_points: torch.Tensor,
    topk: int = 512,
    tau: float = 1e-3,
) -> torch.Tensor:
    """Chamfer between target surface points and occupancy-weighted predicted surface voxels, with gradients.

    pred -> target: mean squared distance of the predicted surface voxels to the target surface, weighted by their
    soft surface probability (``distances`` holds each voxel centre's squared distance to the target surface).
    target -> pred: for every target point a soft-min of squared distances over the ``topk`` likeliest surface
    voxels, weighted by their probability, so raising the surface probability near a target point lowers it.
    """
    resolution = prob.shape[-1]
    surface = soft_surface(prob).flatten(1)
    to_target = (surface * distances.flatten(1)).sum(1) / (surface.sum(1) + 1e-6)
    centres = voxel_grid_points(resolution).to(prob.device)
    weights, index = surface.topk(min(topk, surface.shape[1]), dim=1)
    squared = torch.cdist(target_points.float(), centres[index]).square()  # (B, T, k)
    attention = torch.softmax(torch.log(weights + 1e-6)[:, None, :] - squared / tau, dim=-1)
    to_pred = (attention * squared).sum(-1).mean(1)
    return (to_target + to_pred).mean()


def refine_mesh(
    mesh: trimesh.Trimesh,
    prob: torch.Tensor,
    steps: int,
    edge_weight: float = 0.1,
    laplacian_weight: float = 0.05,
    lr: float = 2e-3,
) -> trimesh.Trimesh:
    """Move marching-cubes vertices onto the 0.5 level of the trilinear occupancy field, regularised by edge-length
    and Laplacian losses so the refined mesh stays smooth and evenly meshed. Works inside ``predict`` too
    (it turns gradients back on locally)."""
    if steps <= 0 or len(mesh.faces) == 0:
        return mesh
    with torch.inference_mode(False), torch.enable_grad():
        verts = torch.tensor(np.asarray(mesh.vertices), dtype=torch.float32, requires_grad=True)
        faces = torch.as_tensor(np.asarray(mesh.faces), dtype=torch.long)
        volume = (
            prob.detach().float().cpu().clone()[None, None]
        )  # a normal tensor even if prob is an inference one
        with torch.no_grad():
            target_edge = float((verts[faces[:, 0]] - verts[faces[:, 1]]).norm(dim=1).mean())
        optimizer = torch.optim.Adam([verts], lr=lr)
        for _ in range(steps):
            level = sample_grid(volume, verts[None])[0, 0]
            mesh_batch = Meshes([verts], [faces])
            loss = (level - 0.5).square().mean() + edge_weight * mesh_edge_loss(
                mesh_batch, target_edge
            ) / target_edge**2
            loss = loss + laplacian_weight * mesh_laplacian_smoothing(mesh_batch) / target_edge
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return trimesh.Trimesh(verts.detach().numpy(), mesh.faces, process=False)


def mesh_points(prob: np.ndarray | torch.Tensor, count: int, seed: int = 0) -> torch.Tensor:
    """Surface points of the 0.5 iso-surface of a probability grid; an empty prediction gives one point at the
    centre, so its Chamfer distance is large but finite."""
    mesh = voxels_to_mesh(prob, 0.5)
    if len(mesh.faces) == 0 or mesh.area <= 0:
        return torch.zeros(1, 3)
    return torch.from_numpy(sample_surface_points(mesh, count, seed=seed))


# ----------------------------------------------------------------------------------------------- mesh refinement


class GraphConv(nn.Module):
    """Mesh R-CNN's graph convolution over mesh edges: ``f'_i = W0 f_i + sum_{j in N(i)} W1 f_j``."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.w0 = nn.Linear(in_dim, out_dim)
        self.w1 = nn.Linear(in_dim, out_dim)

    def forward(self, features: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
        """``features`` (V, C) of packed vertices, ``edges`` (E, 2) undirected, each edge once."""
        neighbours = self.w1(features)
        out = self.w0(features)
        out = out.index_add(0, edges[:, 0], neighbours[edges[:, 1]])
        return out.index_add(0, edges[:, 1], neighbours[edges[:, 0]])


class RefineStage(nn.Module):
    """One Mesh R-CNN refinement stage: vertex features sampled from the decoder's feature volumes (vert-align)
    -> bottleneck -> graph convolutions (positions concatenated at every layer) -> a bounded offset per vertex.
    The offset head starts at zero, so an untrained stage returns the marching-cubes mesh unchanged."""

    def __init__(
        self, feature_dim: int, hidden: int, graph_convs: int, max_offset: float, first: bool
    ) -> None:
        super().__init__()
        self.max_offset = max_offset
        self.bottleneck = nn.Linear(feature_dim, hidden)
        in_dim = hidden + 3 + (0 if first else hidden)
        self.convs = nn.ModuleList(
            GraphConv(in_dim if i == 0 else hidden + 3, hidden) for i in range(graph_convs)
        )
        self.offset = nn.Linear(hidden + 3, 3)
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)

    def forward(
        self, verts: torch.Tensor, edges: torch.Tensor, sampled: torch.Tensor, previous: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat(
            [F.relu(self.bottleneck(sampled)), verts] + ([previous] if previous is not None else []), 1
        )
        for conv in self.convs:
            hidden = F.relu(conv(x, edges))
            x = torch.cat([hidden, verts], 1)
        return self.max_offset * torch.tanh(self.offset(x)), hidden


class MeshRefinement(nn.Module):
    """Mesh R-CNN's mesh head on a voxel prediction: the marching-cubes mesh of the predicted occupancy is moved by
    ``stages`` refinement stages; each samples the decoder's feature volumes and the occupancy probability at the
    current vertex positions (so the head sees where the 0.5 level is) and adds an offset of at most
    ``max_offset`` (unit-cube units) per vertex. Returns the mesh after every stage (all are supervised)."""

    def __init__(
        self,
        feature_channels: int,
        hidden: int = 32,
        stages: int = 2,
        graph_convs: int = 2,
        max_offset: float = 0.05,
    ) -> None:
        super().__init__()
        feature_dim = feature_channels + 1  # + the occupancy probability
        self.stages = nn.ModuleList(
            RefineStage(feature_dim, hidden, graph_convs, max_offset, first=i == 0) for i in range(stages)
        )

    @staticmethod
    def vertex_features(meshes: Meshes, volumes: list[torch.Tensor]) -> torch.Tensor:
        """Trilinear samples of every (B, C, R, R, R) volume at each mesh's vertices -> (V_packed, sum C)."""
        rows = []
        for i, verts in enumerate(meshes.verts_list()):
            rows.append(torch.cat([sample_grid(v[i : i + 1].float(), verts[None])[0].T for v in volumes], 1))
        return torch.cat(rows)

    def forward(self, meshes: Meshes, volumes: list[torch.Tensor]) -> list[Meshes]:
        edges = meshes.edges_packed()
        hidden, out = None, []
        for stage in self.stages:
            offsets, hidden = stage(
                meshes.verts_packed(), edges, self.vertex_features(meshes, volumes), hidden
            )
            meshes = meshes.offset_verts(offsets)
            out.append(meshes)
        return out


def marching_cubes_meshes(prob: torch.Tensor, max_vertices: int) -> tuple[Meshes | None, list[int]]:
    """The 0.5 iso-surfaces of a batch of probability grids (B, R, R, R) as one ``Meshes`` on ``prob``'s device,
    and the batch indices they belong to: empty predictions and meshes of more than ``max_vertices`` vertices (an
    untrained decoder's noise) are left out."""
    verts, faces, kept = [], [], []
    for i, grid in enumerate(prob.detach().float().cpu()):
        mesh = voxels_to_mesh(grid, 0.5)
        if len(mesh.faces) == 0 or len(mesh.vertices) > max_vertices:
            continue
        verts.append(torch.as_tensor(np.asarray(mesh.vertices), dtype=torch.float32, device=prob.device))
        faces.append(torch.as_tensor(np.asarray(mesh.faces), dtype=torch.long, device=prob.device))
        kept.append(i)
    return (Meshes(verts, faces) if kept else None), kept


def refinement_losses(
    stages: list[Meshes],
    target_points: torch.Tensor,
    target_normals: torch.Tensor,
    num_samples: int,
    edge_length: float,
) -> dict[str, torch.Tensor]:
    """Mesh R-CNN's mesh losses, summed over the refinement stages: Chamfer distance (squared, pytorch3d
    semantics) and normal distance (1 - |cos|) between ``num_samples`` points sampled on each refined mesh
    (differentiable in the vertices) and the target surface points / normals; edge-length loss (squared deviation
    from ``edge_length``, the marching-cubes mesh's mean edge) and uniform Laplacian smoothing."""
    totals = {"chamfer": 0.0, "normals": 0.0, "edge": 0.0, "laplacian": 0.0}
    for meshes in stages:
        points, normals = sample_points_from_meshes(meshes, num_samples, return_normals=True)
        chamfer, normal = chamfer_distance(points, target_points, x_normals=normals, y_normals=target_normals)
        totals["chamfer"] = totals["chamfer"] + chamfer
        totals["normals"] = totals["normals"] + normal
        totals["edge"] = totals["edge"] + mesh_edge_loss(meshes, target_length=edge_length)
        totals["laplacian"] = totals["laplacian"] + mesh_laplacian_smoothing(meshes, method="uniform")
    return totals


def mean_edge_length(meshes: Meshes) -> float:
    edges = meshes.edges_packed()
    verts = meshes.verts_packed()
    return float((verts[edges[:, 0]] - verts[edges[:, 1]]).norm(dim=1).mean())


# ----------------------------------------------------------------------------------------------- mesh metrics


def surface_samples(mesh: trimesh.Trimesh, count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``count`` points sampled uniformly by area on ``mesh`` (the same points as
    :func:`common.geometry.sample_surface_points` with this seed) and the unit normals of their faces. A mesh
    without area gives one point at the centre with a zero normal (a large, finite Chamfer distance)."""
    if len(mesh.faces) == 0 or mesh.area <= 0:
        return np.zeros((1, 3), np.float32), np.zeros((1, 3), np.float32)
    points, face_index = trimesh.sample.sample_surface(mesh, count, seed=seed)
    return np.asarray(points, np.float32), np.asarray(mesh.face_normals[face_index], np.float32)


def mesh_scores(
    pred_points: np.ndarray,
    pred_normals: np.ndarray,
    target_points: np.ndarray,
    target_normals: np.ndarray,
    taus: tuple[float, ...],
) -> dict[str, float]:
    """Surface scores of one predicted shape against its target, both given as sampled points with normals.

    * ``chamfer``: squared Euclidean distance to the nearest neighbour, mean per direction, the two directions
      summed (pytorch3d's ``chamfer_distance`` and ``val/chamfer``).
    * ``normal_consistency``: mean absolute cosine between a point's normal and the normal of its nearest
      neighbour in the other set, averaged over both directions (Occupancy Networks / Mesh R-CNN); 1 is best.
    * ``f1@tau`` for every ``tau``: precision = fraction of predicted points whose nearest target point is within
      Euclidean distance ``tau`` (not squared), recall = fraction of target points within ``tau`` of a predicted
      point, F1 = 2PR / (P + R) (0 when both are 0), as in Mesh R-CNN and Tatarchenko et al. 2019, "What do
      single-view 3D reconstruction networks learn?". Here distances are in unit-cube units, where the shapes'
      longest side is 0.8, so tau = 0.01 is 1.25% of it.
    """
    to_target, nearest_target = cKDTree(target_points).query(pred_points)
    to_pred, nearest_pred = cKDTree(pred_points).query(target_points)
    cos_pred = np.abs((pred_normals * target_normals[nearest_target]).sum(1)).mean()
    cos_target = np.abs((target_normals * pred_normals[nearest_pred]).sum(1)).mean()
    scores = {
        "chamfer": float((to_target**2).mean() + (to_pred**2).mean()),
        "normal_consistency": float(0.5 * (cos_pred + cos_target)),
    }
    for tau in taus:
        precision, recall = float((to_target <= tau).mean()), float((to_pred <= tau).mean())
        scores[f"f1@{tau:g}"] = (
            0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
        )
    return scores
