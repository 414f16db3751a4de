"""Image -> Turkish caption in the style of ClipCap (Mokady et al., 2021, arXiv 2111.09734).

    image --CLIP (frozen)--> embedding (512-d for ViT-B/32)
          --mapper--> prefix_length GPT-2 input embeddings ("prefix")
          --GPT-2 LM--> caption tokens, trained with next-token cross-entropy on the caption tokens only

Mapper: the original Turkish project's MLP (512 -> 3840 -> 7680 = 10 x 768, tanh) or ClipCap's transformer
mapper (``mapper: transformer``). GPT-2 is fine-tuned with the mapper by default; ClipCap's other variant,
GPT-2 frozen and only the mapper trained, is ``common.callbacks.FreezeUnfreeze(modules: [decoder])``
(``configs/caption/frozen_gpt2.yaml``). Generation is Hugging Face ``generate(inputs_embeds=prefix)``:
greedy (``num_beams: 1``) or beam search, stopping at the stop token or ``max_new_tokens``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection, GPT2Config, GPT2LMHeadModel

from common.errors import InputError
from common.hub import load_pretrained
from common.media import Image, Table
from common.metrics.bleu import CorpusBLEU
from projects.caption.clip_pretrain import pretrained_tiny_clip
from projects.caption.features import ClipImageEncoder, load_rgb

IGNORE_INDEX = -100  # label value ignored by the cross-entropy (prefix positions and padding)


class MLPMapper(nn.Module):
    """ClipCap's MLP: ``clip_dim -> hidden -> prefix_length * embed_dim`` with tanh."""

    def __init__(self, clip_dim: int, embed_dim: int, prefix_length: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or prefix_length * embed_dim // 2  # 3840 for 10 x 768, as in the original
        self.prefix_length, self.embed_dim = prefix_length, embed_dim
        self.net = nn.Sequential(nn.Linear(clip_dim, hidden), nn.Tanh(), nn.Linear(hidden, prefix_length * embed_dim))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features).view(-1, self.prefix_length, self.embed_dim)


class TransformerMapper(nn.Module):
    """ClipCap's transformer mapper: the CLIP embedding becomes ``clip_length`` tokens, concatenated with
    ``prefix_length`` learned constants; after a transformer encoder the constants' outputs are the prefix."""

    def __init__(self, clip_dim: int, embed_dim: int, prefix_length: int, clip_length: int = 10,
                 num_layers: int = 8, num_heads: int = 8) -> None:
        super().__init__()
        self.clip_length, self.embed_dim = clip_length, embed_dim
        self.linear = nn.Linear(clip_dim, clip_length * embed_dim)
        self.prefix_const = nn.Parameter(torch.randn(prefix_length, embed_dim))
        layer = nn.TransformerEncoderLayer(embed_dim, num_heads, dim_feedforward=2 * embed_dim, dropout=0.0,
                                           activation="relu", batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.linear(features).view(-1, self.clip_length, self.embed_dim)
        const = self.prefix_const.unsqueeze(0).expand(x.shape[0], -1, -1)
        return self.transformer(torch.cat([x, const], dim=1))[:, self.clip_length:]


def build_clip(clip: str | None, clip_config: dict | None, clip_pretrain: dict | None) -> tuple[nn.Module, str]:
    if clip is not None:
        model = load_pretrained(CLIPVisionModelWithProjection.from_pretrained, clip, what="model.init_args.clip")
        return model, clip
    if clip_config is None:
        raise InputError("model.init_args: give clip (hub name or directory) or clip_config (a tiny random CLIP)")
    if clip_pretrain:
        return pretrained_tiny_clip(clip_config, **clip_pretrain), "tiny-clip-attribute-pretrained"
    return CLIPVisionModelWithProjection(CLIPVisionConfig(**clip_config)), "tiny-clip-random"


def build_decoder(decoder: str | None, decoder_config: dict | None) -> GPT2LMHeadModel:
    if decoder is not None:
        return load_pretrained(GPT2LMHeadModel.from_pretrained, decoder, what="model.init_args.decoder")
    if decoder_config is None:
        raise InputError("model.init_args: give decoder (hub name or directory) or decoder_config (a tiny GPT-2)")
    return GPT2LMHeadModel(GPT2Config(**decoder_config))


def caption_loss(decoder: GPT2LMHeadModel, prefix: torch.Tensor, input_ids: torch.Tensor,
                 attention_mask: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy on caption tokens only.

    The decoder sees ``[prefix_1..prefix_P, tok_1..tok_T]``; labels are ``IGNORE_INDEX`` on the P prefix
    positions and on padding, so the loss is the mean over real caption tokens (incl. the end token) of
    ``-log p(tok_t | prefix, tok_<t)``; GPT-2 shifts labels by one internally.
    """
    batch, prefix_length = prefix.shape[:2]
    token_embeds = decoder.get_input_embeddings()(input_ids)
    embeds = torch.cat([prefix.to(token_embeds.dtype), token_embeds], dim=1)
    ones = torch.ones(batch, prefix_length, dtype=attention_mask.dtype, device=attention_mask.device)
    mask = torch.cat([ones, attention_mask], dim=1)
    ignore = torch.full((batch, prefix_length), IGNORE_INDEX, dtype=input_ids.dtype, device=input_ids.device)
    labels = torch.cat([ignore, input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)], dim=1)
    return decoder(inputs_embeds=embeds, attention_mask=mask, labels=labels).loss


class CaptionModule(pl.LightningModule):
    """ClipCap-style captioner. ``clip``/``decoder`` take hub names or local directories
    (``openai/clip-vit-base-patch32``, ``redrussianarmy/gpt2-turkish-cased``); when null, tiny random models are
    built from ``clip_config``/``decoder_config`` (``clip_pretrain`` pre-trains the tiny CLIP once, see
    :mod:`projects.caption.clip_pretrain`). The tokenizer comes from the datamodule and is stored in checkpoints.
    """

    def __init__(
        self,
        clip: str | None = None,
        clip_config: dict | None = None,
        clip_pretrain: dict | None = None,
        decoder: str | None = None,
        decoder_config: dict | None = None,
        mapper: str = "mlp",
        prefix_length: int = 10,
        mapper_hidden: int | None = None,
        mapper_layers: int = 8,
        mapper_heads: int = 8,
        clip_length: int = 10,
        lr: float = 2e-5,
        weight_decay: float = 0.0,
        warmup_steps: int = 5000,
        max_new_tokens: int = 30,
        num_beams: int = 1,
        stop_token: str | None = None,
        media_rows: int = 8,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        clip_model, clip_name = build_clip(clip, clip_config, clip_pretrain)
        self.image_encoder = ClipImageEncoder(clip_model, clip_name)
        self.decoder = build_decoder(decoder, decoder_config)
        embed_dim = self.decoder.config.n_embd
        self.max_positions = int(self.decoder.config.n_positions)
        if prefix_length + max_new_tokens > self.max_positions:
            raise InputError(f"model.init_args: prefix_length ({prefix_length}) + max_new_tokens ({max_new_tokens}) "
                             f"exceeds the GPT-2 decoder's n_positions ({self.max_positions})")
        if mapper == "mlp":
            self.mapper = MLPMapper(self.image_encoder.embed_dim, embed_dim, prefix_length, mapper_hidden)
        elif mapper == "transformer":
            self.mapper = TransformerMapper(self.image_encoder.embed_dim, embed_dim, prefix_length, clip_length,
                                            mapper_layers, mapper_heads)
        else:
            raise InputError(f"model.init_args.mapper must be 'mlp' or 'transformer', got '{mapper}'")
        self.tokenizer = None
        self.val_bleu = CorpusBLEU(max_n=4, tokenize="13a")
        self.test_bleu = CorpusBLEU(max_n=4, tokenize="13a")
        self._media_rows: list[tuple[str, str, list[str]]] = []
        self._predictions: list[dict] = []

    # ---------------------------------------------------------------------------------------- tokenizer
    def set_tokenizer(self, tokenizer) -> None:
        vocab = self.decoder.config.vocab_size
        if len(tokenizer) > vocab:
            raise InputError(f"tokenizer has {len(tokenizer)} tokens but the GPT-2 decoder only {vocab}: raise "
                             "model.init_args.decoder_config.vocab_size or lower data.init_args.tokenizer_vocab_size")
        self.tokenizer = tokenizer

    def stop_token_id(self) -> int:
        if self.hparams.stop_token is None:
            return int(self.tokenizer.eos_token_id)
        ids = self.tokenizer(self.hparams.stop_token, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise InputError(f"model.init_args.stop_token '{self.hparams.stop_token}' is {len(ids)} tokens, not 1")
        return int(ids[0])

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.tokenizer is not None:  # checkpoints caption on their own: predict needs no training data
            checkpoint["caption_tokenizer"] = {"json": self.tokenizer.backend_tokenizer.to_str(),
                                               "special": self.tokenizer.special_tokens_map}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        stored = checkpoint.get("caption_tokenizer")
        if stored is not None:
            from tokenizers import Tokenizer
            from transformers import PreTrainedTokenizerFast

            special = {k: v for k, v in stored["special"].items() if isinstance(v, str)}
            self.set_tokenizer(PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(stored["json"]), **special))

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is None:
            return
        if hasattr(datamodule, "attach_encoder"):
            datamodule.attach_encoder(self.image_encoder)
        max_tokens = getattr(getattr(datamodule, "hparams", None), "max_caption_tokens", None)
        if max_tokens is not None and self.hparams.prefix_length + max_tokens > self.max_positions:
            # checked here, so an over-long batch fails before training instead of mid-epoch
            raise InputError(f"prefix_length ({self.hparams.prefix_length}) + data.init_args.max_caption_tokens "
                             f"({max_tokens}) exceeds the GPT-2 decoder's n_positions ({self.max_positions})")
        if getattr(datamodule, "tokenizer", None) is not None:
            self.set_tokenizer(datamodule.tokenizer)

    # ---------------------------------------------------------------------------------------- model
    def image_features(self, batch: dict) -> torch.Tensor:
        """Cached CLIP embeddings when the batch has them, else CLIP on the pixels (frozen, no grad)."""
        if "features" in batch:
            return batch["features"].float()
        return self.image_encoder(batch["pixel_values"]).float()

    def forward(self, batch: dict) -> torch.Tensor:
        """The caption loss of a batch (see :func:`caption_loss`)."""
        prefix = self.mapper(self.image_features(batch))
        return caption_loss(self.decoder, prefix, batch["input_ids"], batch["attention_mask"])

    @torch.no_grad()
    def generate_ids(self, features: torch.Tensor, num_beams: int | None = None,
                     max_new_tokens: int | None = None) -> torch.Tensor:
        """Token ids generated from the prefix of each CLIP embedding: greedy (``num_beams=1``) or beam search
        (Hugging Face ``generate(inputs_embeds=prefix)``; score = sum of log-probs / length), stopping at the
        stop token or after ``max_new_tokens``. Rows are right-padded with the pad id."""
        if self.tokenizer is None:
            raise RuntimeError("CaptionModule has no tokenizer: fit/validate with the CaptionDataModule or load a "
                               "checkpoint written by this module")
        num_beams = num_beams or self.hparams.num_beams
        prefix = self.mapper(features.float())
        mask = torch.ones(prefix.shape[:2], dtype=torch.long, device=prefix.device)
        stop = self.stop_token_id()
        return self.decoder.generate(
            inputs_embeds=prefix, attention_mask=mask, max_new_tokens=max_new_tokens or self.hparams.max_new_tokens,
            num_beams=num_beams, do_sample=False, early_stopping=num_beams > 1, eos_token_id=stop,
            pad_token_id=int(self.tokenizer.pad_token_id), bos_token_id=stop, length_penalty=1.0,
        )

    def generate(self, features: torch.Tensor, num_beams: int | None = None,
                 max_new_tokens: int | None = None) -> list[str]:
        """Captions (text) for CLIP embeddings, see :meth:`generate_ids`."""
        tokens = self.generate_ids(features, num_beams, max_new_tokens)
        return [text.strip() for text in self.tokenizer.batch_decode(tokens, skip_special_tokens=True)]

    # ---------------------------------------------------------------------------------------- loops
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["image_id"]))
        return loss

    def _eval_step(self, batch: dict, stage: str, metric: CorpusBLEU) -> None:
        features = self.image_features(batch)
        size = len(batch["image_id"])
        prefix = self.mapper(features)
        loss = caption_loss(self.decoder, prefix, batch["input_ids"], batch["attention_mask"])
        self.log(f"{stage}/loss", loss, batch_size=size, sync_dist=True)
        predictions = self.generate(features)
        metric.update(predictions, batch["references"])
        if stage == "val" and len(self._media_rows) < self.hparams.media_rows:
            for path, prediction, refs in zip(batch["path"], predictions, batch["references"], strict=True):
                if len(self._media_rows) < self.hparams.media_rows:
                    self._media_rows.append((path, prediction, refs))

    def _log_bleu(self, stage: str, metric: CorpusBLEU) -> None:
        scores = metric.compute()  # already reduced over processes (sum of n-gram counts)
        self.log_dict({f"{stage}/{name}_13a": value for name, value in scores.items()}, prog_bar=stage == "val")
        metric.reset()

    def on_validation_epoch_start(self) -> None:
        self._media_rows = []

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val", self.val_bleu)

    def on_validation_epoch_end(self) -> None:
        self._log_bleu("val", self.val_bleu)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test", self.test_bleu)

    def on_test_epoch_end(self) -> None:
        self._log_bleu("test", self.test_bleu)

    def media_samples(self) -> dict:
        """A table of validation images with the generated and the reference captions."""
        rows = [[Image(np.asarray(load_rgb(path)), caption=prediction), prediction, " | ".join(refs)]
                for path, prediction, refs in self._media_rows]
        return {"val_captions": Table(columns=["image", "prediction", "references"], rows=rows)} if rows else {}

    def on_predict_epoch_start(self) -> None:
        self._predictions = []

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        captions = self.generate(self.image_features(batch))
        results = [{"image_id": image_id, "caption": caption} for image_id, caption in zip(batch["image_id"], captions, strict=True)]
        self._predictions.extend(results)
        return results

    def on_predict_epoch_end(self) -> None:
        """Write all predictions as COCO results JSON (``[{"image_id", "caption"}]``) on rank zero."""
        results = self._predictions
        if dist.is_available() and dist.is_initialized():
            gathered: list[list[dict]] = [[] for _ in range(dist.get_world_size())]
            dist.all_gather_object(gathered, results)
            seen, results = set(), []
            for part in gathered:  # the distributed sampler may repeat items to even out ranks
                for item in part:
                    if item["image_id"] not in seen:
                        seen.add(item["image_id"])
                        results.append(item)
        if self.trainer.is_global_zero:
            datamodule = getattr(self.trainer, "datamodule", None)
            output = Path(getattr(getattr(datamodule, "hparams", {}), "predict_output", None)
                          or "runs/caption/predictions.json")
            output.parent.mkdir(parents=True, exist_ok=True)
            output.write_text(json.dumps(results, ensure_ascii=False, indent=1), "utf-8")
            rank_zero_info(f"caption: wrote {len(results)} captions to {output}")

    # ---------------------------------------------------------------------------------------- optim
    def configure_optimizers(self):
        """AdamW on the trainable parameters, linear warm-up then cosine decay (per step)."""
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warmup = min(self.hparams.warmup_steps, total // 2)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(total - warmup, 1))))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
