"""W&B workspaces as code: every panel asks for a key the project's module really logs, and every metric it logs
has a panel. The keys come from a short run of each tiny config, not from a list that could drift."""

from __future__ import annotations

import pytest

pytest.importorskip(
    "wandb_workspaces", reason="wandb-workspaces is a dev dependency: pip install -e '.[dev]'"
)

from common.dashboards import SPECS, TRAINING_X, VALIDATION_X, main, panel_keys, workspace  # noqa: E402
from tests.helpers.tiny_runs import PROJECTS, tiny_run  # noqa: E402


def test_every_project_has_a_workspace():
    assert set(SPECS) == set(PROJECTS)


@pytest.mark.parametrize("project", PROJECTS)
def test_panels_show_exactly_what_the_module_logs(project, one_torch_thread):
    run = tiny_run(project)
    view = workspace(project)
    view._to_model()  # the spec W&B would receive is built offline, without an account
    keys = panel_keys(view)
    assert keys["x"] <= {VALIDATION_X, TRAINING_X}
    blank = sorted(keys["metrics"] - run.metric_keys)
    assert not blank, (
        f"panels for metrics {project} does not log: {blank} (it logs {sorted(run.metric_keys)})"
    )
    missing = sorted(run.metric_keys - keys["metrics"])
    assert not missing, f"metrics {project} logs with no panel in common/dashboards.py: {missing}"
    assert run.media_keys, f"{project} logged no media"
    blank = sorted(keys["media"] - run.media_keys)
    assert not blank, (
        f"media panels for keys {project} does not log: {blank} (it logs {sorted(run.media_keys)})"
    )


def test_push_without_a_login_says_so_in_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no_netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(SystemExit) as stopped:
        main(["push", "pose"])
    assert stopped.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not logged in" in err and "nothing was saved" in err


def test_show_lists_every_panel(capsys):
    main(["show", "caption"])
    out = capsys.readouterr().out
    assert "WeavePanelSummaryTable" in out and "media/val_captions" in out and "val/bleu4_13a" in out
