"""Text encoder: a Hugging Face T5-family encoder (``google/mt5-small`` ...) by name or local directory, or a tiny
random T5 whose sentencepiece-style Unigram tokenizer is prepared once from the captions (tests, default CPU run).

The tiny tokenizer is data preparation, not model construction: :meth:`ShapeDataModule.prepare_data` (or
``python -m projects.shape3d.prepare``) writes it with :func:`prepare_tokenizer`; the model is built from its size
alone (``text_vocab_size``, linked from the datamodule) and loads it on first use.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from common.errors import InputError
from common.io import load_cache, read_text

TINY = "tiny"
TURKISH_ALPHABET = (
    "abcçdefgğhıijklmnoöprsştuüvyzqwx0123456789 .,"  # in every tiny corpus: no letter is unknown
)
SPECIAL_TOKENS = ["<pad>", "</s>", "<unk>"]  # ids 0, 1, 2: the trainer puts special tokens first
PAD_ID, EOS_ID = 0, 1
STAMP = "corpus.sha1"


def corpus_digest(texts: list[str], vocab_size: int) -> str:
    return hashlib.sha1(json.dumps([sorted(set(texts)), vocab_size], ensure_ascii=False).encode()).hexdigest()


def load_tokenizer(directory: str | Path):
    """The tokenizer saved by :func:`prepare_tokenizer`, checked to have the special ids the tiny T5 expects."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    if (tokenizer.pad_token_id, tokenizer.eos_token_id) != (PAD_ID, EOS_ID):
        raise ValueError(f"pad/eos ids {tokenizer.pad_token_id}/{tokenizer.eos_token_id}, expected 0/1")
    return tokenizer


def prepare_tokenizer(texts: list[str], directory: str | Path, vocab_size: int = 300):
    """Train a Unigram tokenizer on ``texts`` and save it under ``directory``, or reuse the saved one when it was
    trained on the same corpus (a damaged one is rebuilt with one warning). Written atomically: the tokenizer is
    saved in a temporary folder next to ``directory`` and renamed, so another process sees all of it or none.

    Unigram + Metaspace is what T5/mT5's sentencepiece models are, so the tiny and real paths see the same kind
    of pieces; saving it keeps runs reproducible and lets ``predict`` reload exactly the same vocabulary.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    directory = Path(directory)
    digest = corpus_digest(texts, vocab_size)

    def load_if_same_corpus(path: Path):
        stamp = path / STAMP
        if not stamp.exists() or read_text(stamp) != digest:
            return None  # another corpus: retrained below
        return load_tokenizer(path)

    existing = load_cache(directory, load_if_same_corpus, what="shape3d tokenizer")
    if existing is not None:
        return existing
    tokenizer = Tokenizer(models.Unigram())
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, unk_token="<unk>")
    tokenizer.train_from_iterator(sorted(set(texts)), trainer)
    tokenizer.post_processor = TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", tokenizer.token_to_id("</s>"))]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    directory.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        fast.save_pretrained(str(temporary))
        (temporary / STAMP).write_text(digest, encoding="utf-8")
        if directory.exists():  # a tokenizer of another corpus
            shutil.rmtree(directory)
        try:
            os.replace(temporary, directory)
        except OSError:  # another process (a second DDP rank) renamed its identical copy first
            if load_if_same_corpus(directory) is None:
                raise
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return load_tokenizer(directory)


class TextEncoder(nn.Module):
    """Texts -> one vector each: the T5 encoder's last hidden states, mean-pooled over real tokens.

    ``name``: ``"tiny"`` (a random T5 config with ``vocab_size`` embeddings; its tokenizer, prepared in
    ``tokenizer_dir`` by :func:`prepare_tokenizer`, is loaded on first use), a hub name such as
    ``google/mt5-small`` / ``google/t5-v1_1-base``, or a local directory made by ``save_pretrained``.
    """

    def __init__(
        self,
        name: str = TINY,
        tokenizer_dir: str | Path | None = None,
        vocab_size: int | None = None,
        d_model: int = 64,
        num_layers: int = 2,
        num_heads: int = 4,
        max_length: int = 32,
    ) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoTokenizer, MT5EncoderModel, T5Config, T5EncoderModel

        from common.hub import load_pretrained

        self.max_length = max_length
        self.tokenizer_dir = tokenizer_dir
        self._tokenizer = None
        if name == TINY:
            if tokenizer_dir is None or not vocab_size:
                raise InputError(
                    "text_encoder 'tiny' needs tokenizer_dir and text_vocab_size (linked from the datamodule, "
                    "which prepares the tokenizer)"
                )
            config = T5Config(
                vocab_size=vocab_size,
                d_model=d_model,
                d_kv=d_model // num_heads,
                d_ff=2 * d_model,
                num_layers=num_layers,
                num_heads=num_heads,
                dropout_rate=0.0,
                feed_forward_proj="gated-gelu",
                pad_token_id=PAD_ID,
                eos_token_id=EOS_ID,
                decoder_start_token_id=0,
            )
            self.encoder = T5EncoderModel(config)
        else:
            what = "model.init_args.text_encoder"
            config = load_pretrained(AutoConfig.from_pretrained, name, what=what)
            model_class = MT5EncoderModel if config.model_type == "mt5" else T5EncoderModel
            self._tokenizer = load_pretrained(AutoTokenizer.from_pretrained, name, what=what)
            self.encoder = load_pretrained(model_class.from_pretrained, name, what=what)
        # T5 ties the input embedding as two modules sharing one weight; make it one module, so code that walks
        # modules (Lightning's BaseFinetuning, used by FreezeUnfreeze) does not add the same parameter twice
        stack = self.encoder.get_encoder() if hasattr(self.encoder, "get_encoder") else self.encoder.encoder
        if (
            stack.embed_tokens is not self.encoder.shared
            and stack.embed_tokens.weight is self.encoder.shared.weight
        ):
            stack.embed_tokens = self.encoder.shared
        self.dim = self.encoder.config.d_model

    @property
    def tokenizer(self):
        """The tokenizer; the tiny one is loaded from ``tokenizer_dir`` on first use (after data preparation)."""
        if self._tokenizer is None:
            path = Path(self.tokenizer_dir)
            if not (path / STAMP).exists():
                raise InputError(
                    f"model.init_args.tokenizer_dir: no prepared tokenizer in '{path}'; run `tgm fit` (the "
                    "datamodule's prepare_data builds it) or `python -m projects.shape3d.prepare --config ...`"
                )
            tokenizer = load_tokenizer(path)
            vocab_size = self.encoder.config.vocab_size
            if len(tokenizer) > vocab_size:
                raise InputError(
                    f"model.init_args.tokenizer_dir: the tokenizer in '{path}' has {len(tokenizer)} pieces but the "
                    f"model was built for {vocab_size} (text_vocab_size); prepare the data the model was trained on"
                )
            self._tokenizer = tokenizer
        return self._tokenizer

    def forward(self, texts: list[str]) -> torch.Tensor:
        batch = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.encoder.device)
        hidden = self.encoder(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
