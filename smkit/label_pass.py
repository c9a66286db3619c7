"""The labels of a build, and when a rebuild may reuse the previous build's `pip freeze` instead of reading it again.

A full build runs the image's Dockerfile, starts a container for `pip freeze` (only the built image can
say what it holds) and adds the labels in a second, label-only pass. After an edit of the training
scripts alone that is wasted work: what pip sees lives in the layers below the scripts, and those are
the same when the "deps inputs" are: every build input that is not a script (the Dockerfile and its
directory, the requirements, the CA bundle) plus the base image id. So the previous build's labels carry
that digest (io.smkit.deps-sha256), and a rebuild with the same digest puts its labels on in the same
build, with the previous pip freeze, and starts no container.

It is reused only when nothing can have run on the new scripts: the Dockerfile copies the scripts last
(no RUN or FROM after the first COPY/ADD of a script path), and after the build the layers below the
scripts are checked to be the previous image's (a deps layer rebuilt without the cache, e.g. after a
prune, could resolve unpinned requirements differently). If either fails, the freeze is read as in a
full build.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass

import docker.errors

from smkit import engine, manifest
from smkit.context import BuildContext

LABEL_PREFIX = "io.smkit"
DEPS_LABEL = f"{LABEL_PREFIX}.deps-sha256"
FREEZE_LABEL = f"{LABEL_PREFIX}.pip-freeze"
# The one-pass build's Dockerfile (the image's own plus the labels) rides in the context under this name,
# with a .dockerignore that names it and itself: the engine then drops both before any COPY sees the
# context, so `COPY . ...` copies exactly what the plain build copies and its layer comes from the cache.
LABELLED_DOCKERFILE = ".smkit-labelled.Dockerfile"
GLOB = re.compile(r"[*?\[]")


def deps_digest(ctx: BuildContext, scripts: tuple[str, ...] | list[str], *extra: str) -> str:
    """sha256 of every context file outside the script directories (path, mode, content) plus `extra`
    (build args, base image id, platform): what the layers below the scripts are made of."""
    h = hashlib.sha256()
    for name, file_hash in ctx.file_digests().items():
        if not _under_any(name, scripts):
            h.update(f"{name}\0{ctx.modes[name]:o}\0{file_hash}\n".encode())
    for item in extra:
        h.update(f"extra\0{item}\n".encode())
    return h.hexdigest()


def _under_any(name: str, prefixes) -> bool:
    return any(name.startswith(prefix.rstrip("/") + "/") for prefix in prefixes)


def instructions(dockerfile: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile: comments dropped, `\\` continuations joined."""
    out, current = [], ""
    for raw in dockerfile.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not current):
            continue  # comments, also inside a continued instruction (as docker reads them)
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        if current.strip():
            word, _, rest = current.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
        current = ""
    if current.strip():
        word, _, rest = current.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def _sources(arguments: str) -> list[str] | None:
    """The context paths a COPY/ADD reads; None for `--from=` (another stage or image, not the context)."""
    words = arguments.split()
    if any(w.startswith("--from") for w in words):
        return None
    words = [w for w in words if not w.startswith("--")]
    rest = " ".join(words)
    if rest.startswith("["):
        try:
            words = [str(w) for w in json.loads(rest)]
        except ValueError:
            pass
    return words[:-1]


def _normal(path: str) -> str:
    path = GLOB.split(path, 1)[0] if GLOB.search(path) else path  # a glob: its fixed directory part
    path = re.sub(r"^(\./)+", "", path).strip("/")
    return "" if path in (".", "") else path


def _overlaps(source: str, scripts) -> bool:
    src = _normal(source)
    for script in scripts:
        script = _normal(script)
        if not src or src == script or script.startswith(src + "/") or src.startswith(script + "/"):
            return True
    return False


def scripts_tail(dockerfile: str, scripts) -> int | None:
    """How many layer-making instructions (COPY/ADD) the Dockerfile has from the first one that copies a
    script path to the end; None when a script edit could reach what pip sees (a RUN or another stage
    after the scripts) or when no script is copied at all."""
    steps = instructions(dockerfile)
    first = next((i for i, (word, args) in enumerate(steps)
                  if word in ("COPY", "ADD") and _overlaps_any(_sources(args), scripts)), None)
    if first is None:
        return None
    tail = steps[first:]
    if any(word in ("RUN", "FROM", "ONBUILD") for word, _ in tail):
        return None
    return sum(1 for word, _ in tail if word in ("COPY", "ADD"))


def _overlaps_any(sources: list[str] | None, scripts) -> bool:
    return bool(sources) and any(_overlaps(source, scripts) for source in sources)


@dataclass
class Previous:
    """The previous build of the same image whose pip freeze a rebuild may reuse."""

    ref: str
    freeze: str
    layers: list[str]
    tail: int  # layers from the first scripts COPY on


def reusable_freeze(name: str, deps: str, ctx: BuildContext, dockerfile: str, scripts) -> Previous | None:
    """The previous build of `name` (build/images.json) if its deps digest is `deps`, its image is still in
    the engine with a pip-freeze label, and the Dockerfile copies the scripts last."""
    if ".dockerignore" in ctx.files or dockerfile not in ctx.files:
        return None  # the one-pass build needs its own .dockerignore in the context, and the Dockerfile's text
    tail = scripts_tail(ctx.files[dockerfile].decode(errors="replace"), scripts)
    if tail is None:
        return None
    entry = manifest.load()["images"].get(name) or {}
    if not entry.get("image_id"):
        return None
    try:
        image = engine.client().images.get(entry["image_id"])
    except docker.errors.ImageNotFound:
        return None
    labels = image.labels or {}
    if labels.get(DEPS_LABEL) != deps or not labels.get(FREEZE_LABEL):
        return None
    return Previous(ref=entry.get("local_ref") or image.id, freeze=labels[FREEZE_LABEL],
                    layers=list(image.attrs.get("RootFS", {}).get("Layers", [])), tail=tail)


def same_deps_layers(previous: Previous, layers: list[str]) -> bool:
    """The new image's layers below the scripts are the previous image's: the deps were not rebuilt."""
    keep = len(previous.layers) - previous.tail
    return len(layers) == len(previous.layers) and keep > 0 and layers[:keep] == previous.layers[:keep]


def label_instructions(labels: dict[str, str]) -> tuple[str, dict[str, str]]:
    """Dockerfile lines that set `labels` in one step, and the build args they read.

    Not the API's `labels` option: the engine turns that into one LABEL step (one commit) per label.
    The values travel as build args, so a pip freeze keeps its newlines and no quoting is needed."""
    names = {key: f"SMKIT_LABEL_{i}" for i, key in enumerate(sorted(labels))}
    text = f"ARG {' '.join(names.values())}\nLABEL " + " ".join(f'{key}="${{{arg}}}"' for key, arg in names.items()) + "\n"
    return text, {arg: labels[key] for key, arg in names.items()}


def one_pass_context(ctx: BuildContext, dockerfile: str, labels: dict[str, str]) -> tuple[BuildContext, dict[str, str]]:
    """A copy of `ctx` whose LABELLED_DOCKERFILE is the image's Dockerfile plus the labels, and the build
    args those labels need. The image's own files are unchanged, so every other step hits the cache."""
    text, args = label_instructions(labels)
    labelled = BuildContext(ctx.root)
    labelled.files, labelled.modes = dict(ctx.files), dict(ctx.modes)
    original = ctx.files[dockerfile].decode(errors="replace")
    labelled.add_bytes(LABELLED_DOCKERFILE, (original.rstrip("\n") + "\n" + text).encode())
    labelled.add_bytes(".dockerignore", f"{LABELLED_DOCKERFILE}\n.dockerignore\n".encode())
    return labelled, args


def label_pass_context(root, image_id: str, labels: dict[str, str]) -> tuple[BuildContext, dict[str, str]]:
    """The label-only pass of a full build: FROM the built image, the labels in one step."""
    text, args = label_instructions(labels)
    ctx = BuildContext(root)
    ctx.add_bytes("Dockerfile", f"FROM {image_id}\n{text}".encode())
    return ctx, args
