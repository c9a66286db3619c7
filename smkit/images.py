"""Build one image of images.toml: resolve and fetch its base, assemble its context, build, label, tag.

The build runs in two passes. The first is the image's own Dockerfile. The second adds only labels
(OCI labels for the git commit and the base digest, plus the build-input hash, the script hash and the
`pip freeze` of the result, which can only be read from the built image). Both passes are cached by
the engine, so rebuilding unchanged inputs yields the same image id, and a changed script rebuilds
only its layer.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

import docker.errors

from smkit import basecheck, bases, builder, console, ecr, engine, manifest, standin, tags
from smkit.catalog import ImageSpec
from smkit.context import BuildContext, build_ca_bundle
from smkit.errors import BuildFailed, ToolkitError
from smkit.paths import KEEP_FAILURE_MODULE, PROJECT

LABEL_PREFIX = "io.smkit"


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

    @property
    def ref(self) -> str:
        return f"{self.repository}:{self.tag}"


def spec_context(spec: ImageSpec) -> BuildContext:
    ctx = BuildContext(PROJECT)
    for path in spec.build_inputs:
        ctx.add(path)
    ctx.add_bytes("build-ca.crt", build_ca_bundle())
    # Every image may install it (the `smkit keep-failure` Dockerfile lines): it keeps the script's own
    # failure reason on bases whose legacy toolkit overwrites it. From this toolkit, not the project.
    ctx.add_file_as(KEEP_FAILURE_MODULE, KEEP_FAILURE_MODULE.name)
    return ctx


def scripts_digest(ctx: BuildContext, spec: ImageSpec) -> str:
    digests = ctx.file_digests()
    h = hashlib.sha256()
    for name, file_hash in digests.items():
        if any(name.startswith(prefix.rstrip("/") + "/") for prefix in spec.scripts):
            h.update(f"{name}\0{file_hash}\n".encode())
    return h.hexdigest()


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
            return f"ensure the stand-in base {base.uri} (built from containers/standin/{spec.framework}/ if missing or stale)"
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
            login = ecr.login(region, account)
    actions.append(f"docker pull {base.uri}")
    if not dry_run:
        console.step(f"pulling the base image {base.uri}")
        _pull(base.uri, login)
    return "; ".join(actions)


def _pip_freeze(image_id: str) -> str:
    try:
        output = engine.client().containers.run(
            image_id, entrypoint=["python3", "-m", "pip", "freeze"], remove=True, network_disabled=True,
            stdout=True, stderr=False,
        )
    except docker.errors.DockerException as exc:
        console.warn(f"could not read pip freeze from the built image ({exc}); the label will be empty")
        return ""
    lines = [line for line in output.decode(errors="replace").splitlines() if line and not line.startswith("#")]
    return "\n".join(sorted(lines, key=str.lower))


def _git_source() -> str:
    # Never record credentials that may sit in a remote URL (https://user:token@host/...).
    url = subprocess.run(["git", "-C", str(PROJECT), "remote", "get-url", "origin"], capture_output=True, text=True).stdout.strip()
    return re.sub(r"//[^/@]+@", "//", url)


def labels_for(spec: ImageSpec, base: bases.Base, base_digest: str, inputs: str, scripts: str, freeze: str) -> dict[str, str]:
    commit = tags.git_commit() or "unknown"
    if tags.dirty_inputs(list(spec.build_inputs)):
        commit += "-dirty"
    labels = {
        "org.opencontainers.image.title": spec.name,
        "org.opencontainers.image.revision": commit,
        "org.opencontainers.image.base.name": base.uri,
        "org.opencontainers.image.base.digest": base_digest,
        f"{LABEL_PREFIX}.framework": spec.framework,
        f"{LABEL_PREFIX}.program": spec.program,
        f"{LABEL_PREFIX}.base-kind": base.kind,
        f"{LABEL_PREFIX}.inputs-sha256": inputs,
        f"{LABEL_PREFIX}.scripts-sha256": scripts,
        f"{LABEL_PREFIX}.pip-freeze": freeze,
    }
    source = _git_source()
    if source:
        labels["org.opencontainers.image.source"] = source
    return labels


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
    buildargs = {"BASE_IMAGE": base.uri}
    inputs = ctx.digest(f"BASE_IMAGE={base.uri}", f"base={base_id}", f"platform={builder.PLATFORM}")
    tag = tags.content_tag(inputs, list(spec.build_inputs))
    scripts = scripts_digest(ctx, spec)
    ref = f"{spec.repository}:{tag}"
    moving = [tags.check_tag(t) for t in moving_tags]

    if dry_run:
        files = len(ctx.files)
        say(f"  2. docker build --platform {builder.PLATFORM} --network host -f {spec.dockerfile} "
            f"--build-arg BASE_IMAGE={base.uri} (context: {files} files, {ctx.size / 1024:.0f} KiB, inputs {inputs[:12]})")
        say(f"  3. docker run --rm --network none <image> python3 -m pip freeze (for the pip-freeze label)")
        say(f"  4. docker build (labels: git commit, base digest, inputs/scripts hashes, pip freeze) -t {ref}")
        for extra in moving:
            say(f"  5. docker tag {ref} {spec.repository}:{extra}")
        say(f"  -  check the image is {builder.PLATFORM}; record it in build/images.json")
        return None

    existing = None
    try:
        existing = client.images.get(ref)
    except docker.errors.ImageNotFound:
        pass
    if existing is not None and (existing.labels or {}).get(f"{LABEL_PREFIX}.inputs-sha256") == inputs:
        image_id, cached = existing.id, True
        console.note(f"{ref} is up to date (same inputs); nothing to build")
    else:
        first = builder.build(ctx, dockerfile=spec.dockerfile, buildargs=buildargs, title=spec.name, verbose=verbose)
        freeze = _pip_freeze(first.image_id)
        label_ctx = BuildContext(PROJECT)
        label_ctx.add_bytes("Dockerfile", f"FROM {first.image_id}\n".encode())
        second = builder.build(
            label_ctx, dockerfile="Dockerfile", tag=ref, title=f"{spec.name} labels", verbose=verbose,
            labels=labels_for(spec, base, base_digest, inputs, scripts, freeze),
        )
        image_id, cached = second.image_id, False
        console.note(f"built {ref} in {first.seconds + second.seconds:.0f}s "
                     f"({first.cached_steps}/{first.steps} steps from cache)")
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
    )
    record = asdict(built)
    record.update(
        local_ref=built.ref,
        framework=spec.framework,
        program=spec.program,
        built_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        pushed=None,
    )
    manifest.update(spec.name, record, replace=True)
    return built
