"""``make demo``: try the four trained models in the browser (Gradio), one tab per model.

Each tab runs prediction exactly as ``tgm predict`` does (in this process, through :func:`common.cli.run_cli`'s
CLI class): the run's saved ``config.yaml`` (or ``configs/<project>/default.yaml``), the checkpoint, the user's
input in a temporary file or config key, and the project's ``BasePredictionWriter`` writing into a temporary
folder; the tab then shows the files the writer wrote. So the demo sees what a user of ``tgm predict`` gets and
needs no change when a project's model changes inside.

By default each tab loads the project's best checkpoint (recorded in ``<checkpoint.dirpath>/last.ckpt``, as
``--ckpt_path best`` does); ``--<project>-ckpt PATH`` picks another. The server binds to 127.0.0.1 (``--host`` to
change), never creates a public share link, and bounds upload size, text length and generation length.

    python -m common.demo [--host 127.0.0.1] [--port 7860] [--caption-ckpt runs/caption/checkpoints/last.ckpt]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from importlib import import_module
from inspect import signature
from pathlib import Path
from typing import Any

import numpy as np
import yaml

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home
os.environ.setdefault("HF_HUB_OFFLINE", "1")

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
PROJECTS = ("pose", "shape3d", "caption", "diffusion")
TRAIN_TARGET = {
    "pose": "train-pose",
    "shape3d": "train-3d",
    "caption": "train-caption",
    "diffusion": "train-diffusion",
}

# Bounds on what one request may ask for.
MAX_TEXT_CHARS = 200
MAX_UPLOAD = "10mb"
MAX_LABELS = 10
MAX_PER_LABEL = 8
MAX_STEPS = 1000
# Generation length: a checkpoint's own limit is kept when it is lower (any nesting, e.g. ``decoding.*``).
LENGTH_LIMITS = {"max_new_tokens": 40, "max_output_length": 300}
SAMPLERS = ("ddim", "dpmsolver++", "ddpm")


class DemoError(Exception):
    """A problem to show in the page as one line (bad input, no checkpoint, a failed prediction)."""


# ----------------------------------------------------------------------------------------------- checkpoints
@dataclass
class Trained:
    """One project's trained model as the demo uses it: a checkpoint and the config it was trained with."""

    project: str
    checkpoint: Path | None
    config: Path
    missing: str = ""  # why there is no checkpoint, with the command that makes one


def default_checkpoint_dir(project: str) -> Path:
    config = yaml.safe_load((CONFIG_DIR / project / "default.yaml").read_text(encoding="utf-8"))
    return Path(config["checkpoint"]["dirpath"])


def best_or_last(checkpoint_dir: Path) -> Path | None:
    """The best checkpoint recorded in ``last.ckpt`` (as ``--ckpt_path best``), else ``last.ckpt``, else None."""
    from common.cli import best_checkpoint
    from common.errors import InputError

    last = checkpoint_dir / "last.ckpt"
    if not last.is_file():
        return None
    try:
        return best_checkpoint(str(checkpoint_dir))
    except InputError:  # no monitored metric recorded, or the best file was deleted: the last one still works
        return last


def run_config_for(checkpoint: Path, runs: Path) -> Path | None:
    """The newest saved ``config.yaml`` under ``runs`` whose ``checkpoint.dirpath`` is the checkpoint's folder."""
    folder = checkpoint.resolve().parent
    candidates = []
    for path in runs.glob("**/config.yaml"):
        try:
            dirpath = (
                (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("checkpoint", {}).get("dirpath")
            )
        except (OSError, UnicodeDecodeError, yaml.YAMLError, AttributeError):
            continue
        if dirpath and Path(dirpath).resolve() == folder:
            candidates.append(path)
    return max(candidates, key=lambda p: p.stat().st_mtime, default=None)


def find_trained(
    project: str, checkpoint: str | None = None, config: str | None = None, runs: str = "runs"
) -> Trained:
    """Locate a project's checkpoint (given, or the best in the default config's ``checkpoint.dirpath``) and its
    config (given, the run's saved one, or ``configs/<project>/default.yaml``)."""
    default_config = CONFIG_DIR / project / "default.yaml"
    if checkpoint:
        path = Path(checkpoint)
        if not path.is_file():
            return Trained(project, None, default_config, f"No checkpoint at `{path}`.")
    else:
        directory = default_checkpoint_dir(project)
        path = best_or_last(directory)
        if path is None:
            return Trained(
                project,
                None,
                default_config,
                f"No {project} checkpoint in `{directory}` yet: run `make {TRAIN_TARGET[project]}` "
                f"(or start the demo with `--{project}-ckpt PATH`).",
            )
    chosen = Path(config) if config else (run_config_for(path, Path(runs)) or default_config)
    return Trained(project, path, chosen)


# ------------------------------------------------------------------------------------------------ prediction
def accepts(class_path: str, name: str) -> bool:
    """Whether the class named in a config takes ``name`` in its constructor."""
    module, _, attribute = class_path.rpartition(".")
    return name in signature(getattr(import_module(module), attribute)).parameters


def is_prediction_writer(class_path: str) -> bool:
    from lightning.pytorch.callbacks import BasePredictionWriter

    module, _, attribute = class_path.rpartition(".")
    try:
        cls = getattr(import_module(module), attribute)
    except (ImportError, AttributeError):
        return False
    return isinstance(cls, type) and issubclass(cls, BasePredictionWriter)


def writer_callbacks(config: Path, out_dir: Path) -> list[dict]:
    """The config's ``trainer.callbacks`` with every prediction writer pointed at ``out_dir``."""
    trainer = (yaml.safe_load(config.read_text(encoding="utf-8")) or {}).get("trainer") or {}
    callbacks = []
    for callback in trainer.get("callbacks") or []:
        callback = dict(callback)
        if isinstance(callback, dict) and is_prediction_writer(callback.get("class_path", "")):
            init_args = dict(callback.get("init_args") or {})
            if accepts(callback["class_path"], "output_dir"):
                init_args["output_dir"] = str(out_dir)
            elif accepts(callback["class_path"], "output"):  # one results file (caption's COCO JSON)
                init_args["output"] = str(out_dir / "predictions.json")
            callback["init_args"] = init_args
        callbacks.append(callback)
    return callbacks


def _set_model_settings(namespace: Any, settings: dict[str, Any], caps: dict[str, int]) -> set[str]:
    """Set ``settings`` (and lower ``caps``) wherever those keys are in the model's (nested) init args."""
    found = set()
    items = vars(namespace) if hasattr(namespace, "__dict__") else namespace
    if not isinstance(items, dict):
        return found
    for key, value in list(items.items()):
        if key in settings:
            items[key] = settings[key]
            found.add(key)
        elif key in caps and isinstance(value, int) and value > caps[key]:
            items[key] = caps[key]
        elif hasattr(value, "__dict__") or isinstance(value, dict):
            found |= _set_model_settings(value, settings, caps)
    return found


# Models already restored from their checkpoints, by (checkpoint file, its mtime, the model's resolved config).
_MODELS: dict[tuple, Any] = {}
MAX_MODELS = 4  # e.g. the four tabs, or one tab with a few sampler settings; the oldest goes first


def _predict_cli(args: list[str], settings: dict[str, Any]) -> None:
    """``tgm predict`` with ``args`` through :func:`common.cli.run_cli`; ``settings`` are model init args that win
    over the checkpoint's (a plain ``--model.init_args.X`` flag is overwritten by the checkpoint's hyperparameters,
    which LightningCLI applies after parsing), set wherever they are in the (nested) init args.

    The model is built and restored from its checkpoint once and then kept: a later request with the same
    checkpoint and model settings gets that instance (jsonargparse's instantiator hook) and no ``ckpt_path``;
    the datamodule, the writer and the trainer are built per request, as ``tgm predict`` builds them."""
    from lightning.pytorch import LightningModule

    import common.cli

    class PredictCLI(common.cli.TGMCLI):
        def before_instantiate_classes(self) -> None:
            super().before_instantiate_classes()
            found = _set_model_settings(self.config[self.subcommand].model.init_args, settings, LENGTH_LIMITS)
            if set(settings) - found:
                raise DemoError(f"this checkpoint's model has no {', '.join(sorted(set(settings) - found))}")

        def instantiate_classes(self) -> None:
            config = self.config[self.subcommand]
            checkpoint = Path(config.ckpt_path)
            self.model_key = (str(checkpoint.resolve()), checkpoint.stat().st_mtime_ns, str(config.model))
            cached = _MODELS.get(self.model_key)
            if cached is not None:
                self.parser.add_instantiator(lambda *args, **kwargs: cached, LightningModule, prepend=True)
                config.ckpt_path = None  # its weights are in memory already
            super().instantiate_classes()

    cli = common.cli.run_cli(
        args, cli_class=PredictCLI
    )  # built exactly as `tgm` builds it, plus the settings
    _MODELS[cli.model_key] = _MODELS.pop(cli.model_key, cli.model)  # newest last
    while len(_MODELS) > MAX_MODELS:
        _MODELS.pop(next(iter(_MODELS)))


_LOCK = threading.Lock()  # one prediction at a time: the CLI seeds and sets torch threads process-wide


def predict(trained: Trained, work: Path, overrides: dict, settings: dict[str, Any] | None = None) -> Path:
    """Run ``tgm predict`` for ``trained`` with the config keys in ``overrides`` (e.g. the input file) and return
    the folder the prediction writer wrote to. Failures become one-line :class:`DemoError`s."""
    from common.errors import InputError

    if trained.checkpoint is None:
        raise DemoError(trained.missing)
    out_dir = work / "out"
    override = dict(overrides)
    override.setdefault("trainer", {})["callbacks"] = writer_callbacks(trained.config, out_dir)
    override_file = work / "demo.yaml"
    override_file.write_text(yaml.safe_dump(override, allow_unicode=True), encoding="utf-8")
    args = ["predict", "--config", str(trained.config), "--config", str(override_file),
            "--ckpt_path", str(trained.checkpoint), "--trainer.logger", "false",
            "--trainer.default_root_dir", str(work), "--trainer.enable_progress_bar", "false",
            "--trainer.devices", "1"]  # fmt: skip
    stderr = io.StringIO()
    with _LOCK, contextlib.redirect_stderr(stderr):
        try:
            _predict_cli(args, settings or {})
        except (InputError, DemoError) as error:
            raise DemoError(str(error)) from error
        except SystemExit as error:  # the CLI's own one-line errors (a config key the checkpoint lacks ...)
            lines = [line for line in stderr.getvalue().splitlines() if line.strip()]
            raise DemoError(f"prediction failed: {lines[-1] if lines else error}") from error
        except Exception as error:
            traceback.print_exc()  # to the server's console; the page gets one line
            raise DemoError(
                f"prediction failed ({type(error).__name__}: {str(error).splitlines()[0][:200]})"
            ) from error
    return out_dir


_WORKDIRS: list[Path] = []
KEEP_WORKDIRS = 16  # Gradio copies what a tab shows into its own cache; older inputs and outputs are removed


def workdir() -> Path:
    """A fresh temporary folder for one request."""
    _WORKDIRS.append(Path(tempfile.mkdtemp(prefix="tgm_demo_")))
    while len(_WORKDIRS) > KEEP_WORKDIRS:
        shutil.rmtree(_WORKDIRS.pop(0), ignore_errors=True)
    return _WORKDIRS[-1]


def clean_text(text: str | None, what: str, required: bool = True) -> str:
    text = " ".join((text or "").split())  # one line: predict files are one sentence per line
    if required and not text:
        raise DemoError(f"Please type a {what}.")
    if len(text) > MAX_TEXT_CHARS:
        raise DemoError(
            f"The {what} is {len(text)} characters long; the demo takes at most {MAX_TEXT_CHARS}."
        )
    return text


# -------------------------------------------------------------------------------------------------- the tabs
def pose_video(trained: Trained, sentence: str) -> Path:
    """Turkish sentence -> the writer's skeleton video (GIF)."""
    sentence = clean_text(sentence, "sentence")
    work = workdir()
    (work / "sentences.txt").write_text(sentence + "\n", encoding="utf-8")
    out_dir = predict(trained, work, {"data": {"init_args": {"predict_file": str(work / "sentences.txt")}}})
    videos = sorted(out_dir.glob("**/*.gif"))
    if not videos:
        raise DemoError("the model wrote no video for this sentence")
    return videos[0]


def shape3d_mesh(trained: Trained, description: str, style: str) -> list[Path]:
    """Turkish description (+ style) -> the writer's mesh files, the .glb first."""
    description = clean_text(description, "description")
    style = clean_text(style, "style text", required=False)
    work = workdir()
    out_dir = predict(
        trained, work, {"data": {"init_args": {"predict_texts": [description], "predict_style": style}}}
    )
    files = sorted(out_dir.glob("*.*"), key=lambda p: (p.suffix != ".glb", p.name))
    if not files or files[0].suffix != ".glb":
        raise DemoError("the model wrote no .glb mesh (is `glb` in the MeshWriter's formats?)")
    import trimesh

    if len(trimesh.load(files[0], force="mesh").faces) == 0:
        raise DemoError("the model predicted an empty shape for this description (train longer, or rephrase)")
    return files


def read_image(path: str | None) -> Any:
    from PIL import Image, UnidentifiedImageError

    if not path:
        raise DemoError("Please upload an image.")
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise DemoError(
            f"`{Path(path).name}` is not an image this demo can read (PNG, JPEG, BMP, GIF, TIFF, WebP)"
        ) from error


PREVIEW_SIZE = 256  # small images (the generated data's are 64 px) are enlarged to this for the page


def preview_image(image_path: str | None) -> Any:
    """The uploaded image as the page shows it: small ones enlarged (nearest neighbour, so pixels stay sharp)
    to at least ``PREVIEW_SIZE`` on their shorter side; None before an upload or for a file that is no image."""
    from PIL import Image

    try:
        image = read_image(image_path)
    except DemoError:
        return None
    scale = PREVIEW_SIZE / min(image.size)
    if scale > 1:
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.NEAREST)
    return image


def caption_text(trained: Trained, image_path: str | None, decoding: str) -> tuple[Any, str]:
    """Uploaded image -> (its preview, caption); ``decoding`` is "greedy" or "beam search" (3 beams)."""
    image = read_image(image_path)
    work = workdir()
    (work / "images").mkdir()
    image.save(work / "images" / "upload.png")
    settings = {"num_beams": 3 if decoding.startswith("beam") else 1}
    out_dir = predict(trained, work, {"data": {"init_args": {"predict_dir": str(work / "images")}}}, settings)
    results = [
        item
        for path in sorted(out_dir.glob("*.json"))
        for item in json.loads(path.read_text(encoding="utf-8"))
    ]
    if not results:
        raise DemoError("the model wrote no caption for this image")
    return preview_image(image_path), results[0]["caption"]


def class_names(trained: Trained) -> list[str]:
    """The checkpoint's class names (``class_names`` hyperparameter), else the config's data classes."""
    import torch

    if trained.checkpoint is not None:
        hparams = torch.load(trained.checkpoint, map_location="cpu", weights_only=True, mmap=True).get(
            "hyper_parameters", {}
        )
        if hparams.get("class_names"):
            return [str(name) for name in hparams["class_names"]]
    config = yaml.safe_load(trained.config.read_text(encoding="utf-8"))
    return list(str(config.get("data", {}).get("init_args", {}).get("classes", "")))


def diffusion_grid(
    trained: Trained, labels: str, sampler: str, steps: int, guidance: float, per_label: int
) -> np.ndarray:
    """Characters, sampler, steps, guidance -> one row of generated images per character."""
    import imageio.v3 as iio

    names = class_names(trained)
    wanted = [c for c in (labels or "") if not c.isspace() and c != ","]
    if not wanted:
        raise DemoError(f"Please type one or more characters to draw, from: {''.join(names)}")
    unknown = sorted(set(wanted) - set(names))
    if unknown:
        raise DemoError(f"The model knows no {' '.join(unknown)}; it draws: {''.join(names)}")
    if len(wanted) > MAX_LABELS:
        raise DemoError(f"At most {MAX_LABELS} characters at once.")
    if sampler not in SAMPLERS:
        raise DemoError(f"sampler must be one of {', '.join(SAMPLERS)}")
    steps, per_label = int(min(max(steps, 1), MAX_STEPS)), int(min(max(per_label, 1), MAX_PER_LABEL))
    work = workdir()
    overrides = {
        "data": {"init_args": {"predict_per_class": per_label}},
        "model": {"init_args": {"predict": {"sampler": sampler, "steps": steps}}},
    }
    out_dir = predict(trained, work, overrides, {"guidance_scale": float(guidance)})
    rows = []
    for character in wanted:  # the writer names files <character code>_<batch>_<i>.png
        files = sorted(out_dir.glob(f"{ord(character):03d}_*.png"))[:per_label]
        if not files:
            raise DemoError(f"the model wrote no image for '{character}'")
        pictures = [iio.imread(f) for f in files]
        rows.append(np.concatenate([np.pad(p, ((1, 1), (1, 1))) for p in pictures], axis=1))
    width = max(row.shape[1] for row in rows)
    grid = np.concatenate([np.pad(row, ((0, 0), (0, width - row.shape[1]))) for row in rows], axis=0)
    grid = np.kron(grid, np.ones((4, 4), dtype=grid.dtype))  # 16 px characters are too small to see
    return labelled_rows(grid, wanted)


def labelled_rows(grid: np.ndarray, labels: list[str]) -> np.ndarray:
    """``grid`` (equal-height rows, one per label, grey or RGB uint8) with a column on the left naming each
    row's character, drawn with DejaVu Sans (matplotlib's font, which has the Turkish letters)."""
    from matplotlib import font_manager
    from PIL import Image, ImageDraw, ImageFont

    row_height = grid.shape[0] // len(labels)
    font = ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size=max(12, int(row_height * 0.6)))
    column = Image.new("L", (row_height, grid.shape[0]), color=255)
    draw = ImageDraw.Draw(column)
    for index, label in enumerate(labels):
        middle = (row_height / 2, index * row_height + row_height / 2)
        draw.text(middle, label, fill=0, font=font, anchor="mm")
    column = np.asarray(column)
    if grid.ndim == 3:
        column = np.repeat(column[..., None], grid.shape[2], axis=2)
    return np.concatenate([column.astype(grid.dtype), grid], axis=1)


# --------------------------------------------------------------------------------------------------- the page
def shown(function, *outputs_on_error):
    """Wrap a tab's function: its results plus a status line; a DemoError becomes the status line."""

    def run(*args):
        start = time.perf_counter()
        try:
            result = function(*args)
        except DemoError as error:
            return (*outputs_on_error, f"**Error:** {error}")
        done = f"Done in {time.perf_counter() - start:.1f} s."
        return (*(result if isinstance(result, tuple) else (result,)), done)

    return run


def build_app(trained: dict[str, Trained]):
    import gradio as gr

    def header(project: str, what: str) -> None:
        model = trained[project]
        gr.Markdown(
            f"{what}\n\n"
            + (
                f"Checkpoint: `{model.checkpoint}` · config: `{model.config}`"
                if model.checkpoint
                else f"**No model:** {model.missing}"
            )
        )

    with gr.Blocks(title="Turkish generative models") as app:
        gr.Markdown("# Turkish generative models\nOne tab per model; each runs `tgm predict` on your input.")
        with gr.Tab("pose", id="pose"):
            header("pose", "A Turkish sentence → a sign-language skeleton video.")
            sentence = gr.Textbox(label="Turkish sentence", max_length=MAX_TEXT_CHARS, elem_id="pose-input")
            button = gr.Button("Generate skeleton video", variant="primary", elem_id="pose-run")
            video = gr.Image(label="Skeleton video", type="filepath", elem_id="pose-output")
            status = gr.Markdown(elem_id="pose-status")
            button.click(shown(lambda s: pose_video(trained["pose"], s), None), [sentence], [video, status])

        with gr.Tab("shape3d", id="shape3d"):
            header("shape3d", "A Turkish description (and optionally a style) → a 3D mesh.")
            description = gr.Textbox(label="Description", max_length=MAX_TEXT_CHARS, elem_id="shape3d-input")
            style = gr.Textbox(label="Style (optional)", max_length=MAX_TEXT_CHARS, elem_id="shape3d-style")
            button = gr.Button("Generate mesh", variant="primary", elem_id="shape3d-run")
            model3d = gr.Model3D(label="Mesh", elem_id="shape3d-output")
            files = gr.File(
                label="Download (.glb / .obj / .ply)", file_count="multiple", elem_id="shape3d-files"
            )
            status = gr.Markdown(elem_id="shape3d-status")

            def mesh(text: str, style_text: str):
                written = shape3d_mesh(trained["shape3d"], text, style_text)
                return str(written[0]), [str(p) for p in written]

            button.click(shown(mesh, None, None), [description, style], [model3d, files, status])

        with gr.Tab("caption", id="caption"):
            header("caption", "An image → a Turkish caption.")
            upload = gr.File(label="Image", file_count="single", elem_id="caption-input")
            decoding = gr.Radio(["greedy", "beam search (3 beams)"], value="greedy", label="Decoding")
            button = gr.Button("Caption", variant="primary", elem_id="caption-run")
            preview = gr.Image(
                label="Your image",
                type="pil",
                interactive=False,
                height=PREVIEW_SIZE,
                elem_id="caption-image",
            )
            caption = gr.Textbox(label="Caption", interactive=False, elem_id="caption-output")
            status = gr.Markdown(elem_id="caption-status")
            upload.change(preview_image, [upload], [preview])  # the picture as soon as it is chosen
            button.click(
                shown(lambda f, d: caption_text(trained["caption"], f, d), None, ""),
                [upload, decoding],
                [preview, caption, status],
            )

        with gr.Tab("diffusion", id="diffusion"):
            names = "".join(class_names(trained["diffusion"])) if trained["diffusion"].checkpoint else ""
            header(
                "diffusion",
                "Characters → generated handwriting, one row per character."
                + (f" The model draws: `{names}`." if names else ""),
            )
            labels = gr.Textbox(
                label="Characters", value=names[:3], max_length=MAX_LABELS * 2, elem_id="diffusion-input"
            )
            with gr.Row():
                sampler = gr.Dropdown(list(SAMPLERS), value="ddim", label="Sampler")
                steps = gr.Slider(1, MAX_STEPS, value=25, step=1, label="Steps")
                guidance = gr.Slider(0.0, 10.0, value=2.0, step=0.5, label="Guidance scale")
                per_label = gr.Slider(1, MAX_PER_LABEL, value=4, step=1, label="Images per character")
            button = gr.Button("Generate", variant="primary", elem_id="diffusion-run")
            grid = gr.Image(label="Samples", elem_id="diffusion-output")
            status = gr.Markdown(elem_id="diffusion-status")
            button.click(
                shown(lambda *a: diffusion_grid(trained["diffusion"], *a), None),
                [labels, sampler, steps, guidance, per_label],
                [grid, status],
            )
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m common.demo", description="Try the trained models in the browser."
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--runs", default="runs", help="where to look for the runs' saved config.yaml")
    for project in PROJECTS:
        parser.add_argument(
            f"--{project}-ckpt", default=None, help=f"{project} checkpoint (default: the best one)"
        )
        parser.add_argument(f"--{project}-config", default=None,
                            help=f"{project} config (default: the run's saved config.yaml, else configs/{project}/default.yaml)")  # fmt: skip
    args = parser.parse_args(argv)
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise SystemExit(
            "demo: gradio is not installed; `make demo` installs it (pip install -e '.[demo]')"
        ) from None
    trained = {
        p: find_trained(p, getattr(args, f"{p}_ckpt"), getattr(args, f"{p}_config"), args.runs)
        for p in PROJECTS
    }
    for model in trained.values():
        print(
            f"demo: {model.project}: "
            + (f"{model.checkpoint} ({model.config})" if model.checkpoint else model.missing.replace("`", ""))
        )
    launch(build_app(trained), args.host, args.port)


def launch(app, host: str = "127.0.0.1", port: int = 7860, block: bool = True) -> None:
    """Serve ``app``: one request at a time, no public share link, uploads bounded, errors as page messages.

    Gradio's own start-up lines are silenced (``quiet``): they end with "set `share=True` in `launch()`", a
    public link this demo never makes; one line says where the page is instead."""
    app.queue(default_concurrency_limit=1)
    where = "this machine only; --host 0.0.0.0 to share it on your network" if host == "127.0.0.1" else host
    print(f"demo: http://{host}:{port} ({where})", flush=True)
    app.launch(
        server_name=host,
        server_port=port,
        share=False,
        max_file_size=MAX_UPLOAD,
        show_error=False,
        prevent_thread_lock=not block,
        quiet=True,
    )


if __name__ == "__main__":
    main()
