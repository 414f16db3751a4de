"""FastText word vectors (gensim) for the source embedding layer.

Either a pretrained model (``.bin`` in Facebook's format, or a gensim ``.model`` such as the Turkish project's
``FastText_large.model``) or, when none is configured, a small FastText trained on the training sentences and
cached by content hash. Words missing from the FastText vocabulary get vectors composed from their character
n-grams, which is why FastText (not word2vec) is used for an agglutinative language like Turkish.

Train one on a text-only corpus (one sentence per line, UTF-8), then point ``data.init_args.fasttext_path`` at it:

    python -m projects.pose.embeddings train corpus.txt FastText_large.model --dim 256
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info

from common.errors import InputError, MissingInputError
from common.io import atomic_file_group, load_cache, read_lines
from projects.pose.vocabulary import PAD, PUNCTUATION_MODES, SPECIALS, Vocabulary, tokenize


def load_fasttext(path: str | Path, what: str = "data.init_args.fasttext_path"):
    """FastText keyed vectors (with subword n-grams) from ``.bin`` (Facebook) or a gensim ``.model`` file."""
    from gensim.models import FastText
    from gensim.models.fasttext import load_facebook_vectors

    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingInputError(f"{what}: FastText model file '{path}' does not exist")
    if path.suffix == ".bin":
        return load_facebook_vectors(str(path))
    try:
        vectors = FastText.load(str(path)).wv
    except FileNotFoundError as error:  # gensim keeps arrays of 10M+ values in side files next to the model
        raise MissingInputError(
            f"{what}: FastText model '{path}' needs its side file '{error.filename}', which does not exist; "
            f"keep every '{path.name}.*' file next to the model"
        ) from None
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
    """Train (or reuse from ``cache_dir``) a FastText model on tokenised training sentences; return its vectors.

    A cache that cannot be loaded (truncated, empty, another gensim's format) is removed with one warning and
    trained again."""
    from gensim.models import FastText

    path = fasttext_cache_path(sentences, cache_dir, vector_size, epochs, min_n, max_n, seed)
    cached = load_cache(path, lambda p: FastText.load(str(p)).wv, "FastText cache")
    if cached is not None:
        return cached
    rank_zero_info(f"training FastText ({vector_size}-d) on {len(sentences)} sentences -> {path}")
    model = fit_fasttext(sentences, vector_size, epochs, min_n, max_n, seed, bucket=20000, min_count=1)
    save_fasttext(model, path)
    return model.wv


def save_fasttext(model, path: str | Path) -> None:
    """Write ``model`` to ``path`` as one unit: Facebook's single ``.bin`` file, or a gensim ``.model`` with the
    side files gensim adds for arrays of 10,485,760+ values (``<path>.wv.vectors_ngrams.npy``: ``bucket x dim``,
    e.g. the default 200,000 buckets at any dim >= 53). The side files land before the main file, so a reader
    that finds the model finds its arrays."""
    with atomic_file_group(path) as temporary:
        if Path(path).suffix == ".bin":
            from gensim.models.fasttext import save_facebook_model

            save_facebook_model(model, str(temporary))
        else:
            model.save(str(temporary))


def fasttext_cache_path(
    sentences: list[list[str]],
    cache_dir: str | Path,
    vector_size: int = 64,
    epochs: int = 30,
    min_n: int = 2,
    max_n: int = 5,
    seed: int = 1,
) -> Path:
    """Where :func:`train_fasttext` caches the model for these sentences and settings."""
    settings = {"vector_size": vector_size, "epochs": epochs, "min_n": min_n, "max_n": max_n, "seed": seed}
    digest = hashlib.sha1(json.dumps([settings, sentences], ensure_ascii=False).encode("utf-8")).hexdigest()[
        :16
    ]
    return Path(cache_dir) / f"fasttext_{digest}.model"


def fit_fasttext(
    sentences: list[list[str]],
    vector_size: int,
    epochs: int,
    min_n: int = 2,
    max_n: int = 5,
    seed: int = 1,
    bucket: int = 20000,
    min_count: int = 1,
):
    """A skip-gram FastText model trained on tokenised sentences (one worker: deterministic for a seed)."""
    from gensim.models import FastText

    model = FastText(
        vector_size=vector_size,
        window=3,
        min_count=min_count,
        min_n=min_n,
        max_n=max_n,
        sg=1,
        workers=1,
        seed=seed,
        bucket=bucket,
    )
    model.build_vocab(corpus_iterable=sentences)
    model.train(corpus_iterable=sentences, total_examples=len(sentences), epochs=epochs)
    return model


def fasttext_kind(vectors, token: str) -> str:
    """How FastText embeds ``token``: ``"whole"`` (a word of its own vocabulary), ``"ngrams"`` (composed from the
    character n-grams it knows: an unseen inflection such as ``okullarımız``) or ``"unk"`` (no vector)."""
    if token in vectors.key_to_index:
        return "whole"
    return "ngrams" if word_vector(vectors, token) is not None else "unk"


def embedding_matrix(vocab: Vocabulary, vectors, seed: int = 0) -> tuple[torch.Tensor, dict[str, int]]:
    """``len(vocab) x dim`` matrix: FastText vectors for every token (n-gram composed when out of FastText's
    vocabulary), zeros for ``<pad>``, small random vectors for the other specials and for tokens FastText cannot
    embed at all.

    Returns the matrix and how many rows were filled each way (``known_whole``, ``from_ngrams``, ``unk``,
    ``special``).
    """
    generator = np.random.default_rng(seed)
    dim = vectors.vector_size
    matrix = np.zeros((len(vocab), dim), dtype=np.float32)
    counts = {"known_whole": 0, "from_ngrams": 0, "unk": 0, "special": 0}
    for index, token in enumerate(vocab.itos):
        if token in SPECIALS:
            if token != PAD:
                matrix[index] = generator.normal(0.0, 0.1, dim)
            counts["special"] += 1
            continue
        kind = fasttext_kind(vectors, token)
        if kind == "unk":
            matrix[index] = generator.normal(0.0, 0.1, dim)
        else:
            matrix[index] = vectors[token]
        counts[{"whole": "known_whole", "ngrams": "from_ngrams", "unk": "unk"}[kind]] += 1
    return torch.from_numpy(matrix), counts


def embedding_report(counts: dict[str, int]) -> str:
    """The log line of :func:`embedding_matrix`'s counts."""
    total = sum(counts.values())
    return (
        f"source embeddings from FastText: {total} tokens: {counts['known_whole']} known whole to FastText, "
        f"{counts['from_ngrams']} built from character n-grams, {counts['unk']} with no FastText vector "
        f"(random, as <unk>), {counts['special']} specials"
    )


def word_vector(vectors, token: str) -> np.ndarray | None:
    """FastText's vector for ``token`` (its own, or composed from character n-grams), None when it has none."""
    try:
        vector = vectors[token]
    except KeyError:
        return None
    return vector if np.any(vector) else None  # no known n-gram: gensim returns zeros


def main(argv: list[str] | None = None) -> None:
    """``python -m projects.pose.embeddings train CORPUS OUT``: a FastText model for ``fasttext_path``."""
    parser = argparse.ArgumentParser(
        prog="python -m projects.pose.embeddings",
        description="Train FastText on a text-only corpus (one sentence per line).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser(
        "train",
        help="train a FastText model; OUT ending in .bin is Facebook's format, anything else a gensim .model",
    )
    train.add_argument("corpus", type=Path)
    train.add_argument("out", type=Path)
    train.add_argument("--dim", type=int, default=256, help="vector size (the seed used 256)")
    train.add_argument("--epochs", type=int, default=10)
    train.add_argument("--min-count", type=int, default=1)
    train.add_argument("--min-n", type=int, default=2)
    train.add_argument("--max-n", type=int, default=5)
    train.add_argument("--bucket", type=int, default=200000, help="hash buckets for character n-grams")
    train.add_argument("--seed", type=int, default=1)
    train.add_argument(
        "--lowercase",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Turkish lower-casing, as data.lowercase (default on)",
    )
    train.add_argument(
        "--punctuation", choices=PUNCTUATION_MODES, default="split", help="as data.punctuation"
    )
    args = parser.parse_args(argv)
    try:
        sentences = [tokenize(line, args.lowercase, args.punctuation) for line in read_lines(args.corpus)]
    except InputError as error:
        sys.stderr.write(f"{error}\n")
        raise SystemExit(2) from None
    sentences = [s for s in sentences if s]
    if not sentences:
        sys.stderr.write(f"{args.corpus}: no sentences\n")
        raise SystemExit(2)
    model = fit_fasttext(
        sentences, args.dim, args.epochs, args.min_n, args.max_n, args.seed, args.bucket, args.min_count
    )
    save_fasttext(model, args.out)
    tokens = sum(len(s) for s in sentences)
    side = sorted(p.name for p in args.out.parent.glob(f"{glob.escape(args.out.name)}.*"))
    print(
        f"FastText {args.dim}-d on {len(sentences)} sentences ({tokens} tokens, {len(model.wv)} words) -> {args.out}"
        + (f" (with its side files {', '.join(side)}: keep them next to it)" if side else "")
    )


if __name__ == "__main__":
    main()
