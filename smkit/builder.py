"""`docker build` through the docker SDK, with live progress and failures explained."""

from __future__ import annotations

import re
import time
from collections import deque
from dataclasses import dataclass

import docker.errors

from smkit import console, engine
from smkit.context import BuildContext
from smkit.errors import BuildFailed, ToolkitError

PLATFORM = "linux/amd64"  # SageMaker instances are x86_64 (Graviton is not offered for training)


@dataclass
class BuildOutcome:
    image_id: str
    seconds: float
    steps: int
    cached_steps: int


def explain_build_error(message: str, step: str) -> tuple[str, str]:
    """Turn the engine's error text into (what, fix)."""
    text = message.strip()
    low = text.lower()
    if "no space left on device" in low:
        return (
            f"The build ran out of disk space at `{step}`.",
            "free space for Docker (`docker system prune`, or `docker image prune -a` to drop unused images)",
        )
    if step.upper().startswith("FROM") or "pull access denied" in low or "manifest unknown" in low:
        if "no basic auth credentials" in low or "authorization" in low or "denied" in low:
            return (
                f"The base image could not be pulled: {text}",
                "log in to the base image's registry; for a prebuilt SageMaker image `build.py build` does this "
                "itself when AWS credentials are present, and the base must be in the same region you build "
                "for (`--region`); or use the offline stand-in with `--base local`",
            )
        if "not found" in low or "manifest unknown" in low or "no such host" in low:
            return (
                f"The base image does not exist or its registry cannot be reached: {text}",
                "check the base version/region (`build.py list` shows what each image resolves to), "
                "or build on the offline stand-in with `--base local`",
            )
    if "could not find a version" in low or "no matching distribution" in low:
        return (
            f"pip could not install an extra dependency at `{step}`: {text}",
            "check the pins in the image's requirements.txt against what the base image's Python supports",
        )
    return (f"The build failed at `{step}`: {text}", "read the build log above; rerun with --verbose for every line")


def build(
    ctx: BuildContext,
    *,
    dockerfile: str,
    tag: str | None = None,
    buildargs: dict[str, str] | None = None,
    labels: dict[str, str] | None = None,
    title: str = "build",
    verbose: bool = False,
    network_mode: str = "host",
) -> BuildOutcome:
    """Build `ctx` and return the image id. Host networking: pip inside the build must reach the
    package index through whatever the host uses (proxies, TLS interception)."""
    api = engine.client().api
    started = time.monotonic()
    log: deque[str] = deque(maxlen=40)
    step, steps, cached, image_id = "", 0, 0, None
    with console.err.status(f"{title}: sending context ({ctx.size / 1e6:.1f} MB)") as status:
        try:
            stream = api.build(
                fileobj=ctx.tar(),
                custom_context=True,
                dockerfile=dockerfile,
                tag=tag,
                buildargs=buildargs or {},
                labels=labels or None,
                platform=PLATFORM,
                network_mode=network_mode,
                rm=True,
                forcerm=True,
                pull=False,
                decode=True,
            )
            for event in stream:
                if "error" in event:
                    what, fix = explain_build_error(event["error"], step)
                    tail = "\n".join(log)
                    raise BuildFailed(f"{what}\n--- last build output ---\n{tail}", fix)
                if "aux" in event and "ID" in event["aux"]:
                    image_id = event["aux"]["ID"]
                line = event.get("stream", "")
                for part in line.splitlines():
                    if not part.strip():
                        continue
                    log.append(part)
                    if verbose:
                        console.err.print(part, markup=False, highlight=False)
                    match = re.match(r"Step (\d+)/(\d+) : (.*)", part)
                    if match:
                        steps = int(match.group(2))
                        step = match.group(3)
                        status.update(f"{title}: step {match.group(1)}/{match.group(2)} {step[:70]}")
                    elif "Using cache" in part:
                        cached += 1
        except docker.errors.APIError as exc:
            what, fix = explain_build_error(str(exc.explanation or exc), step)
            raise BuildFailed(what, fix) from None
        except ToolkitError:
            raise
        except docker.errors.DockerException as exc:
            raise BuildFailed(f"The build of {title} failed: {exc}", engine.START_HINT) from None
    if image_id is None:
        raise BuildFailed(f"The engine finished the build of {title} without an image id.", "rerun with --verbose")
    return BuildOutcome(image_id=image_id, seconds=time.monotonic() - started, steps=steps, cached_steps=cached)


def check_platform(image_ref: str) -> None:
    """Refuse anything that is not linux/amd64: SageMaker would fail it with `exec format error`."""
    attrs = engine.client().images.get(image_ref).attrs
    got = f"{attrs.get('Os')}/{attrs.get('Architecture')}"
    if got != PLATFORM:
        raise BuildFailed(
            f"The image {image_ref} is {got}, but SageMaker training runs {PLATFORM} only.",
            "rebuild it with `build.py build` (it always builds linux/amd64); on an Arm machine enable "
            "emulation first (`docker run --privileged --rm tonistiigi/binfmt --install amd64`)",
        )
