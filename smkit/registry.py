"""Pushing to Amazon ECR or any OCI registry, safely and only what is missing.

- The registry's own API is asked first (HEAD /v2/<repo>/manifests/<tag>): when the tag already
  points at the digest this image was pushed as, nothing is pushed at all.
- The engine pushes layers first and the manifest last, so a push that breaks off never moves a tag to
  an incomplete image; a transient failure (connection refused or reset, 5xx, timeouts), of the push
  or of a registry API request, is retried with exponential backoff (backoff, 2x, 4x, ...); a refusal
  (bad or expired credentials, denied) is reported at once with its fix, after one attempt.
- The digest printed is the one the registry answers for the tag after the push.
"""

from __future__ import annotations

import base64
import http.client
import ipaddress
import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field

import docker.auth
import docker.errors
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from smkit import console, ecr, engine
from smkit.images_toml import check_repository_name
from smkit.errors import ConfigError, RegistryError

MANIFEST_TYPES = ", ".join([
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
])
TRANSIENT = re.compile(
    r"connection refused|connection reset|broken pipe|\bEOF\b|timeout|timed out|temporar|"
    r"\b50[0234]\b|internal server error|bad gateway|service unavailable|gateway time|"
    r"blob upload unknown|no route to host|i/o|tls handshake",
    re.IGNORECASE,
)
API_TIMEOUT = 30.0  # seconds a registry API request may take before it counts as a (transient) timeout
REFUSED = re.compile(r"unauthorized|authentication required|denied|no basic auth|forbidden|\b401\b|\b403\b", re.IGNORECASE)


@dataclass
class Target:
    """Where an image goes: `registry/repository:tag`, with the credentials for this push (None: the
    engine's docker config)."""

    kind: str  # ecr | oci
    registry: str
    repository: str
    auth: dict | None = field(default=None, repr=False)
    immutable: bool = False
    region: str | None = None

    @property
    def image(self) -> str:
        return f"{self.registry}/{self.repository}"


def _loopback(registry: str) -> bool:
    host = registry.rsplit(":", 1)[0] if registry.count(":") == 1 else registry
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def oci_target(registry_arg: str, repository: str) -> Target:
    """`host[:port][/namespace]`: credentials come from the docker config (docker login / credential helpers)."""
    host, _, namespace = registry_arg.strip("/").partition("/")
    if not host or "://" in registry_arg:
        raise ConfigError(f"--registry {registry_arg!r} is not HOST[:PORT][/NAMESPACE].", "write e.g. --registry registry.example.com:5000/team")
    full = f"{namespace}/{repository}" if namespace else repository
    check_repository_name(full)
    auth = docker.auth.resolve_authconfig(docker.auth.load_config(), host) or None
    return Target(kind="oci", registry=host, repository=full, auth=auth)


def ecr_target(region: str, repository: str, registry_host: str | None = None, immutable: bool | None = None,
               kms_key: str | None = None) -> tuple[Target, ecr.RepositoryState]:
    """The caller's ECR registry in `region`: the repository is created if missing, and a fresh token is
    used for this push only. `registry_host` sends the layers through another host (an ECR VPC endpoint
    name or a proxy) while the API calls still go to ECR."""
    check_repository_name(repository)
    state = ecr.ensure_repository(region, repository, immutable=immutable, kms_key=kms_key)
    login = ecr.login(region)
    registry = registry_host or login.registry
    auth = dict(login.auth_config, serveraddress=registry)
    return Target(kind="ecr", registry=registry, repository=repository, auth=auth, immutable=state.immutable, region=region), state


# -------------------------------------------------------------------------------------------------
# The registry API (for the digest of a tag)


def _request(url: str, method: str, headers: dict, timeout: float = API_TIMEOUT) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(url, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def _bearer_token(challenge: str, auth: dict | None) -> str | None:
    params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
    if "realm" not in params:
        return None
    query = {k: v for k, v in params.items() if k in ("service", "scope")}
    headers = {}
    if auth and auth.get("username"):
        headers["Authorization"] = "Basic " + base64.b64encode(f"{auth['username']}:{auth['password']}".encode()).decode()
    status, _, body = _request(f"{params['realm']}?{urllib.parse.urlencode(query)}", "GET", headers)
    if status != 200:
        return None
    data = json.loads(body or b"{}")
    return data.get("token") or data.get("access_token")


def remote_digest(target: Target, tag: str, timeout: float = API_TIMEOUT) -> str | None:
    """The manifest digest the registry holds for `tag`, or None if the tag does not exist."""
    scheme = "http" if _loopback(target.registry) else "https"
    url = f"{scheme}://{target.registry}/v2/{target.repository}/manifests/{tag}"
    headers = {"Accept": MANIFEST_TYPES}
    auth = target.auth
    if auth and auth.get("username"):
        headers["Authorization"] = "Basic " + base64.b64encode(f"{auth['username']}:{auth['password']}".encode()).decode()
    try:
        status, response_headers, _ = _request(url, "HEAD", headers, timeout)
        if status == 401 and "bearer" in response_headers.get("www-authenticate", "").lower():
            token = _bearer_token(response_headers["www-authenticate"], auth)
            if token:
                headers["Authorization"] = f"Bearer {token}"
                status, response_headers, _ = _request(url, "HEAD", headers, timeout)
    except (OSError, http.client.HTTPException) as exc:  # refused, reset, timed out, a broken answer
        raise RegistryError(
            f"The registry {target.registry} cannot be reached ({exc}).",
            "check the address and that the registry is running (`python build.py doctor --registry ...`)",
            transient=True,
        ) from None
    if status == 404:
        return None
    if status in (401, 403):
        raise RegistryError(
            f"The registry {target.registry} refused the credentials (HTTP {status}).",
            _login_fix(target),
        )
    if status != 200:
        raise RegistryError(f"The registry {target.registry} answered HTTP {status} for {target.repository}:{tag}.",
                            "retry later; check the registry's health", transient=status >= 500)
    return response_headers.get("docker-content-digest")


def _login_fix(target: Target) -> str:
    if target.kind == "ecr":
        return ("the ECR token is fetched fresh for every push, so check the AWS credentials and that they may "
                "push to this repository (ecr:InitiateLayerUpload, ecr:PutImage, ...)")
    return f"log in first: `docker login {target.registry}` (credentials are read from the docker config)"


# -------------------------------------------------------------------------------------------------
# Pushing


@dataclass
class PushResult:
    image_uri: str
    digest: str
    tags: list[str]
    skipped: bool = False
    layers_pushed: int = 0
    layers_existing: int = 0
    bytes_pushed: int = 0
    seconds: float = 0.0
    attempts: int = 1

    @property
    def pinned(self) -> str:
        return f"{self.image_uri.rsplit(':', 1)[0]}@{self.digest}"


def _push_once(target: Target, tag: str, progress: Progress | None) -> tuple[str, int, int, int]:
    """One `docker push`; returns (digest, layers pushed, layers already there, bytes pushed)."""
    api = engine.client().api
    tasks: dict[str, int] = {}
    totals: dict[str, int] = {}
    pushed, existing, digest = set(), set(), None
    for event in api.push(target.image, tag=tag, stream=True, decode=True, auth_config=target.auth):
        if "error" in event:
            raise RuntimeError(event.get("errorDetail", {}).get("message") or event["error"])
        layer, status = event.get("id"), event.get("status", "")
        if "aux" in event and event["aux"].get("Digest"):
            digest = event["aux"]["Digest"]
        if not layer or len(layer) != 12:
            continue
        detail = event.get("progressDetail") or {}
        if status == "Pushing" and detail.get("total"):
            totals[layer] = detail["total"]
            if progress is not None:
                if layer not in tasks:
                    tasks[layer] = progress.add_task(f"layer {layer}", total=detail["total"])
                progress.update(tasks[layer], completed=detail.get("current", 0))
        elif status == "Pushed":
            pushed.add(layer)
            if progress is not None and layer in tasks:
                progress.update(tasks[layer], completed=totals.get(layer, 0))
        elif status.startswith("Layer already exists") or status.startswith("Mounted from"):
            existing.add(layer)
    if digest is None:
        raise RuntimeError("the engine finished the push without reporting a digest")
    return digest, len(pushed), len(existing), sum(totals.get(layer, 0) for layer in pushed)


def _retrying(what: str, call, retries: int, backoff: float):
    """`call()`, retried while it fails with a transient RegistryError: at most `retries` more times,
    waiting backoff, 2 x backoff, 4 x backoff, ... in between. Anything else is raised at once."""
    attempt, delay = 0, backoff
    while True:
        attempt += 1
        try:
            return call()
        except RegistryError as exc:
            if not exc.transient or attempt > retries:
                raise
            console.warn(f"{what} attempt {attempt} failed ({exc.what}); retrying in {delay:g}s")
            time.sleep(delay)
            delay *= 2


def push(local_ref: str, target: Target, tag: str, extra_tags: list[str] = (), retries: int = 4,
         backoff: float = 2.0, show_progress: bool = True, api_timeout: float = API_TIMEOUT) -> PushResult:
    """Push `local_ref` as target:tag (and extra moving tags), skipping it if the registry has it already.

    Transient failures (of the push and of each registry API request) are retried up to `retries` times
    with exponential backoff starting at `backoff` seconds; a registry API request that takes longer
    than `api_timeout` seconds is such a failure."""
    client = engine.client()
    try:
        image = client.images.get(local_ref)
    except docker.errors.ImageNotFound:
        raise ConfigError(f"The image {local_ref} is not in the local engine.", "build it first: `make build`") from None
    started = time.monotonic()
    image_uri = f"{target.image}:{tag}"
    def digest_of(name: str) -> str | None:
        return _retrying(f"registry API request ({target.registry}/{target.repository}:{name})",
                         lambda: remote_digest(target, name, api_timeout), retries, backoff)

    remote = digest_of(tag)
    known = {d.split("@", 1)[1] for d in image.attrs.get("RepoDigests", []) if d.startswith(target.image + "@")}
    if target.immutable:
        # Check every tag before uploading anything: an immutable repository must not end half-tagged.
        for name, digest in [(tag, remote)] + [(extra, digest_of(extra)) for extra in extra_tags]:
            if digest is not None and digest not in known:
                raise RegistryError(
                    f"{target.image}:{name} already exists with another digest ({digest}) and the repository's tags are IMMUTABLE.",
                    "push under a new --tag (the content tag changes with the inputs by itself); an immutable tag is never reused",
                )
    if remote is not None and remote in known:
        for extra in extra_tags:
            _tag_and_push(image, target, extra, retries, backoff, show_progress)
        return PushResult(image_uri=image_uri, digest=remote, tags=[tag, *extra_tags], skipped=True,
                          seconds=round(time.monotonic() - started, 2))
    result = _tag_and_push(image, target, tag, retries, backoff, show_progress)
    for extra in extra_tags:
        _tag_and_push(image, target, extra, retries, backoff, show_progress)
    confirmed = digest_of(tag)
    if confirmed != result.digest:
        raise RegistryError(
            f"After the push, the registry reports {confirmed} for {image_uri}, not {result.digest}.",
            "another push to the same tag raced this one; push again, or use immutable tags",
        )
    result.tags = [tag, *extra_tags]
    result.seconds = round(time.monotonic() - started, 2)
    return result


def _tag_and_push(image, target: Target, tag: str, retries: int, backoff: float, show_progress: bool) -> PushResult:
    image.tag(target.image, tag)
    attempt, delay = 0, backoff
    while True:
        attempt += 1
        progress = None
        try:
            if show_progress:
                progress = Progress(TextColumn("    {task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                                    console=console.err, transient=True)
                with progress:
                    digest, pushed, existing, nbytes = _push_once(target, tag, progress)
            else:
                digest, pushed, existing, nbytes = _push_once(target, tag, None)
            return PushResult(image_uri=f"{target.image}:{tag}", digest=digest, tags=[tag], layers_pushed=pushed,
                              layers_existing=existing, bytes_pushed=nbytes, attempts=attempt)
        except (RuntimeError, docker.errors.APIError) as exc:
            message = str(getattr(exc, "explanation", None) or exc)
            if REFUSED.search(message):
                raise RegistryError(f"The registry {target.registry} refused the push of {target.repository}:{tag}: {message}",
                                    _login_fix(target)) from None
            if "no space left" in message.lower():
                raise RegistryError(f"The push of {target.repository}:{tag} failed: {message}",
                                    "the registry's (or this machine's) disk is full; free space and push again") from None
            if not TRANSIENT.search(message) or attempt > retries:
                raise RegistryError(
                    f"Pushing {target.repository}:{tag} to {target.registry} failed"
                    + (f" after {attempt} attempts" if attempt > 1 else "") + f": {message}",
                    "check that the registry is reachable (`python build.py doctor`) and push again; "
                    "layers already uploaded are not sent twice",
                    transient=bool(TRANSIENT.search(message)),
                ) from None
            console.warn(f"push attempt {attempt} failed ({message}); retrying in {delay:g}s")
            time.sleep(delay)
            delay *= 2
