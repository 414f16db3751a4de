"""``PoseModule``: the Progressive Transformer as a LightningModule (training set-up of the original).

Init arguments keep the original ``Configs/Base.yaml`` names where the original has them (``trg_size``,
``just_count_in``, ``gaussian_noise``, ``noise_rate``, ``future_prediction``, ``encoder``/``decoder`` blocks),
the rest is grouped into small dataclasses with nested YAML keys: ``objective`` (loss), ``optimiser`` (Adam +
plateau, ``learning_rate_min`` ends training as in the original), ``init`` (initialisers), ``decoding`` and
``media``. The vocabulary, FastText embedding matrix and pose statistics come from the data module's prepared
artefact (``prepared``, linked from ``data.prepared_path``) and are saved in the checkpoint.
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor
from torchmetrics import MeanMetric
from typing_extensions import override

from common.errors import InputError
from common.media import Video
from common.metrics.bleu import CorpusBLEU
from common.metrics.dtw import DynamicTimeWarping
from projects.pose.backtranslation import BackTranslation, BackTranslator, train_backtranslator
from projects.pose.data import read_prepared
from projects.pose.embeddings import fasttext_kind, load_fasttext, word_vector
from projects.pose.evaluation import LengthRatio, length_factor, pt_protocol_batches
from projects.pose.model import STOP_RULES, ProgressiveTransformer
from projects.pose.skeleton import render_side_by_side
from projects.pose.vocabulary import UNK, Vocabulary, unknown_share_message

DEFAULT_BLOCK = {
    "num_layers": 2,
    "num_heads": 4,
    "hidden_size": 64,
    "ff_size": 128,
    "dropout": 0.0,
    "freeze": False,
    "embeddings": {"embedding_dim": 64, "dropout": 0.0, "scale": False, "freeze": False},
}
BASELINE_SUFFIX = "_mean_pose_baseline"
SELECTION_SUFFIX = "_length_penalised"  # the checkpoint-selection score (projects/pose/evaluation.py)
PT_PROTOCOL_SUFFIX = "_pt_protocol"  # PT's released evaluation: ground-truth counter, first batches only


@dataclass
class Objective:
    """The training loss: ``loss`` ``mse`` or ``l1`` over joints and counter (padding masked), the counter
    column weighted by ``counter_weight`` (1.0 = the original), the total times ``loss_scale`` (original).
    ``length_weight`` > 0 adds a length head trained on the squared error of log(output length), for
    ``decoding.stop_rule: length``."""

    loss: str = "mse"
    counter_weight: float = 1.0
    loss_scale: float = 1.0
    length_weight: float = 0.0


@dataclass
class Optimisation:
    """Adam, and the original's plateau schedule on the dev DTW: stepped once per validation (``patience`` counts
    validations), the rate times ``decrease_factor``; training ends once it falls below ``learning_rate_min``."""

    learning_rate: float = 1e-3
    learning_rate_min: float = 1e-8
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    patience: int = 7
    decrease_factor: float = 0.7


@dataclass
class Initialisation:
    """The original's initialisers (``xavier``, ``uniform``, ``normal``, ``zeros``) for weights, biases and the
    decoder's frame embedding; FastText source embeddings are never re-initialised."""

    initializer: str = "xavier"
    init_weight: float = 0.01
    init_gain: float = 1.0
    bias_initializer: str = "zeros"
    bias_init_weight: float = 0.01
    embed_initializer: str = "xavier"
    embed_init_weight: float = 0.01
    embed_init_gain: float = 1.0


@dataclass
class Decoding:
    """Progressive decoding: at most ``max_output_length`` frames; ``stop_rule`` ``plateau`` (default: the
    counter reached its end *or* levelled off short of it for ``plateau_window`` frames) or ``pt`` (the counter
    reached its end only) or ``length`` (the length the length head predicts from the source; needs
    ``objective.length_weight`` > 0). ``pt_protocol`` also logs DTW under the original code's evaluation protocol
    (ground-truth counter, decoded for the reference length, the first ``ceil(20 / batch) + 1`` batches), the
    protocol of PT's published code; ``compare_gt_counter`` the ground-truth-counter DTW over the whole split.
    Both are for comparison only, never for checkpoint selection or predict."""

    max_output_length: int = 300
    stop_rule: str = "plateau"
    plateau_window: int = 5
    compare_gt_counter: bool = False
    pt_protocol: bool = True


@dataclass
class MediaOptions:
    """Skeleton videos: how many dev sentences, values per joint (null: 2 for ``trg_size`` 100, else 3) and the
    bone list for other skeletons."""

    num_media_samples: int = 2
    skeleton_dims: int | None = None
    skeleton_connections: list[list[int]] | None = None


def _as(cls, value):
    """A dataclass from itself, a dict (YAML, a checkpoint's plain hyper-parameters) or None (defaults)."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    known = {f.name for f in fields(cls)}
    unknown = set(value) - known
    if unknown:
        raise InputError(f"unknown {cls.__name__} keys {sorted(unknown)}; known: {sorted(known)}")
    return cls(**value)


def _block(given: dict | None, name: str) -> dict:
    block = {**DEFAULT_BLOCK, **(given or {})}
    block["embeddings"] = {**DEFAULT_BLOCK["embeddings"], **((given or {}).get("embeddings") or {})}
    unknown = set(block) - set(DEFAULT_BLOCK) - {"type", "decoder_trg_trg"}
    unknown |= {f"embeddings.{k}" for k in set(block["embeddings"]) - set(DEFAULT_BLOCK["embeddings"])}
    if unknown:
        raise InputError(
            f"unknown model.init_args.{name} keys {sorted(unknown)}; known: {sorted(DEFAULT_BLOCK)}"
        )
    if block.get("type", "transformer") != "transformer":
        raise InputError(f"model.init_args.{name}.type: only transformer exists here, got '{block['type']}'")
    if not block.get("decoder_trg_trg", True):
        raise InputError(
            f"model.init_args.{name}.decoder_trg_trg: false is not supported (the decoder always "
            "attends to its previous frames)"
        )
    return block


def words_of(tokens: list[str]) -> list[str]:
    """Tokens that are signed: punctuation marks (tokens of their own with ``punctuation: split``) are not."""
    return [token for token in tokens if any(character.isalnum() for character in token)]


# source tokens seen in predict: all, outside the vocabulary but known whole to FastText, built from its
# character n-grams, and fallen back to <unk>
TOKEN_COUNTS = ("tokens", "whole", "ngrams", "unk")


class PoseModule(pl.LightningModule):
    """Text -> pose Progressive Transformer with FastText source embeddings and DTW validation.

    Validation decodes the whole dev set progressively (own counter and stop rule) and logs
    ``val/dtw_pt_l1_ref_len`` (the original's end-to-end definition), ``val/dtw_l2_path_len``, the teacher-forced
    ``val/loss``, the mean-pose baseline ``val/dtw_pt_l1_ref_len_mean_pose_baseline``, the decoded/reference
    length per reference-length bucket (``val/length_ratio_10_49`` ...) and the checkpoint-selection score
    ``val/dtw_pt_l1_ref_len_length_penalised`` (DTW times how far each length is off); with
    ``decoding.pt_protocol`` also ``val/dtw_pt_l1_ref_len_pt_protocol`` (the original code's protocol).
    """

    # model init arg -> datamodule attribute; the CLI links them (apply_on="instantiate")
    linked_from_data: ClassVar[dict[str, str]] = {
        "trg_size": "trg_size",
        "prepared": "prepared_path",
        "fps": "fps",
    }

    def __init__(
        self,
        trg_size: int | None = None,
        encoder: dict | None = None,
        decoder: dict | None = None,
        just_count_in: bool = False,
        gaussian_noise: bool = False,
        noise_rate: float = 5.0,
        future_prediction: int = 0,
        decoder_positions: bool = True,
        freeze_embeddings: bool = False,
        objective: Objective | None = None,
        optimiser: Optimisation | None = None,
        init: Initialisation | None = None,
        decoding: Decoding | None = None,
        media: MediaOptions | None = None,
        backtranslation: BackTranslation | None = None,
        prepared: str | None = None,
        fps: int | None = None,
        torch_num_threads: int | None = None,
    ) -> None:
        super().__init__()
        if trg_size is None:
            raise InputError(
                "model.init_args.trg_size is not set (tgm links it from data.init_args.trg_size)"
            )
        self.objective, self.optimiser = _as(Objective, objective), _as(Optimisation, optimiser)
        self.init, self.decoding, self.media = (
            _as(Initialisation, init),
            _as(Decoding, decoding),
            _as(MediaOptions, media),
        )
        self.backtranslation = _as(BackTranslation, backtranslation)
        groups = {
            "objective": self.objective,
            "optimiser": self.optimiser,
            "init": self.init,
            "decoding": self.decoding,
            "media": self.media,
            "backtranslation": self.backtranslation,
        }
        self.save_hyperparameters()
        for name, group in groups.items():  # plain dicts in the checkpoint: it loads with weights_only=True
            self.hparams[name] = asdict(group)
        if self.objective.loss.lower() not in ("mse", "l1"):
            raise InputError(
                f"model.init_args.objective.loss must be 'mse' or 'l1', got '{self.objective.loss}'"
            )
        if self.decoding.stop_rule not in STOP_RULES:
            raise InputError(
                f"model.init_args.decoding.stop_rule must be one of {STOP_RULES}, got "
                f"'{self.decoding.stop_rule}'"
            )
        if self.decoding.stop_rule == "length" and self.objective.length_weight <= 0:
            raise InputError(
                "model.init_args.decoding.stop_rule: length needs a trained length head: set "
                "model.init_args.objective.length_weight > 0 (1.0 is a good start)"
            )
        if just_count_in and gaussian_noise:
            raise InputError(
                "model.init_args: just_count_in and gaussian_noise cannot both be true (as the original)"
            )
        enc, dec = _block(encoder, "encoder"), _block(decoder, "decoder")
        if enc["hidden_size"] != dec["hidden_size"]:
            raise InputError("model.init_args: encoder.hidden_size and decoder.hidden_size must be equal")
        if dec["embeddings"]["embedding_dim"] != dec["hidden_size"] and (decoder or {}).get("embeddings"):
            raise InputError(
                "model.init_args.decoder.embeddings.embedding_dim must equal decoder.hidden_size (the "
                "frame embedding feeds the decoder layers directly, as in the original)"
            )
        for key in ("scale", "freeze"):
            if dec["embeddings"][key]:
                raise InputError(
                    f"model.init_args.decoder.embeddings.{key}: the decoder's input is a linear layer "
                    "over frames, not a word embedding; the original ignores it, set it false"
                )
        self.freeze_embeddings = freeze_embeddings or enc["embeddings"]["freeze"]
        self.net = ProgressiveTransformer(
            trg_size=trg_size,
            hidden_size=enc["hidden_size"],
            num_heads=enc["num_heads"],
            encoder_layers=enc["num_layers"],
            decoder_layers=dec["num_layers"],
            ff_size=enc["ff_size"],
            dropout=enc["dropout"],
            embedding_dim=enc["embeddings"]["embedding_dim"],
            embedding_dropout=enc["embeddings"]["dropout"],
            embedding_scale=enc["embeddings"]["scale"],
            decoder_embedding_dropout=dec["embeddings"]["dropout"],
            just_count_in=just_count_in,
            future_prediction=future_prediction,
            max_positions=max(1024, self.decoding.max_output_length + 1),
            decoder_positions=decoder_positions,
            decoder_heads=dec["num_heads"],
            decoder_ff_size=dec["ff_size"],
            decoder_dropout=dec["dropout"],
            length_head=self.objective.length_weight > 0,
        )
        self.net.reset_parameters(
            **{("gain" if k == "init_gain" else k): v for k, v in asdict(self.init).items()}
        )
        self.net.freeze(encoder=enc["freeze"], decoder=dec["freeze"])
        self.vocab: Vocabulary | None = None
        self.fasttext_path: str | None = None
        self._fasttext = None
        self.dtw = DynamicTimeWarping("pt")
        self.dtw_l2 = DynamicTimeWarping("l2_path")
        self.dtw_gt = DynamicTimeWarping("pt")
        self.dtw_pt_protocol = DynamicTimeWarping("pt")
        self.dtw_selection = MeanMetric()  # DTW x length factor per sequence: what checkpoints are chosen by
        self.length_ratio = LengthRatio()
        self._pt_protocol_batches = 0
        self.backtranslation_bleu = CorpusBLEU(max_n=4)  # words read back from the produced poses
        self.backtranslation_bleu_reference = CorpusBLEU(
            max_n=4
        )  # ... and from the reference poses: the ceiling
        self._backtranslator: BackTranslator | None = None  # trained at fit start, kept in checkpoints
        self._warned_max_length = False
        self.register_buffer("mean_pose", torch.zeros(trg_size))
        self.register_buffer("start_pose", torch.zeros(trg_size + 1))  # predict's start frame (frame 0 mean)
        self.register_buffer("end_gap", torch.zeros(()))  # counter steps between the last frame and 1
        self.register_buffer("out_stds", torch.zeros(trg_size))  # per-joint error std of the last epoch
        self._noise_stats: list[Tensor] = []
        self._samples: list[dict] = []
        self._baseline: dict[tuple[str, int], float] = {}
        self._plateau: torch.optim.lr_scheduler.ReduceLROnPlateau | None = None
        self._plateau_state: dict | None = None
        self._token_counts = dict.fromkeys(TOKEN_COUNTS, 0)
        self._unknown: Counter = Counter()

    # ---------------------------------------------------------------------------- vocabulary & FastText
    def load_prepared(self, path: str | Path) -> None:
        """Vocabulary, FastText embedding matrix and pose statistics from the data module's prepared artefact."""
        prepared = read_prepared(path)
        if prepared is None:
            raise InputError(
                f"model.init_args.prepared: '{path}' does not exist or could not be read; the data "
                "module's prepare_data writes it (tgm fit runs it)"
            )
        self.vocab = Vocabulary(prepared["vocab"][4:])
        self.fasttext_path = prepared["fasttext_path"]
        embeddings = prepared["embeddings"]
        if (
            embeddings is None
        ):  # data.src_embeddings: random -- PT's own source embeddings, learned from scratch
            embeddings = torch.empty(len(prepared["vocab"]), self.net.src_embed.embedding_dim)
            torch.nn.init.xavier_uniform_(embeddings)  # PT's embed_initializer: xavier
            embeddings[self.vocab.pad_index] = 0.0
        self.net.set_source_embeddings(
            embeddings, freeze=self.freeze_embeddings, padding_idx=self.vocab.pad_index
        )
        self.mean_pose.copy_(prepared["mean_pose"])
        self.start_pose.copy_(prepared["start_pose"])
        self.end_gap.fill_(prepared["counter_end_gap"])

    @override
    def setup(self, stage: str) -> None:
        if self.hparams.torch_num_threads:  # small models on shared CPUs: extra threads mostly spin and wait
            torch.set_num_threads(self.hparams.torch_num_threads)
        if stage == "fit" and self.vocab is None:
            if self.hparams.prepared is None:
                raise InputError(
                    "model.init_args.prepared is not set: the path of the data module's prepared "
                    "vocabulary and embeddings (linked from data.prepared_path by tgm)"
                )
            self.load_prepared(self.hparams.prepared)

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["pose_vocab"] = list(self.vocab.itos) if self.vocab else None
        checkpoint["pose_fasttext_path"] = self.fasttext_path
        checkpoint["pose_plateau"] = (
            self._plateau.state_dict() if self._plateau is not None else self._plateau_state
        )
        checkpoint["pose_backtranslator"] = self._backtranslator.state() if self._backtranslator else None

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        itos = checkpoint.get("pose_vocab")
        if not itos:
            raise InputError("checkpoint has no 'pose_vocab'; it was not written by PoseModule")
        self.vocab = Vocabulary(itos[4:])
        self.fasttext_path = checkpoint.get("pose_fasttext_path")
        self._plateau_state = checkpoint.get("pose_plateau")
        if checkpoint.get("pose_backtranslator"):
            self._backtranslator = BackTranslator.from_state(checkpoint["pose_backtranslator"])
        weights = checkpoint["state_dict"]["net.src_embed.weight"]
        self.net.set_source_embeddings(
            weights, freeze=self.freeze_embeddings, padding_idx=self.vocab.pad_index
        )

    def fasttext_vectors(self):
        """FastText vectors for words outside the vocabulary (loaded once); None when the model file is gone."""
        if self._fasttext is None and self.fasttext_path:
            try:
                self._fasttext = load_fasttext(self.fasttext_path, "FastText model of this checkpoint")
            except (OSError, InputError) as error:
                warnings.warn(
                    f"{error}; words outside the vocabulary become <unk>", UserWarning, stacklevel=2
                )
                self.fasttext_path = None
        return self._fasttext

    def encode_tokens(self, tokens: list[list[str]], subwords: bool = False):
        """Ids and mask; with ``subwords``, also FastText vectors (and their mask) for words outside the
        vocabulary that FastText can embed from character n-grams (counted for the predict report)."""
        if self.vocab is None:
            raise InputError("PoseModule has no vocabulary: train it (fit) or pass --ckpt_path")
        ids = [torch.tensor(self.vocab.encode(t)) for t in tokens]
        src = torch.nn.utils.rnn.pad_sequence(ids, batch_first=True, padding_value=self.vocab.pad_index)
        mask = src != self.vocab.pad_index
        if not subwords:
            return src.to(self.device), mask.to(self.device), None, None
        fasttext = self.fasttext_vectors()
        vectors = torch.zeros(*src.shape, self.net.src_embed.embedding_dim)
        vector_mask = torch.zeros(src.shape, dtype=torch.bool)
        for row, sentence in enumerate(tokens):
            self._token_counts["tokens"] += len(sentence)
            for column, token in enumerate(sentence):
                if token in self.vocab.stoi:
                    continue
                vector = word_vector(fasttext, token) if fasttext is not None else None
                if vector is not None and len(vector) == vectors.shape[-1]:
                    vectors[row, column] = torch.tensor(np.asarray(vector, dtype=np.float32))
                    vector_mask[row, column] = True
                    self._token_counts[fasttext_kind(fasttext, token)] += 1  # "whole" or "ngrams"
                else:
                    self._token_counts["unk"] += 1
                    self._unknown[token] += 1
        return src.to(self.device), mask.to(self.device), vectors.to(self.device), vector_mask.to(self.device)

    # ------------------------------------------------------------------------------------------- training
    def _check_width(self, frames: Tensor) -> None:
        if frames.shape[-1] != self.hparams.trg_size + 1:
            raise InputError(
                f"the data has {frames.shape[-1] - 1} joint values per frame (data.init_args.trg_size) "
                f"but model.init_args.trg_size={self.hparams.trg_size}; both must be the joint values "
                "per frame (150 xyz, 100 xy)"
            )

    def _targets(self, batch: dict) -> tuple[Tensor, Tensor, Tensor]:
        """Decoder input (start frame + frames[:-1]), targets (F future frames' joints + counter) and masks."""
        frames, lengths = batch["frames"], batch["lengths"]
        self._check_width(frames)
        batch_size, steps, width = frames.shape
        start = batch.get("start_frames")
        start = torch.zeros(batch_size, width, device=frames.device) if start is None else start.to(frames)
        trg_input = torch.cat([start[:, None], frames[:, :-1]], dim=1)
        valid = torch.arange(steps, device=frames.device)[None] < lengths[:, None]  # B x T
        future = self.net.future_frames
        joints = F.pad(frames[..., :-1], (0, 0, 0, future - 1))  # B x (T + F - 1) x J
        valid_future = F.pad(valid, (0, future - 1))
        joint_targets = torch.cat([joints[:, k : k + steps] for k in range(future)], dim=-1)
        joint_mask = torch.cat(
            [
                valid_future[:, k : k + steps, None].expand(-1, -1, self.hparams.trg_size)
                for k in range(future)
            ],
            dim=-1,
        )
        targets = torch.cat([joint_targets, frames[..., -1:]], dim=-1)
        mask = torch.cat([joint_mask, valid[..., None]], dim=-1)
        return trg_input, targets, mask & valid[..., None]

    def _loss(self, output: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
        """Masked mean error over joints and counter. ``counter_weight`` (1.0 = the original: the counter is one
        value among ``trg_size + 1``) up-weights the counter column, which alone decides when decoding stops."""
        objective = self.objective
        error = (output - targets).abs() if objective.loss.lower() == "l1" else (output - targets).square()
        weights = torch.ones(error.shape[-1], device=error.device, dtype=error.dtype)
        weights[-1] = objective.counter_weight
        return objective.loss_scale * (error * mask * weights).sum() / mask.sum().clamp(min=1)

    def _length_loss(self, src: Tensor, src_mask: Tensor, lengths: Tensor) -> Tensor:
        """Squared error of the predicted log output length (the length head, ``stop_rule: length``)."""
        log_length = self.net.predict_log_length(self.net.encode(src, src_mask), src_mask)
        return (log_length - lengths.to(log_length).log()).square().mean()

    def forward_batch(self, batch: dict, noise: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        src, src_mask, _, _ = self.encode_tokens(batch["tokens"])
        trg_input, targets, mask = self._targets(batch)
        if noise and self.hparams.gaussian_noise and bool(self.out_stds.any()):
            # noise on input joints, scaled per joint by last epoch's error std; the counter stays clean
            joints_noise = torch.randn_like(trg_input[..., :-1]) * self.out_stds * self.hparams.noise_rate
            trg_input = trg_input + F.pad(joints_noise, (0, 1))
        output = self.net(src, src_mask, trg_input, trg_mask=mask[..., -1])
        return output, targets, mask

    @override
    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        output, targets, mask = self.forward_batch(batch, noise=True)
        loss = self._loss(output, targets, mask)
        if self.objective.length_weight > 0:
            src, src_mask, _, _ = self.encode_tokens(batch["tokens"])
            length_loss = self._length_loss(src, src_mask, batch["lengths"])
            self.log("train/length_loss", length_loss, batch_size=len(batch["tokens"]))
            loss = loss + self.objective.length_weight * length_loss
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["tokens"]))
        if self.hparams.gaussian_noise:
            trg_size = self.hparams.trg_size
            valid = mask[..., 0]
            error = (output[..., :trg_size] - targets[..., :trg_size]).detach()[valid]
            self._noise_stats.append(
                torch.stack([error.sum(0), error.square().sum(0), torch.full_like(error[0], error.shape[0])])
            )
        return loss

    @override
    def on_train_epoch_end(self) -> None:
        if self.hparams.gaussian_noise and self._noise_stats:
            stats = self.trainer.strategy.reduce(torch.stack(self._noise_stats).sum(0), reduce_op="sum")
            total, squares, count = stats
            variance = squares / count - (total / count).square()
            self.out_stds.copy_(variance.clamp(min=0).sqrt())
            self._noise_stats.clear()

    @override
    def on_fit_start(self) -> None:
        """Train the back-translation recogniser on the training split's reference poses (once per run: a
        resumed run keeps the checkpoint's). It reads the full training loader on every rank with the same seed,
        so every DDP rank holds the same recogniser."""
        if not self.backtranslation.enabled or self._backtranslator is not None:
            return
        datamodule = self.trainer.datamodule
        if datamodule is None:
            raise InputError(
                "model.init_args.backtranslation.enabled needs a datamodule (data: in the config)"
            )
        sequences, tokens = [], []
        for batch in datamodule.train_dataloader():
            for i, length in enumerate(batch["lengths"].tolist()):
                sequences.append(batch["frames"][i, :length])
                tokens.append(words_of(batch["tokens"][i]))
        self._backtranslator = train_backtranslator(sequences, tokens, self.backtranslation)
        rank_zero_info(
            f"back-translation: pose -> text recogniser trained on {len(sequences)} training sequences "
            f"({len(self._backtranslator.words)} words, {self.backtranslation.epochs} epochs)"
        )

    # ----------------------------------------------------------------------------------------- evaluation
    def generate(
        self, tokens: list[list[str]], start_frames: Tensor | None = None, gt_counter: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Progressive decoding from ``start_frames`` (default: the training start pose); words outside the
        vocabulary get their FastText vectors."""
        src, src_mask, vectors, vector_mask = self.encode_tokens(tokens, subwords=True)
        if start_frames is None:
            start_frames = self.start_pose.expand(len(tokens), -1)
        return self.net.generate(
            src,
            src_mask,
            max_length=self.decoding.max_output_length,
            end_gap=float(self.end_gap),
            gt_counter=gt_counter,
            start_frames=start_frames,
            src_vectors=vectors,
            vector_mask=vector_mask,
            stop_rule=self.decoding.stop_rule,
            plateau_window=self.decoding.plateau_window,
        )

    def _evaluate(self, batch: dict, batch_idx: int, prefix: str) -> None:
        size = len(batch["tokens"])
        output, targets, mask = self.forward_batch(batch)
        self.log(f"{prefix}/loss", self._loss(output, targets, mask), batch_size=size, sync_dist=True)
        start = batch["start_frames"].to(output)
        frames, lengths = self.generate(batch["tokens"], start)
        # the hypothesis starts with the start frame, as the original's decoder output (calculate_dtw drops it);
        # the references are the targets: frames[1:] of 0-based (original) data, every frame of 1-based data
        hyps = [torch.cat([start[i, None], frames[i, : lengths[i]]]) for i in range(size)]
        refs = [batch["frames"][i, : batch["lengths"][i]] for i in range(size)]
        ref_lengths = batch["lengths"].to(lengths)
        self._warn_if_longer_than_max(ref_lengths, prefix)
        scores = self.dtw.scores(hyps, refs)
        self.dtw.update(scores=scores)
        self.dtw_selection.update(scores * length_factor(lengths.cpu(), ref_lengths.cpu()))
        self.length_ratio.update(lengths, ref_lengths)
        self.dtw_l2.update([h[1:] for h in hyps], refs)
        self.log(f"{prefix}/{self.dtw.name}", self.dtw, batch_size=size)
        self.log(f"{prefix}/{self.dtw.name}{SELECTION_SUFFIX}", self.dtw_selection, batch_size=size)
        self.log(f"{prefix}/{self.dtw_l2.name}", self.dtw_l2, batch_size=size)
        self.log(
            f"{prefix}/predicted_frames_per_reference_frame",
            (lengths.float() / ref_lengths.float()).mean(),
            batch_size=size,
            sync_dist=True,
        )
        if self.decoding.pt_protocol:
            self._pt_protocol_update(batch, batch_idx, start, refs, prefix)
        if self._backtranslator is not None:
            reader = self._backtranslator.to(self.device)
            sources = [[" ".join(words_of(tokens))] for tokens in batch["tokens"]]
            self.backtranslation_bleu.update(reader.read([h[1:] for h in hyps]), sources)
            self.backtranslation_bleu_reference.update(reader.read(refs), sources)
        if self.decoding.compare_gt_counter:
            gt_frames, _ = self.generate(batch["tokens"], start, gt_counter=batch["frames"][..., -1])
            self.dtw_gt.update(
                [torch.cat([start[i, None], gt_frames[i, : batch["lengths"][i]]]) for i in range(size)], refs
            )
            self.log(f"{prefix}/{self.dtw.name}_gt_counter_eval", self.dtw_gt, batch_size=size)
        if batch_idx == 0 and prefix == "val":
            self._samples = [
                {"text": batch["text"][i], "pred": hyps[i][1:].cpu().numpy(), "ref": refs[i].cpu().numpy()}
                for i in range(min(size, self.media.num_media_samples))
            ]
        self.log(
            f"{prefix}/{self.dtw.name}{BASELINE_SUFFIX}",
            self._baseline_of_batch(prefix, batch_idx, start, refs),
            batch_size=size,
            sync_dist=True,
        )

    def _pt_protocol_update(
        self, batch: dict, batch_idx: int, start: Tensor, refs: list[Tensor], prefix: str
    ) -> None:
        """The original's ``validate_on_data``: ground-truth counters fed in, decoded for the batch's (padded)
        reference length, the hypothesis cut only by ``calculate_dtw`` at its own counter's argmax, and only the
        first ``ceil(20 / batch_size) + 1`` batches scored (the batch size read from the first batch: a smaller
        first batch means the split has one batch, which the cut keeps anyway)."""
        size = len(batch["tokens"])
        if batch_idx == 0:
            self._pt_protocol_batches = pt_protocol_batches(size)
        if batch_idx >= self._pt_protocol_batches:
            return
        frames, _ = self.generate(batch["tokens"], start, gt_counter=batch["frames"][..., -1])
        self.dtw_pt_protocol.update([torch.cat([start[i, None], frames[i]]) for i in range(size)], refs)
        self.log(f"{prefix}/{self.dtw.name}{PT_PROTOCOL_SUFFIX}", self.dtw_pt_protocol, batch_size=size)

    def _warn_if_longer_than_max(self, ref_lengths: Tensor, prefix: str) -> None:
        longest = int(ref_lengths.max())
        if longest > self.decoding.max_output_length and not self._warned_max_length:
            self._warned_max_length = True
            rank_zero_warn(
                f"{prefix}: a reference has {longest} frames but model.init_args.decoding.max_output_length="
                f"{self.decoding.max_output_length}: such sequences are cut short; raise max_output_length"
            )

    def _log_epoch_metrics(self, prefix: str) -> None:
        """Metrics with several values, logged once per evaluation and reset: decoded/reference length per
        reference-length bucket (NaN where a bucket is empty) and the back-translation BLEU-4."""
        if self.length_ratio.update_called:
            for name, value in self.length_ratio.compute().items():
                self.log(f"{prefix}/{name}", value)
            self.length_ratio.reset()
        for suffix, metric in (
            ("", self.backtranslation_bleu),
            ("_reference", self.backtranslation_bleu_reference),
        ):
            if metric.update_called:
                self.log(f"{prefix}/backtranslation_bleu4{suffix}", metric.compute()["bleu4"])
                metric.reset()

    def _baseline_of_batch(self, prefix: str, batch_idx: int, start: Tensor, refs: list[Tensor]) -> float:
        """Mean DTW (original definition) of the training-set mean pose held for each reference's length; the
        epoch mean weighted by batch size is the split's. Computed once per batch: it does not depend on the
        model (evaluation loaders are not shuffled)."""
        key = (prefix, batch_idx)
        if key not in self._baseline:
            mean = self.mean_pose.to(refs[0])
            hyps = [
                torch.cat([start[i, None], torch.cat([mean.expand(len(r), -1), r[:, -1:]], dim=1)])
                for i, r in enumerate(refs)
            ]
            self._baseline[key] = float(DynamicTimeWarping("pt").scores(hyps, refs).mean())
        return self._baseline[key]

    @override
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "val")

    @override
    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "test")

    @override
    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")

    @override
    def on_validation_epoch_end(self) -> None:
        """Log the length ratios; then the original's schedule: after every validation (not the sanity check)
        step the plateau scheduler on the dev score checkpoints are chosen by (the DTW, charged for wrong
        lengths), and end training once the learning rate is below ``learning_rate_min``."""
        self._log_epoch_metrics("val")
        if self._plateau is None or self.trainer.sanity_checking or self.trainer.state.fn != "fit":
            return
        score = float(self.dtw_selection.compute())
        self._plateau.step(score)
        rate = self._plateau.optimizer.param_groups[0]["lr"]
        if rate < self.optimiser.learning_rate_min:
            rank_zero_info(
                f"training ends: learning rate {rate:.3g} < learning_rate_min "
                f"{self.optimiser.learning_rate_min:.3g} (as the original)"
            )
            self.trainer.should_stop = True

    @override
    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        frames, lengths = self.generate(batch["tokens"])
        results = []
        for i in range(len(batch["tokens"])):
            sequence = frames[i, : lengths[i]].float().cpu().numpy().copy()
            sequence[:, -1] = np.clip(sequence[:, -1], 0.0, 1.0)
            results.append({"name": batch["name"][i], "text": batch["text"][i], "frames": sequence})
        return results

    @override
    def on_predict_epoch_start(self) -> None:
        self._token_counts = dict.fromkeys(TOKEN_COUNTS, 0)
        self._unknown = Counter()

    @override
    def on_predict_epoch_end(self) -> None:
        """Report how many source words were outside the vocabulary and how they were embedded."""
        counts = self._token_counts
        total = counts["tokens"]
        if not total:
            return
        outside = counts["whole"] + counts["ngrams"] + counts["unk"]

        def share(n: int) -> str:
            return f"{n} ({100 * n / total:.1f} %)"

        rank_zero_info(
            f"predict: {share(outside)} of {total} source tokens are not in the vocabulary: {share(counts['whole'])} "
            f"are words FastText knows whole, {share(counts['ngrams'])} were built from FastText's character "
            f"n-grams, {share(counts['unk'])} fell back to {UNK}"
        )
        message = unknown_share_message("predict", counts["unk"], total, self._unknown)
        if message:
            warnings.warn(message, UserWarning, stacklevel=2)

    @property
    def video_fps(self) -> int:
        """The data's frame rate (25 // skip_frames), linked from the data module as ``fps``."""
        return int(self.hparams.fps or 12)

    def skeleton_layout(self) -> tuple[int, list[tuple[int, int]] | None]:
        """Values per joint (``skeleton_dims``, else 2 for ``trg_size`` 100, 3 otherwise) and the bone list,
        shared by the validation videos and ``predict``'s writer so both draw the same skeleton."""
        trg_size = self.hparams.trg_size
        dims = self.media.skeleton_dims or (2 if trg_size == 100 else 3)
        if trg_size % dims:
            raise InputError(
                f"model.init_args.media.skeleton_dims={dims} does not divide trg_size={trg_size}"
            )
        connections = self.media.skeleton_connections
        return dims, [tuple(pair) for pair in connections] if connections else None

    def media_samples(self) -> dict:
        """Predicted vs reference skeleton videos of the first dev sentences."""
        media = {}
        dims, connections = self.skeleton_layout()
        for index, sample in enumerate(self._samples):
            frames = render_side_by_side(
                [sample["pred"][:, :-1], sample["ref"][:, :-1]], dims=dims, connections=connections
            )
            media[f"skeleton/dev_{index}"] = Video(frames, fps=self.video_fps, caption=sample["text"])
        return media

    @override
    def configure_optimizers(self):
        """Adam; the plateau scheduler is stepped by :meth:`on_validation_epoch_end` (once per validation, as the
        original, whether validation runs every N epochs or every N steps) and saved in the checkpoint."""
        opt = self.optimiser
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(
            params, lr=opt.learning_rate, weight_decay=opt.weight_decay, betas=tuple(opt.adam_betas)
        )
        # the original: threshold_mode abs, threshold 1e-8, no floor (learning_rate_min ends training instead)
        self._plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer,
            mode="min",
            factor=opt.decrease_factor,
            patience=opt.patience,
            threshold=1e-8,
            threshold_mode="abs",
        )
        if self._plateau_state:
            self._plateau.load_state_dict(self._plateau_state)
        return optimizer
