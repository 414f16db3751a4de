"""Write ``tgm predict`` results: a ``.text/.skels/.files`` split readable by :class:`PoseDataModule` and one
skeleton video (GIF) per sentence."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info

from common.media import Video, write_media
from projects.pose.formats import write_split
from projects.pose.skeleton import render_side_by_side


class PosePredictionWriter(BasePredictionWriter):
    """After ``predict``: ``<output_dir>/<prefix>.text|.skels|.files`` and ``<output_dir>/videos/<name>.gif``.

    The ``.skels`` counter column is the model's own counter, clipped to [0, 1]. Frames are at the model's frame
    rate, so read them back with ``skip_frames: 1``. Runs on one process (use a single device for predict).
    """

    def __init__(
        self,
        output_dir: str = "runs/pose/predictions",
        prefix: str = "predict",
        videos: bool = True,
        decimals: int = 5,
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
        self.written = write_split(
            self.output_dir / self.prefix,
            [r["text"] for r in results],
            [r["frames"] for r in results],
            [r["name"] for r in results],
            decimals=self.decimals,
        )
        if self.videos:
            fps = int(getattr(trainer.datamodule, "fps", 12))
            dims, connections = pl_module.skeleton_layout()  # the model's skeleton, as in validation videos
            for result in results:
                frames = render_side_by_side(
                    [result["frames"][:, :-1]],
                    titles=[result["text"][:24]],
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
            f"predict: wrote {len(results)} sequences to {self.output_dir / self.prefix}.skels"
            + (f" and videos to {self.output_dir / 'videos'}" if self.videos else "")
        )
