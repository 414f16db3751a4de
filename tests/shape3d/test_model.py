"""The model: growing decoder with fade-in, AdaIN-3D style injection and mixing, losses with gradients, a training
step that learns, and the CLI run (tiny config) that grows 32 -> 48, logs IoU / Chamfer and predicts meshes."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import trimesh

from common.cli import run_cli
from common.geometry import voxelize_mesh
from projects.shape3d.generate import all_texts
from projects.shape3d.model import AdaIN3d, VoxelDecoder, occupancy_loss, surface_chamfer_loss
from projects.shape3d.module import Architecture, Losses, Optimisation, Shape3DModule, TinyText
from projects.shape3d.text_encoder import TURKISH_ALPHABET, prepare_tokenizer
from tests.helpers import run_folders

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "configs" / "shape3d" / "tiny.yaml")
CSV = str(ROOT / "configs" / "logger" / "csv.yaml")


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> str:
    """The tiny tokenizer, prepared once as the datamodule's prepare_data does (never by the model)."""
    directory = tmp_path_factory.mktemp("tokenizer") / "tokenizer"
    prepare_tokenizer(all_texts() + [TURKISH_ALPHABET, TURKISH_ALPHABET.upper()], directory)
    return str(directory)


def tiny_module(tokenizer_dir: str, **architecture) -> Shape3DModule:
    from transformers import AutoTokenizer

    return Shape3DModule(
        tokenizer_dir=tokenizer_dir,
        text_vocab_size=len(AutoTokenizer.from_pretrained(tokenizer_dir)),
        tiny_text=TinyText(d_model=32, layers=1),
        architecture=Architecture(
            **(
                dict(latent_dim=32, style_dim=16, channels=(16, 8, 8, 4), grow_resolutions=(48, 64))
                | dict(grow_channels=(4, 4))
                | architecture
            )
        ),
        losses=Losses(surface_topk=64, surface_points=128),
        optimisation=Optimisation(lr=3e-3),
        torch_num_threads=1,
    )


def test_decoder_grows_with_exact_sizes_and_fades_in():
    torch.manual_seed(0)
    decoder = VoxelDecoder(
        16, 8, channels=(16, 8, 8, 4), grow_resolutions=(48, 64), grow_channels=(4, 4)
    ).eval()
    # growth heads start at zero (a new stage begins as the resized coarser output) ...
    assert all(float(decoder.heads[r].weight.abs().sum()) == 0 for r in ("48", "64"))
    with torch.no_grad():
        torch.testing.assert_close(
            decoder(torch.ones(1, 16), [torch.ones(1, 8)] * 5, 48)[:, ::12, ::12, ::12],
            F.interpolate(
                decoder(torch.ones(1, 16), [torch.ones(1, 8)] * 5, 32)[:, None],
                size=(48,) * 3,
                mode="trilinear",
                align_corners=False,
            )[:, 0, ::12, ::12, ::12],
        )
    for head in decoder.heads.values():  # ... give them weights, as after some training
        torch.nn.init.normal_(head.weight)
    latent = torch.randn(2, 16)
    styles = [torch.randn(2, 8)] * decoder.num_style_layers
    with torch.no_grad():
        at32 = decoder(latent, styles, 32)
        assert at32.shape == (2, 32, 32, 32)
        assert decoder(latent, styles, 64).shape == (2, 64, 64, 64)
        # alpha = 0: the new 48^3 stage is invisible, the output is the 32^3 logits resized
        faded_out = decoder(latent, styles, 48, alpha=0.0)
        resized = F.interpolate(at32[:, None], size=(48,) * 3, mode="trilinear", align_corners=False)[:, 0]
        torch.testing.assert_close(faded_out, resized)
        half = decoder(latent, styles, 48, alpha=0.5)
        full = decoder(latent, styles, 48, alpha=1.0)
        torch.testing.assert_close(half, 0.5 * faded_out + 0.5 * full)
        assert not torch.allclose(full, faded_out)


def test_adain_sets_channel_statistics_from_the_style():
    torch.manual_seed(0)
    layer = AdaIN3d(4, 6)
    x = torch.randn(2, 4, 5, 5, 5) * 3 + 2
    style = torch.randn(2, 6)
    out = layer(x, style)
    scale, shift = layer.to_scale_shift(style).chunk(2, dim=1)
    torch.testing.assert_close(out.mean(dim=(2, 3, 4)), shift, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(
        out.std(dim=(2, 3, 4), unbiased=False), (1 + scale).abs(), atol=1e-3, rtol=1e-3
    )


def test_style_text_changes_the_shape_and_mixing_switches_layers(tokenizer_dir):
    torch.manual_seed(0)
    model = tiny_module(tokenizer_dir).eval()
    texts = ["bir silindir"] * 2
    with torch.no_grad():
        plain = model(texts, ["", ""], resolution=32)
        styled = model(texts, ["dolgun üslup", "narin üslup"], resolution=32)
        assert (plain - styled).abs().mean() > 1e-3
        assert (styled[0] - styled[1]).abs().mean() > 1e-3  # two styles, two shapes for one text
        codes = model.style_codes(["dolgun üslup"], mix_with=["narin üslup"], crossover=2)
        a = model.style_codes(["dolgun üslup"])
        b = model.style_codes(["narin üslup"])
        assert all(torch.equal(c, a[0]) for c in codes[:2]) and all(torch.equal(c, b[0]) for c in codes[2:])
        mixed = model(texts[:1], [""], resolution=32, style_codes=codes)
        assert (mixed - model(texts[:1], [""], resolution=32, style_codes=a)).abs().mean() > 1e-4
        assert (mixed - model(texts[:1], [""], resolution=32, style_codes=b)).abs().mean() > 1e-4


def test_losses_carry_gradients_towards_the_target():
    sphere = voxelize_mesh(trimesh.creation.icosphere(2, radius=0.3), 16)
    target = torch.from_numpy(sphere).float()[None]
    logits = torch.zeros(1, 16, 16, 16, requires_grad=True)
    occupancy_loss(logits, target).backward()
    # occupied voxels get pushed up, empty ones down
    assert (logits.grad[target.bool()] < 0).all() and (logits.grad[~target.bool()] > 0).all()
    points = torch.from_numpy(
        trimesh.sample.sample_surface(trimesh.creation.icosphere(2, radius=0.3), 256, seed=0)[0]
    ).float()[None]
    from common.geometry import voxel_grid_points

    centres = voxel_grid_points(16).reshape(16, 16, 16, 3)
    distances = ((centres.norm(dim=-1) - 0.3) ** 2)[None]
    prob = torch.full((1, 16, 16, 16), 0.5).requires_grad_(True)
    loss = surface_chamfer_loss(prob, distances, points, topk=256)
    loss.backward()
    assert prob.grad is not None and prob.grad.abs().sum() > 0
    good = surface_chamfer_loss(target, distances, points, topk=256)
    shifted = surface_chamfer_loss(torch.roll(target, 4, dims=1), distances, points, topk=256)
    assert good < shifted  # the right shape scores better than a displaced one


def test_training_steps_fit_a_batch(tokenizer_dir):
    torch.manual_seed(0)
    model = tiny_module(tokenizer_dir)
    model.set_resolution(32)
    shapes = [trimesh.creation.icosphere(2, radius=0.35), trimesh.creation.box((0.7, 0.2, 0.2))]
    voxels = torch.from_numpy(np.stack([voxelize_mesh(m, 32) for m in shapes])).float()
    from common.geometry import voxel_grid_points

    centres = voxel_grid_points(32).reshape(32, 32, 32, 3)
    batch = {
        "text": ["bir küre", "ince uzun bir prizma"],
        "style": ["", ""],
        "voxels": voxels,
        "eval_voxels": voxels,
        "points": torch.stack(
            [torch.from_numpy(trimesh.sample.sample_surface(m, 256, seed=0)[0]).float() for m in shapes]
        ),
        "ref_points": torch.zeros(2, 16, 3),
        "has_ref": torch.zeros(2),
        "distances": torch.stack([(centres - centres.new_tensor([0.0, 0.0, 0.0])).norm(dim=-1) ** 2] * 2),
    }
    optimizer = model.configure_optimizers()["optimizer"]
    losses = []
    for _ in range(25):
        logits = model(batch["text"], batch["style"], resolution=32)
        loss = model._losses(batch, logits)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.7 * losses[0]


def read_metrics(root: Path) -> list[dict]:
    files = sorted(root.rglob("metrics.csv"))
    assert files, f"no metrics.csv under {root}"
    with files[-1].open() as handle:
        return list(csv.DictReader(handle))


def test_cli_fit_grows_logs_metrics_then_predict_writes_meshes(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    cli = run_cli(
        [
            "fit",
            "--config",
            TINY,
            "--config",
            CSV,
            *run_folders(tmp_path),
            "--trainer.limit_train_batches",
            "2",
        ]
    )
    assert cli.trainer.state.finished
    assert "epoch 1: voxel resolution 32^3 -> 48^3" in caplog.text  # the growth step is visible in the log
    rows = read_metrics(tmp_path / "csv")
    resolutions = [float(r["train/resolution"]) for r in rows if r.get("train/resolution")]
    assert resolutions == [32.0, 48.0]
    for key in ("val/iou", "val/chamfer", "val/baseline_mean_shape_iou"):
        values = [float(r[key]) for r in rows if r.get(key)]
        assert values and all(np.isfinite(values)), key
    assert cli.model.resolution == 48
    assert cli.datamodule.train_set.epoch == 1  # the sampler passed Lightning's epoch on (new augmentations)
    # shared scalars came by link from the datamodule, which prepared the tokenizer
    assert cli.model.hparams.tokenizer_dir == cli.datamodule.tokenizer_dir
    assert cli.model.text_encoder.encoder.config.vocab_size == len(cli.model.text_encoder.tokenizer)
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", map_location="cpu", weights_only=False)
    assert saved["shape3d_resolution"] == 48 and saved["shape3d_fade_alpha"] == cli.model.fade_alpha
    # the text encoder was frozen in epoch 0 and unfrozen at epoch 1
    assert all(p.requires_grad for p in cli.model.text_encoder.parameters())
    # media: meshes + a preview image were written for W&B
    assert list(tmp_path.rglob("media/**/preview.png")) and list(tmp_path.rglob("media/**/*.obj"))

    # validate a 48^3 checkpoint in a fresh CLI run (no ProgressiveResolution acts outside fit): the data follows
    validated = run_cli(
        [
            "validate",
            "--config",
            TINY,
            "--config",
            CSV,
            *run_folders(tmp_path),
            "--ckpt_path",
            "last",
        ]
    )
    assert validated.model.resolution == validated.datamodule.resolution == 48
    assert np.isfinite(float(validated.trainer.callback_metrics["val/iou"]))

    predict_dir = tmp_path / "pred"
    writer_config = tmp_path / "writer.yaml"
    writer_config.write_text(
        "trainer:\n  callbacks:\n    - class_path: projects.shape3d.writer.MeshWriter\n"
        f"      init_args: {{output_dir: '{predict_dir}', formats: [obj, ply, glb], refine_steps: 3}}\n"
    )
    run_cli(
        [
            "predict",
            "--config",
            TINY,
            "--config",
            CSV,
            "--config",
            str(writer_config),
            "--trainer.default_root_dir",
            str(tmp_path),
            "--trainer.logger.init_args.save_dir",
            str(tmp_path / "csv"),
            "--ckpt_path",
            str(tmp_path / "ckpt" / "last.ckpt"),
            "--data.init_args.predict_texts",
            '["sekiz köşeli yıldız motifi", "ince uzun bir silindir"]',
        ]
    )
    files = sorted(predict_dir.iterdir())
    assert {f.suffix for f in files} == {".obj", ".ply", ".glb"} and len(files) == 6
    for path in files:
        loaded = trimesh.load(str(path), force="mesh")
        assert isinstance(loaded, trimesh.Trimesh)


def test_checkpoint_saved_mid_fade_restores_alpha_and_output(tmp_path, tokenizer_dir):
    import lightning

    torch.manual_seed(0)
    model = tiny_module(tokenizer_dir)
    for head in model.decoder.heads.values():  # as after some training, so alpha changes the output
        torch.nn.init.normal_(head.weight)
    model.set_resolution(48)
    model.set_fade_alpha(0.375)  # mid-fade
    checkpoint = {
        "state_dict": model.state_dict(),
        "hyper_parameters": dict(model.hparams),
        "pytorch-lightning_version": lightning.__version__,
    }
    model.on_save_checkpoint(checkpoint)  # what Trainer.save_checkpoint adds to its dict
    torch.save(checkpoint, tmp_path / "mid_fade.ckpt")
    loaded = Shape3DModule.load_from_checkpoint(tmp_path / "mid_fade.ckpt", map_location="cpu")
    assert loaded.resolution == 48 and loaded.fade_alpha == 0.375
    model.eval()
    loaded.eval()
    with torch.no_grad():
        expected = model(["sekiz köşeli yıldız motifi"], [""])
        torch.testing.assert_close(loaded(["sekiz köşeli yıldız motifi"], [""]), expected)
        loaded.set_fade_alpha(1.0)  # the value a fresh module starts with: a different model
        assert not torch.allclose(loaded(["sekiz köşeli yıldız motifi"], [""]), expected)


@pytest.mark.slow
def test_gradient_checkpointing_gives_the_same_gradients(tokenizer_dir):
    torch.manual_seed(0)
    plain = tiny_module(tokenizer_dir)
    checkpointed = tiny_module(tokenizer_dir, gradient_checkpointing=True)
    checkpointed.load_state_dict(plain.state_dict())
    for model in (plain, checkpointed):
        model.set_resolution(48)
        model.train()
        model(["bir küre"], [""], resolution=48).square().mean().backward()
    for (name, a), (_, b) in zip(
        plain.decoder.named_parameters(), checkpointed.decoder.named_parameters(), strict=True
    ):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


def test_text_encoder_loads_a_local_directory_and_names_the_key_when_missing(tmp_path, tokenizer_dir):
    from common.hub import PretrainedNotAvailable
    from projects.shape3d.text_encoder import TextEncoder, load_tokenizer

    vocab_size = len(load_tokenizer(tokenizer_dir))
    tiny = TextEncoder("tiny", tokenizer_dir, vocab_size, d_model=16, num_layers=1, num_heads=2)
    tiny.encoder.save_pretrained(tmp_path / "t5")
    tiny.tokenizer.save_pretrained(tmp_path / "t5")
    loaded = TextEncoder(str(tmp_path / "t5"))
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(["bir küre", "kalın bir simit"]), tiny(["bir küre", "kalın bir simit"])
        )
    with pytest.raises(PretrainedNotAvailable, match="model.init_args.text_encoder"):
        TextEncoder(str(tmp_path / "missing"))


def test_model_construction_prepares_nothing_and_names_the_missing_step(tmp_path):
    """The tiny T5 is built from the linked vocabulary size alone; the tokenizer is the data's preparation."""
    from common.errors import InputError

    model = Shape3DModule(tokenizer_dir=str(tmp_path / "tokenizer"), text_vocab_size=117)
    assert not (tmp_path / "tokenizer").exists()
    with pytest.raises(InputError, match=r"no prepared tokenizer .*projects\.shape3d\.prepare"):
        model(["bir küre"], [""])
    with pytest.raises(InputError, match="text_vocab_size"):
        Shape3DModule(tokenizer_dir=str(tmp_path / "tokenizer"))


def test_prepare_step_writes_what_fit_needs(tmp_path):
    from projects.shape3d.prepare import main

    config = tmp_path / "data.yaml"
    config.write_text(
        f"data:\n  class_path: projects.shape3d.data.ShapeDataModule\n  init_args:\n"
        f"    generated_dir: {tmp_path / 'gen'}\n    generated_copies_train: 1\n"
        "    resolutions: [32]\n    num_points: 256\n"
    )
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("data:\n  init_args:\n    augmentation: {enabled: true}\n")
    main(["--config", str(config), "--config", str(overlay)])
    assert (tmp_path / "gen" / "train.jsonl").exists() and (
        tmp_path / "gen" / "tokenizer" / "tokenizer.json"
    ).exists()
    # and the prepared splits, which setup only memory-maps
    assert {p.name.split("_")[0] for p in (tmp_path / "gen" / "cache").glob("*_*") if p.is_dir()} == {
        "train",
        "val",
    }
    with pytest.raises(SystemExit) as exit_info:  # a missing config is one line, exit 2
        main(["--config", str(tmp_path / "missing.yaml")])
    assert exit_info.value.code == 2
