"""`pip install` of this repository (non-editable) gives a `smkit` command that works on the images.toml of
the directory it runs in, with the template, the stand-ins and the sample data shipped as package data."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def install_smkit(tmp_path: Path) -> Path:
    """`pip install` (non-editable) of a copy of the checkout into tmp_path/site; returns the `smkit` script."""
    # A copy: the build writes build/ and *.egg-info next to the sources, never into the checkout.
    files = subprocess.run(["git", "-C", str(REPO), "ls-files", "-co", "--exclude-standard"], capture_output=True,
                           text=True, check=True).stdout.split()
    source = tmp_path / "source"
    for name in files:
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    target = tmp_path / "site"
    # This interpreter's setuptools builds the wheel, offline; the dependencies are this interpreter's.
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    "--target", str(target), str(source)], check=True, capture_output=True, text=True)
    return target / "bin" / "smkit"


def smkit_env(smkit: Path) -> dict:
    """The environment of the installed command: its package first, no SMKIT_PROJECT (the current directory)."""
    env = {k: v for k, v in os.environ.items() if k != "SMKIT_PROJECT"}
    env.update(PYTHONPATH=str(smkit.parent.parent), COLUMNS="250")
    return env


def test_installed_smkit_works_in_a_project_outside_the_repository(tmp_path):
    smkit = install_smkit(tmp_path)
    target = smkit.parent.parent
    assert smkit.is_file()
    assert (target / "smkit" / "_containers" / "Dockerfile").read_text() == (REPO / "containers" / "Dockerfile").read_text()
    assert (target / "smkit" / "_containers" / "standin" / "real_bases.toml").is_file()
    env = smkit_env(smkit)

    project = tmp_path / "team-repo"
    project.mkdir()
    def run(*args: str) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, str(smkit), *args], cwd=project, capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc

    assert "init" in run("--help").stdout and "usage: smkit" in run("--help").stdout
    run("init", "churn", "--framework", "sklearn", "--from", str(REPO / "tests" / "fixtures" / "byo" / "sklearn_tutorial.py"))
    assert (project / "images.toml").is_file() and (project / "sample_data" / "churn" / "train" / "train.csv").is_file()
    dry = run("build", "--dry-run", "--base", "local").stdout
    template = target / "smkit" / "_containers" / "Dockerfile"
    assert f"-f {template} --build-arg BASE_IMAGE=smkit/standin-sklearn:1.4-2 --build-arg PROGRAM=sklearn_tutorial.py" in dry
    assert "code/ = train_scripts/churn" in dry
    listing = run("list").stdout
    assert "churn  sklearn 1.4-2 py3 cpu" in listing
    assert not (project / "build").exists() and not (REPO / "smkit.egg-info").exists()
