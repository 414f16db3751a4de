"""Text encoder: a Hugging Face T5-family encoder (``google/mt5-small`` ...) by name or local directory, or a tiny
random T5 with a sentencepiece-style Unigram tokenizer trained on the fly (tests, default CPU run)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import nn

TINY = "tiny"


def train_tiny_tokenizer(texts: list[str], directory: str | Path, vocab_size: int = 300):
    """Train (or reuse, when the corpus is unchanged) a Unigram tokenizer on ``texts``, saved under ``directory``.

    Unigram + Metaspace is what T5/mT5's sentencepiece models are, so the tiny and real paths see the same kind
    of pieces; saving it keeps runs reproducible and lets ``predict`` reload exactly the same vocabulary.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    directory = Path(directory)
    digest = hashlib.sha1(
        json.dumps([sorted(set(texts)), vocab_size], ensure_ascii=False).encode()
    ).hexdigest()
    stamp = directory / "corpus.sha1"
    if stamp.exists() and stamp.read_text() == digest:
        return AutoTokenizer.from_pretrained(str(directory))
    tokenizer = Tokenizer(models.Unigram())
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>"
    )
    tokenizer.train_from_iterator(sorted(set(texts)), trainer)
    tokenizer.post_processor = TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", tokenizer.token_to_id("</s>"))]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    directory.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(directory))
    stamp.write_text(digest)
    return fast


class TextEncoder(nn.Module):
    """Texts -> one vector each: the T5 encoder's last hidden states, mean-pooled over real tokens.

    ``name``: ``"tiny"`` (random T5 config, tokenizer trained on ``corpus`` and saved in ``tokenizer_dir``), a hub
    name such as ``google/mt5-small`` / ``google/t5-v1_1-base``, or a local directory made by ``save_pretrained``.
    """

    def __init__(
        self,
        name: str = TINY,
        corpus: list[str] | None = None,
        tokenizer_dir: str | Path | None = None,
        d_model: int = 64,
        num_layers: int = 2,
        num_heads: int = 4,
        max_length: int = 32,
    ) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoTokenizer, MT5EncoderModel, T5Config, T5EncoderModel

        from common.hub import load_pretrained

        self.max_length = max_length
        if name == TINY:
            if not corpus or tokenizer_dir is None:
                raise ValueError(
                    "TextEncoder('tiny') needs a corpus of texts and a tokenizer_dir to train its tokenizer"
                )
            self.tokenizer = train_tiny_tokenizer(corpus, tokenizer_dir)
            config = T5Config(
                vocab_size=len(self.tokenizer),
                d_model=d_model,
                d_kv=d_model // num_heads,
                d_ff=2 * d_model,
                num_layers=num_layers,
                num_heads=num_heads,
                dropout_rate=0.0,
                feed_forward_proj="gated-gelu",
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.tokenizer.eos_token_id,
                decoder_start_token_id=0,
            )
            self.encoder = T5EncoderModel(config)
        else:
            what = "model.init_args.text_encoder"
            config = load_pretrained(AutoConfig.from_pretrained, name, what=what)
            model_class = MT5EncoderModel if config.model_type == "mt5" else T5EncoderModel
            self.tokenizer = load_pretrained(AutoTokenizer.from_pretrained, name, what=what)
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

    def forward(self, texts: list[str]) -> torch.Tensor:
        batch = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.encoder.device)
        hidden = self.encoder(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
