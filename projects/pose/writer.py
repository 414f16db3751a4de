"""Write ``tgm predict`` results: a split in the Progressive Transformers format (``.<src>/.skels/.files``) that
PT's own loader and :class:`PoseDataModule` both read back to the predicted frames, and one skeleton video (GIF)
per sentence."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import numpy as np
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info

from common.media import Video, write_media
from projects.pose.formats import write_split
from projects.pose.skeleton import render_side_by_side


class PosePredictionWriter(BasePredictionWriter):
    """After ``predict``: ``<output_dir>/<prefix>.<src>|.skels|.files`` and ``<output_dir>/videos/<name>.gif``.

    The source file is named by the data module's ``src`` (``predict.gloss`` with ``src: gloss``). Every
    ``.skels`` line starts with the frame decoding started from (the training start pose, counter 0) followed by
    the predicted frames with the model's own counter clipped to [0, 1]: PT's loader takes frame 0 as the start
    frame and the rest as the sequence, and the data module reads the file as 0-based, so both give back exactly
    the predicted frames (``decimals=None``: 9 significant digits, float32-exact). Frames are at the model's
    frame rate, so read them back with ``skip_frames: 1``. Runs on one process (use a single device for predict).
    """

    def __init__(
        self,
        output_dir: str = "runs/pose/predictions",
        prefix: str = "predict",
        videos: bool = True,
        decimals: int | None = None,
    ) -> None:
        super().__init__(write_interval="epoch")
        self.output_dir = Path(output_dir)
        self.prefix = prefix
        self.videos = videos
        self.decimals = decimals
        self.written: list[Path] = []

    def write_on_epoch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, predictions, batch_indices
    ) -> None:
        results = [item for batch in predictions for item in batch]
        if not results:
            return
        start = start_frame(pl_module, results[0]["frames"].shape[1])
        datamodule = trainer.datamodule
        self.written = write_split(
            self.output_dir / self.prefix,
            [r["text"] for r in results],
            [np.concatenate([start[None], r["frames"]]) for r in results],
            [r["name"] for r in results],
            src=getattr(datamodule, "src", "text"),
            trg=getattr(datamodule, "trg", "skels"),
            files=getattr(datamodule, "files", "files"),
            decimals=self.decimals,
        )
        if self.videos:
            fps = int(getattr(trainer.datamodule, "fps", 12))
            dims, connections = pl_module.skeleton_layout()  # the model's skeleton, as in validation videos
            for result in results:
                frames = render_side_by_side(
                    [result["frames"][:, :-1]],
                    titles=["prediction"],
                    caption=result["text"],
                    dims=dims,
                    connections=connections,
                )
                self.written.append(
                    write_media(
                        Video(frames, fps=fps, caption=result["text"]),
                        self.output_dir / "videos" / result["name"],
                    )
                )
        rank_zero_info(
            f"predict: wrote {len(results)} sequences to {self.written[1]}"
            + (f" and videos to {self.output_dir / 'videos'}" if self.videos else "")
        )


def start_frame(pl_module: pl.LightningModule, width: int) -> np.ndarray:
    """The frame predict decoded from (``start_pose``: the training mean of frame 0 for 0-based data, zeros
    otherwise), with counter 0 so every reader sees frame 0 as the start frame."""
    start = getattr(pl_module, "start_pose", None)
    frame = (
        np.zeros(width, dtype=np.float32) if start is None else start.detach().float().cpu().numpy().copy()
    )
    frame[-1] = 0.0
    return frame
