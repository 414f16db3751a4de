"""FastText source embeddings: gensim/Facebook models, OOV subwords, caching, freezing, and surviving init."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from projects.pose.data import PoseDataModule
from projects.pose.embeddings import embedding_matrix, load_fasttext, train_fasttext
from projects.pose.formats import progress_counter, write_split
from projects.pose.module import PoseModule
from projects.pose.text import Vocabulary

SENTENCES = [["okul", "ev", "gitmek"], ["ben", "okula", "gidiyorum"], ["ev", "güzel"], ["kitap", "okumak"]] * 5
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
    assert counts == {"in_vocab": 2, "subword": 1, "special": 4, "missing": 0}
    np.testing.assert_allclose(matrix[vocab.stoi[oov]].numpy(), model.wv[oov], rtol=1e-5, atol=1e-6)
    assert matrix[vocab.pad_index].abs().sum() == 0


def test_missing_fasttext_file_names_the_config_key(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"model.init_args.fasttext_path: FastText model file .*nope.bin"):
        load_fasttext(tmp_path / "nope.bin")
    module = PoseModule(trg_size=6, fasttext_path=str(tmp_path / "FastText_large.model"))
    with pytest.raises(FileNotFoundError, match="FastText_large.model' does not exist"):
        module.build_vocabulary(SENTENCES)


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


def module_with_fasttext(path, freeze: bool) -> PoseModule:
    torch.manual_seed(0)
    block = {"hidden_size": 16, "num_heads": 2, "num_layers": 1, "ff_size": 32, "embeddings": {"embedding_dim": DIM}}
    module = PoseModule(trg_size=6, encoder=block, decoder={k: v for k, v in block.items() if k != "embeddings"},
                        fasttext_path=str(path), freeze_embeddings=freeze)
    module.build_vocabulary([["okul", "ev"], ["kitaplar", "okul"]])  # "kitaplar" is not in FastText's vocabulary
    return module


@pytest.mark.parametrize("freeze", [True, False])
def test_fasttext_vectors_survive_init_and_freeze_option(gensim_model, freeze):
    model, folder = gensim_model
    module = module_with_fasttext(folder / "FastText_small.model", freeze)
    weight = module.net.src_embed.weight
    for word in ("okul", "ev", "kitaplar"):
        np.testing.assert_allclose(weight[module.vocab.stoi[word]].detach().numpy(), model.wv[word], rtol=1e-5,
                                   atol=1e-6)
    loaded = weight.detach().clone()
    # the Turkish fork re-initialised every "embed" parameter after loading: here init skips src_embed
    module.net.reset_parameters("xavier")
    module.net.reset_parameters("normal")
    torch.testing.assert_close(module.net.src_embed.weight.detach(), loaded)
    assert module.net.src_embed.weight.requires_grad is (not freeze)

    frames = torch.cat([torch.randn(1, 5, 6), torch.from_numpy(progress_counter(5))[None, :, None]], dim=-1)
    batch = {"tokens": [["okul", "kitaplar"]], "frames": frames, "lengths": torch.tensor([5])}
    optimizer = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=1e-2)
    output, targets, mask = module.forward_batch(batch)
    module._loss(output, targets, mask).backward()
    optimizer.step()
    changed = not torch.equal(module.net.src_embed.weight.detach(), loaded)
    assert changed is (not freeze)


def test_vocabulary_from_training_split_only(tmp_path):
    rng = np.random.default_rng(0)

    def sequences(count):
        return [np.concatenate([rng.normal(size=(4, 6)), progress_counter(4)[:, None]], 1) for _ in range(count)]

    write_split(tmp_path / "train", ["Okul ev.", "IRMAK ılık!"], sequences(2), ["a", "b"])
    write_split(tmp_path / "dev", ["Sadece dev kelimesi."], sequences(1), ["c"])
    dm = PoseDataModule(train=str(tmp_path / "train"), dev=str(tmp_path / "dev"), test=None, trg_size=6)
    dm.setup("fit")
    module = PoseModule(trg_size=6, fasttext_epochs=1, fasttext_cache_dir=str(tmp_path / "ft"),
                        encoder={"embeddings": {"embedding_dim": DIM}})
    module.build_vocabulary(dm.train_tokens())
    assert set(module.vocab.itos) == {"<unk>", "<pad>", "<bos>", "<eos>", "okul", "ev", ".", "ırmak", "ılık", "!"}
    assert module.vocab.encode(["sadece"], add_eos=False) == [module.vocab.stoi["<unk>"]]
    assert module.net.src_embed.weight.shape == (len(module.vocab), DIM)
