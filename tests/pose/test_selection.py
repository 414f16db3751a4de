"""Issue 22: checkpoint selection cannot be won by a model whose outputs are the wrong length.

PT's DTW (÷ reference length) aligns every reference frame to some hypothesis frame, so a model that stops
after one mean-looking frame beats a model of the right length that moves imperfectly (on PT's example data a
one-frame model, length ratio 0.0116, was kept as the best checkpoint: DTW 23.6 against 45.6). Checkpoints are
chosen by ``val/dtw_pt_l1_ref_len_length_penalised``: each sequence's DTW times ``max(r, 1/r)`` of its length
ratio ``r``, where the one-frame model loses.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from projects.pose.convert_config import convert
from projects.pose.evaluation import length_factor
from tests.pose.pt_fixture import pt_datamodule, quiet_trainer, tiny_module

TRG = 6
SELECTION = "val/dtw_pt_l1_ref_len_length_penalised"


def scripted(module, kind: str, offset: float = 0.0):
    """Replace the module's free-running decoding by a scripted model: ``one_frame`` stops after the training
    mean pose (the degenerate model), ``moving`` decodes every reference frame shifted by ``offset``."""

    def generate(tokens, start_frames=None, gt_counter=None):
        references = module._current["frames"]
        if kind == "one_frame":
            frame = torch.cat([module.mean_pose, torch.ones(1)])
            frames = frame.expand(len(tokens), references.shape[1], -1).clone()
            return frames, torch.ones(len(tokens), dtype=torch.long)
        frames = references.clone()
        frames[..., :-1] += offset
        return frames, module._current["lengths"].clone()

    evaluate = module._evaluate

    def remember(batch, batch_idx, prefix):
        module._current = batch
        evaluate(batch, batch_idx, prefix)

    module.generate = generate
    module._evaluate = remember
    return module


def validate(dm, kind: str, offset: float = 0.0) -> dict:
    module = tiny_module(dm, TRG, decoding={"pt_protocol": False})
    module.setup("fit")
    return quiet_trainer().validate(scripted(module, kind, offset), dm, verbose=False)[0]


def test_one_frame_model_wins_on_dtw_but_loses_the_selection(tmp_path):
    dm, _, _ = pt_datamodule(tmp_path, [30, 40, 60, 80], [40, 55, 70, 90], TRG, eval_batch_size=2)
    dm.prepare_data()
    one_frame = validate(dm, "one_frame")
    # a moving model of the right length, its DTW twice the one-frame model's (as 45.6 vs 23.6 in the issue)
    offset = (
        2 * one_frame["val/dtw_pt_l1_ref_len"] / TRG
    )  # every frame off by `offset` in each joint (L1 cost)
    moving = validate(dm, "moving", offset)
    assert one_frame["val/predicted_frames_per_reference_frame"] < 0.05
    assert moving["val/predicted_frames_per_reference_frame"] == pytest.approx(1.0)
    assert (
        one_frame["val/dtw_pt_l1_ref_len"] < moving["val/dtw_pt_l1_ref_len"]
    )  # plain DTW picks the broken one
    assert moving[SELECTION] == pytest.approx(
        moving["val/dtw_pt_l1_ref_len"], rel=1e-5
    )  # right length: no charge
    assert moving[SELECTION] < one_frame[SELECTION]  # the selection score does not
    assert one_frame[SELECTION] > 30 * one_frame["val/dtw_pt_l1_ref_len"]


def test_length_factor():
    factor = length_factor(torch.tensor([1, 50, 100, 200]), torch.tensor([100, 100, 100, 100]))
    assert factor.tolist() == pytest.approx([100.0, 2.0, 1.0, 2.0])


def test_configs_select_checkpoints_by_the_length_penalised_score():
    for path in ("configs/pose/default.yaml", "configs/pose/tiny.yaml"):
        config = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        assert config["checkpoint"]["monitor"] == SELECTION, path
    config, _ = convert({"training": {"epochs": 3}})
    assert config["checkpoint"]["monitor"] == SELECTION
