"""FastText word vectors (gensim) for the source embedding layer.

Either a pretrained model (``.bin`` in Facebook's format, or a gensim ``.model`` such as the Turkish project's
``FastText_large.model``) or, when none is configured, a small FastText trained on the training sentences and
cached by content hash. Words missing from the FastText vocabulary get vectors composed from their character
n-grams, which is why FastText (not word2vec) is used for an agglutinative language like Turkish.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info

from common.errors import InputError, MissingInputError
from common.io import atomic_path
from projects.pose.text import PAD, Vocabulary


def load_fasttext(path: str | Path, what: str = "model.init_args.fasttext_path"):
    """FastText keyed vectors (with subword n-grams) from ``.bin`` (Facebook) or a gensim ``.model`` file."""
    from gensim.models import FastText
    from gensim.models.fasttext import load_facebook_vectors

    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingInputError(f"{what}: FastText model file '{path}' does not exist")
    if path.suffix == ".bin":
        return load_facebook_vectors(str(path))
    vectors = FastText.load(str(path)).wv
    if not hasattr(vectors, "buckets_word"):
        raise InputError(f"{what}: '{path}' is not a FastText model (no subword n-grams)")
    return vectors


def train_fasttext(
    sentences: list[list[str]],
    cache_dir: str | Path,
    vector_size: int = 64,
    epochs: int = 30,
    min_n: int = 2,
    max_n: int = 5,
    seed: int = 1,
):
    """Train (or reuse from ``cache_dir``) a FastText model on tokenised training sentences; return its vectors."""
    from gensim.models import FastText

    settings = {"vector_size": vector_size, "epochs": epochs, "min_n": min_n, "max_n": max_n, "seed": seed}
    digest = hashlib.sha1(json.dumps([settings, sentences], ensure_ascii=False).encode("utf-8")).hexdigest()[:16]
    path = Path(cache_dir) / f"fasttext_{digest}.model"
    if path.is_file():
        return FastText.load(str(path)).wv
    rank_zero_info(f"training FastText ({vector_size}-d) on {len(sentences)} sentences -> {path}")
    model = FastText(vector_size=vector_size, window=3, min_count=1, min_n=min_n, max_n=max_n, sg=1,
                     workers=1, seed=seed, bucket=20000)
    model.build_vocab(corpus_iterable=sentences)
    model.train(corpus_iterable=sentences, total_examples=len(sentences), epochs=epochs)
    with atomic_path(path) as temporary:  # every DDP rank may train it; readers never see half a file
        model.save(str(temporary), separately=[])  # one file: no side-car .npy arrays to rename
    return model.wv


def embedding_matrix(vocab: Vocabulary, vectors, seed: int = 0) -> tuple[torch.Tensor, dict[str, int]]:
    """``len(vocab) x dim`` matrix: FastText vectors for every token (n-gram composed when out of FastText's
    vocabulary), zeros for ``<pad>``, small random vectors for the other specials.

    Returns the matrix and counts of how each row was filled.
    """
    generator = np.random.default_rng(seed)
    dim = vectors.vector_size
    matrix = np.zeros((len(vocab), dim), dtype=np.float32)
    counts = {"in_vocab": 0, "subword": 0, "special": 0, "missing": 0}
    for index, token in enumerate(vocab.itos):
        if token.startswith("<") and token.endswith(">"):
            if token != PAD:
                matrix[index] = generator.normal(0.0, 0.1, dim)
            counts["special"] += 1
        elif token in vectors.key_to_index:
            matrix[index] = vectors[token]
            counts["in_vocab"] += 1
        else:
            try:
                matrix[index] = vectors[token]  # composed from character n-grams
                counts["subword"] += 1
            except KeyError:
                matrix[index] = generator.normal(0.0, 0.1, dim)
                counts["missing"] += 1
    return torch.from_numpy(matrix), counts
