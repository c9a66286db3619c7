"""Build one image of images.toml: resolve and fetch its base, assemble its context, build, label, tag.

The build runs the image's own Dockerfile, then commits the result once more with its labels (OCI labels
for the git commit and the base digest, plus the build-input hash, the script hash and the `pip freeze` of
the result, which can only be read from the built image). Unchanged inputs find their image by its tag
and label and build nothing; the build is cached by the engine, so a changed script rebuilds only its
layer. After a script-only edit no container runs: the previous build's pip freeze is reused
(smkit/label_pass.py says when that is safe).
"""

from __future__ import annotations

import functools
import hashlib
import re
import subprocess
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import docker.errors

from smkit import basecheck, bases, builder, console, dockerfile, engine, images_json, label_pass, standin, tags
from smkit.images_toml import ImageSpec
from smkit.context import BuildContext, build_ca_bundle
from smkit.errors import BuildFailed, ToolkitError
from smkit.paths import IN_IMAGE_MODULES, PROJECT, TEMPLATE

if TYPE_CHECKING:
    from smkit import ecr

LABEL_PREFIX = label_pass.LABEL_PREFIX


@dataclass
class BuiltImage:
    name: str
    repository: str
    tag: str
    image_id: str
    base: str
    base_kind: str
    base_digest: str
    inputs_sha256: str
    scripts_sha256: str
    build_seconds: float
    size: int
    layers: list[str]
    moving_tags: list[str] = field(default_factory=list)
    cached: bool = False
    deps_sha256: str = ""  # the build inputs below the scripts (see smkit/label_pass.py)
    freeze_reused_from: str | None = None  # the previous build whose pip freeze this one carries

    @property
    def ref(self) -> str:
        return f"{self.repository}:{self.tag}"


def spec_context(spec: ImageSpec) -> BuildContext:
    """The build context: with the template, the scripts at code/ and the requirements at requirements.txt
    (fixed paths the template reads); with the image's own Dockerfile, every input at its project path."""
    ctx = BuildContext(PROJECT)
    if spec.dockerfile:
        for path in spec.build_inputs:
            ctx.add(path)
    else:
        ctx.add_bytes(dockerfile.CONTEXT_DOCKERFILE, dockerfile.template_text().encode())
        if spec.requirements:
            ctx.add(spec.requirements, dest=dockerfile.REQUIREMENTS)
        else:
            ctx.add_bytes(dockerfile.REQUIREMENTS, b"# no extra dependencies (images.toml names no requirements)\n")
        for scripts in spec.scripts:
            # A requirements.txt next to the script is baked at build time, never left for job start.
            ctx.add(scripts, dest=dockerfile.CODE_DIR, skip=(spec.requirements,) if spec.requirements else ())
    ctx.add_bytes("build-ca.crt", build_ca_bundle())
    # Every image may install them (the `smkit keep-failure` Dockerfile lines): the script's own failure
    # reason kept on the legacy toolkit, SageMaker's stop passed on. From this toolkit, not the project.
    for module in IN_IMAGE_MODULES:
        ctx.add_file_as(module, module.name)
    return ctx


def script_prefixes(spec: ImageSpec) -> tuple[str, ...]:
    """Where the scripts sit in the build context."""
    return spec.scripts if spec.dockerfile else (dockerfile.CODE_DIR,)


def scripts_digest(ctx: BuildContext, spec: ImageSpec) -> str:
    digests = ctx.file_digests()
    h = hashlib.sha256()
    for name, file_hash in digests.items():
        if any(name.startswith(prefix.rstrip("/") + "/") for prefix in script_prefixes(spec)):
            h.update(f"{name}\0{file_hash}\n".encode())
    return h.hexdigest()


def dockerfile_plan(spec: ImageSpec, base_uri: str) -> tuple[str, str, dict[str, str]]:
    """(the Dockerfile as a person finds it, its path in the context, the build args)."""
    buildargs = {"BASE_IMAGE": base_uri, "PROGRAM": spec.program}
    if spec.dockerfile:
        dockerfile.check_agrees(spec, dockerfile.read(spec), buildargs)
        return spec.dockerfile, spec.dockerfile, buildargs
    try:
        shown = str(TEMPLATE.relative_to(Path.cwd()))
    except ValueError:
        shown = str(TEMPLATE)
    return shown, dockerfile.CONTEXT_DOCKERFILE, buildargs


def _pull(reference: str, login: ecr.Login | None) -> None:
    repository, _, tag = reference.rpartition(":") if ":" in reference.split("/")[-1] else (reference, "", "latest")
    api = engine.client().api
    layers: dict[str, str] = {}
    with console.err.status(f"pulling {reference}") as status:
        try:
            for event in api.pull(repository, tag=tag or "latest", stream=True, decode=True,
                                  auth_config=login.auth_config if login else None):
                if "error" in event:
                    raise docker.errors.APIError(event["error"])
                if "id" in event and "status" in event:
                    layers[event["id"]] = event["status"]
                    done = sum(1 for s in layers.values() if s in ("Pull complete", "Already exists"))
                    status.update(f"pulling {reference}: {done}/{len(layers)} layers")
        except docker.errors.APIError as exc:
            what, fix = builder.explain_build_error(f"pull access denied / {exc.explanation or exc}", f"FROM {reference}")
            raise BuildFailed(what, fix) from None


def ensure_base(base: bases.Base, spec: ImageSpec, dry_run: bool, python_base: str, verbose: bool) -> str:
    """Make the base image present in the engine; returns a description of what was (or would be) done."""
    if base.kind == "local":
        if dry_run:
            return f"ensure the stand-in base {base.uri} (built from {standin.standin_dir(spec.framework)}/ if missing or stale)"
        standin.ensure_standin(spec.framework, python=python_base, verbose=verbose)
        return "stand-in ready"
    if not dry_run and engine.image_exists(base.uri):
        return "present"
    actions = []
    login = None
    if base.ecr:
        account, region = base.ecr
        actions.append(f"ecr get-authorization-token --registry-ids {account} --region {region} (a login for this pull only)")
        if not dry_run:
            from smkit import ecr  # boto3 is slow to import, and a build on a local or pulled base never needs it

            login = ecr.login(region, account)
    actions.append(f"docker pull {base.uri}")
    if not dry_run:
        console.step(f"pulling the base image {base.uri}")
        _pull(base.uri, login)
    return "; ".join(actions)


def _pip_freeze(image_id: str) -> str:
    # Created, started and removed by hand: `containers.run(remove=True)` leaves a container behind when it
    # cannot start (an image without python3), and a build must leave nothing in the engine.
    container = None
    try:
        container = engine.client().containers.create(image_id, entrypoint=["python3", "-m", "pip", "freeze"],
                                                      network_disabled=True)
        container.start()
        container.wait()
        output = container.logs(stdout=True, stderr=False)
    except docker.errors.DockerException as exc:
        console.warn(f"could not read pip freeze from the built image ({exc}); the label will be empty")
        return ""
    finally:
        if container is not None:
            try:
                container.remove(force=True)
            except docker.errors.DockerException:
                pass
    lines = [line for line in output.decode(errors="replace").splitlines() if line and not line.startswith("#")]
    return "\n".join(sorted(lines, key=str.lower))


def _git_source() -> str:
    # Never record credentials that may sit in a remote URL (https://user:token@host/...).
    url = subprocess.run(["git", "-C", str(PROJECT), "remote", "get-url", "origin"], capture_output=True, text=True).stdout.strip()
    return re.sub(r"//[^/@]+@", "//", url)


def labels_for(spec: ImageSpec, base: bases.Base, base_digest: str, inputs: str, scripts: str, freeze: str,
               deps: str) -> dict[str, str]:
    commit = tags.git_commit() or "unknown"
    if tags.dirty_inputs(list(spec.build_inputs)):
        commit += "-dirty"
    labels = {
        "org.opencontainers.image.title": spec.name,
        "org.opencontainers.image.revision": commit,
        "org.opencontainers.image.base.name": base.uri,
        "org.opencontainers.image.base.digest": base_digest,
        f"{LABEL_PREFIX}.framework": spec.framework or "",
        f"{LABEL_PREFIX}.program": spec.program,
        f"{LABEL_PREFIX}.base-kind": base.kind,
        f"{LABEL_PREFIX}.inputs-sha256": inputs,
        f"{LABEL_PREFIX}.scripts-sha256": scripts,
        label_pass.DEPS_LABEL: deps,
        label_pass.FREEZE_LABEL: freeze,
    }
    source = _git_source()
    if source:
        labels["org.opencontainers.image.source"] = source
    return labels


def _reusable_freeze_or_none(spec: ImageSpec, deps: str, ctx: BuildContext, context_dockerfile: str) -> label_pass.Previous | None:
    """For --dry-run, which may run without an engine."""
    try:
        return label_pass.reusable_freeze(spec.name, deps, ctx, context_dockerfile, script_prefixes(spec))
    except ToolkitError:
        return None


def _build_labelled(spec: ImageSpec, ctx: BuildContext, context_dockerfile: str, buildargs: dict[str, str], ref: str,
                    labels, deps: str, verbose: bool) -> tuple[str, str | None]:
    """Build `ctx`, read its pip freeze, label it as `ref`; returns (image id, the build whose pip freeze was
    reused, or None). After a script-only edit the previous build's freeze is reused and no container runs."""
    previous = label_pass.reusable_freeze(spec.name, deps, ctx, context_dockerfile, script_prefixes(spec))
    built = builder.build(ctx, dockerfile=context_dockerfile, buildargs=buildargs, title=spec.name, verbose=verbose)
    started = time.monotonic()
    if previous is not None:
        layers = engine.client().images.get(built.image_id).attrs.get("RootFS", {}).get("Layers", [])
        if not label_pass.same_deps_layers(previous, layers):
            console.note("the layers below the scripts were rebuilt: reading pip freeze again")
            previous = None
    freeze = previous.freeze if previous is not None else _pip_freeze(built.image_id)
    image_id = label_pass.apply_labels(built.image_id, labels(freeze=freeze), ref)
    reused = f"; only scripts changed: pip freeze reused from {previous.ref}" if previous is not None else ""
    console.note(f"built {ref} in {built.seconds + time.monotonic() - started:.1f}s "
                 f"({built.cached_steps}/{built.steps} steps from cache{reused})")
    return image_id, previous.ref if previous is not None else None


def build_image(
    spec: ImageSpec,
    base_choice: str = "aws",
    region: str | None = None,
    processor: str | None = None,
    moving_tags: list[str] | tuple[str, ...] = (),
    python_base: str = "auto",
    verbose: bool = False,
    dry_run: bool = False,
) -> BuiltImage | None:
    """Build `spec`; with dry_run print every action in order and touch nothing."""
    started = time.monotonic()
    base = bases.resolve(spec, base_choice, region, processor)
    shown_dockerfile, context_dockerfile, buildargs = dockerfile_plan(spec, base.uri)
    say = console.out.print if dry_run else console.note
    if dry_run:
        console.out.print(f"[bold]{spec.name}[/]: base {base.uri} ({base.kind})")
    else:
        console.step(f"{spec.name}: base {base.uri} ({base.kind})")
    base_action = ensure_base(base, spec, dry_run, python_base, verbose)
    if dry_run:
        say(f"  1. {base_action}")

    ctx = spec_context(spec)
    for path, why in ctx.left_out:
        console.warn(f"{path} left out of the build context ({why})")
    client = None if dry_run else engine.client()
    try:
        base_image = (client or engine.client()).images.get(base.uri)
        base_id = base_image.id
        base_digest = (base_image.attrs.get("RepoDigests") or [base_id])[0].split("@")[-1]
    except (docker.errors.ImageNotFound, ToolkitError):
        if not dry_run:
            raise
        base_id = base_digest = "(not pulled yet)"
    inputs = ctx.digest(*(f"{k}={v}" for k, v in sorted(buildargs.items())), f"base={base_id}", f"platform={builder.PLATFORM}")
    tag = tags.content_tag(inputs, list(spec.build_inputs))
    scripts = scripts_digest(ctx, spec)
    deps = label_pass.deps_digest(ctx, script_prefixes(spec), *(f"{k}={v}" for k, v in sorted(buildargs.items())),
                                  f"base={base_id}", f"platform={builder.PLATFORM}")
    ref = f"{spec.repository}:{tag}"
    moving = [tags.check_tag(t) for t in moving_tags]

    if dry_run:
        files = len(ctx.files)
        args = " ".join(f"--build-arg {k}={v}" for k, v in buildargs.items())
        what = "its own Dockerfile, checked against images.toml" if spec.dockerfile else \
            "the smkit template; context: code/ = " + " + ".join(spec.scripts) + \
            (f", requirements.txt = {spec.requirements}" if spec.requirements else ", no requirements")
        say(f"  2. docker build --platform {builder.PLATFORM} --network host -f {shown_dockerfile} {args} "
            f"({what}; {files} files, {ctx.size / 1024:.0f} KiB, inputs {inputs[:12]})")
        previous = _reusable_freeze_or_none(spec, deps, ctx, context_dockerfile)
        if previous is not None:
            say(f"  3. no pip freeze container: only scripts changed since {previous.ref}, its pip freeze is reused")
        else:
            say(f"  3. docker run --rm --network none <image> python3 -m pip freeze (for the pip-freeze label)")
        say(f"  4. docker commit (labels: git commit, base digest, inputs/scripts/deps hashes, pip freeze) -t {ref}")
        for extra in moving:
            say(f"  5. docker tag {ref} {spec.repository}:{extra}")
        say(f"  -  check the image is {builder.PLATFORM}; record it in build/images.json")
        return None

    existing, reused_from = None, None
    try:
        existing = client.images.get(ref)
    except docker.errors.ImageNotFound:
        pass
    if existing is not None and (existing.labels or {}).get(f"{LABEL_PREFIX}.inputs-sha256") == inputs:
        image_id, cached = existing.id, True
        console.note(f"{ref} is up to date (same inputs); nothing to build")
    else:
        labels = functools.partial(labels_for, spec, base, base_digest, inputs, scripts, deps=deps)
        image_id, reused_from = _build_labelled(spec, ctx, context_dockerfile, buildargs, ref, labels, deps, verbose)
        cached = False
    builder.check_platform(ref)
    for problem in basecheck.config_differences(ref, base.uri):  # what breaks on the real base (cheap: metadata only)
        console.warn(f"{spec.name}: {problem}")
    image = client.images.get(ref)
    for extra in moving:
        image.tag(spec.repository, extra)
    built = BuiltImage(
        name=spec.name,
        repository=spec.repository,
        tag=tag,
        image_id=image_id,
        base=base.uri,
        base_kind=base.kind,
        base_digest=base_digest,
        inputs_sha256=inputs,
        scripts_sha256=scripts,
        build_seconds=round(time.monotonic() - started, 2),
        size=image.attrs.get("Size", 0),
        layers=list(image.attrs.get("RootFS", {}).get("Layers", [])),
        moving_tags=moving,
        cached=cached,
        deps_sha256=deps,
        freeze_reused_from=reused_from,
    )
    record = asdict(built)
    record.update(
        local_ref=built.ref,
        framework=spec.framework,
        program=spec.program,
        built_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        pushed=None,
    )
    images_json.update(spec.name, record, replace=True)
    return built
