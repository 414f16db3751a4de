"""The browser demo: locating checkpoints and configs, bad input as one-line messages, and the real page in a
headless Debian chromium driven by Playwright, on tiny checkpoints trained here."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import shutil
import socket
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import trimesh
import yaml

from common import demo
from tests.helpers.tiny_runs import PROJECTS, tiny_run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
BROWSER_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip


def test_a_missing_checkpoint_names_the_make_target(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no runs/ here
    for project in PROJECTS:
        trained = demo.find_trained(project)
        assert trained.checkpoint is None
        assert f"make {demo.TRAIN_TARGET[project]}" in trained.missing
        with pytest.raises(demo.DemoError, match=f"make {demo.TRAIN_TARGET[project]}"):
            demo.predict(trained, tmp_path, {})


def test_the_runs_saved_config_is_found_by_its_checkpoint_folder(tmp_path):
    for name, dirpath in (("a", "ckpts/one"), ("b", "ckpts/two")):
        (tmp_path / "runs" / name).mkdir(parents=True)
        (tmp_path / "runs" / name / "config.yaml").write_text(
            yaml.safe_dump({"checkpoint": {"dirpath": str(tmp_path / dirpath)}})
        )
    (tmp_path / "runs" / "broken").mkdir()
    (tmp_path / "runs" / "broken" / "config.yaml").write_text("checkpoint: [unclosed")
    found = demo.run_config_for(tmp_path / "ckpts" / "two" / "last.ckpt", tmp_path / "runs")
    assert found == tmp_path / "runs" / "b" / "config.yaml"
    assert demo.run_config_for(tmp_path / "ckpts" / "three" / "last.ckpt", tmp_path / "runs") is None


def test_prediction_writers_are_pointed_at_the_request_folder(tmp_path):
    config = tmp_path / "config.yaml"
    callbacks = [
        {
            "class_path": "projects.shape3d.writer.MeshWriter",
            "init_args": {"output_dir": "runs/x", "formats": ["glb"]},
        },
        {"class_path": "common.callbacks.FreezeUnfreeze", "init_args": {"modules": ["text_encoder"]}},
    ]
    config.write_text(yaml.safe_dump({"trainer": {"callbacks": callbacks}}))
    rewritten = demo.writer_callbacks(config, tmp_path / "out")
    assert rewritten[0]["init_args"] == {"output_dir": str(tmp_path / "out"), "formats": ["glb"]}
    assert rewritten[1] == callbacks[1]


def test_settings_reach_nested_init_args_and_lengths_are_capped():
    from jsonargparse import Namespace

    init_args = Namespace(decoding=Namespace(num_beams=1, max_new_tokens=500), guidance_scale=2.0, other=3)
    found = demo._set_model_settings(init_args, {"num_beams": 3}, {"max_new_tokens": 40})
    assert found == {"num_beams"}
    assert (
        init_args.decoding.num_beams == 3 and init_args.decoding.max_new_tokens == 40 and init_args.other == 3
    )


def test_bad_input_is_a_message(tmp_path):
    text_file = tmp_path / "notes.png"
    text_file.write_text("not a picture")
    for call, message in (
        (lambda: demo.clean_text("  \n ", "sentence"), "Please type a sentence"),
        (lambda: demo.clean_text("a" * (demo.MAX_TEXT_CHARS + 1), "sentence"), "at most"),
        (lambda: demo.read_image(None), "Please upload an image"),
        (lambda: demo.read_image(str(text_file)), "notes.png` is not an image"),
    ):
        with pytest.raises(demo.DemoError, match=message):
            call()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.skipif(
    importlib.util.find_spec("gradio") is None, reason="gradio not installed (pip install -e '.[demo]')"
)
@pytest.mark.skipif(
    importlib.util.find_spec("playwright") is None, reason="playwright not installed (dev extra)"
)
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium browser (apt-get install chromium)")
def test_every_tab_answers_in_a_real_browser(tmp_path, one_torch_thread):
    from playwright.sync_api import expect, sync_playwright

    from common.cli import run_cli

    runs = {p: tiny_run(p) for p in PROJECTS}
    trained = {p: demo.find_trained(p, str(runs[p].checkpoint_dir / "last.ckpt"), None, str(runs[p].runs_root))
               for p in PROJECTS}  # fmt: skip
    assert all(trained[p].config == runs[p].config for p in PROJECTS)  # the run's own saved config
    image = next(Path("data/generated/caption/tiny").glob("**/*.png"))
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not a picture")

    app = demo.build_app(trained)
    port = free_port()
    demo.launch(app, "127.0.0.1", port, block=False)
    shots = Path(os.environ.get("TGM_DEMO_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    try:
        assert app.share is False and app.share_url is None and app.server_name == "127.0.0.1"
        assert app.max_file_size == 10 * 1024**2  # bytes; gradio refuses larger uploads
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch_persistent_context(
                str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=BROWSER_FLAGS,
                viewport={"width": 1100, "height": 1000},
            )  # fmt: skip
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/")

            def run(tab: str) -> None:
                status = page.locator(f"#{tab}-status")
                before = status.inner_text()
                page.locator(f"#{tab}-run").click()
                expect(status).not_to_have_text(before, timeout=90_000)
                expect(status).to_contain_text(re.compile(r"Done|Error"), timeout=90_000)

            page.get_by_role("tab", name="pose").click()
            run("pose")  # empty sentence
            expect(page.locator("#pose-status")).to_contain_text("Please type a sentence")
            page.locator("#pose-input textarea").fill("merhaba dünya")
            run("pose")
            expect(page.locator("#pose-status")).to_contain_text("Done")
            video = page.request.get(page.locator("#pose-output img").get_attribute("src")).body()
            assert iio.imread(video, extension=".gif", index=None).shape[0] > 1  # an animation, as served
            page.screenshot(path=shots / "pose.png", full_page=True)

            page.get_by_role("tab", name="shape3d").click()
            page.locator("#shape3d-input textarea").fill("kalın bir simit")
            page.locator("#shape3d-style textarea").fill("dolgun üslup")
            run("shape3d")
            expect(page.locator("#shape3d-status")).to_contain_text("Done")
            expect(page.locator("#shape3d-output canvas")).to_be_visible()
            link = page.locator("#shape3d-output a[data-testid='model3d-download-link']")
            expect(link).to_have_attribute("href", re.compile(r"\.glb$"))
            served = trimesh.load(
                io.BytesIO(page.request.get(link.get_attribute("href")).body()), file_type="glb"
            )
            assert len(served.to_geometry().faces) > 0  # the mesh the 3D view shows
            page.wait_for_timeout(2000)  # let the viewer draw it for the screenshot
            for suffix in (".glb", ".obj", ".ply"):
                expect(page.locator("#shape3d-files")).to_contain_text(suffix)
            page.screenshot(path=shots / "shape3d.png", full_page=True)

            page.get_by_role("tab", name="caption").click()
            page.locator("#caption-input input[type=file]").set_input_files(str(not_an_image))
            run("caption")
            expect(page.locator("#caption-status")).to_contain_text("notes.png is not an image")
            page.locator("#caption-input button[aria-label='Clear']").click()
            page.locator("#caption-input input[type=file]").set_input_files(str(image))
            expect(page.locator("#caption-input")).to_contain_text(image.name)
            run("caption")
            expect(page.locator("#caption-status")).to_contain_text("Done")
            shown = page.locator("#caption-output textarea").input_value()
            page.screenshot(path=shots / "caption.png", full_page=True)

            page.get_by_role("tab", name="diffusion").click()
            page.locator("#diffusion-input textarea").fill("A0")
            run("diffusion")
            expect(page.locator("#diffusion-status")).to_contain_text("Done")
            expect(page.locator("#diffusion-output img")).to_be_visible()
            page.screenshot(path=shots / "diffusion.png", full_page=True)
            assert "Traceback" not in page.content()
            browser.close()
    finally:
        app.close()

    # the page shows what `tgm predict` writes for the same image
    (tmp_path / "images").mkdir()
    shutil.copy(image, tmp_path / "images" / image.name)
    writers = {"trainer": {"callbacks": demo.writer_callbacks(trained["caption"].config, tmp_path / "cli")}}
    (tmp_path / "writers.yaml").write_text(yaml.safe_dump(writers))
    run_cli(["predict", "--config", str(trained["caption"].config), "--config", str(tmp_path / "writers.yaml"),
             "--ckpt_path", str(trained["caption"].checkpoint), "--trainer.logger", "false",
             "--trainer.default_root_dir", str(tmp_path), "--data.init_args.predict_dir", str(tmp_path / "images")])  # fmt: skip
    (result,) = json.loads((tmp_path / "cli" / "predictions.json").read_text(encoding="utf-8"))
    assert shown and shown == result["caption"]


def test_a_model_is_restored_once_and_kept_between_requests(tmp_path, monkeypatch):
    """Three captions used to print three "Restoring states": every request built the model and loaded its
    checkpoint. Now the same checkpoint and model settings reuse the restored model; other settings get one."""
    from tests.helpers.tiny import TinyModule
    from tests.test_cli import TINY, fit

    fit(tmp_path / "train", "--trainer.max_epochs", "1")
    trained = demo.Trained("tiny", tmp_path / "train" / "ckpt" / "last.ckpt", Path(TINY))
    built, restored = [], []
    real_init, real_load = TinyModule.__init__, TinyModule.on_load_checkpoint
    monkeypatch.setattr(
        TinyModule, "__init__", lambda self, *a, **k: built.append(1) or real_init(self, *a, **k)
    )
    monkeypatch.setattr(
        TinyModule, "on_load_checkpoint", lambda self, c: restored.append(1) or real_load(self, c)
    )
    monkeypatch.setattr(demo, "_MODELS", {}, raising=False)
    for _ in range(3):
        demo.predict(trained, demo.workdir(), {})
    assert (len(built), len(restored)) == (1, 1)
    demo.predict(trained, demo.workdir(), {}, {"lr": 0.5})  # another model setting: another model
    assert (len(built), len(restored)) == (2, 2)
    assert len(demo._MODELS) == 2


def test_diffusion_rows_are_labelled_with_their_character():
    grid = np.full((2 * 72, 5 * 72), 128, dtype=np.uint8)
    labelled = demo.labelled_rows(grid, ["ğ", "A"])
    assert labelled.shape == (144, 72 + 5 * 72) and np.array_equal(labelled[:, 72:], grid)
    first, second = labelled[:72, :72], labelled[72:, :72]
    assert (first < 128).any() and (second < 128).any()  # something is written in each label cell
    assert not np.array_equal(first, second)  # and it is each row's own character
    tofu = demo.labelled_rows(grid[:72], ["ş"])[:, :72]
    assert not np.array_equal(tofu, demo.labelled_rows(grid[:72], ["ç"])[:, :72])  # real glyphs, not boxes
    rgb = demo.labelled_rows(np.repeat(grid[..., None], 3, axis=2), ["ğ", "A"])
    assert rgb.shape == (144, 72 + 5 * 72, 3)


def test_the_caption_preview_is_large_enough_to_see(tmp_path):
    """A 64 px upload (the generated data's size) was shown at 64 px, and only after captioning."""
    small = tmp_path / "small.png"
    iio.imwrite(small, np.random.default_rng(0).integers(0, 256, (64, 48, 3), dtype=np.uint8))
    preview = demo.preview_image(str(small))
    assert min(preview.size) == demo.PREVIEW_SIZE and preview.size == (256, 341)
    large = tmp_path / "large.png"
    iio.imwrite(large, np.zeros((400, 600, 3), dtype=np.uint8))
    assert demo.preview_image(str(large)).size == (600, 400)  # big pictures are shown as they are
    assert demo.preview_image(None) is None  # cleared upload: no preview, no error


def test_launch_prints_no_share_hint(capsys):
    """Gradio's start-up text ends with "set `share=True` in `launch()`"; sharing is off by policy."""
    launched = {}

    class FakeApp:
        def queue(self, **kwargs):
            launched["queue"] = kwargs

        def launch(self, **kwargs):
            launched.update(kwargs)

    demo.launch(FakeApp(), "127.0.0.1", 7861)  # as `make demo` runs it (blocking)
    assert launched["share"] is False and launched["quiet"] is True
    assert capsys.readouterr().out.strip() == (
        "demo: http://127.0.0.1:7861 (this machine only; --host 0.0.0.0 to share it on your network)"
    )
