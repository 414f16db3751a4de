"""Every `tgm` command and `--key value` flag the READMEs document, and every `--flag` hint in the error texts of
`common/`, parses: each is run with `--print_config` (the parse step of the real command, nothing trained).

A hint that does not parse sends a user from one error to another: caption's README and error text said
`--data.init_args.clip.pretrain null`, which ended in a 28-line jsonargparse error (exit 2)."""

from __future__ import annotations

import ast
import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest
import yaml

from common.cli import run_cli

ROOT = Path(__file__).resolve().parents[1]
READMES = sorted([ROOT / "README.md", *ROOT.glob("projects/*/README.md")])
TINY = (
    "tests/configs/tiny.yaml"  # base config for flags the top-level README and common/ mention on their own
)
MAKE_TARGETS = {
    "train-pose": "pose",
    "train-3d": "shape3d",
    "train-caption": "caption",
    "train-diffusion": "diffusion",
}
# placeholders the READMEs write in capitals, and a value of the right type for each
PLACEHOLDERS = {"N": "2", "PATH": "out/predictions.json", "DIR": "out", "FILE": "out/file"}
# documented on purpose as mistakes (the README shows the error they give)
MISTAKES = {"--trainer.max_epochz", "--trainer.max_epoch"}
# commands that still fail, with the issue that tracks each (xfail); empty when every documented command parses
KNOWN_FAILURES: dict[str, str] = {}

FLAG = re.compile(r"--[a-z_]+(?:\.[A-Za-z_0-9]+)+(?: (?:'[^']*'|\"[^\"]*\"|[^\s`'\"-][^\s`]*))?")
CKPT_HINT = re.compile(r"--ckpt_path (?:best|last)")


def project_config(readme: Path) -> str:
    """The config a README's loose flags belong to: its project's default, the tiny test config at the top."""
    return f"configs/{readme.parent.name}/default.yaml" if readme.parent.name != ROOT.name else TINY


def readme_commands(readme: Path) -> list[tuple[str, list[str]]]:
    """``(where, args)`` for each ``tgm ...`` command line (continuations joined, comments dropped), each
    ``make train-* ARGS="..."``, and each inline `` `--key value` `` flag of ``readme``."""
    text = readme.read_text(encoding="utf-8")
    text = re.sub(r"\[(--[^\]]+)\]", r"\1", text.replace("\\\n", " "))  # [--optional flag] -> the flag
    lines = text.splitlines()
    found = []
    for number, line in enumerate(lines, 1):
        where = f"{readme.relative_to(ROOT)}:{number}"
        spans = re.findall(r"`([^`]+)`", line) if "```" not in line else []
        candidates = [line, *spans] if not line.lstrip().startswith(("|", "-", "*")) or spans else [line]
        for candidate in candidates:
            command = candidate.split(" #")[0].strip()
            match = re.search(r"(?:^|\s|/)tgm ((?:fit|validate|test|predict)\b.*)", command)
            args = shlex.split(match.group(1)) if match else []
            if {"--config", "-c"} & set(args):  # a command, not prose such as "`tgm predict` writes"
                found.append((where, args))
            make = re.search(r"make (train-[a-z0-9]+) ARGS=\"([^\"]+)\"", command)
            if make and make.group(1) in MAKE_TARGETS:
                config = f"configs/{MAKE_TARGETS[make.group(1)]}/default.yaml"
                found.append((where, ["fit", "--config", config, *shlex.split(make.group(2))]))
        for span in re.findall(r"`(--[^`]+)`", line):
            for flag in FLAG.findall(span):
                if " " in flag and flag.split()[0] not in MISTAKES:  # a flag with its value
                    found.append((where, ["fit", "--config", project_config(readme), *shlex.split(flag)]))
    return found


def error_hints() -> list[tuple[str, list[str]]]:
    """``(where, args)`` for each ``--key value`` hint in the messages `common/` raises, warns or writes."""
    found = []
    for path in sorted(ROOT.glob("common/**/*.py")):
        if path.name == "demo.py":  # its own flags (--host, --port ...), not tgm's
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, (ast.Raise, ast.Call)):
                continue
            name = ast.unparse(node.exc if isinstance(node, ast.Raise) and node.exc else node).split("(")[0]
            if not re.search(r"(Error|Exception|write|warn|info)$", name):
                continue
            for constant in ast.walk(node):
                if isinstance(constant, ast.Constant) and isinstance(constant.value, str):
                    where = f"{path.relative_to(ROOT)}:{constant.lineno}"
                    for hint in [*FLAG.findall(constant.value), *CKPT_HINT.findall(constant.value)]:
                        found.append((where, ["fit", "--config", TINY, *shlex.split(hint)]))
    return found


def documented() -> list[tuple[str, list[str]]]:
    seen, unique = set(), []
    for where, args in [item for readme in READMES for item in readme_commands(readme)] + error_hints():
        args = [PLACEHOLDERS.get(arg, arg) for arg in args if arg not in ("--print_config",)]
        if tuple(args) not in seen:
            seen.add(tuple(args))
            unique.append((where, args))
    return unique


COMMANDS = documented()


def test_the_documentation_is_found():
    """The extraction itself: the README's CLI block, an inline flag, a make ARGS line and an error hint."""
    commands = {" ".join(args) for _, args in COMMANDS}
    assert "fit --config configs/pose/default.yaml --ckpt_path last" in commands
    assert f"fit --config {TINY} --checkpoint.every_n_train_steps 500" in commands
    assert "fit --config configs/pose/default.yaml --trainer.max_epochs 5" in commands
    assert (
        f"fit --config {TINY} --trainer.accelerator cpu" in commands
    )  # the GPU-config hint in common/cli.py
    assert "fit --config configs/caption/default.yaml --data.init_args.clip.pretrain null" in commands
    assert not [args for _, args in COMMANDS if set(args) & MISTAKES]


def cases() -> list:
    """One case per command; the READMEs' (about 40, 2-3 s of parsing each on 2 cores) are `slow`, the hints
    in common/'s error texts run in `make test`."""
    params = []
    for where, args in COMMANDS:
        marks = [pytest.mark.slow] if where.endswith(".md") or ".md:" in where else []
        command = " ".join(args)
        if command in KNOWN_FAILURES:
            marks.append(pytest.mark.xfail(reason=KNOWN_FAILURES[command], strict=False))
        params.append(pytest.param(where, args, marks=marks, id=f"{where} {' '.join(args[2:])}"))
    return params


@pytest.mark.parametrize(("where", "args"), cases())
def test_documented_command_parses(where, args):
    command = " ".join(args)
    out, err = io.StringIO(), io.StringIO()
    with (
        pytest.raises(SystemExit) as exit_info,
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        run_cli([*args, "--print_config"])
    assert exit_info.value.code == 0, f"{where}: `tgm {command}` does not parse:\n{err.getvalue()[-1500:]}"
    assert isinstance(yaml.safe_load(out.getvalue()), dict)
