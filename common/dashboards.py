"""Each project's W&B workspace as code (``wandb-workspaces``): metric panels for exactly what its module logs,
media panels for what its ``media_samples()`` sends, and the runs of that project only (its W&B group).

    python -m common.dashboards show pose            # the panels, offline
    python -m common.dashboards push pose            # save to your W&B entity (`make dashboard-push PROJECT=pose`)

``tests/test_dashboards.py`` builds every workspace offline and checks each panel key against the keys a short
run of the project's tiny config really logs, so a renamed metric fails the test instead of leaving a blank panel.
Media panels show the first sample of each kind (``.../dev_0``, ``sample0/...``): the number of samples is a
config choice, the first one always exists.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field

from common.loggers import DEFAULT_PROJECT, wandb_logged_in

VALIDATION_X = "epoch"  # validation metrics are logged once per validation
TRAINING_X = "trainer/global_step"  # Lightning's WandbLogger step metric


@dataclass
class Spec:
    """Panel title -> keys, per kind of panel (one panel per title)."""

    validation: dict[str, list[str]]  # line plots over epochs
    training: dict[str, list[str]]  # line plots over optimiser steps
    media: dict[str, list[str]]  # media browsers: images, videos, 3D objects
    tables: dict[str, str] = field(default_factory=dict)  # title -> table key
    final: dict[str, str] = field(default_factory=dict)  # title -> a metric logged once, after training


TRAINING_COMMON = {"Training loss": ["train/loss"], "Gradient norm (before clipping)": ["train/grad_norm"]}

SPECS: dict[str, Spec] = {
    "pose": Spec(
        validation={
            "DTW (original definition) vs mean-pose baseline": [
                "val/dtw_pt_l1_ref_len",
                "val/dtw_pt_l1_ref_len_mean_pose_baseline",
            ],
            "DTW: checkpoint-selection score (length-penalised) and PT's own protocol": [
                "val/dtw_pt_l1_ref_len_length_penalised",
                "val/dtw_pt_l1_ref_len_pt_protocol",
            ],
            "DTW (L2, path-length normalised)": ["val/dtw_l2_path_len"],
            "Back-translation BLEU-4: produced poses vs reference poses (ceiling)": [
                "val/backtranslation_bleu4",
                "val/backtranslation_bleu4_reference",
            ],
            "Predicted frames per reference frame (counter)": ["val/predicted_frames_per_reference_frame"],
            "Decoded / reference length by reference length (frames)": [
                "val/length_ratio_10_49",
                "val/length_ratio_50_99",
                "val/length_ratio_100_199",
                "val/length_ratio_200_plus",
            ],
            "Validation loss": ["val/loss"],
        },
        training=TRAINING_COMMON,
        media={"Skeleton video: prediction | reference": ["media/skeleton/dev_0"]},
    ),
    "shape3d": Spec(
        validation={
            "Chamfer distance vs mean-shape baseline": ["val/chamfer", "val/baseline_mean_shape_chamfer"],
            "Voxel IoU vs mean-shape baseline": ["val/iou", "val/baseline_mean_shape_iou"],
            "F-score at 1% / 2% of the extent": ["val/f1@0.01", "val/f1@0.02"],
            "Mesh: Chamfer and normal consistency": ["val/chamfer_mesh", "val/normal_consistency"],
            "Validation loss": ["val/loss"],
        },
        training={
            **TRAINING_COMMON,
            "Loss terms": ["train/occupancy_loss", "train/surface_chamfer_loss"],
            "Voxel resolution and fade-in": ["train/resolution", "train/fade_alpha"],
        },
        media={
            "Mesh: prediction (3D)": ["media/sample0/pred"],
            "Mesh: target (3D)": ["media/sample0/target"],
            "Depth previews: prediction next to target": ["media/preview"],
        },
    ),
    "caption": Spec(
        validation={
            "BLEU-1..4 (sacrebleu 13a)": ["val/bleu1_13a", "val/bleu2_13a", "val/bleu3_13a", "val/bleu4_13a"],
            "BLEU-1..4 (COCO scorer, Turkish tokenisation)": [
                "val/bleu1_tr",
                "val/bleu2_tr",
                "val/bleu3_tr",
                "val/bleu4_tr",
            ],
            "ROUGE-L and CIDEr-D (Turkish tokenisation)": ["val/rouge_l_tr", "val/cider_d_tr"],
            "Validation loss": ["val/loss"],
        },
        training=TRAINING_COMMON,
        media={},
        tables={"Validation captions: image, prediction, references": "media/val_captions"},
    ),
    "diffusion": Spec(
        validation={
            "FID (character classifier features) and its real-vs-real floor": [
                "val/fid_charclf",
                "val/fid_floor_charclf",
            ],
            "FID (pixels) and its real-vs-real floor": ["val/fid_pixels", "val/fid_floor_pixels"],
            "Background and saturation: samples vs real": [
                "val/background",
                "val/background_real",
                "val/saturation",
                "val/saturation_real",
            ],
            "One-step x0 reconstruction RMSE by timestep": [
                "val/x0_rmse_t100",
                "val/x0_rmse_t300",
                "val/x0_rmse_t500",
                "val/x0_rmse_t700",
                "val/x0_rmse_t900",
                "val/x0_rmse_t999",
            ],
            "Inception score (character classifier)": ["val/is_charclf"],
            "Conditional accuracy of samples vs the judge on real data": [
                "val/cond_acc_charclf",
                "val/judge_acc",
            ],
            "SSIM of one-step reconstructions (t=200)": ["val/ssim_x0_t200"],
            "Validation loss": ["val/loss"],
        },
        training=TRAINING_COMMON,
        media={"Samples by label (one row per class)": ["media/samples_by_label"]},
        final={
            "Final FID": "final/fid_charclf",
            "Final FID floor (real vs real)": "final/fid_floor",
            "Final FID floor, judge features (real vs real)": "final/fid_floor_charclf",
            "Final FID (pixels)": "final/fid_pixels",
            "Final FID floor, pixels (real vs real)": "final/fid_floor_pixels",
            "Final background of samples": "final/background",
            "Final background of real images": "final/background_real",
            "Final saturation of samples": "final/saturation",
            "Final saturation of real images": "final/saturation_real",
            "Final inception score": "final/is_charclf",
            "Final conditional accuracy": "final/cond_acc_charclf",
            "Judge accuracy on real data": "final/judge_acc",
        },
    ),
}


def workspace(project: str, entity: str = "offline", wandb_project: str = DEFAULT_PROJECT):
    """The saved view of one project's runs: its W&B group, sections for validation, training and media."""
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws

    spec = SPECS[project]
    sections = [
        ws.Section(
            name=f"{project}: validation (per epoch)",
            is_open=True,
            panels=[
                wr.LinePlot(title=title, x=VALIDATION_X, y=keys) for title, keys in spec.validation.items()
            ],
        ),
        ws.Section(
            name=f"{project}: samples",
            is_open=True,
            panels=[
                wr.MediaBrowser(title=title, media_keys=keys, gallery_axis="step")
                for title, keys in spec.media.items()
            ]
            + [wr.WeavePanelSummaryTable(table_name=key) for key in spec.tables.values()],
        ),
        ws.Section(
            name=f"{project}: training (per step)",
            panels=[wr.LinePlot(title=title, x=TRAINING_X, y=keys) for title, keys in spec.training.items()],
        ),
    ]
    if spec.final:
        sections.insert(1, ws.Section(name=f"{project}: after training", is_open=True,
                                      panels=[wr.ScalarChart(title=t, metric=k) for t, k in spec.final.items()]))  # fmt: skip
    return ws.Workspace(
        entity=entity,
        project=wandb_project,
        name=f"tgm {project}",
        sections=sections,
        runset_settings=ws.RunsetSettings(filters=f"Group = '{project}'"),
    )


def panel_keys(view) -> dict[str, set[str]]:
    """What the built workspace's panels ask W&B for: ``x`` axes, ``metrics`` and ``media`` keys."""
    import wandb_workspaces.reports.v2 as wr

    keys: dict[str, set[str]] = {"x": set(), "metrics": set(), "media": set()}
    for section in view.sections:
        for panel in section.panels:
            if isinstance(panel, wr.LinePlot):
                keys["x"].add(panel.x)
                keys["metrics"].update(panel.y)
            elif isinstance(panel, wr.ScalarChart):
                keys["metrics"].add(panel.metric)
            elif isinstance(panel, wr.MediaBrowser):
                keys["media"].update(panel.media_keys)
            elif isinstance(panel, wr.WeavePanelSummaryTable):
                keys["media"].add(panel.table_name)
            else:
                raise TypeError(f"panel_keys: no rule for {type(panel).__name__}")
    return keys


def describe(view) -> list[str]:
    """One line per section and per panel, with its keys."""
    lines = [f"workspace '{view.name}' (project {view.project}, runs: {view.runset_settings.filters})"]
    for section in view.sections:
        lines.append(f"  [{section.name}]")
        for panel in section.panels:
            keys = getattr(panel, "y", None) or getattr(panel, "media_keys", None)
            keys = keys or [getattr(panel, "metric", None) or getattr(panel, "table_name", "")]
            title = getattr(panel, "title", None) or "table"
            lines.append(f"    {type(panel).__name__:<22} {title}: {', '.join(keys)}")
    return lines


def push(project: str, entity: str | None = None) -> str:
    """Save the workspace to ``entity`` (default: your W&B default entity); returns its URL. Raises
    ``RuntimeError`` with one line when there is no login or no connection."""
    if not wandb_logged_in():
        raise RuntimeError("not logged in to W&B (`wandb login` or WANDB_API_KEY); nothing was saved")
    import wandb

    try:
        entity = entity or wandb.Api(timeout=15).default_entity
        view = workspace(project, entity)
        view.save()
        return view.url
    except Exception as error:  # no network, a refused key, an unknown entity: say so in one line
        first_line = (str(error).strip().splitlines() or [""])[0][:200]
        raise RuntimeError(
            f"could not save to W&B ({type(error).__name__}: {first_line}); nothing was saved"
        ) from error


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m common.dashboards", description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["show", "push"])
    parser.add_argument(
        "projects", nargs="*", default=list(SPECS), help=f"default: all of {', '.join(SPECS)}"
    )
    parser.add_argument("--entity", default=None, help="W&B entity to save to (default: yours)")
    args = parser.parse_args(argv)
    unknown = [p for p in args.projects if p not in SPECS]
    if unknown:
        parser.exit(2, f"dashboards: unknown project {', '.join(unknown)}; choose from {', '.join(SPECS)}\n")
    for project in args.projects:
        if args.action == "show":
            print("\n".join(describe(workspace(project))))
            continue
        try:
            print(f"dashboard {project}: saved {push(project, args.entity)}")
        except RuntimeError as error:
            sys.stderr.write(f"dashboard {project}: {error}\n")
            raise SystemExit(1) from None


if __name__ == "__main__":
    main()
