"""README: "Every command has --help, and every command that changes something has --dry-run".

The commands are discovered from the CLIs' own argparse parsers (smkit/build.py and `python -m local_mode`), so a
new command is covered the day it is added: its --help must work and teach its options, and unless it is
declared read-only below, it must take --dry-run. The dry runs of the commands that no other test runs
(bases, demo, clean) are run here and must leave everything as it was."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Commands that only read (they need no --dry-run): name -> what they do.
READ_ONLY = {"doctor": "checks and prints", "list": "prints what images.toml and build/images.json hold",
             "runs": "prints the past runs of local_mode/runs",
             "check": "runs the image in throwaway containers and reports; keeps nothing"}


def _load_parser(path: Path) -> argparse.ArgumentParser:
    spec = importlib.util.spec_from_file_location(f"smkit_cli_{path.parent.name}_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.parser()


def _smkit_parser() -> argparse.ArgumentParser:
    from smkit import cli

    return cli.parser("python build.py")


CLIS = {
    "build.py": ([sys.executable, str(REPO / "build.py")], _smkit_parser),  # build.py is smkit's CLI (smkit/cli.py)
    "local_mode": ([sys.executable, "-m", "local_mode"], lambda: _load_parser(REPO / "local_mode" / "cli.py")),
}


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]  # argparse keeps them here
    return {name: sub for action in actions for name, sub in action.choices.items()}


COMMANDS = [(cli, name, sub) for cli, (_, make) in CLIS.items() for name, sub in subcommands(make()).items()]


def test_the_clis_have_commands():
    names = {(cli, name) for cli, name, _ in COMMANDS}
    assert {("build.py", "build"), ("build.py", "push"), ("local_mode", "run")} <= names, names


def run_cli(cli: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLIS[cli][0], *args], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "200", **(env or {})})


@pytest.mark.parametrize("cli,name,sub", COMMANDS, ids=[f"{c}-{n}" for c, n, _ in COMMANDS])
def test_every_command_has_help_that_names_its_options(cli, name, sub):
    proc = run_cli(cli, name, "--help")
    assert proc.returncode == 0, proc.stderr
    if not sub.add_help:  # a verb handed over whole to another CLI (smkit run -> python -m local_mode run)
        assert "--backend" in proc.stdout and "--dry-run" in proc.stdout, proc.stdout
        return
    assert proc.stdout.startswith("usage:") and name in proc.stdout.splitlines()[0]
    options = [a.option_strings[-1] for a in sub._actions if a.option_strings and a.help != argparse.SUPPRESS]
    assert options and all(option in proc.stdout for option in options), (options, proc.stdout)
    assert proc.stderr == ""


@pytest.mark.parametrize("cli,name,sub", COMMANDS, ids=[f"{c}-{n}" for c, n, _ in COMMANDS])
def test_every_command_that_changes_something_has_dry_run(cli, name, sub):
    if not sub.add_help:  # handed over whole: the other CLI's parser is checked as itself
        return
    if name in READ_ONLY:
        assert not any("--dry-run" in a.option_strings for a in sub._actions), f"{name} is declared read-only"
        return
    assert any("--dry-run" in a.option_strings for a in sub._actions), f"`{cli} {name}` changes something: give it --dry-run"


def test_the_top_level_help_lists_every_command():
    for cli in CLIS:
        proc = run_cli(cli, "--help")
        assert proc.returncode == 0
        for command in {name for c, name, _ in COMMANDS if c == cli}:
            assert command in proc.stdout, (cli, command)


# -------------------------------------------------------------------------------------------------
# The dry runs that no other test runs touch nothing.


def test_clean_dry_run_removes_nothing(tmp_path):
    (tmp_path / "job-1" / "output").mkdir(parents=True)
    proc = run_cli("local_mode", "clean", "--runs-dir", str(tmp_path), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert str(tmp_path / "job-1") in proc.stdout and (tmp_path / "job-1" / "output").is_dir()


@pytest.mark.docker
def test_demo_dry_run_runs_nothing(tiny_image, tmp_path):
    project = tmp_path / "project"
    (project / "build").mkdir(parents=True)
    (project / "build" / "images.json").write_text(json.dumps({"schema": 1, "images": {"xgboost": {
        "local_ref": tiny_image, "framework": "xgboost", "tag": "t", "program": "train.py"}}}))
    runs = tmp_path / "runs"
    proc = run_cli("local_mode", "demo", "--runs-dir", str(runs), "--dry-run", env={"SMKIT_PROJECT": str(project)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert tiny_image in proc.stdout
    assert not runs.exists() or list(runs.iterdir()) == []


@pytest.mark.docker
def test_bases_dry_run_builds_nothing(docker_client):
    from smkit import standin

    def standins() -> dict[str, str]:  # (other suites may tag images meanwhile: only the stand-ins are ours to judge)
        return {tag: image["Id"] for image in docker_client.api.images() for tag in image.get("RepoTags") or []
                if tag.startswith("smkit/standin-")}

    before = standins()
    proc = run_cli("build.py", "bases", "--force", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    for framework, name in standin.STANDINS.items():
        assert f"{framework}: docker build -t {name}" in proc.stdout
    assert standins() == before
