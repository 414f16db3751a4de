"""The LightningModule: a T5 text encoder, the shared latent and the growing voxel decoder wired together, with
training and validation steps, metrics, media and the optimiser. The networks are in :mod:`projects.shape3d.model`.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import ClassVar

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
import trimesh
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torchmetrics import MeanMetric

from common.errors import InputError, MissingInputError
from common.frozen import restore_frozen, strip_frozen
from common.geometry import Meshes, voxels_to_mesh
from common.media import Image, Mesh
from common.metrics.geometry import ChamferDistance, VoxelIoU
from common.protocols import HasResolution
from projects.shape3d.data import as_config
from projects.shape3d.model import (
    MeshRefinement,
    PointEncoder,
    VoxelDecoder,
    marching_cubes_meshes,
    mean_edge_length,
    mesh_points,
    mesh_scores,
    occupancy_loss,
    refinement_losses,
    surface_chamfer_loss,
    surface_samples,
)
from projects.shape3d.render import preview_grid
from projects.shape3d.text_encoder import TINY, TextEncoder


@dataclass(frozen=True)
class TinyText:
    """The random T5 of ``text_encoder: tiny`` (``model.init_args.tiny_text``)."""

    d_model: int = 64
    layers: int = 2


@dataclass(frozen=True)
class Architecture:
    """Latent sizes and the growing decoder (``model.init_args.architecture``): base pyramid ``channels`` 4^3 ->
    8^3 -> 16^3 -> 32^3, growth stages ``grow_resolutions`` with ``grow_channels``; the PointNet reference-cloud
    encoder (``use_points``), optionally loaded from ``point_encoder_checkpoint`` (a ``state_dict`` of
    :class:`PointEncoder` or a shape3d Lightning checkpoint) and then, with ``freeze_point_encoder``, kept frozen
    for the whole run as the design keeps Point-E's encoder."""

    latent_dim: int = 128
    style_dim: int = 64
    channels: tuple[int, ...] = (64, 32, 16, 8)
    grow_resolutions: tuple[int, ...] = (48, 64)
    grow_channels: tuple[int, ...] = (8, 8)
    use_points: bool = True
    point_encoder_checkpoint: str | None = None
    freeze_point_encoder: bool = True
    gradient_checkpointing: bool = False
    channels_last: bool = True


@dataclass(frozen=True)
class Losses:
    """The voxel losses (``model.init_args.losses``): BCE (focal when ``focal_gamma > 0``) + ``dice_weight`` x Dice,
    plus ``surface_weight`` x the soft surface Chamfer over ``surface_points`` target points and the
    ``surface_topk`` likeliest surface voxels; ``style_mixing_prob`` of the batches mix two styles."""

    dice_weight: float = 1.0
    focal_gamma: float = 0.0
    surface_weight: float = 5.0
    surface_topk: int = 512
    surface_points: int = 1024
    style_mixing_prob: float = 0.1


@dataclass(frozen=True)
class Optimisation:
    """AdamW (``lr``, ``weight_decay``) and ReduceLROnPlateau on ``val/chamfer`` (``model.init_args.optimisation``)."""

    lr: float = 1e-4
    weight_decay: float = 1e-5
    plateau_factor: float = 0.5
    plateau_patience: int = 2


@dataclass(frozen=True)
class Evaluation:
    """Validation (``model.init_args.evaluation``): points sampled per mesh for Chamfer, normal consistency and
    F-score (``f_score_taus``, unit-cube distances; see :func:`projects.shape3d.model.mesh_scores`), media samples."""

    chamfer_points: int = 2048
    num_media_samples: int = 3
    f_score_taus: tuple[float, ...] = (0.01, 0.02)


@dataclass(frozen=True)
class Refinement:
    """Trainable mesh refinement (``model.init_args.refinement``, off by default; ``configs/shape3d/refine.yaml``):
    the marching-cubes mesh of the prediction at ``mesh_resolution`` is moved by ``stages`` Mesh R-CNN stages of
    ``graph_convs`` graph convolutions (``hidden`` features, offsets up to ``max_offset``), trained with
    ``weight`` x (``chamfer_weight`` Chamfer + ``normal_weight`` normal distance + ``edge_weight`` edge length +
    ``laplacian_weight`` Laplacian) on ``num_samples`` points sampled per mesh. Meshes of more than
    ``max_vertices`` vertices (an untrained decoder's noise) are not refined.

    ``base_checkpoint``: every weight but the refiner's from a trained run's Lightning checkpoint; with the decoder
    frozen (``FreezeUnfreeze``) this is the staged recipe of ``configs/shape3d/refine.yaml``, the one that helps:
    trained jointly from scratch the refiner ends no better than its marching-cubes start."""

    enabled: bool = False
    base_checkpoint: str | None = None
    mesh_resolution: int = 32
    stages: int = 2
    graph_convs: int = 2
    hidden: int = 32
    max_offset: float = 0.05
    max_vertices: int = 6000
    num_samples: int = 1024
    weight: float = 1.0
    chamfer_weight: float = 1.0
    normal_weight: float = 1.0e-3
    edge_weight: float = 1.0
    laplacian_weight: float = 1.0e-2


GROUPS = {
    "tiny_text": TinyText,
    "architecture": Architecture,
    "losses": Losses,
    "optimisation": Optimisation,
    "evaluation": Evaluation,
    "refinement": Refinement,
}


def load_point_encoder_state(path: str) -> dict[str, torch.Tensor]:
    """The :class:`PointEncoder` weights in ``path``: a plain ``state_dict`` or a Lightning checkpoint of this module
    (its ``point_encoder.*`` entries), so one trained run's encoder can be frozen into the next."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        prefix = "point_encoder."
        state = {k[len(prefix) :]: v for k, v in state["state_dict"].items() if k.startswith(prefix)}
        if not state:
            raise InputError(
                f"architecture.point_encoder_checkpoint: '{path}' holds no point_encoder weights"
            )
    return state


def metric_key(name: str) -> str:
    """A ModuleDict key for a metric name ("f1@0.01" -> "f1@0_01": module names cannot hold dots)."""
    return name.replace(".", "_")


class Shape3DModule(pl.LightningModule):
    """Turkish description (+ style text, + optional reference points) -> occupancy grid -> mesh.

    Text and style go through the same T5 encoder; the text code (plus the point code when a reference cloud is
    given) forms the shared latent, the style code drives every AdaIN-3D layer of the decoder. With
    ``refinement.enabled`` a Mesh R-CNN-style head moves the marching-cubes mesh of the prediction, trained with mesh
    losses next to the voxel losses. Settings come in small groups (:class:`Architecture`, :class:`Losses`,
    :class:`Optimisation`, :class:`Evaluation`, :class:`Refinement`, :class:`TinyText`); ``tokenizer_dir`` and
    ``text_vocab_size`` are linked from the datamodule, which prepares the tiny tokenizer.
    """

    # model init arg -> datamodule attribute (common.cli links them; a linked key cannot be set in YAML)
    linked_from_data: ClassVar[dict[str, str]] = {
        "tokenizer_dir": "tokenizer_dir",
        "text_vocab_size": "text_vocab_size",
    }

    def __init__(
        self,
        text_encoder: str = TINY,
        tokenizer_dir: str | None = None,
        text_vocab_size: int | None = None,
        tiny_text: TinyText = TinyText(),
        architecture: Architecture = Architecture(),
        losses: Losses = Losses(),
        optimisation: Optimisation = Optimisation(),
        evaluation: Evaluation = Evaluation(),
        refinement: Refinement = Refinement(),
        torch_num_threads: int | None = None,
    ) -> None:
        super().__init__()
        given = {"tiny_text": tiny_text, "architecture": architecture, "losses": losses}
        given |= {"optimisation": optimisation, "evaluation": evaluation, "refinement": refinement}
        for name, cls in GROUPS.items():
            setattr(self, name, as_config(given[name], cls))
        # checkpoints and loggers get plain values (a checkpoint must load with weights_only=True)
        self.save_hyperparameters(ignore=list(GROUPS))
        self.save_hyperparameters({name: asdict(getattr(self, name)) for name in GROUPS})
        if torch_num_threads:
            # on a shared CPU, 3D conv backward with >1 OpenMP thread can be 10-30x slower than with one
            torch.set_num_threads(torch_num_threads)
        arch = self.architecture
        self.text_encoder = TextEncoder(
            text_encoder,
            tokenizer_dir=tokenizer_dir,
            vocab_size=text_vocab_size,
            d_model=self.tiny_text.d_model,
            num_layers=self.tiny_text.layers,
        )
        text_dim = self.text_encoder.dim
        self.text_proj = nn.Sequential(
            nn.Linear(text_dim, arch.latent_dim), nn.GELU(), nn.Linear(arch.latent_dim, arch.latent_dim)
        )
        self.point_encoder = PointEncoder(arch.latent_dim) if arch.use_points else None
        if self.point_encoder is not None and arch.point_encoder_checkpoint:
            self.point_encoder.load_state_dict(load_point_encoder_state(arch.point_encoder_checkpoint))
            if arch.freeze_point_encoder:
                self.point_encoder.requires_grad_(False)
                self.point_encoder.eval()
        self.style_mapping = nn.Sequential(
            nn.Linear(text_dim, arch.style_dim), nn.GELU(), nn.Linear(arch.style_dim, arch.style_dim)
        )
        self.decoder = VoxelDecoder(
            arch.latent_dim,
            arch.style_dim,
            tuple(arch.channels),
            tuple(arch.grow_resolutions),
            tuple(arch.grow_channels),
            gradient_checkpointing=arch.gradient_checkpointing,
            channels_last=arch.channels_last,
        )
        self.refiner = None
        if self.refinement.enabled:
            # samples the two finest base-pyramid feature volumes (16^3 and 32^3 by default)
            feature_channels = sum(arch.channels[-2:])
            self.refiner = MeshRefinement(
                feature_channels,
                self.refinement.hidden,
                self.refinement.stages,
                self.refinement.graph_convs,
                self.refinement.max_offset,
            )
        self.resolution = self.decoder.base_resolution
        self.fade_alpha = 1.0
        if self.refiner is not None and self.refinement.base_checkpoint:
            self._load_base(self.refinement.base_checkpoint)
        self.val_iou = VoxelIoU()
        self.val_chamfer = ChamferDistance()
        self.baseline_iou = VoxelIoU()
        self.baseline_chamfer = ChamferDistance()
        self._baseline_points: torch.Tensor | None = None
        # surface scores of the output mesh (refined when refinement is on) and, with refinement, of the
        # marching-cubes mesh it starts from, so one run shows both
        self.mesh_score_names = ["chamfer_mesh", "normal_consistency"] + [
            f"f1@{tau:g}" for tau in self.evaluation.f_score_taus
        ]
        prefixes = ["", "mc_"] if self.refiner is not None else [""]
        self.mesh_metrics = nn.ModuleDict(
            {metric_key(prefix + name): MeanMetric() for prefix in prefixes for name in self.mesh_score_names}
        )
        self._media: list[dict] = []

    def _load_base(self, path: str) -> None:
        """Everything but the refiner from a trained run's checkpoint, at the resolution and fade-in it ended with
        (the staged refinement recipe)."""
        key = "model.init_args.refinement.base_checkpoint"
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError as error:
            raise MissingInputError(
                f"{key}: '{path}' does not exist; train the decoder first (make train-3d), or set it to null to "
                "train the refinement jointly from scratch"
            ) from error
        state = {k: v for k, v in checkpoint.get("state_dict", {}).items() if not k.startswith("refiner.")}
        self.resolution = checkpoint.get("shape3d_resolution", self.resolution)
        self.fade_alpha = float(checkpoint.get("shape3d_fade_alpha", self.fade_alpha))
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("refiner.")]
        if missing or unexpected:
            raise InputError(
                f"{key}: '{path}' does not fit this model ({len(missing)} missing, {len(unexpected)} unexpected "
                f"weights, e.g. {(missing + unexpected)[0]}); use a checkpoint of the same architecture"
            )

    # ------------------------------------------------------------------ growing hooks (ProgressiveResolution)

    def set_resolution(self, resolution: int) -> None:
        epoch = self._trainer.current_epoch if self._trainer is not None else 0
        if resolution != self.resolution:
            rank_zero_info(f"[shape3d] epoch {epoch}: voxel resolution {self.resolution}^3 -> {resolution}^3")
        elif epoch == 0:
            rank_zero_info(f"[shape3d] epoch {epoch}: voxel resolution {resolution}^3")
        self.resolution = resolution

    def set_fade_alpha(self, alpha: float) -> None:
        self.fade_alpha = alpha

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # resolution and fade-in alpha are not parameters, but they define the model's output: a resumed run and
        # `predict --ckpt_path` must use the ones the checkpoint was trained / measured with
        checkpoint["shape3d_resolution"] = self.resolution
        checkpoint["shape3d_fade_alpha"] = float(self.fade_alpha)
        if self.hparams.text_encoder != TINY:
            # a frozen pretrained mT5 is rebuilt from its folder / hub name: a hash, not 600 MB in every file
            strip_frozen(self, checkpoint, ["text_encoder"])

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        restore_frozen(self, checkpoint)
        self.resolution = checkpoint.get("shape3d_resolution", self.resolution)
        self.fade_alpha = float(checkpoint.get("shape3d_fade_alpha", self.fade_alpha))
        self._data_follows_model()

    def on_validation_start(self) -> None:
        self._data_follows_model()

    def on_fit_start(self) -> None:
        # without ProgressiveResolution (the staged refinement) the data must start at the model's resolution;
        # with it, the callback's on_fit_start (which runs first) has set both already
        self._data_follows_model()

    def on_train_epoch_start(self) -> None:
        """Runs after the callbacks' hook (FreezeUnfreeze may just have thawed the text encoder). ``from_pretrained``
        returns eval-mode modules and Lightning keeps the modes it finds, so a pretrained mT5 would be fine-tuned
        with dropout off: every encoder with a trainable parameter goes to train mode, a frozen one to eval."""
        for encoder in (self.text_encoder, self.point_encoder):
            if encoder is not None:
                encoder.train(any(p.requires_grad for p in encoder.parameters()))

    def _data_follows_model(self) -> None:
        """Outside ``fit`` no ProgressiveResolution callback runs, so ``tgm validate --ckpt_path`` would feed 32^3
        targets to a checkpoint restored at 48^3 or 64^3: the datamodule takes the model's resolution instead,
        through the same declared hook the callback uses (:class:`common.protocols.HasResolution`)."""
        datamodule = self._trainer.datamodule if self._trainer is not None else None
        if isinstance(datamodule, HasResolution):
            datamodule.set_resolution(self.resolution)

    # ------------------------------------------------------------------ forward

    def style_codes(
        self, styles: list[str], mix_with: list[str] | None = None, crossover: int | None = None
    ) -> list[torch.Tensor]:
        """One style code per decoder layer; with ``mix_with``, layers from ``crossover`` on take the second style."""
        code = self.style_mapping(self.text_encoder(styles))
        codes = [code] * self.decoder.num_style_layers
        if mix_with is not None:
            other = self.style_mapping(self.text_encoder(mix_with))
            crossover = self.decoder.num_style_layers // 2 if crossover is None else crossover
            codes = [code if layer < crossover else other for layer in range(self.decoder.num_style_layers)]
        return codes

    def forward(
        self,
        texts: list[str],
        styles: list[str],
        ref_points: torch.Tensor | None = None,
        has_ref: torch.Tensor | None = None,
        resolution: int | None = None,
        style_codes: list[torch.Tensor] | None = None,
        features: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Occupancy logits (B, R, R, R) at ``resolution`` (the current one by default); a ``features`` list
        receives the decoder's feature volumes (for the mesh refinement)."""
        latent = self.text_proj(self.text_encoder(texts))
        if (
            self.point_encoder is not None
            and ref_points is not None
            and has_ref is not None
            and bool(has_ref.any())
        ):
            latent = latent + has_ref.to(latent.dtype)[:, None] * self.point_encoder(
                ref_points.to(latent.dtype)
            )
        codes = style_codes if style_codes is not None else self.style_codes(styles)
        # the current fade-in alpha in training and validation alike: validation measures the model as it is now
        return self.decoder(latent, codes, resolution or self.resolution, self.fade_alpha, features)

    # ------------------------------------------------------------------ training

    def _losses(self, batch: dict, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = logits.float()
        occupancy = occupancy_loss(logits, batch["voxels"], self.losses.focal_gamma, self.losses.dice_weight)
        surface_res = batch["distances"].shape[-1]
        low = (
            logits
            if logits.shape[-1] == surface_res
            else F.interpolate(
                logits[:, None], size=(surface_res,) * 3, mode="trilinear", align_corners=False
            )[:, 0]
        )
        surface = surface_chamfer_loss(
            torch.sigmoid(low),
            batch["distances"],
            batch["points"][:, : self.losses.surface_points],
            self.losses.surface_topk,
        )
        return {
            "occupancy": occupancy,
            "surface": surface,
            "loss": occupancy + self.losses.surface_weight * surface,
        }

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor | None:
        styles = list(batch["style"])
        codes = None
        if (
            self.losses.style_mixing_prob > 0
            and random.random() < self.losses.style_mixing_prob
            and len(styles) > 1
        ):
            # style mixing: coarse layers keep the sample's style, fine layers take another sample's (StyleGAN)
            codes = self.style_codes(
                styles,
                mix_with=styles[1:] + styles[:1],
                crossover=random.randint(1, self.decoder.num_style_layers - 1),
            )
        features = [] if self.refiner is not None else None
        logits = self(
            list(batch["text"]),
            styles,
            batch["ref_points"],
            batch["has_ref"],
            style_codes=codes,
            features=features,
        )
        losses = self._losses(batch, logits)
        size = len(batch["text"])
        if self.refiner is not None:
            mesh_losses = self._refinement_losses(batch, logits, features)
            if mesh_losses is not None:
                losses["loss"] = losses["loss"] + self.refinement.weight * mesh_losses.pop("loss")
                for name, value in mesh_losses.items():
                    self.log(f"train/mesh_{name}", value, batch_size=size)
        self.log("train/loss", losses["loss"], prog_bar=True, batch_size=size)
        self.log("train/occupancy_loss", losses["occupancy"], batch_size=size)
        self.log("train/surface_chamfer_loss", losses["surface"], batch_size=size)
        self.log("train/fade_alpha", self.fade_alpha, batch_size=size)
        if not losses["loss"].requires_grad:
            # staged refinement (everything but the head frozen) on a batch with nothing to refine: no step
            return None
        return losses["loss"]

    # ------------------------------------------------------------------ mesh refinement

    def _resize(self, logits: torch.Tensor, resolution: int) -> torch.Tensor:
        if logits.shape[-1] == resolution:
            return logits.float()
        return F.interpolate(
            logits[:, None].float(), size=(resolution,) * 3, mode="trilinear", align_corners=False
        )[:, 0]

    def _refine(
        self, logits: torch.Tensor, features: list[torch.Tensor]
    ) -> tuple[Meshes | None, list[Meshes], list[int]]:
        """Marching cubes on the prediction at ``refinement.mesh_resolution``, then the refinement stages. Returns
        the initial meshes, the meshes after every stage and the batch indices that were meshed."""
        prob = torch.sigmoid(self._resize(logits, self.refinement.mesh_resolution))
        meshes, kept = marching_cubes_meshes(prob, self.refinement.max_vertices)
        if meshes is None:
            return None, [], kept
        volumes = [volume[kept] for volume in features[-2:]] + [prob[kept][:, None]]
        return meshes, self.refiner(meshes, volumes), kept

    def _refinement_losses(
        self, batch: dict, logits: torch.Tensor, features: list[torch.Tensor]
    ) -> dict[str, torch.Tensor] | None:
        meshes, stages, kept = self._refine(logits, features)
        if meshes is None:
            return None
        r = self.refinement
        terms = refinement_losses(
            stages, batch["points"][kept], batch["normals"][kept], r.num_samples, mean_edge_length(meshes)
        )
        terms["loss"] = (
            r.chamfer_weight * terms["chamfer"]
            + r.normal_weight * terms["normals"]
            + r.edge_weight * terms["edge"]
            + r.laplacian_weight * terms["laplacian"]
        )
        terms["refined_fraction"] = torch.tensor(len(kept) / len(logits))
        return terms

    def _logits_of(self, batch: dict) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """Occupancy logits of a validation/predict batch, with the decoder's feature volumes when refining."""
        features = [] if self.refiner is not None else None
        logits = self(
            list(batch["text"]),
            list(batch["style"]),
            batch["ref_points"],
            batch["has_ref"],
            features=features,
        )
        return logits, features

    # ------------------------------------------------------------------ validation

    def on_validation_epoch_start(self) -> None:
        self._media = []

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        logits, features = self._logits_of(batch)
        losses = self._losses(batch, logits)
        size = len(batch["text"])
        self.log(
            "val/loss", losses["loss"], batch_size=size, sync_dist=True
        )  # epoch mean over every rank's batches
        prob = torch.sigmoid(self._resize(logits, batch["eval_voxels"].shape[-1]))
        self.val_iou(prob, batch["eval_voxels"])
        count = self.evaluation.chamfer_points
        mc_meshes = [voxels_to_mesh(p.cpu(), 0.5) for p in prob]
        mc_samples = [surface_samples(mesh, count, seed=i) for i, mesh in enumerate(mc_meshes)]
        self.val_chamfer(
            [torch.from_numpy(points) for points, _ in mc_samples], [t.cpu() for t in batch["points"]]
        )
        self.log("val/iou", self.val_iou, prog_bar=True, batch_size=size)
        self.log("val/chamfer", self.val_chamfer, prog_bar=True, batch_size=size)
        outputs = {"": mc_samples}
        if self.refiner is not None:
            refined = list(mc_samples)
            _, stages, kept = self._refine(logits, features)
            if stages:
                final = stages[-1]
                for k, verts, faces in zip(kept, final.verts_list(), final.faces_list(), strict=True):
                    mesh = trimesh.Trimesh(verts.cpu().numpy(), faces.cpu().numpy(), process=False)
                    refined[k] = surface_samples(mesh, count, seed=k)
            outputs = {"": refined, "mc_": mc_samples}
        targets = batch["points"].cpu().numpy(), batch["normals"].cpu().numpy()
        for prefix, samples in outputs.items():
            for i, (points, normals) in enumerate(samples):
                scores = mesh_scores(
                    points, normals, targets[0][i], targets[1][i], self.evaluation.f_score_taus
                )
                scores["chamfer_mesh"] = scores.pop("chamfer")
                for name in self.mesh_score_names:
                    self.mesh_metrics[metric_key(prefix + name)].update(scores[name])
            for name in self.mesh_score_names:
                metric = self.mesh_metrics[metric_key(prefix + name)]
                self.log(f"val/{prefix}{name}", metric, batch_size=size)
        if (
            "baseline" in batch
        ):  # the mean-shape baseline, sent along by the datamodule when it has a train split
            baseline = batch["baseline"].float()
            if self._baseline_points is None:  # one shape for the whole run: mesh it once
                self._baseline_points = mesh_points(baseline[0].cpu(), self.evaluation.chamfer_points)
            self.baseline_iou(baseline, batch["eval_voxels"])
            self.baseline_chamfer([self._baseline_points] * size, [t.cpu() for t in batch["points"]])
            self.log("val/baseline_mean_shape_iou", self.baseline_iou, batch_size=size)
            self.log("val/baseline_mean_shape_chamfer", self.baseline_chamfer, batch_size=size)
        if batch_idx == 0:
            full = torch.sigmoid(logits.float()).cpu()
            for i in range(min(self.evaluation.num_media_samples, size)):
                self._media.append(
                    {
                        "text": batch["text"][i],
                        "style": batch["style"][i],
                        "pred": full[i],
                        "target": batch["voxels"][i].cpu(),
                    }
                )

    def media_samples(self) -> dict:
        """Predicted and target meshes (W&B Object3D) and one preview image: prediction | target per row."""
        items: dict = {}
        for i, sample in enumerate(self._media):
            caption = sample["text"] + (f" [{sample['style']}]" if sample["style"] else "")
            for kind in ("pred", "target"):
                mesh = voxels_to_mesh(sample[kind], 0.5)
                if len(mesh.faces):
                    items[f"sample{i}/{kind}"] = Mesh(
                        np.asarray(mesh.vertices, np.float32),
                        np.asarray(mesh.faces),
                        caption=f"{kind}: {caption}",
                    )
        if self._media:
            picture = preview_grid(
                [(s["pred"] > 0.5).numpy() for s in self._media],
                [(s["target"] > 0.5).numpy() for s in self._media],
            )
            captions = " | ".join(s["text"] for s in self._media)
            items["preview"] = Image(
                picture, caption=f"left: prediction, right: target (front, side, top) — {captions}"
            )
        return items

    # ------------------------------------------------------------------ predict / export

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        """Occupancy probabilities (B, R, R, R) for each description; :class:`projects.shape3d.writer.MeshWriter`
        turns them into mesh files (export options live there, not in the model's checkpointed hyperparameters)."""
        logits, features = self._logits_of(batch)
        prediction = {
            "prob": torch.sigmoid(logits.float()).cpu(),
            "text": list(batch["text"]),
            "style": list(batch["style"]),
            "index": batch["index"].tolist(),
        }
        if self.refiner is not None:  # the refined meshes, (verts, faces) or None where nothing was meshed
            meshes: list = [None] * len(logits)
            _, stages, kept = self._refine(logits, features)
            if stages:
                for k, verts, faces in zip(
                    kept, stages[-1].verts_list(), stages[-1].faces_list(), strict=True
                ):
                    meshes[k] = (verts.cpu().numpy(), faces.cpu().numpy())
            prediction["meshes"] = meshes
        return prediction

    # ------------------------------------------------------------------ optimisation

    def configure_optimizers(self):
        """AdamW over the trainable parameters (frozen ones join when FreezeUnfreeze releases them) and
        ReduceLROnPlateau on the validation Chamfer distance."""
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            params, lr=self.optimisation.lr, weight_decay=self.optimisation.weight_decay
        )
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer,
            mode="min",
            factor=self.optimisation.plateau_factor,
            patience=self.optimisation.plateau_patience,
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {
                "scheduler": scheduler,
                "monitor": "val/chamfer",
                "interval": "epoch",
                "strict": False,
            },
        }
