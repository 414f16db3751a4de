"""Issue 22: Progressive Transformers' own evaluation protocol by name, next to the free-running number.

PT's ``validate_on_data`` decodes with the ground-truth counter written into every input frame (``greedy`` in
``search.py``), for the batch's padded reference length, scores the hypotheses with ``calculate_dtw`` (which cuts
them at their own counter's argmax) and stops after ``ceil(20 / batch_size) + 1`` batches. The logged
``val/dtw_pt_l1_ref_len_pt_protocol`` must equal a transcription of that loop; ``val/dtw_pt_l1_ref_len`` stays
the free-running number over the whole split.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from projects.pose.evaluation import pt_protocol_batches
from tests.pose.pt_fixture import pt_datamodule, quiet_trainer, tiny_module
from tests.pose.test_dtw import original_calculate_dtw

TRG = 6


def pt_greedy(net, src, src_mask, trg_input, vectors=None, vector_mask=None):
    """Transcription of PT's ``search.greedy`` (recomputing every step, no cache): the first input frame is
    ``trg_input[:, 0]``; before each step the newest input frame's counter is overwritten with the ground truth
    ``trg_input[:, i, -1]``; the output keeps the model's own counters. Returns start frame + T outputs."""
    memory = net.encode(src, src_mask, vectors, vector_mask)
    ys = trg_input[:, :1].clone()
    ys_out = ys.clone()
    for i in range(trg_input.shape[1]):
        ys[:, -1, -1] = trg_input[:, i, -1]
        out = net.next_frame(net.decode(ys, memory, src_mask)[:, -1:])
        ys = torch.cat([ys, out], dim=1)
        ys_out = torch.cat([ys_out, out], dim=1)
    return ys_out


def test_batch_cut_as_the_original():
    # the original breaks when its counter (from 0) equals ceil(20 / batch_size): that many batches plus one
    for batch_size in (1, 2, 8, 10, 16, 20, 21, 64):
        assert pt_protocol_batches(batch_size) == math.ceil(20 / batch_size) + 1
    assert pt_protocol_batches(8) == 4 and pt_protocol_batches(64) == 2


def test_pt_protocol_equals_the_original_validate_on_data(tmp_path):
    dev_lengths = [12 + (i * 7) % 15 for i in range(35)]  # 35 sequences, batches of 10: PT scores 3 of 4
    dm, _, dev = pt_datamodule(tmp_path, [12, 15, 20, 25], dev_lengths, TRG, eval_batch_size=10)
    dm.prepare_data()
    module = tiny_module(dm, TRG, decoding={"max_output_length": 40, "pt_protocol": True})
    module.setup("fit")
    logged = quiet_trainer().validate(module, dm, verbose=False)[0]

    module.eval()
    tokens = dm.datasets["dev"].tokens
    scored = pt_protocol_batches(10) * 10
    assert scored == 30 < len(dev)
    scores = []
    with torch.no_grad():
        for first in range(0, scored, 10):
            batch = dev[first : first + 10]
            longest = max(len(s) for s in batch)
            trg = torch.zeros(len(batch), longest, TRG + 1)  # padded with zeros, as PT's batches
            for i, sequence in enumerate(batch):
                trg[i, : len(sequence)] = torch.from_numpy(sequence)
            # words outside the vocabulary get their FastText vectors, as in every evaluation here
            src, src_mask, vectors, vector_mask = module.encode_tokens(
                tokens[first : first + 10], subwords=True
            )
            hyps = pt_greedy(
                module.net, src, src_mask, trg[:, :-1], vectors, vector_mask
            )  # trg[:, :-1]: input
            targets = trg[:, 1:]  # PT's batch.trg: frames 1.. (0-based data), padded
            scores += original_calculate_dtw(list(targets.numpy()), list(hyps.numpy()))
    assert logged["val/dtw_pt_l1_ref_len_pt_protocol"] == pytest.approx(np.mean(scores), rel=1e-4)
    # the free-running number over the whole split is logged next to it and is a different quantity
    assert "val/dtw_pt_l1_ref_len" in logged
    assert logged["val/dtw_pt_l1_ref_len"] != pytest.approx(logged["val/dtw_pt_l1_ref_len_pt_protocol"])


def test_pt_protocol_off_logs_only_the_free_running_number(tmp_path):
    dm, _, _ = pt_datamodule(tmp_path, [12, 15], [11, 14], TRG, eval_batch_size=2)
    dm.prepare_data()
    module = tiny_module(dm, TRG, decoding={"max_output_length": 20, "pt_protocol": False})
    module.setup("fit")
    logged = quiet_trainer().validate(module, dm, verbose=False)[0]
    assert "val/dtw_pt_l1_ref_len" in logged and "val/dtw_pt_l1_ref_len_pt_protocol" not in logged
