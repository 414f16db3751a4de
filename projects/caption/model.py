"""Image -> Turkish caption networks in the style of ClipCap (Mokady et al., 2021, arXiv 2111.09734).

    image --CLIP (frozen)--> embedding (512-d for ViT-B/32)
          --mapper--> prefix_length GPT-2 input embeddings ("prefix")
          --GPT-2 LM--> caption tokens, trained with next-token cross-entropy on the caption tokens only

Read top to bottom: the mapper settings, the MLP mapper (the original Turkish project's 512 -> 3840 -> 7680 =
10 x 768, tanh), ClipCap's transformer mapper, how CLIP and GPT-2 are built, the masked caption loss, and
generation with Hugging Face ``generate(inputs_embeds=prefix)`` (greedy or beam search). The LightningModule
that trains them is ``module.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection, GPT2Config, GPT2LMHeadModel

from common.errors import InputError
from common.hub import load_pretrained
from projects.caption.features import ClipImageEncoder

IGNORE_INDEX = -100  # label value ignored by the cross-entropy (prefix positions and padding)


@dataclass(frozen=True)
class MapperConfig:
    """``kind``: ``mlp`` (hidden size ``prefix_length * n_embd / 2`` unless ``hidden``) or ``transformer``
    (``clip_length`` tokens from the embedding, ``layers`` x ``heads``)."""

    kind: str = "mlp"
    prefix_length: int = 10
    hidden: int | None = None
    layers: int = 8
    heads: int = 8
    clip_length: int = 10


class MLPMapper(nn.Module):
    """ClipCap's MLP: ``clip_dim -> hidden -> prefix_length * embed_dim`` with tanh."""

    def __init__(self, clip_dim: int, embed_dim: int, prefix_length: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or prefix_length * embed_dim // 2  # 3840 for 10 x 768, as in the original
        self.prefix_length, self.embed_dim = prefix_length, embed_dim
        self.net = nn.Sequential(
            nn.Linear(clip_dim, hidden), nn.Tanh(), nn.Linear(hidden, prefix_length * embed_dim)
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features).view(-1, self.prefix_length, self.embed_dim)  # (B, P, E)


class TransformerMapper(nn.Module):
    """ClipCap's transformer mapper: the CLIP embedding becomes ``clip_length`` tokens, concatenated with
    ``prefix_length`` learned constants; after a transformer encoder the constants' outputs are the prefix."""

    def __init__(
        self,
        clip_dim: int,
        embed_dim: int,
        prefix_length: int,
        clip_length: int = 10,
        num_layers: int = 8,
        num_heads: int = 8,
    ) -> None:
        super().__init__()
        self.clip_length, self.embed_dim = clip_length, embed_dim
        self.linear = nn.Linear(clip_dim, clip_length * embed_dim)
        self.prefix_const = nn.Parameter(torch.randn(prefix_length, embed_dim))
        layer = nn.TransformerEncoderLayer(
            embed_dim,
            num_heads,
            dim_feedforward=2 * embed_dim,
            dropout=0.0,
            activation="relu",
            batch_first=True,
            norm_first=True,
        )
        self.transformer = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.linear(features).view(-1, self.clip_length, self.embed_dim)  # (B, C, E)
        const = self.prefix_const.unsqueeze(0).expand(x.shape[0], -1, -1)  # (B, P, E)
        return self.transformer(torch.cat([x, const], dim=1))[:, self.clip_length :]


def build_mapper(config: MapperConfig, clip_dim: int, embed_dim: int) -> nn.Module:
    if config.kind == "mlp":
        return MLPMapper(clip_dim, embed_dim, config.prefix_length, config.hidden)
    if config.kind == "transformer":
        return TransformerMapper(
            clip_dim, embed_dim, config.prefix_length, config.clip_length, config.layers, config.heads
        )
    raise InputError(f"model.init_args.mapper.kind must be 'mlp' or 'transformer', got '{config.kind}'")


def clip_embed_dim(clip: str | None, clip_config: dict | None) -> int:
    """The projected embedding size of a CLIP, from its config only (no weights are read)."""
    if clip_config is not None:
        return int(CLIPVisionConfig(**clip_config).projection_dim)
    if clip is None:
        raise InputError(
            "model.init_args: give clip_source (hub name or directory) or clip_config (a tiny CLIP)"
        )
    return int(
        load_pretrained(
            CLIPVisionConfig.from_pretrained, clip, what="model.init_args.clip_source"
        ).projection_dim
    )


def build_image_encoder(clip: str | None, clip_config: dict | None) -> ClipImageEncoder:
    """The frozen CLIP: ``clip`` is a hub name or a directory (the tiny CLIP ``prepare_data`` saved). A tiny CLIP
    whose directory is not prepared here is built from ``clip_config``: its weights then come from a checkpoint."""
    if clip_config is not None and (clip is None or not (Path(clip) / "config.json").exists()):
        rank_zero_info(f"caption: tiny CLIP {clip} not prepared here; its weights come from the checkpoint")
        return ClipImageEncoder(CLIPVisionModelWithProjection(CLIPVisionConfig(**clip_config)), "tiny-clip")
    if clip is None:
        raise InputError(
            "model.init_args: give clip_source (hub name or directory) or clip_config (a tiny CLIP)"
        )
    model = load_pretrained(
        CLIPVisionModelWithProjection.from_pretrained, clip, what="model.init_args.clip_source"
    )
    return ClipImageEncoder(model, clip if clip_config is None else "tiny-clip")


def build_decoder(
    decoder: str | None, decoder_config: dict | None, vocab_size: int | None
) -> GPT2LMHeadModel:
    """A pretrained GPT-2 (hub name or directory) or a tiny random one from ``decoder_config`` (``vocab_size``,
    linked from the data, wins over the config's)."""
    if decoder is not None:
        model = load_pretrained(GPT2LMHeadModel.from_pretrained, decoder, what="model.init_args.decoder")
        # from_pretrained returns eval mode and Lightning (>= 2.2) keeps each module's mode: without this GPT-2
        # would be fine-tuned with dropout off. Frozen variants are put in eval mode by FreezeUnfreeze.
        return model.train()
    if decoder_config is None:
        raise InputError(
            "model.init_args: give decoder (hub name or directory) or decoder_config (a tiny GPT-2)"
        )
    return GPT2LMHeadModel(
        GPT2Config(**(decoder_config | ({"vocab_size": vocab_size} if vocab_size else {})))
    )


def caption_loss(
    decoder: GPT2LMHeadModel, prefix: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """Next-token cross-entropy on caption tokens only.

    The decoder sees ``[prefix_1..prefix_P, tok_1..tok_T]``; labels are ``IGNORE_INDEX`` on the P prefix
    positions and on padding, so the loss is the mean over real caption tokens (incl. the end token) of
    ``-log p(tok_t | prefix, tok_<t)``; GPT-2 shifts labels by one internally.
    """
    batch, prefix_length = prefix.shape[:2]
    token_embeds = decoder.get_input_embeddings()(input_ids)  # (B, T, E)
    embeds = torch.cat([prefix.to(token_embeds.dtype), token_embeds], dim=1)  # (B, P + T, E)
    ones = torch.ones(batch, prefix_length, dtype=attention_mask.dtype, device=attention_mask.device)
    mask = torch.cat([ones, attention_mask], dim=1)
    ignore = torch.full((batch, prefix_length), IGNORE_INDEX, dtype=input_ids.dtype, device=input_ids.device)
    labels = torch.cat([ignore, input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)], dim=1)
    return decoder(inputs_embeds=embeds, attention_mask=mask, labels=labels).loss


@torch.no_grad()
def generate_from_prefix(
    decoder: GPT2LMHeadModel,
    prefix: torch.Tensor,
    stop_id: int,
    pad_id: int,
    num_beams: int,
    max_new_tokens: int,
) -> torch.Tensor:
    """Token ids after ``prefix``: greedy (``num_beams=1``) or beam search (score = sum of log-probs / length),
    stopping at ``stop_id`` or after ``max_new_tokens``; rows right-padded with ``pad_id``."""
    mask = torch.ones(prefix.shape[:2], dtype=torch.long, device=prefix.device)
    return decoder.generate(
        inputs_embeds=prefix,
        attention_mask=mask,
        max_new_tokens=max_new_tokens,
        num_beams=num_beams,
        do_sample=False,
        early_stopping=num_beams > 1,
        eos_token_id=stop_id,
        pad_token_id=pad_id,
        bos_token_id=stop_id,
        length_penalty=1.0,
    )
