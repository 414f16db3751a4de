"""W&B without network, resumed runs and dashboard-ready metric definitions; never touches the real network
(WANDB_BASE_URL points at a closed port on 127.0.0.1)."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from common.cli import run_cli
from common.errors import InputError
from common.loggers import WandbLogger, wandb_unreachable
from tests.helpers import tgm_command
from tests.helpers.run_if import RunIf
from tests.test_cli import ROOT, TINY

FAKE_KEY = "0123456789" * 4


def closed_port_url() -> str:
    with socket.socket() as sock:  # a port nobody listens on once this socket is closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@contextlib.contextmanager
def silent_server():
    """A W&B URL whose server accepts connections and never answers."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield f"http://127.0.0.1:{server.getsockname()[1]}"


@contextlib.contextmanager
def http_server(answer_posts: bool):
    """A W&B URL whose server answers HEAD/GET at once; POSTs (wandb's GraphQL) hang unless ``answer_posts``."""
    release = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_HEAD(self):
            self.send_response(200)
            self.end_headers()

        do_GET = do_HEAD

        def do_POST(self):
            if answer_posts:
                self.do_HEAD()
            else:
                release.wait(60)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        release.set()
        server.shutdown()
        server.server_close()


def test_probe_tells_a_closed_port_and_a_silent_server_from_one_that_answers(monkeypatch):
    monkeypatch.setenv("WANDB_BASE_URL", closed_port_url())
    assert "ConnectionRefusedError" in wandb_unreachable(timeout=2)
    with silent_server() as url:  # accepted the connection: the old TCP-only probe called it reachable
        monkeypatch.setenv("WANDB_BASE_URL", url)
        assert wandb_unreachable(timeout=1) == f"{url} did not answer within 1 s"
    with http_server(answer_posts=True) as url:
        monkeypatch.setenv("WANDB_BASE_URL", url)
        assert wandb_unreachable(timeout=2) is None


@RunIf(wandb=True)
def test_silent_server_is_known_within_the_probe_and_leaves_no_run_folder(monkeypatch, tmp_path):
    """A server that accepts but never answers took init_timeout (30 s) plus ~15 s of wandb's telemetry flush at
    exit, and left a run-* folder behind."""
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.setenv("WANDB_MODE", "online")
    with silent_server() as url:
        monkeypatch.setenv("WANDB_BASE_URL", url)
        logger = WandbLogger(save_dir=str(tmp_path))
        started = time.monotonic()
        with pytest.raises(InputError, match="did not answer within 5 s"):
            logger.experiment  # noqa: B018
        assert time.monotonic() - started < 10
    assert not list(tmp_path.glob("wandb/run-*"))


@RunIf(wandb=True)
def test_failed_online_start_removes_its_run_folder(monkeypatch, tmp_path):
    """The server answers HTTP but never starts the run: wandb gives up after init_timeout and used to leave
    runs/wandb/run-*/ (and latest-run pointing at it) behind, a run with nothing in it to sync."""
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.setenv("WANDB_ERROR_REPORTING", "false")  # wandb's telemetry would flush to it at exit
    monkeypatch.delenv("WANDB_MODE", raising=False)
    (tmp_path / "wandb" / "run-20000101_000000-older").mkdir(parents=True)  # another run's folder stays
    with http_server(answer_posts=False) as url:
        monkeypatch.setenv("WANDB_BASE_URL", url)
        logger = WandbLogger(save_dir=str(tmp_path), mode="online", init_timeout=3)
        with pytest.raises(InputError, match="could not start the online run"):
            logger.experiment  # noqa: B018
    assert [p.name for p in (tmp_path / "wandb").glob("run-*")] == ["run-20000101_000000-older"]
    assert not (tmp_path / "wandb" / "latest-run").is_symlink()


@RunIf(wandb=True)
def test_explicit_online_without_network_is_one_line_exit_2(tmp_path):
    """Used to wait ~90 s for wandb's retries and end in a 60-line CommError traceback (exit 1)."""
    env = {
        "WANDB_MODE": "online",
        "WANDB_BASE_URL": closed_port_url(),
        "WANDB_API_KEY": FAKE_KEY,
        "WANDB_DIR": str(tmp_path),
        "WANDB_SILENT": "true",
    }
    command = tgm_command(
        "fit",
        TINY,
        args=[
            "--trainer.max_epochs",
            "1",
            "--trainer.default_root_dir",
            str(tmp_path),
            "--trainer.logger.init_args.save_dir",
            str(tmp_path),
            "--checkpoint.dirpath",
            str(tmp_path / "ckpt"),
        ],
    )
    result = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=120, env={**_base_env(), **env}
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("tgm: ")]
    assert len(lines) == 1 and "W&B: online mode was asked for" in lines[0], result.stderr[-2000:]
    assert "ConnectionRefusedError" in lines[0]


def _base_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}


@RunIf(wandb=True)
def test_logged_in_without_network_goes_offline_without_trying_online(monkeypatch, tmp_path):
    """Used to try online first and fall back after wandb's ~90 s of retries."""
    from unittest import mock

    import wandb

    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_BASE_URL", closed_port_url())
    modes = []
    monkeypatch.setattr(wandb, "init", lambda **kwargs: modes.append(kwargs["mode"]) or mock.MagicMock())
    monkeypatch.setattr(wandb, "run", None)
    logger = WandbLogger(save_dir=str(tmp_path))
    assert logger.mode == "online"
    with pytest.warns(UserWarning, match=r"could not start an online run \(http://127.0.0.1:\d+: Connection"):
        logger.experiment  # noqa: B018 - starting the run is the point
    assert modes == ["offline"] and logger.mode == "offline"

    explicit = WandbLogger(save_dir=str(tmp_path), mode="online")
    with pytest.raises(InputError, match="online mode was asked for .* cannot be reached"):
        explicit.experiment  # noqa: B018
    assert modes == ["offline"]  # wandb.init was not even tried


def offline_fit(tmp_path, *extra: str):
    return run_cli(
        [
            "fit",
            "--config",
            TINY,
            "--trainer.default_root_dir",
            str(tmp_path),
            "--trainer.logger.init_args.save_dir",
            str(tmp_path / "wb"),
            "--checkpoint.dirpath",
            str(tmp_path / "ckpt"),
            *extra,
        ]
    )


@RunIf(wandb=True)
def test_define_metric_plots_val_by_epoch_and_keeps_the_best(monkeypatch, tmp_path):
    import wandb
    from wandb.sdk.wandb_run import Run

    defined, logged = {}, []
    real_define, real_log = Run.define_metric, Run.log

    def define_metric(self, name, *args, **kwargs):
        defined[name] = kwargs
        return real_define(self, name, *args, **kwargs)

    def log(self, data, *args, **kwargs):
        logged.append(dict(data))
        return real_log(self, data, *args, **kwargs)

    monkeypatch.setattr(Run, "define_metric", define_metric)
    monkeypatch.setattr(Run, "log", log)
    try:
        offline_fit(tmp_path, "--trainer.max_epochs", "2", "--checkpoint.mode", "max")
    finally:
        wandb.finish()
    assert defined["val/*"] == {"step_metric": "epoch"}
    assert defined["val/mse"] == {"step_metric": "epoch", "summary": "max,last"}  # from checkpoint.mode
    validations = [row for row in logged if "val/mse" in row]
    assert [row["epoch"] for row in validations] == [0, 1]  # the x-axis is logged with every validation


@RunIf(wandb=True)
def test_resumed_run_continues_the_same_wandb_run(tmp_path):
    import wandb

    try:
        first = offline_fit(tmp_path, "--trainer.max_epochs", "1").trainer.logger.version
    finally:
        wandb.finish()
    try:
        resumed = offline_fit(tmp_path, "--trainer.max_epochs", "2", "--ckpt_path", "last")
        assert resumed.trainer.logger.version == first
        assert resumed.trainer.logger.experiment.id == first
    finally:
        wandb.finish()
    assert (tmp_path / "wb" / "turkish-generative-models" / first / "config.yaml").exists()


@RunIf(wandb=True)
def test_diverged_run_finishes_its_wandb_run_with_exit_code_3(monkeypatch, tmp_path):
    """`tgm` ends with SystemExit(3), which wandb's exit hook read as 0: the run showed "Finished"."""
    import wandb
    from wandb.sdk.wandb_run import Run

    from common.cli import main

    finished = []
    real_finish = Run.finish

    def finish(self, exit_code=None, *args, **kwargs):
        finished.append(exit_code)
        return real_finish(self, exit_code, *args, **kwargs)

    monkeypatch.setattr(Run, "finish", finish)
    monkeypatch.setenv("WANDB_MODE", "offline")
    argv = ["tgm", "fit", "--config", TINY, "--model.init_args.lr", "1e30", "--trainer.max_epochs", "1"]
    argv += [
        "--trainer.default_root_dir",
        str(tmp_path),
        "--trainer.logger.init_args.save_dir",
        str(tmp_path),
    ]
    monkeypatch.setattr(sys, "argv", [*argv, "--checkpoint.dirpath", str(tmp_path / "ckpt")])
    try:
        with pytest.raises(SystemExit) as exit_info:
            main()
    finally:
        wandb.finish()
    assert exit_info.value.code == 3
    assert finished[0] == 3
