"""An image's training code as the working tree has it, and whether a built image holds that code.

Every image bakes the directories images.toml lists as its `scripts` into /opt/ml/code, flattened in
that order (the Dockerfile's `COPY train_scripts/common/ train_scripts/xgboost/ /opt/ml/code/`), and
records their hash in the label io.smkit.scripts-sha256. Two hashes, for two questions:
- does the image hold the working tree's code? working_tree_digest: the build's own computation
  (images.spec_context + images.scripts_digest) on the working tree now, so it equals the label of an
  image built from it, however the build lays its context out;
- did the code change? CodeCopy.digest / layout_digest: a hash of the files as they land in
  /opt/ml/code, cheap to recompute while watching.
The copy goes through a BuildContext holding only the script directories, so it holds exactly the files
a build would send (secrets, .dockerignore'd files and __pycache__ left out).

Used by `run --mount-code` (a per-run copy of the code instead of a rebuild), `run --watch` (what counts as
a change) and `push` (which refuses an image whose code is not the working tree's).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import docker.errors

from smkit import engine
from smkit.images_toml import ImageSpec
from smkit.context import BuildContext
from smkit.errors import ConfigError, ToolkitError
from smkit.image_build import LABEL_PREFIX, scripts_digest, spec_context
from smkit.paths import PROJECT

SCRIPTS_LABEL = f"{LABEL_PREFIX}.scripts-sha256"
CODE_DIR = "/opt/ml/code"


def scripts_context(spec: ImageSpec, root: Path = PROJECT) -> BuildContext:
    """The image's script directories as a build would send them."""
    ctx = BuildContext(root)
    for directory in spec.scripts:
        ctx.add(directory)
    return ctx


def working_tree_digest(spec: ImageSpec) -> str:
    """The io.smkit.scripts-sha256 label an image built from the working tree (PROJECT) now would carry."""
    return scripts_digest(spec_context(spec), spec)


def layout(spec: ImageSpec, ctx: BuildContext) -> dict[str, str]:
    """{path in /opt/ml/code: path in the context}: the script directories flattened in images.toml order,
    a later directory's file replacing an earlier one's (as COPY does); a requirements file among the
    scripts is installed at build time and never left in /opt/ml/code (the toolkit would pip-install it at
    every job start)."""
    files: dict[str, str] = {}
    requirements = (spec.requirements or "").strip("/")
    for directory in spec.scripts:
        prefix = directory.rstrip("/") + "/"
        for name in ctx.files:
            if name.startswith(prefix) and name != requirements:
                files[name[len(prefix):]] = name
    return files


def layout_digest(spec: ImageSpec, root: Path = PROJECT) -> str:
    """A hash of the code as it lands in /opt/ml/code (paths, modes, contents): what `run --watch` compares."""
    ctx = scripts_context(spec, root)
    return _digest(ctx, layout(spec, ctx))


def _digest(ctx: BuildContext, files: dict[str, str]) -> str:
    h = hashlib.sha256()
    for relative, name in sorted(files.items()):
        h.update(f"{relative}\0{ctx.modes[name]:o}\0{hashlib.sha256(ctx.files[name]).hexdigest()}\n".encode())
    return h.hexdigest()


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


def freshness(spec: ImageSpec, reference: str) -> Freshness:
    return Freshness(image=reference, image_digest=image_digest(reference), tree_digest=working_tree_digest(spec))


def require_current(spec: ImageSpec, reference: str) -> Freshness:
    """Refuse an image whose scripts differ from the working tree (what push checks first)."""
    state = freshness(spec, reference)
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
    digest: str  # layout_digest of the files copied


def assemble(spec: ImageSpec, destination: Path, root: Path = PROJECT) -> CodeCopy:
    """Write the image's script directories, flattened in images.toml order (a later directory's file
    replaces an earlier one's, as COPY does), into `destination`, which must not exist yet.

    A fresh copy per run, never the working tree itself: the legacy toolkit of the real XGBoost base
    writes setup.py (and pip's build files) into /opt/ml/code at job start, so the mounted directory must
    be writable, and what a job writes there must not land in the user's checkout."""
    ctx = scripts_context(spec, root)
    files = layout(spec, ctx)
    destination = Path(destination)
    destination.mkdir(parents=True)
    for relative, name in sorted(files.items()):
        target = destination / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(ctx.files[name])
        os.chmod(target, ctx.modes[name])
    return CodeCopy(path=destination, files=tuple(sorted(files)), digest=_digest(ctx, files))


def watched_files(spec: ImageSpec, root: Path = PROJECT) -> dict[str, tuple[int, int]]:
    """(mtime_ns, size) of every file under the image's script directories: cheap enough to poll a few
    times a second; a difference means "look closer" (layout_digest decides whether it counts)."""
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
