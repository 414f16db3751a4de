"""``PoseModule``: the Progressive Transformer as a LightningModule (training set-up of the original).

Init arguments keep the original ``Configs/Base.yaml`` names (``trg_size``, ``just_count_in``,
``gaussian_noise``, ``noise_rate``, ``future_prediction``, ``encoder``/``decoder`` blocks, ``learning_rate``,
``learning_rate_min``, ``patience``, ``decrease_factor``, ``loss``, ``max_output_length``, ``initializer``...).
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from common.errors import InputError
from common.media import Video
from common.metrics.dtw import DynamicTimeWarping
from projects.pose.embeddings import embedding_matrix, load_fasttext, train_fasttext
from projects.pose.model import ProgressiveTransformer
from projects.pose.skeleton import render_side_by_side
from projects.pose.text import Vocabulary

DEFAULT_BLOCK = {"num_layers": 2, "num_heads": 4, "hidden_size": 64, "ff_size": 128, "dropout": 0.0,
                 "embeddings": {"embedding_dim": 64, "dropout": 0.0}}
BASELINE_SUFFIX = "_mean_pose_baseline"


def _block(given: dict | None) -> dict:
    block = {**DEFAULT_BLOCK, **(given or {})}
    block["embeddings"] = {**DEFAULT_BLOCK["embeddings"], **((given or {}).get("embeddings") or {})}
    unknown = set(block) - set(DEFAULT_BLOCK) - {"type"}
    if unknown:
        raise InputError(f"unknown encoder/decoder keys {sorted(unknown)}; known: {sorted(DEFAULT_BLOCK)}")
    if block.get("type", "transformer") != "transformer":
        raise InputError(f"only transformer encoders/decoders exist here, got type '{block['type']}'")
    return block


class PoseModule(pl.LightningModule):
    """Text -> pose Progressive Transformer with FastText source embeddings and DTW validation.

    Validation decodes the whole dev set progressively (own counter, stop at ``stop_counter``) and logs
    ``val/dtw_pt_l1_ref_len`` (the original's definition), ``val/dtw_l2_path_len``, the teacher-forced
    ``val/loss`` and the mean-pose baseline ``val/dtw_pt_l1_ref_len_mean_pose_baseline``.
    ``compare_gt_counter`` also logs ``val/dtw_pt_l1_ref_len_gt_counter_eval``: the original code's evaluation
    (ground-truth counter fed in, ground-truth length), for comparison with published numbers only.
    """

    def __init__(
        self,
        trg_size: int = 150,
        encoder: dict | None = None,
        decoder: dict | None = None,
        just_count_in: bool = False,
        gaussian_noise: bool = False,
        noise_rate: float = 5.0,
        future_prediction: int = 0,
        loss: str = "mse",
        counter_weight: float = 1.0,
        decoder_positions: bool = True,
        learning_rate: float = 1e-3,
        learning_rate_min: float = 2e-4,
        weight_decay: float = 0.0,
        patience: int = 7,
        decrease_factor: float = 0.7,
        initializer: str = "xavier",
        init_gain: float = 1.0,
        fasttext_path: str | None = None,
        fasttext_epochs: int = 30,
        fasttext_cache_dir: str = "data/generated/pose/fasttext",
        freeze_embeddings: bool = False,
        min_freq: int = 1,
        src_vocab: str | None = None,
        max_output_length: int = 300,
        stop_counter: float = 0.99,
        compare_gt_counter: bool = False,
        num_media_samples: int = 2,
        skeleton_dims: int | None = None,
        skeleton_connections: list[list[int]] | None = None,
        fps: int = 12,
        torch_num_threads: int | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if loss.lower() not in ("mse", "l1"):
            raise InputError(f"model.loss must be 'mse' or 'l1', got '{loss}'")
        enc, dec = _block(encoder), _block(decoder)
        if enc["hidden_size"] != dec["hidden_size"]:
            raise InputError("encoder.hidden_size and decoder.hidden_size must be equal")
        self.net = ProgressiveTransformer(
            trg_size=trg_size, hidden_size=enc["hidden_size"], num_heads=enc["num_heads"],
            encoder_layers=enc["num_layers"], decoder_layers=dec["num_layers"], ff_size=enc["ff_size"],
            dropout=enc["dropout"], embedding_dim=enc["embeddings"]["embedding_dim"],
            embedding_dropout=enc["embeddings"]["dropout"], just_count_in=just_count_in,
            future_prediction=future_prediction, max_positions=max(1024, max_output_length + 1),
            decoder_positions=decoder_positions, decoder_heads=dec["num_heads"], decoder_ff_size=dec["ff_size"],
            decoder_dropout=dec["dropout"],
        )
        self.net.reset_parameters(initializer, init_gain)
        self.vocab: Vocabulary | None = None
        self.dtw = DynamicTimeWarping("pt")
        self.dtw_l2 = DynamicTimeWarping("l2_path")
        self.dtw_gt = DynamicTimeWarping("pt")
        self.register_buffer("mean_pose", torch.zeros(trg_size))
        self.register_buffer("out_stds", torch.zeros(trg_size))  # per-joint error std of the last epoch
        self._noise_stats: list[Tensor] = []
        self._samples: list[dict] = []
        self._baseline: dict[str, float] = {}

    # ----------------------------------------------------------------------------------- vocabulary & FastText
    def build_vocabulary(self, train_tokens: list[list[str]]) -> None:
        """Vocabulary from training sentences only, then the source embedding from FastText."""
        hp = self.hparams
        self.vocab = (Vocabulary.from_file(hp.src_vocab) if hp.src_vocab
                      else Vocabulary.build(train_tokens, min_freq=hp.min_freq))
        if hp.fasttext_path:
            vectors = load_fasttext(hp.fasttext_path)
        else:
            dim = _block(hp.encoder)["embeddings"]["embedding_dim"]
            vectors = train_fasttext(train_tokens, hp.fasttext_cache_dir, vector_size=dim, epochs=hp.fasttext_epochs)
        weights, counts = embedding_matrix(self.vocab, vectors)
        rank_zero_info(f"source embeddings from FastText: {len(self.vocab)} tokens, {counts}")
        self.net.set_source_embeddings(weights, freeze=hp.freeze_embeddings, padding_idx=self.vocab.pad_index)

    def setup(self, stage: str) -> None:
        if self.hparams.torch_num_threads:  # small models on shared CPUs: extra threads mostly spin and wait
            torch.set_num_threads(self.hparams.torch_num_threads)
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        data_trg_size = getattr(datamodule, "trg_size", self.hparams.trg_size)
        if data_trg_size != self.hparams.trg_size:
            raise InputError(f"data.init_args.trg_size={data_trg_size} but model.init_args.trg_size="
                             f"{self.hparams.trg_size}; both must be the joint values per frame (150 xyz, 100 xy)")
        if stage == "fit" and self.vocab is None and datamodule is not None:
            self.build_vocabulary(datamodule.train_tokens())
            self.mean_pose.copy_(torch.as_tensor(datamodule.mean_pose()))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["pose_vocab"] = list(self.vocab.itos) if self.vocab else None

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        itos = checkpoint.get("pose_vocab")
        if not itos:
            raise KeyError("checkpoint has no 'pose_vocab'; it was not written by PoseModule")
        self.vocab = Vocabulary(itos[4:])
        weights = checkpoint["state_dict"]["net.src_embed.weight"]
        self.net.set_source_embeddings(weights, freeze=self.hparams.freeze_embeddings, padding_idx=self.vocab.pad_index)

    def encode_tokens(self, tokens: list[list[str]]) -> tuple[Tensor, Tensor]:
        if self.vocab is None:
            raise RuntimeError("PoseModule has no vocabulary: train it (fit) or pass --ckpt_path")
        ids = [torch.tensor(self.vocab.encode(t)) for t in tokens]
        src = torch.nn.utils.rnn.pad_sequence(ids, batch_first=True, padding_value=self.vocab.pad_index)
        return src.to(self.device), (src != self.vocab.pad_index).to(self.device)

    # ----------------------------------------------------------------------------------------------- training
    def _targets(self, frames: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Decoder input (BOS + frames[:-1]), targets (F future frames' joints + counter) and their masks."""
        batch, steps, width = frames.shape
        bos = torch.zeros(batch, 1, width, device=frames.device)
        trg_input = torch.cat([bos, frames[:, :-1]], dim=1)
        valid = torch.arange(steps, device=frames.device)[None] < lengths[:, None]  # B x T
        future = self.net.future_frames
        joints = F.pad(frames[..., :-1], (0, 0, 0, future - 1))  # B x (T + F - 1) x J
        valid_future = F.pad(valid, (0, future - 1))
        joint_targets = torch.cat([joints[:, k: k + steps] for k in range(future)], dim=-1)
        joint_mask = torch.cat([valid_future[:, k: k + steps, None].expand(-1, -1, self.hparams.trg_size)
                                for k in range(future)], dim=-1)
        targets = torch.cat([joint_targets, frames[..., -1:]], dim=-1)
        mask = torch.cat([joint_mask, valid[..., None]], dim=-1)
        return trg_input, targets, mask & valid[..., None]

    def _loss(self, output: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
        """Masked mean error over joints and counter. ``counter_weight`` (1.0 = the original: the counter is one
        value among ``trg_size + 1``) up-weights the counter column, which alone decides when decoding stops."""
        error = (output - targets).abs() if self.hparams.loss.lower() == "l1" else (output - targets).square()
        weights = torch.ones(error.shape[-1], device=error.device, dtype=error.dtype)
        weights[-1] = self.hparams.counter_weight
        return (error * mask * weights).sum() / mask.sum().clamp(min=1)

    def forward_batch(self, batch: dict, noise: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        src, src_mask = self.encode_tokens(batch["tokens"])
        trg_input, targets, mask = self._targets(batch["frames"], batch["lengths"])
        if noise and self.hparams.gaussian_noise and bool(self.out_stds.any()):
            # noise on input joints, scaled per joint by last epoch's error std; the counter stays clean
            joints_noise = torch.randn_like(trg_input[..., :-1]) * self.out_stds * self.hparams.noise_rate
            trg_input = trg_input + F.pad(joints_noise, (0, 1))
        output = self.net(src, src_mask, trg_input, trg_mask=mask[..., -1])
        return output, targets, mask

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        output, targets, mask = self.forward_batch(batch, noise=True)
        loss = self._loss(output, targets, mask)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["tokens"]))
        if self.hparams.gaussian_noise:
            trg_size = self.hparams.trg_size
            valid = mask[..., 0]
            error = (output[..., :trg_size] - targets[..., :trg_size]).detach()[valid]
            self._noise_stats.append(torch.stack([error.sum(0), error.square().sum(0),
                                                  torch.full_like(error[0], error.shape[0])]))
        return loss

    def on_train_epoch_end(self) -> None:
        if self.hparams.gaussian_noise and self._noise_stats:
            stats = self.trainer.strategy.reduce(torch.stack(self._noise_stats).sum(0), reduce_op="sum")
            total, squares, count = stats
            variance = squares / count - (total / count).square()
            self.out_stds.copy_(variance.clamp(min=0).sqrt())
            self._noise_stats.clear()

    # --------------------------------------------------------------------------------------------- evaluation
    def generate(self, tokens: list[list[str]], gt_counter: Tensor | None = None) -> tuple[Tensor, Tensor]:
        src, src_mask = self.encode_tokens(tokens)
        return self.net.generate(src, src_mask, max_length=self.hparams.max_output_length,
                                 stop_counter=self.hparams.stop_counter, gt_counter=gt_counter)

    def _evaluate(self, batch: dict, batch_idx: int, prefix: str) -> None:
        size = len(batch["tokens"])
        output, targets, mask = self.forward_batch(batch)
        self.log(f"{prefix}/loss", self._loss(output, targets, mask), batch_size=size, sync_dist=True)
        frames, lengths = self.generate(batch["tokens"])
        bos = torch.zeros(size, 1, frames.shape[-1], device=frames.device)
        hyps = [torch.cat([bos[i], frames[i, : lengths[i]]]) for i in range(size)]  # with BOS, as the original
        refs = [batch["frames"][i, : batch["lengths"][i]] for i in range(size)]
        self.dtw.update(hyps, refs)
        self.dtw_l2.update([h[1:] for h in hyps], refs)
        self.log(f"{prefix}/{self.dtw.name}", self.dtw, batch_size=size)
        self.log(f"{prefix}/{self.dtw_l2.name}", self.dtw_l2, batch_size=size)
        self.log(f"{prefix}/predicted_frames_per_reference_frame",
                 (lengths.float() / batch["lengths"].float()).mean(), batch_size=size, sync_dist=True)
        if self.hparams.compare_gt_counter:
            gt = batch["frames"][..., -1]
            gt_frames, _ = self.generate(batch["tokens"], gt_counter=gt)
            self.dtw_gt.update([torch.cat([bos[i], gt_frames[i, : batch["lengths"][i]]]) for i in range(size)], refs)
            self.log(f"{prefix}/{self.dtw.name}_gt_counter_eval", self.dtw_gt, batch_size=size)
        if batch_idx == 0 and prefix == "val":
            self._samples = [{"text": batch["text"][i], "pred": hyps[i][1:].cpu().numpy(), "ref": refs[i].cpu().numpy()}
                             for i in range(min(size, self.hparams.num_media_samples))]
        if prefix not in self._baseline:
            self._baseline_from_loader(prefix)
        self.log(f"{prefix}/{self.dtw.name}{BASELINE_SUFFIX}", self._baseline[prefix], batch_size=size)

    def _baseline_from_loader(self, prefix: str) -> None:
        """DTW (original definition) of the training-set mean pose held for each reference's length, over the
        whole split. Computed once per split: it does not depend on the model."""
        datamodule = self.trainer.datamodule
        split = {"val": "dev", "test": "test"}[prefix]
        metric = DynamicTimeWarping("pt")
        refs = [torch.from_numpy(e.frames) for e in datamodule.datasets[split].examples]
        mean = self.mean_pose.cpu()
        hyps = [torch.cat([torch.zeros(1, r.shape[1]),
                           torch.cat([mean.expand(len(r), -1), r[:, -1:]], dim=1)]) for r in refs]
        self._baseline[prefix] = float(metric.scores(hyps, refs).mean())
        rank_zero_info(f"{prefix}: mean-pose baseline {metric.name} = {self._baseline[prefix]:.4f}")

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "test")

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        frames, lengths = self.generate(batch["tokens"])
        results = []
        for i in range(len(batch["tokens"])):
            sequence = frames[i, : lengths[i]].float().cpu().numpy().copy()
            sequence[:, -1] = np.clip(sequence[:, -1], 0.0, 1.0)
            results.append({"name": batch["name"][i], "text": batch["text"][i], "frames": sequence})
        return results

    @property
    def video_fps(self) -> int:
        """The data's frame rate (25 // skip_frames) when a datamodule is attached, else ``fps``."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        return int(getattr(datamodule, "fps", self.hparams.fps))

    def skeleton_layout(self) -> tuple[int, list[tuple[int, int]] | None]:
        """Values per joint (``skeleton_dims``, else 2 for ``trg_size`` 100, 3 otherwise) and the bone list,
        shared by the validation videos and ``predict``'s writer so both draw the same skeleton."""
        hp = self.hparams
        dims = hp.skeleton_dims or (2 if hp.trg_size == 100 else 3)
        if hp.trg_size % dims:
            raise InputError(f"model.init_args.skeleton_dims={dims} does not divide trg_size={hp.trg_size}")
        connections = [tuple(pair) for pair in hp.skeleton_connections] if hp.skeleton_connections else None
        return dims, connections

    def media_samples(self) -> dict:
        """Predicted vs reference skeleton videos of the first dev sentences."""
        media = {}
        dims, connections = self.skeleton_layout()
        for index, sample in enumerate(self._samples):
            frames = render_side_by_side([sample["pred"][:, :-1], sample["ref"][:, :-1]],
                                         dims=dims, connections=connections)
            media[f"skeleton/dev_{index}"] = Video(frames, fps=self.video_fps, caption=sample["text"])
        return media

    def configure_optimizers(self):
        hp = self.hparams
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=hp.learning_rate, weight_decay=hp.weight_decay)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=hp.decrease_factor, patience=hp.patience, min_lr=hp.learning_rate_min)
        # step the plateau scheduler only on epochs that validate, so check_val_every_n_epoch > 1 works; with
        # validation every N steps (check_val_every_n_epoch: null, the original's validation_freq) it steps at each
        # epoch end on the latest DTW, skipping (with a warning) epochs before the first validation
        every = getattr(self._trainer, "check_val_every_n_epoch", 1) if self._trainer is not None else 1
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "monitor": f"val/{self.dtw.name}", "interval": "epoch",
                                 "frequency": int(every or 1), "strict": every is not None}}
