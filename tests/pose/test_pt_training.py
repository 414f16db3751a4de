"""The original's training rules (issue 13): ``learning_rate_min`` ends training, ``patience`` counts validations
(also when ``validation_freq`` validates every N steps), embeddings/encoder freeze and scale, OOV words."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from common.errors import InputError
from projects.pose.data import PoseDataModule
from projects.pose.module import PoseModule
from tests.pose.pt_fixture import BLOCK, pt_datamodule, quiet_trainer, tiny_module

TRG = 6


def prepared_data(tmp_path) -> PoseDataModule:
    dm, _, _ = pt_datamodule(tmp_path, [12, 14, 16, 18], [12, 15], TRG, batch_size=1)
    dm.prepare_data()
    return dm


def test_learning_rate_min_ends_training(tmp_path):
    """The original stops once the learning rate is below learning_rate_min (here it was a floor and training
    went on to max_epochs)."""
    dm = prepared_data(tmp_path)
    module = tiny_module(dm, TRG, optimiser={"learning_rate": 1e-3, "learning_rate_min": 2e-3})
    run = quiet_trainer(max_epochs=5)
    run.fit(module, dm)
    assert run.global_step == 4  # one epoch of 4 batches, then the first validation ends it
    assert run.current_epoch <= 1


def test_patience_counts_validations_every_n_steps(tmp_path):
    """validation_freq (steps) -> val_check_interval: the plateau scheduler steps at every validation."""
    dm = prepared_data(tmp_path)
    module = tiny_module(dm, TRG, optimiser={"patience": 0, "decrease_factor": 0.5})
    run = quiet_trainer(max_epochs=2, val_check_interval=2, check_val_every_n_epoch=None)
    run.fit(module, dm)
    assert run.global_step == 8
    assert module._plateau.last_epoch == 4  # 4 validations (every 2 of 8 steps), 4 scheduler steps
    state = module._plateau.state_dict()
    assert state["patience"] == 0 and state["threshold_mode"] == "abs"


def test_embedding_freeze_and_scale_and_encoder_freeze(tmp_path):
    dm = prepared_data(tmp_path)
    scaled = tiny_module(
        dm,
        TRG,
        encoder={**BLOCK, "freeze": True, "embeddings": {"embedding_dim": 8, "scale": True, "freeze": True}},
    )
    scaled.setup("fit")
    assert not scaled.net.src_embed.weight.requires_grad
    assert not any(p.requires_grad for p in scaled.net.encoder_layers.parameters())
    assert all(p.requires_grad for p in scaled.net.decoder_layers.parameters())
    plain = tiny_module(dm, TRG)
    plain.setup("fit")
    plain.net.load_state_dict(scaled.net.state_dict())
    src = torch.tensor([[4, 5, 3]])
    # scale: the embedding times sqrt(embedding_dim) before the encoder, as the original's Embeddings
    plain.net.src_embed.weight.data *= math.sqrt(8)
    torch.testing.assert_close(scaled.net.encode(src, src != 1), plain.net.encode(src, src != 1))


@pytest.mark.parametrize("key", ["scale", "freeze"])
def test_decoder_embedding_options_are_rejected(key):
    with pytest.raises(InputError, match=f"decoder.embeddings.{key}"):
        PoseModule(trg_size=TRG, decoder={"embeddings": {"embedding_dim": 64, key: True}})


def two_sentence_data(tmp_path, **kwargs) -> PoseDataModule:
    """Two 4-frame PT-format sentences ("okul ev", "kitap okumak") as train and dev split."""
    from projects.pose.formats import progress_counter, write_split

    frames = [np.concatenate([np.zeros((4, TRG)), progress_counter(4)[:, None]], 1)] * 2
    write_split(tmp_path / "train", ["okul ev", "kitap okumak"], frames, ["a", "b"])
    return PoseDataModule(
        train=str(tmp_path / "train"),
        dev=str(tmp_path / "train"),
        test=None,
        trg_size=TRG,
        cache_dir=str(tmp_path / "prepared"),
        **kwargs,
    )


def test_oov_words_get_fasttext_subword_vectors(tmp_path):
    """A word never seen in training is embedded from FastText's character n-grams, not <unk>; the share of
    words that fell back is reported."""
    from gensim.models import FastText

    sentences = [["okul", "ev", "gitmek"], ["ben", "okula", "gidiyorum"], ["kitap", "okumak"]] * 5
    model = FastText(vector_size=8, window=2, min_count=1, min_n=2, max_n=4, workers=1, seed=1, bucket=2000)
    model.build_vocab(corpus_iterable=sentences)
    model.train(corpus_iterable=sentences, total_examples=len(sentences), epochs=2)
    model.save(str(tmp_path / "ft.model"))
    dm = two_sentence_data(tmp_path, fasttext_path=str(tmp_path / "ft.model"))
    dm.prepare_data()
    module = tiny_module(dm, TRG)
    module.setup("fit")
    oov = "okullarımız"
    assert oov not in module.vocab.stoi
    module.on_predict_epoch_start()
    src, mask, vectors, vector_mask = module.encode_tokens([["okul", oov, "ev"]], subwords=True)
    assert vector_mask.tolist() == [[False, True, False, False]]  # the last position is <eos>
    np.testing.assert_allclose(vectors[0, 1].numpy(), model.wv[oov], rtol=1e-5, atol=1e-6)
    assert module._token_counts == {"tokens": 3, "whole": 0, "ngrams": 1, "unk": 0}
    # "gitmek" is outside the training vocabulary but a word FastText knows whole: counted as such (issue 23)
    module.on_predict_epoch_start()
    module.encode_tokens([["gitmek", oov]], subwords=True)
    assert module._token_counts == {"tokens": 2, "whole": 1, "ngrams": 1, "unk": 0}
    module.on_predict_epoch_start()
    module.encode_tokens([["okul", oov, "ev"]], subwords=True)
    # the encoder consumes the vector: the same as a vocabulary holding the word with that vector as its row
    with torch.no_grad():
        x = module.net.encode(src, mask, vectors, vector_mask)
        weight = module.net.src_embed.weight
        module.net.src_embed = torch.nn.Embedding.from_pretrained(
            torch.cat([weight, torch.from_numpy(model.wv[oov])[None]]), padding_idx=1
        )
        y = module.net.encode(torch.tensor([[int(src[0, 0]), len(weight), *src[0, 2:].tolist()]]), mask)
    torch.testing.assert_close(x, y)
    assert int(src[0, 1]) == module.vocab.stoi["<unk>"]
    # without the FastText file (moved away): one warning, then <unk>, and predict reports the share
    module._fasttext, module.fasttext_path = None, str(tmp_path / "gone.model")
    module.on_predict_epoch_start()
    with pytest.warns(UserWarning, match="gone.model"):
        module.encode_tokens([["okul", oov]], subwords=True)
    assert module._token_counts == {"tokens": 2, "whole": 0, "ngrams": 0, "unk": 1}
    with pytest.warns(
        UserWarning, match=r"predict: 1 of 2 source tokens \(50.0 %\) are not in the vocabulary"
    ):
        module.on_predict_epoch_end()


def test_random_source_embeddings_train_without_fasttext(tmp_path):
    """data.src_embeddings: random (PT's own randomly initialised embeddings): no FastText, a learned matrix
    with a zero padding row."""
    dm = two_sentence_data(tmp_path, src_embeddings="random")
    dm.prepare_data()
    module = tiny_module(dm, TRG)
    module.setup("fit")
    weight = module.net.src_embed.weight
    assert weight.shape[0] == len(module.vocab.itos) and weight.requires_grad
    assert torch.count_nonzero(weight[module.vocab.pad_index]) == 0
    assert weight.abs().sum() > 0
