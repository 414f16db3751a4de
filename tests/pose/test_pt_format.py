"""Faithful to the original Progressive Transformers data (issue 13): stop rule for both counter conventions,
frame 0 as the start frame, DTW equal to the original's end-to-end number, and the mean-pose baseline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from projects.pose.data import PoseDataModule, collate, counter_end_gap
from projects.pose.formats import progress_counter
from projects.pose.model import ProgressiveTransformer
from tests.pose.pt_fixture import pt_datamodule, quiet_trainer, tiny_module
from tests.pose.test_dtw import original_calculate_dtw

TRG = 6
LENGTHS = [10, 11, 17, 33, 64, 99, 100, 101, 150, 201, 299, 300]


class PerfectCounter(ProgressiveTransformer):
    """Predicts each sequence's reference counter for output frame ``step`` (``step * counter_step``), exactly."""

    def __init__(self, counter_steps: torch.Tensor) -> None:
        super().__init__(
            trg_size=TRG,
            hidden_size=8,
            num_heads=2,
            encoder_layers=1,
            decoder_layers=1,
            ff_size=8,
            embedding_dim=8,
        )
        self.counter_steps = counter_steps
        self.step = 0

    def _decoder_input(self, frames, offset=0):
        self.step = offset + 1
        return super()._decoder_input(frames, offset)

    def next_frame(self, output):
        frame = torch.zeros(output.shape[0], 1, TRG + 1)
        frame[:, 0, -1] = self.counter_steps * self.step
        return frame


@pytest.mark.parametrize("zero_based", [False, True])
def test_perfect_counter_stops_at_the_reference_length(zero_based):
    """0-based data (frame 0 is the start frame; targets have counters 1/N .. (N-1)/N) and 1-based data (1/N .. 1)
    both stop within one frame of the reference length, for every length from 10 to 300."""
    targets = []
    for n in LENGTHS:
        counters = progress_counter(n, zero_based=zero_based)
        frames = np.zeros((n, TRG + 1), dtype=np.float32)
        frames[:, -1] = counters
        targets.append(frames[1:] if zero_based else frames)
    gap = counter_end_gap(targets)
    assert gap == pytest.approx(1.0 if zero_based else 0.0)
    net = PerfectCounter(torch.tensor([1.0 / n for n in LENGTHS])).eval()
    src = torch.full((len(LENGTHS), 2), 2)  # ids within the placeholder embedding
    _, lengths = net.generate(src, src != 1, max_length=400, end_gap=gap)
    reference = [len(t) for t in targets]
    assert np.abs(lengths.numpy() - np.array(reference)).max() <= 1, list(
        zip(lengths.tolist(), reference, strict=True)
    )


def pt_data(tmp_path):
    return pt_datamodule(tmp_path, [12, 15, 20, 25], [11, 14, 30], TRG, eval_batch_size=2)


def test_frame_zero_is_the_start_frame_of_pt_data(tmp_path):
    dm, _, dev = pt_data(tmp_path)
    dm.setup("fit")
    batch = collate([dm.datasets["dev"][i] for i in range(3)])
    np.testing.assert_allclose(batch["start_frames"].numpy(), np.stack([d[0] for d in dev]), atol=1e-6)
    for i, sequence in enumerate(dev):
        n = len(sequence) - 1
        assert batch["lengths"][i] == n
        np.testing.assert_allclose(
            batch["frames"][i, :n].numpy(), sequence[1:], atol=1e-6
        )  # targets: data[1:]


def test_logged_dtw_equals_the_original_end_to_end_number(tmp_path):
    dm, train, dev = pt_data(tmp_path)
    dm.prepare_data()
    module = tiny_module(dm, TRG, decoding={"max_output_length": 40})
    trainer = quiet_trainer()
    module.setup("fit")
    assert float(module.end_gap) == pytest.approx(1.0)  # 0-based counters: the last target is 1 step before 1
    logged = trainer.validate(module, dm, verbose=False)[0]
    # the original: hypotheses = [frame 0 (start) + decoded frames], references = data[1:], helpers.calculate_dtw
    module.eval()
    hyps = []
    for sequence in dev:
        tokens = [dm.datasets["dev"].tokens[len(hyps)]]
        start = torch.from_numpy(sequence[:1])
        frames, lengths = module.generate(tokens, start)
        hyps.append(np.concatenate([sequence[:1], frames[0, : lengths[0]].numpy()]))
    expected = np.mean(original_calculate_dtw([s[1:] for s in dev], hyps))
    assert logged["val/dtw_pt_l1_ref_len"] == pytest.approx(expected, rel=1e-5)
    # the mean-pose baseline: the same definition, training mean pose held for each reference's length
    mean = np.concatenate([s[1:] for s in train])[:, :-1].mean(0)
    baseline = [
        np.concatenate([s[:1], np.concatenate([np.tile(mean, (len(s) - 1, 1)), s[1:, -1:]], 1)]) for s in dev
    ]
    expected_baseline = np.mean(original_calculate_dtw([s[1:] for s in dev], baseline))
    assert logged["val/dtw_pt_l1_ref_len_mean_pose_baseline"] == pytest.approx(expected_baseline, rel=1e-4)


def test_project_data_keeps_a_zero_start_frame(tmp_path):
    """1-based counters (this project's generated data): every frame is a target, decoding starts from zeros."""
    from projects.pose.formats import write_split

    frames = np.concatenate([np.ones((5, TRG)), progress_counter(5)[:, None]], 1)
    write_split(tmp_path / "train", ["ev okul"], [frames], ["a"])
    dm = PoseDataModule(
        train=str(tmp_path / "train"),
        dev=str(tmp_path / "train"),
        test=None,
        trg_size=TRG,
        cache_dir=str(tmp_path / "prep"),
    )
    dm.setup("fit")
    item = dm.datasets["train"][0]
    assert not dm.datasets["train"].zero_based and len(item["frames"]) == 5 and not item["start"].any()


def test_predict_output_reads_back_unchanged_by_the_original_loader_and_ours(tmp_path):
    """Issue 23: ``predict`` writes PT's format: frame 0 = the start frame decoding began from (counter 0), the
    source file named by ``src`` (``predict.gloss``). PT's loader (frame 0 as start, the rest as targets) and the
    data module (0-based) both give back exactly the predicted frames."""
    from projects.pose.writer import PosePredictionWriter
    from tests.pose.pt_fixture import pt_load_split

    dm, _, _ = pt_data(tmp_path)
    dm.prepare_data()
    module = tiny_module(dm, TRG, decoding={"max_output_length": 12})
    module.setup("fit")
    (tmp_path / "in.gloss").write_text("ES-BEDEUTET VIEL\nWOLKE\nDRUCK TIEF KOMMEN\n", encoding="utf-8")
    dm.predict_file = str(tmp_path / "in.gloss")
    out = tmp_path / "predictions"
    writer = PosePredictionWriter(output_dir=str(out), videos=False)
    predictions = quiet_trainer(callbacks=[writer]).predict(module, datamodule=dm)
    predicted = [item["frames"] for batch in predictions for item in batch]
    assert sorted(p.name for p in out.iterdir()) == ["predict.files", "predict.gloss", "predict.skels"]
    start = module.start_pose.numpy().copy()
    start[-1] = 0.0

    original = pt_load_split(out / "predict", "gloss", TRG)
    assert [e["src"] for e in original] == ["ES-BEDEUTET VIEL", "WOLKE", "DRUCK TIEF KOMMEN"]
    for example, frames in zip(original, predicted, strict=True):
        np.testing.assert_allclose(example["start"].numpy(), start, atol=1e-7)
        np.testing.assert_allclose(example["trg"].numpy(), frames, atol=1e-7)  # + PT's 1e-8

    ours = PoseDataModule(
        train=dm.paths["train"],
        dev=str(out / "predict"),
        test=None,
        src="gloss",
        trg_size=TRG,
        cache_dir=str(tmp_path / "prep2"),
    )
    ours.setup("validate")
    dataset = ours.datasets["dev"]
    assert dataset.zero_based and dataset.texts == [e["src"] for e in original]
    for index, frames in enumerate(predicted):
        read_start, targets = dataset.start_and_targets(index)
        np.testing.assert_array_equal(targets, frames)  # float32-exact
        np.testing.assert_array_equal(read_start, start)


def test_predict_needs_no_training_files(tmp_path):
    """The checkpoint holds the vocabulary: ``predict`` reads only the predict file, even when the training and
    dev files are gone (``prepare_data`` used to parse the training split first and fail)."""
    from projects.pose.writer import PosePredictionWriter

    dm, _, _ = pt_data(tmp_path)
    dm.prepare_data()
    module = tiny_module(dm, TRG, decoding={"max_output_length": 5})
    module.setup("fit")
    for path in tmp_path.glob("*.*"):
        if path.suffix in (".gloss", ".text", ".skels", ".files"):
            path.unlink()
    (tmp_path / "in.gloss").write_text("WOLKE VIEL\n", encoding="utf-8")
    fresh = PoseDataModule(
        train=str(tmp_path / "train"),
        dev=str(tmp_path / "dev"),
        test=None,
        src="gloss",
        trg_size=TRG,
        predict_file=str(tmp_path / "in.gloss"),
        cache_dir=str(tmp_path / "elsewhere"),
    )
    writer = PosePredictionWriter(output_dir=str(tmp_path / "out"), videos=False)
    quiet_trainer(callbacks=[writer]).predict(module, datamodule=fresh, return_predictions=False)
    assert (tmp_path / "out" / "predict.gloss").read_text(encoding="utf-8") == "WOLKE VIEL\n"
