"""The labels of a build, and when a rebuild may reuse the previous build's `pip freeze` instead of reading it again.

A build runs the image's Dockerfile, starts a container for `pip freeze` (only the built image can say
what it holds) and commits the image again with its labels (apply_labels). After an edit of the training
scripts alone the freeze container is wasted work: what pip sees lives in the layers below the scripts,
and those are the same when the "deps inputs" are: every build input that is not a script (the
Dockerfile and its directory, the requirements, the CA bundle) plus the base image id. So each build's
labels carry that digest (io.smkit.deps-sha256), and a rebuild with the same digest as the previous
build of the image takes that build's pip freeze and starts no container.

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

from smkit import engine, images_json
from smkit.context import BuildContext
from smkit.paths import PROJECT

LABEL_PREFIX = "io.smkit"
DEPS_LABEL = f"{LABEL_PREFIX}.deps-sha256"
FREEZE_LABEL = f"{LABEL_PREFIX}.pip-freeze"
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
    if dockerfile not in ctx.files:
        return None  # a Dockerfile from elsewhere: what it does with the scripts is unknown here
    tail = scripts_tail(ctx.files[dockerfile].decode(errors="replace"), scripts)
    if tail is None:
        return None
    entry = images_json.load()["images"].get(name) or {}
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


def apply_labels(image_id: str, labels: dict[str, str], ref: str) -> str:
    """Commit `image_id` under `ref` with `labels` added to its config; returns the new image id.

    Not a Dockerfile LABEL pass: the engine makes every step of a build (and every label of the API's
    `labels` option) a commit of its own, and a LABEL value cannot hold the newlines of a pip freeze without
    an extra ARG step. One commit of an unstarted container adds no layer and costs a fraction of a build.
    The container is created with nothing overridden: the engine fills what the passed config leaves empty
    (entrypoint, command) from the container's, which must therefore be the image's own."""
    api = engine.client().api
    config = dict(api.inspect_image(image_id)["Config"])
    config["Labels"] = {**(config.get("Labels") or {}), **labels}
    repository, _, tag = ref.rpartition(":")
    if not config.get("Entrypoint") and not config.get("Cmd"):
        return _label_build(image_id, labels, ref)  # no container can be created without a command
    container = api.create_container(image_id, network_disabled=True)  # never started
    try:
        committed = api.commit(container["Id"], repository=repository, tag=tag, conf=config,
                               message="smkit build: labels (git commit, base digest, input hashes, pip freeze)")
    finally:
        api.remove_container(container["Id"], force=True)
    return committed["Id"]


def _label_build(image_id: str, labels: dict[str, str], ref: str) -> str:
    """The labels by a build `FROM image_id`: one ARG and one LABEL step (the values as build args, so a
    pip freeze keeps its newlines and nothing needs quoting)."""
    from smkit import builder

    names = {key: f"SMKIT_LABEL_{i}" for i, key in enumerate(sorted(labels))}
    ctx = BuildContext(PROJECT)
    ctx.add_bytes("Dockerfile", (f"FROM {image_id}\nARG {' '.join(names.values())}\nLABEL "
                                 + " ".join(f'{key}="${{{arg}}}"' for key, arg in names.items()) + "\n").encode())
    built = builder.build(ctx, dockerfile="Dockerfile", tag=ref, title="labels",
                          buildargs={arg: labels[key] for key, arg in names.items()})
    return built.image_id
