"""FastText source embeddings: gensim/Facebook models, OOV subwords, caching, freezing, and surviving init."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.errors import InputError
from projects.pose.data import PoseDataModule
from projects.pose.embeddings import embedding_matrix, load_fasttext, train_fasttext
from projects.pose.formats import progress_counter, write_split
from projects.pose.module import PoseModule
from projects.pose.vocabulary import Vocabulary

SENTENCES = [
    ["okul", "ev", "gitmek"],
    ["ben", "okula", "gidiyorum"],
    ["ev", "güzel"],
    ["kitap", "okumak"],
] * 5
DIM = 8


@pytest.fixture(scope="module")
def gensim_model(tmp_path_factory):
    from gensim.models import FastText

    model = FastText(vector_size=DIM, window=2, min_count=1, min_n=2, max_n=4, workers=1, seed=1, bucket=2000)
    model.build_vocab(corpus_iterable=SENTENCES)
    model.train(corpus_iterable=SENTENCES, total_examples=len(SENTENCES), epochs=3)
    folder = tmp_path_factory.mktemp("fasttext")
    model.save(str(folder / "FastText_small.model"))
    from gensim.models.fasttext import save_facebook_model

    save_facebook_model(model, str(folder / "small.bin"))
    return model, folder


@pytest.mark.parametrize("filename", ["FastText_small.model", "small.bin"])
def test_load_gensim_and_facebook_models_with_oov_subwords(gensim_model, filename):
    model, folder = gensim_model
    vectors = load_fasttext(folder / filename)
    assert vectors.vector_size == DIM
    np.testing.assert_allclose(vectors["okul"], model.wv["okul"], rtol=1e-5, atol=1e-6)
    oov = "okullarımız"  # never seen: composed from character n-grams, shared with "okul"/"okula"
    assert oov not in vectors.key_to_index
    np.testing.assert_allclose(vectors[oov], model.wv[oov], rtol=1e-5, atol=1e-6)
    assert np.abs(vectors[oov]).sum() > 0

    vocab = Vocabulary(["okul", oov, "ev"])
    matrix, counts = embedding_matrix(vocab, vectors)
    assert counts == {"known_whole": 2, "from_ngrams": 1, "unk": 0, "special": 4}
    np.testing.assert_allclose(matrix[vocab.stoi[oov]].numpy(), model.wv[oov], rtol=1e-5, atol=1e-6)
    assert matrix[vocab.pad_index].abs().sum() == 0


def test_missing_fasttext_file_names_the_config_key(tmp_path):
    with pytest.raises(
        FileNotFoundError, match=r"data.init_args.fasttext_path: FastText model file .*nope.bin"
    ):
        load_fasttext(tmp_path / "nope.bin")
    write_split(tmp_path / "train", ["okul ev"], [frames(4)], ["a"])
    dm = PoseDataModule(
        train=str(tmp_path / "train"),
        dev=str(tmp_path / "train"),
        trg_size=6,
        fasttext_path=str(tmp_path / "FastText_large.model"),
        cache_dir=str(tmp_path / "prep"),
    )
    with pytest.raises(FileNotFoundError, match="FastText_large.model' does not exist"):
        dm.prepare_data()


def frames(n: int) -> np.ndarray:
    return np.concatenate([np.random.default_rng(n).normal(size=(n, 6)), progress_counter(n)[:, None]], 1)


def test_trained_fasttext_is_cached(tmp_path):
    first = train_fasttext(SENTENCES, tmp_path, vector_size=DIM, epochs=2)
    cached = list(tmp_path.glob("fasttext_*.model"))
    assert len(cached) == 1
    mtime = cached[0].stat().st_mtime_ns
    second = train_fasttext(SENTENCES, tmp_path, vector_size=DIM, epochs=2)
    assert cached[0].stat().st_mtime_ns == mtime  # reused, not retrained
    np.testing.assert_array_equal(first["okul"], second["okul"])
    train_fasttext(SENTENCES[:3], tmp_path, vector_size=DIM, epochs=2)  # other sentences: another cache file
    assert len(list(tmp_path.glob("fasttext_*.model"))) == 2


def module_with_fasttext(path, freeze: bool, tmp_path) -> PoseModule:
    write_split(tmp_path / "train", ["okul ev", "kitaplar okul"], [frames(4), frames(5)], ["a", "b"])
    dm = PoseDataModule(
        train=str(tmp_path / "train"),
        dev=str(tmp_path / "train"),
        trg_size=6,
        fasttext_path=str(path),
        cache_dir=str(tmp_path / "prep"),
    )
    dm.prepare_data()  # "kitaplar" is not in FastText's vocabulary
    torch.manual_seed(0)
    block = {
        "hidden_size": 16,
        "num_heads": 2,
        "num_layers": 1,
        "ff_size": 32,
        "embeddings": {"embedding_dim": DIM},
    }
    module = PoseModule(
        trg_size=6,
        encoder=block,
        decoder={k: v for k, v in block.items() if k != "embeddings"},
        freeze_embeddings=freeze,
        prepared=dm.prepared_path,
    )
    module.setup("fit")
    return module


@pytest.mark.parametrize("freeze", [True, False])
def test_fasttext_vectors_survive_init_and_freeze_option(gensim_model, freeze, tmp_path):
    model, folder = gensim_model
    module = module_with_fasttext(folder / "FastText_small.model", freeze, tmp_path)
    weight = module.net.src_embed.weight
    for word in ("okul", "ev", "kitaplar"):
        np.testing.assert_allclose(
            weight[module.vocab.stoi[word]].detach().numpy(), model.wv[word], rtol=1e-5, atol=1e-6
        )
    loaded = weight.detach().clone()
    # the Turkish fork re-initialised every "embed" parameter after loading: here init skips src_embed
    module.net.reset_parameters("xavier")
    module.net.reset_parameters("normal")
    torch.testing.assert_close(module.net.src_embed.weight.detach(), loaded)
    assert module.net.src_embed.weight.requires_grad is (not freeze)

    sequence = torch.cat([torch.randn(1, 5, 6), torch.from_numpy(progress_counter(5))[None, :, None]], dim=-1)
    batch = {
        "tokens": [["okul", "kitaplar"]],
        "frames": sequence,
        "lengths": torch.tensor([5]),
        "start_frames": torch.zeros(1, 7),
    }
    optimizer = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=1e-2)
    output, targets, mask = module.forward_batch(batch)
    module._loss(output, targets, mask).backward()
    optimizer.step()
    changed = not torch.equal(module.net.src_embed.weight.detach(), loaded)
    assert changed is (not freeze)


def test_vocabulary_from_training_split_only(tmp_path):
    write_split(tmp_path / "train", ["Okul ev.", "IRMAK ılık!"], [frames(4), frames(5)], ["a", "b"])
    write_split(tmp_path / "dev", ["Sadece dev kelimesi."], [frames(3)], ["c"])
    dm = PoseDataModule(
        train=str(tmp_path / "train"),
        dev=str(tmp_path / "dev"),
        test=None,
        trg_size=6,
        fasttext_dim=DIM,
        fasttext_epochs=1,
        cache_dir=str(tmp_path / "prep"),
    )
    dm.prepare_data()
    module = PoseModule(trg_size=6, encoder={"embeddings": {"embedding_dim": DIM}}, prepared=dm.prepared_path)
    module.setup("fit")
    assert set(module.vocab.itos) == {
        "<unk>",
        "<pad>",
        "<s>",
        "</s>",
        "okul",
        "ev",
        ".",
        "ırmak",
        "ılık",
        "!",
    }
    assert module.vocab.encode(["sadece"], add_eos=False) == [module.vocab.stoi["<unk>"]]
    assert module.net.src_embed.weight.shape == (len(module.vocab), DIM)


def test_train_command_writes_a_model_configs_can_use(tmp_path, capsys):
    """python -m projects.pose.embeddings train CORPUS OUT: gensim .model or Facebook .bin, OOV by subwords."""
    from projects.pose.embeddings import main

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("Okul çok güzel.\nBen okula gidiyorum.\nKitaplar evde.\n" * 10, encoding="utf-8")
    for name in ("tr.model", "tr.bin"):
        main(["train", str(corpus), str(tmp_path / name), "--dim", "8", "--epochs", "2", "--bucket", "2000"])
        assert "FastText 8-d on 30 sentences" in capsys.readouterr().out
        vectors = load_fasttext(tmp_path / name)
        assert vectors.vector_size == 8 and "okul" in vectors.key_to_index  # lower-cased as data.lowercase
        assert "okullarımız" not in vectors.key_to_index and np.abs(vectors["okullarımız"]).sum() > 0
    corpus.write_bytes("Okul güzel\nIşık\n".encode("cp1254"))
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(corpus), str(tmp_path / "x.model")])
    assert exit_info.value.code == 2 and "corpus.txt:1: not UTF-8" in capsys.readouterr().err


def test_train_command_with_side_files_writes_a_loadable_model(tmp_path, capsys):
    """Issue 23: gensim keeps arrays of >= 10,485,760 values (bucket x dim) in side files; the README's command
    (200,000 buckets) with dim 53 is the smallest such case. Every file of the model must land under its name."""
    from projects.pose.embeddings import main

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("Okul güzel.\nBen okula gidiyorum.\n", encoding="utf-8")
    out = tmp_path / "FastText_large.model"
    main(["train", str(corpus), str(out), "--dim", "53", "--epochs", "1", "--bucket", "200000"])
    assert "(with its side files FastText_large.model.wv.vectors_ngrams.npy: keep" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "FastText_large.model",
        "FastText_large.model.wv.vectors_ngrams.npy",
        "corpus.txt",
    ]
    vectors = load_fasttext(out)
    assert vectors.vectors_ngrams.shape == (200000, 53) and np.abs(vectors["okullarımız"]).sum() > 0
    (tmp_path / "FastText_large.model.wv.vectors_ngrams.npy").unlink()  # copied without its side file
    with pytest.raises(
        FileNotFoundError, match=r"needs its side file .*FastText_large.model.wv.vectors_ngrams.npy"
    ) as error:
        load_fasttext(out)
    assert isinstance(error.value, InputError) and "\n" not in str(error.value)


def test_trained_fasttext_cache_with_side_files_is_reused(tmp_path):
    """The automatic cache: 20,000 buckets x 525 dims = 10.5M values goes to a side file; it must be found."""
    first = train_fasttext(SENTENCES[:4], tmp_path, vector_size=525, epochs=1)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len(names) == 2 and names[1] == f"{names[0]}.wv.vectors_ngrams.npy"
    mtime = (tmp_path / names[0]).stat().st_mtime_ns
    second = train_fasttext(SENTENCES[:4], tmp_path, vector_size=525, epochs=1)
    assert (tmp_path / names[0]).stat().st_mtime_ns == mtime  # loaded, not rebuilt
    np.testing.assert_array_equal(first["okullarımız"], second["okullarımız"])


def test_prepare_log_separates_known_whole_ngram_and_unk_words(gensim_model, tmp_path, caplog):
    """Issue 23: the log counted words FastText knows whole as "subword"; now each kind is its own figure."""
    import logging

    from projects.pose.embeddings import embedding_report

    model, folder = gensim_model
    vectors = load_fasttext(folder / "FastText_small.model")
    vocab = Vocabulary(["okul", "ev", "okullarımız", "kitaplar"])
    _, counts = embedding_matrix(vocab, vectors)
    assert counts == {"known_whole": 2, "from_ngrams": 2, "unk": 0, "special": 4}
    assert embedding_report(counts) == (
        "source embeddings from FastText: 8 tokens: 2 known whole to FastText, 2 built from character n-grams, "
        "0 with no FastText vector (random, as <unk>), 4 specials"
    )
    with caplog.at_level(logging.INFO):
        module_with_fasttext(folder / "FastText_small.model", False, tmp_path)  # "kitaplar" is unseen
    assert "7 tokens: 2 known whole to FastText, 1 built from character n-grams, 0 with no" in caplog.text


def test_random_source_embeddings_switch_prepares_no_fasttext(tmp_path):
    """``src_embeddings: random`` (PT's own randomly initialised embeddings): no FastText is trained or loaded;
    the prepared artefact carries the vocabulary with ``embeddings: None`` for the model to initialise."""
    write_split(tmp_path / "train", ["okul ev", "kitaplar okul"], [frames(4), frames(5)], ["a", "b"])
    dm = PoseDataModule(
        train=str(tmp_path / "train"),
        dev=str(tmp_path / "train"),
        trg_size=6,
        src_embeddings="random",
        cache_dir=str(tmp_path / "prep"),
    )
    dm.prepare_data()
    prepared = torch.load(dm.prepared_path, weights_only=True)
    assert prepared["src_embeddings"] == "random"
    assert prepared["embeddings"] is None and prepared["fasttext_path"] is None
    assert prepared["vocab"][4:] == ["okul", "ev", "kitaplar"]
    assert not (tmp_path / "prep" / "fasttext").exists()
    fasttext = PoseDataModule(train=str(tmp_path / "train"), dev=str(tmp_path / "train"), trg_size=6)
    assert fasttext.prepared_path != dm.prepared_path  # the switch is part of the cache key
    with pytest.raises(
        InputError, match=r"src_embeddings must be one of \('fasttext', 'random'\), got 'glove'"
    ):
        PoseDataModule(src_embeddings="glove")
