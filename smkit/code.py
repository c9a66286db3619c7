"""An image's training code as the working tree has it, and whether a built image holds that code.

Every image bakes the directories images.toml lists as its `scripts` into /opt/ml/code, flattened in
that order (the Dockerfile's `COPY train_scripts/common/ train_scripts/xgboost/ /opt/ml/code/`), and
records their hash in the label io.smkit.scripts-sha256 (smkit.images.scripts_digest). Both the hash and
the copy here go through a BuildContext holding only those directories, so they see exactly the files a
build would send (secrets, .dockerignore'd files and __pycache__ left out) and the hash of the working
tree equals the label of an image built from it.

Used by `run --mount-code` (a per-run copy of the code instead of a rebuild), `run --watch` (what counts as
a change) and `push` (which refuses an image whose code is not the working tree's).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import docker.errors

from smkit import engine
from smkit.catalog import ImageSpec
from smkit.context import BuildContext
from smkit.errors import ConfigError, ToolkitError
from smkit.images import LABEL_PREFIX, scripts_digest
from smkit.paths import PROJECT

SCRIPTS_LABEL = f"{LABEL_PREFIX}.scripts-sha256"
CODE_DIR = "/opt/ml/code"


def scripts_context(spec: ImageSpec, root: Path = PROJECT) -> BuildContext:
    """The image's script directories as a build would send them."""
    ctx = BuildContext(root)
    for directory in spec.scripts:
        ctx.add(directory)
    return ctx


def working_tree_digest(spec: ImageSpec, root: Path = PROJECT) -> str:
    """The scripts hash an image built from the working tree now would carry."""
    return scripts_digest(scripts_context(spec, root), spec)


def image_digest(reference: str) -> str | None:
    """The scripts hash recorded in a built image (None: not an smkit image, or built before the label)."""
    try:
        labels = engine.client().images.get(reference).labels or {}
    except docker.errors.ImageNotFound:
        raise ConfigError(f"The image {reference} is not in the local Docker engine.",
                          "build it first: `make build` (or `python build.py build --base local`)") from None
    return labels.get(SCRIPTS_LABEL)


@dataclass(frozen=True)
class Freshness:
    """How a built image's code compares with the working tree's."""

    image: str
    image_digest: str | None
    tree_digest: str

    @property
    def current(self) -> bool:
        return self.image_digest == self.tree_digest


def freshness(spec: ImageSpec, reference: str, root: Path = PROJECT) -> Freshness:
    return Freshness(image=reference, image_digest=image_digest(reference), tree_digest=working_tree_digest(spec, root))


def require_current(spec: ImageSpec, reference: str, root: Path = PROJECT) -> Freshness:
    """Refuse an image whose scripts differ from the working tree (what push checks first)."""
    state = freshness(spec, reference, root)
    if not state.current:
        recorded = f"scripts sha256 {state.image_digest[:12]}" if state.image_digest else "no scripts label"
        raise ToolkitError(
            f"The image {reference} does not hold the working tree's {spec.name} code ({recorded}; the working tree's "
            f"{', '.join(spec.scripts)} hash to {state.tree_digest[:12]}): it was built before the scripts were edited.",
            f"rebuild it first: `make build IMAGE={spec.name}` (or `python build.py build --image {spec.name} "
            "--base ...`, the base you built it on), then push",
        )
    return state


@dataclass(frozen=True)
class CodeCopy:
    """A copy of the working tree's code laid out as /opt/ml/code."""

    path: Path
    files: tuple[str, ...]  # paths relative to the copy
    digest: str  # working_tree_digest of the files copied


def assemble(spec: ImageSpec, destination: Path, root: Path = PROJECT) -> CodeCopy:
    """Write the image's script directories, flattened in images.toml order (a later directory's file
    replaces an earlier one's, as COPY does), into `destination`, which must not exist yet.

    A fresh copy per run, never the working tree itself: the legacy toolkit of the real XGBoost base
    writes setup.py (and pip's build files) into /opt/ml/code at job start, so the mounted directory must
    be writable, and what a job writes there must not land in the user's checkout."""
    ctx = scripts_context(spec, root)
    destination = Path(destination)
    destination.mkdir(parents=True)
    layout: dict[str, str] = {}  # path in /opt/ml/code -> path in the context
    for directory in spec.scripts:
        prefix = directory.rstrip("/") + "/"
        for name in ctx.files:
            if name.startswith(prefix):
                layout[name[len(prefix):]] = name
    for relative, name in sorted(layout.items()):
        target = destination / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(ctx.files[name])
        os.chmod(target, ctx.modes[name])
    return CodeCopy(path=destination, files=tuple(sorted(layout)), digest=scripts_digest(ctx, spec))


def watched_files(spec: ImageSpec, root: Path = PROJECT) -> dict[str, tuple[int, int]]:
    """(mtime_ns, size) of every file under the image's script directories: cheap enough to poll a few
    times a second; a difference means "look closer" (working_tree_digest decides whether it counts)."""
    state: dict[str, tuple[int, int]] = {}
    for directory in spec.scripts:
        base = Path(root) / directory
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            for filename in filenames:
                path = os.path.join(dirpath, filename)
                try:
                    info = os.stat(path)
                except FileNotFoundError:  # removed between the listing and the stat
                    continue
                state[path] = (info.st_mtime_ns, info.st_size)
    return state
