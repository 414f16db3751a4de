"""The 50-joint bone tree and side-by-side skeleton videos."""

from __future__ import annotations

import numpy as np

from projects.pose.skeleton import PT_CONNECTIONS, pt_bone_groups, render_side_by_side


def test_bone_tree_covers_50_joints_once():
    assert len(PT_CONNECTIONS) == 49 == len(pt_bone_groups())
    children = [b for _, b in PT_CONNECTIONS]
    assert sorted(children) == list(
        range(1, 50)
    )  # a tree rooted at the head: every other joint has one parent
    assert (7, 8) in PT_CONNECTIONS and (4, 29) in PT_CONNECTIONS  # hands hang off the wrists
    assert (
        (9, 10) in PT_CONNECTIONS and (10, 11) in PT_CONNECTIONS and (11, 12) in PT_CONNECTIONS
    )  # 3-bone finger
    assert pt_bone_groups().count("thumb") == 6  # three bones per thumb, two hands


def test_render_side_by_side_shapes_and_motion():
    rng = np.random.default_rng(0)
    pred = rng.normal(size=(5, 150)).astype(np.float32)
    ref = rng.normal(size=(8, 150)).astype(np.float32)
    frames = render_side_by_side([pred, ref], titles=["tahmin", "referans ğüşİ"], size=64)
    assert frames.shape == (8, 64 + 16, 128, 3) and frames.dtype == np.uint8
    assert (frames[:, 16:] < 250).any()  # bones were drawn
    assert not np.array_equal(frames[0], frames[4])  # the skeletons move
    np.testing.assert_array_equal(
        frames[5, :, :64], frames[7, :, :64]
    )  # the shorter one holds its last frame
    # a 2D skeleton with its own connection list
    xy = rng.normal(size=(3, 2 * 4)).astype(np.float32)
    frames = render_side_by_side([xy], titles=["2d"], dims=2, connections=[(0, 1), (1, 2), (2, 3)], size=48)
    assert frames.shape == (3, 64, 48, 3)


def test_predict_writer_draws_2d_data_with_the_models_skeleton(tmp_path):
    """trg_size 100 (xy, as OpenPose/MediaPipe users produce) must not be reshaped as xyz by predict."""
    from types import SimpleNamespace

    import numpy as np

    from projects.pose.formats import read_split
    from projects.pose.module import PoseModule
    from projects.pose.writer import PosePredictionWriter

    module = PoseModule(trg_size=100, media={"skeleton_connections": [[0, 1], [1, 2]]})
    assert module.skeleton_layout() == (2, [(0, 1), (1, 2)])
    assert PoseModule(trg_size=150).skeleton_layout() == (3, None)
    frames = np.random.default_rng(0).uniform(-1, 1, size=(6, 101))
    frames[:, -1] = np.linspace(0, 1, 6)
    writer = PosePredictionWriter(output_dir=str(tmp_path))
    writer.write_on_epoch_end(
        SimpleNamespace(datamodule=SimpleNamespace(fps=12)),
        module,
        [[{"text": "merhaba dünya", "frames": frames, "name": "s0"}]],
        [],
    )
    assert (tmp_path / "videos" / "s0.gif").is_file()
    assert len(read_split(tmp_path / "predict", trg_size=100)) == 1


def test_a_long_sentence_is_wrapped_above_the_panels_not_cut():
    from projects.pose.skeleton import _font, wrap_text

    sentence = "bugün hava çok güzel olduğu için çocuklar parkta oynayıp dondurma yemeğe gittiler ğüşİ"
    lines = wrap_text(sentence, 64 - 8)
    assert " ".join(lines) == sentence and len(lines) >= 3
    assert all(_font().getlength(line) <= 56 or " " not in line for line in lines)
    xy = np.random.default_rng(0).normal(size=(4, 4 * 2))
    frames = render_side_by_side(
        [xy], titles=["prediction"], dims=2, connections=[(0, 1)], size=64, caption=sentence
    )
    assert frames.shape[1] == 14 * len(lines) + 64 + 16  # the header grows with the sentence
    assert (frames[0, : 14 * len(lines)] < 128).any()  # and is drawn
