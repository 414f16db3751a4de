"""``CaptionModule``: trains the ClipCap-style captioner of ``model.py`` (frozen CLIP -> mapper -> GPT-2).

Steps, BLEU, the media table and the optimiser live here; the networks are in ``model.py``; what ``predict``
writes is ``writer.py``. The CLIP, its embedding size, the tokenizer, the vocabulary size and the caption length
limit come from the datamodule through ``tgm``'s links (``linked_from_data``), never from its internals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from common.errors import InputError
from common.frozen import restore_frozen, strip_frozen
from common.media import Image, Table
from common.metrics.bleu import CorpusBLEU
from common.metrics.coco_caption import TOKENIZATIONS, CocoCaptionScores
from projects.caption.features import ClipImageEncoder, load_rgb
from projects.caption.model import (
    MapperConfig,
    build_decoder,
    build_image_encoder,
    build_mapper,
    caption_loss,
    clip_embed_dim,
    generate_from_prefix,
)


@dataclass(frozen=True)
class DecodingConfig:
    """Generation in validation, test and predict: greedy (``num_beams: 1``) or beam search."""

    max_new_tokens: int = 30
    num_beams: int = 1
    stop_token: str | None = None  # null -> the tokenizer's end token


@dataclass(frozen=True)
class EvaluationConfig:
    """How captions are scored (``common/metrics/coco_caption.py``): the coco-caption set (BLEU-1..4, METEOR,
    ROUGE-L, CIDEr-D, as pycocoevalcap) on ``tokenize`` = ``turkish`` (keys ``_tr``: Turkish lower-casing,
    punctuation dropped), ``coco`` (``_coco``: the PTB tokenizer, Java) or ``13a`` (``_13a``), next to sacrebleu's
    13a BLEU-1..4 (``bleu<k>_13a``). METEOR starts Java and loads its paraphrase table (~1 min on a busy CPU):
    by default in ``test`` only."""

    tokenize: str = "turkish"
    meteor_in_test: bool = True
    meteor_in_validation: bool = False


@dataclass(frozen=True)
class OptimizerConfig:
    """AdamW; linear warm-up for ``warmup_steps`` then cosine decay to 0 over the run (per step)."""

    lr: float = 2e-5
    weight_decay: float = 0.0
    warmup_steps: int = 5000


class CaptionModule(pl.LightningModule):
    """ClipCap-style captioner. ``decoder`` takes a hub name or a local directory
    (``redrussianarmy/gpt2-turkish-cased``); when null, a tiny random GPT-2 is built from ``decoder_config``.
    The CLIP (``clip_source``: hub name or the prepared tiny CLIP's directory; ``clip_config``: the tiny
    architecture) and the tokenizer (``tokenizer_source``) are set by the datamodule's links; the tokenizer is stored in checkpoints.
    """

    # model init arg -> datamodule attribute (tgm links them; a linked key cannot be set in YAML)
    linked_from_data: ClassVar[dict[str, str]] = {
        "clip_source": "clip_source",
        "clip_config": "clip_config",
        "clip_dim": "clip_dim",
        "tokenizer_source": "tokenizer_source",
        "vocab_size": "vocab_size",
        "max_caption_tokens": "max_caption_tokens",
    }

    def __init__(
        self,
        decoder: str | None = None,
        decoder_config: dict | None = None,
        mapper: MapperConfig | None = None,
        optimizer: OptimizerConfig | None = None,
        decoding: DecodingConfig | None = None,
        evaluation: EvaluationConfig | None = None,
        media_rows: int = 8,
        clip_source: str | None = None,
        clip_config: dict | None = None,
        clip_dim: int | None = None,
        tokenizer_source: str | None = None,
        vocab_size: int | None = None,
        max_caption_tokens: int | None = None,
    ) -> None:
        super().__init__()
        self.mapper_config = mapper or MapperConfig()
        self.optimizer_config = optimizer or OptimizerConfig()
        self.decoding = decoding or DecodingConfig()
        self.evaluation = evaluation or EvaluationConfig()
        if self.evaluation.tokenize not in TOKENIZATIONS:
            raise InputError(
                f"model.init_args.evaluation.tokenize must be one of {sorted(TOKENIZATIONS)}, "
                f"got '{self.evaluation.tokenize}'"
            )
        # decoding and evaluation are chosen at inference: kept out of the checkpoint's hyperparameters, which Lightning's CLI
        # would otherwise re-apply over --model.init_args.decoding.* in predict/test with --ckpt_path
        self.save_hyperparameters(ignore=["decoding", "evaluation"])
        self.decoder = build_decoder(decoder, decoder_config, vocab_size)
        self.max_positions = int(self.decoder.config.n_positions)
        prefix = self.mapper_config.prefix_length
        for name, tokens in (
            ("max_new_tokens", self.decoding.max_new_tokens),
            ("max_caption_tokens", max_caption_tokens),
        ):
            if tokens is not None and prefix + tokens > self.max_positions:
                # checked here, so an over-long batch fails before training instead of mid-epoch
                raise InputError(
                    f"model.init_args: mapper.prefix_length ({prefix}) + {name} ({tokens}) exceeds "
                    f"the GPT-2 decoder's n_positions ({self.max_positions})"
                )
        self.mapper = build_mapper(
            self.mapper_config,
            clip_dim or clip_embed_dim(clip_source, clip_config),
            self.decoder.config.n_embd,
        )
        self.image_encoder: ClipImageEncoder | None = (
            None  # built in configure_model: the CLIP may be prepared later
        )
        self.tokenizer = None
        self.val_bleu = CorpusBLEU(max_n=4, tokenize="13a")
        self.test_bleu = CorpusBLEU(max_n=4, tokenize="13a")
        tokenize = self.evaluation.tokenize
        self.val_coco = CocoCaptionScores(tokenize, with_meteor=self.evaluation.meteor_in_validation)
        self.test_coco = CocoCaptionScores(tokenize, with_meteor=self.evaluation.meteor_in_test)
        self.test_items: list[tuple] = []  # (image_id, prediction, references) of the last test run
        self.test_report: str | None = (
            None  # the table `tgm test` prints (= python -m projects.caption.evaluate)
        )
        self._media_rows: list[tuple[str, str, list[str]]] = []

    @override
    def configure_model(self) -> None:
        if self.image_encoder is None:
            self.image_encoder = build_image_encoder(self.hparams.clip_source, self.hparams.clip_config)

    # ---------------------------------------------------------------------------------------- tokenizer
    def set_tokenizer(self, tokenizer) -> None:
        vocab = self.decoder.config.vocab_size
        if len(tokenizer) > vocab:
            raise InputError(
                f"tokenizer has {len(tokenizer)} tokens but the GPT-2 decoder only {vocab}: use a decoder with a "
                "larger vocabulary or lower data.init_args.tokenizer.vocab_size"
            )
        self.tokenizer = tokenizer

    def stop_token_id(self) -> int:
        if self.decoding.stop_token is None:
            return int(self.tokenizer.eos_token_id)
        ids = self.tokenizer(self.decoding.stop_token, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise InputError(
                f"model.init_args.decoding.stop_token '{self.decoding.stop_token}' is {len(ids)} tokens"
            )
        return int(ids[0])

    @override
    def setup(self, stage: str) -> None:
        """Load the prepared tokenizer (when there is one here; a checkpoint's own tokenizer then replaces it)."""
        source = self.hparams.tokenizer_source
        if self.tokenizer is None and source is not None:
            from projects.caption.data import load_tokenizer

            if not source.endswith(".json") or Path(source).is_file():
                self.set_tokenizer(load_tokenizer(source))

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The tokenizer goes in; a pretrained CLIP (hub name / folder) does not, nor a pretrained GPT-2 while it is
        frozen: they are rebuilt from their source and checked against the stored hash (``common.frozen``). A tiny CLIP (``clip_config``) is
        kept: a few hundred KB, and predict on a machine where it was never prepared needs it."""
        pretrained = []  # rebuilt from their folder / hub name on load; stored only while something trains them
        if self.image_encoder is not None and self.hparams.clip_config is None:
            pretrained.append("image_encoder")
        if self.hparams.decoder is not None:  # a frozen pretrained GPT-2 (frozen_gpt2.yaml): 498 MB per file
            pretrained.append("decoder")
        strip_frozen(self, checkpoint, pretrained)
        if self.tokenizer is not None:  # checkpoints caption on their own: predict needs no training data
            checkpoint["caption_tokenizer"] = {
                "json": self.tokenizer.backend_tokenizer.to_str(),
                "special": self.tokenizer.special_tokens_map,
            }

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.configure_model()  # load_from_checkpoint calls this hook before anything built the CLIP
        restore_frozen(self, checkpoint, source=f"checkpoint (CLIP from {self.hparams.clip_source})")
        stored = checkpoint.get("caption_tokenizer")
        if stored is not None:
            from tokenizers import Tokenizer
            from transformers import PreTrainedTokenizerFast

            special = {k: v for k, v in stored["special"].items() if isinstance(v, str)}
            self.set_tokenizer(
                PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(stored["json"]), **special)
            )

    # ---------------------------------------------------------------------------------------- model
    def image_features(self, batch: dict) -> torch.Tensor:
        """Cached CLIP embeddings when the batch has them, else CLIP on the pixels (frozen, no grad)."""
        if batch.get("features") is not None:
            return batch["features"].float()
        self.configure_model()
        return self.image_encoder(batch["pixel_values"]).float()

    @override
    def forward(self, batch: dict) -> torch.Tensor:
        """The caption loss of a batch (see :func:`projects.caption.model.caption_loss`)."""
        prefix = self.mapper(self.image_features(batch))
        return caption_loss(self.decoder, prefix, batch["input_ids"], batch["attention_mask"])

    @torch.no_grad()
    def generate_ids(
        self, features: torch.Tensor, num_beams: int | None = None, max_new_tokens: int | None = None
    ) -> torch.Tensor:
        """Token ids generated from the prefix of each CLIP embedding (see ``generate_from_prefix``)."""
        if self.tokenizer is None:
            raise RuntimeError(
                "CaptionModule has no tokenizer: fit/validate with the CaptionDataModule or load a "
                "checkpoint written by this module"
            )
        return generate_from_prefix(
            self.decoder,
            self.mapper(features.float()),
            self.stop_token_id(),
            int(self.tokenizer.pad_token_id),
            num_beams or self.decoding.num_beams,
            max_new_tokens or self.decoding.max_new_tokens,
        )

    def generate(
        self, features: torch.Tensor, num_beams: int | None = None, max_new_tokens: int | None = None
    ) -> list[str]:
        """Captions (text) for CLIP embeddings, see :meth:`generate_ids`."""
        tokens = self.generate_ids(features, num_beams, max_new_tokens)
        return [text.strip() for text in self.tokenizer.batch_decode(tokens, skip_special_tokens=True)]

    # ---------------------------------------------------------------------------------------- loops
    @override
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["image_id"]))
        return loss

    def _eval_step(self, batch: dict, stage: str, metric: CorpusBLEU, coco: CocoCaptionScores) -> None:
        features = self.image_features(batch)
        size = len(batch["image_id"])
        prefix = self.mapper(features)
        loss = caption_loss(self.decoder, prefix, batch["input_ids"], batch["attention_mask"])
        self.log(f"{stage}/loss", loss, batch_size=size, sync_dist=True)
        predictions = self.generate(features)
        metric.update(predictions, batch["references"])
        coco.update(predictions, batch["references"], batch["image_id"])
        if stage == "val":
            for path, prediction, refs in zip(batch["path"], predictions, batch["references"], strict=True):
                if len(self._media_rows) < self.hparams.media_rows:
                    self._media_rows.append((path, prediction, refs))

    def _log_bleu(self, stage: str, metric: CorpusBLEU) -> None:
        scores = metric.compute()  # already reduced over processes (sum of n-gram counts)
        self.log_dict(
            {f"{stage}/{name}_13a": value for name, value in scores.items()}, prog_bar=stage == "val"
        )
        metric.reset()

    def _log_coco(self, stage: str, coco: CocoCaptionScores) -> None:
        """The coco-caption set over the gathered corpus (every process computes the same numbers)."""
        scores = coco.compute()
        if coco.suffix == "13a":  # same names as the sacrebleu family: that one is logged
            scores = {k: v for k, v in scores.items() if not k.startswith("bleu")}
        self.log_dict({f"{stage}/{name}": value.float() for name, value in scores.items()})
        coco.reset()

    @override
    def on_validation_epoch_start(self) -> None:
        self._media_rows = []

    @override
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val", self.val_bleu, self.val_coco)

    @override
    def on_validation_epoch_end(self) -> None:
        self._log_bleu("val", self.val_bleu)
        self._log_coco("val", self.val_coco)

    @override
    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test", self.test_bleu, self.test_coco)

    @override
    def on_test_epoch_end(self) -> None:
        """Logs both families and prints the COCO table, computed by the same code as
        ``python -m projects.caption.evaluate RESULTS.json ANNOTATIONS.json``."""
        from projects.caption.evaluate import report

        self.test_bleu.reset()
        with self.test_coco.sync_context():  # gathered over processes (no-op on one), de-duplicated by id
            self.test_items = self.test_coco.items()
        self.test_coco.reset()
        metrics, self.test_report = report(
            self.test_items, self.evaluation.tokenize, self.evaluation.meteor_in_test
        )
        self.log_dict({f"test/{name}": float(value) for name, value in metrics.items()})
        rank_zero_info(self.test_report)

    def media_samples(self) -> dict:
        """A table of validation images with the generated and the reference captions."""
        rows = [
            [Image(np.asarray(load_rgb(path)), caption=prediction), prediction, " | ".join(refs)]
            for path, prediction, refs in self._media_rows
        ]
        return (
            {"val_captions": Table(columns=["image", "prediction", "references"], rows=rows)} if rows else {}
        )

    @override
    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        """``[{"image_id", "caption"}]`` per batch; ``writer.CaptionPredictionWriter`` writes them."""
        captions = self.generate(self.image_features(batch))
        return [{"image_id": i, "caption": c} for i, c in zip(batch["image_id"], captions, strict=True)]

    # ---------------------------------------------------------------------------------------- optim
    @override
    def configure_optimizers(self):
        """AdamW on the trainable parameters, linear warm-up then cosine decay (per step)."""
        settings = self.optimizer_config
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warmup = min(settings.warmup_steps, total // 2)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(total - warmup, 1))))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
