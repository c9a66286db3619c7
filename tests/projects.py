"""Scratch copies of the project, so that no test writes into the checkout.

A test that builds runs `build.py` with SMKIT_PROJECT set to a copy of images.toml, containers/ and
train_scripts/ in a temporary directory: the copy's build/images.json is written, never the checkout's
(whose pinned digests a user's `--cloud` run submits). A copy is no git repository, so its images are
tagged `nogit-<inputs hash>` and never move a tag the user's own builds made (`<sha>-<hash>`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BUILD_PY = REPO / "build.py"
# What a project is made of; the stand-ins' sources are the toolkit's own (smkit.paths.REPO), not the project's.
PROJECT_FILES = ("images.toml", ".dockerignore")
PROJECT_DIRS = ("containers", "train_scripts")
_SKIP = shutil.ignore_patterns("__pycache__", "*.pyc", "standin")


def copy_project(root: Path) -> Path:
    """A scratch project at `root` holding the checkout's images.toml, containers/ and train_scripts/."""
    root.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        if (REPO / name).exists():
            shutil.copy(REPO / name, root / name)
    for name in PROJECT_DIRS:
        shutil.copytree(REPO / name, root / name, ignore=_SKIP, dirs_exist_ok=True)
    return root


def project_env(project: Path, **extra: str) -> dict[str, str]:
    return dict(os.environ, SMKIT_PROJECT=str(project), COLUMNS="200", **extra)


def run_build_py(project: Path, *args: str, check: bool = True, timeout: int = 1800,
                 wrap: list[str] | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python build.py ARGS` on `project` (wrap: a command prefix such as a network namespace)."""
    command = [*(wrap or []), sys.executable, str(BUILD_PY), *args]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                          env=project_env(project, **(env or {})))
    if check and proc.returncode != 0:
        raise AssertionError(f"build.py {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def built_refs(project: Path) -> dict[str, str]:
    """name -> local image reference, from the scratch project's build/images.json."""
    images = json.loads((project / "build" / "images.json").read_text())["images"]
    return {name: entry["local_ref"] for name, entry in images.items()}


def build_local(project: Path, names: tuple[str, ...] = ("xgboost", "pytorch")) -> dict[str, str]:
    """`build.py build --base local --image NAME...` on the scratch project, as `make build BASE=local` does."""
    run_build_py(project, "build", "--base", "local", *[arg for name in names for arg in ("--image", name)])
    refs = built_refs(project)
    return {name: refs[name] for name in names}
