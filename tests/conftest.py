"""Shared fixtures: the real Docker engine, the stand-in base images, a registry and a moto server.

Nothing here mocks Docker, the registry or the SageMaker SDK. AWS clients are pointed at moto or at
nothing: the session gets placeholder credentials and no instance-metadata lookups, so no test can
reach a real AWS endpoint by accident.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import socket
import sys
from pathlib import Path

import pytest

from tests.servers import MotoServer, Registry

# Placeholder credentials and region for everything the tests start; real ones are never used.
os.environ.update(
    AWS_ACCESS_KEY_ID="testing",
    AWS_SECRET_ACCESS_KEY="testing",
    AWS_DEFAULT_REGION="us-east-1",
    AWS_REGION="us-east-1",
    AWS_EC2_METADATA_DISABLED="true",
    SAGEMAKER_SUPPRESS_V2_WARNING="1",
)
for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
    os.environ.pop(name, None)


@pytest.fixture(scope="session")
def docker_client():
    from smkit import engine

    client = engine.client()
    before, known = _tags(client), {image["Id"] for image in client.api.images()}
    yield client
    # SMKIT_TESTS_KEEP_TAGS=1: several suites share one engine (parallel worktrees); a session must not untag
    # what another one is still using. Off by default: a plain `make test` leaves the tags as it found them.
    if not os.environ.get("SMKIT_TESTS_KEEP_TAGS"):
        _restore_tags(client, before, known)


# Kept between runs on purpose: the cached offline bases (rebuilt only when their inputs change).
_CACHED = ("smkit/standin-", "smkit/python-debian")


def _tags(client) -> dict[str, str]:
    # One listing call (images.list() fetches each image again: another suite may remove one meanwhile).
    return {tag: image["Id"] for image in client.api.images() for tag in image.get("RepoTags") or [] if tag != "<none>:<none>"}


def _restore_tags(client, before: dict[str, str], known: set[str]) -> None:
    """Leave the engine's tags as the session found them: the images the tests built and pushed are
    untagged (their layers stay as build cache: noprune), and a tag a test moved (`latest`) points back
    at the user's image. Without this every `make test` would leave dozens of tags behind."""
    import docker

    for tag, image_id in _tags(client).items():
        if tag.startswith(_CACHED) or before.get(tag) == image_id:
            continue
        try:
            if tag in before:
                repository, _, name = tag.rpartition(":")
                client.images.get(before[tag]).tag(repository, name)
            else:
                client.images.remove(tag, noprune=True)
        except docker.errors.APIError:
            pass  # in use by a container, or the user's image is gone: leave it
    # One pass: each removal (noprune) exposes the untagged parent below it, and what is exposed stays:
    # the build cache (dependency layers) the next run starts from.
    for image in client.images.list(filters={"dangling": True}):
        if image.id not in known:
            try:
                client.images.remove(image.id, noprune=True)
            except docker.errors.APIError:
                pass


@pytest.fixture(scope="session")
def standin_xgboost(docker_client) -> str:
    """The offline stand-in for the prebuilt XGBoost image (built by `make bases`; a no-op when current)."""
    from smkit import standin

    return standin.ensure_standin("xgboost")


@pytest.fixture(scope="session")
def standin_pytorch(docker_client) -> str:
    from smkit import standin

    return standin.ensure_standin("pytorch")


@pytest.fixture(scope="session")
def standin_sklearn(docker_client) -> str:
    from smkit import standin

    return standin.ensure_standin("sklearn")


@pytest.fixture(scope="session")
def tiny_image(docker_client, standin_xgboost) -> str:
    """tests/fixtures/tiny_xgboost: the smallest image extending the XGBoost stand-in (id)."""
    from smkit import builder
    from smkit.context import BuildContext

    from smkit.paths import IN_IMAGE_MODULES

    ctx = BuildContext(Path(__file__).parent / "fixtures" / "tiny_xgboost")
    ctx.add(".")
    for module in IN_IMAGE_MODULES:  # its `smkit keep-failure` block installs them
        ctx.add_file_as(module, module.name)
    outcome = builder.build(ctx, dockerfile="Dockerfile", tag="smkit-test/tiny-xgboost:latest",
                            buildargs={"BASE_IMAGE": standin_xgboost}, title="tiny")
    return outcome.image_id


@pytest.fixture(scope="session")
def scratch_project(tmp_path_factory) -> Path:
    """A copy of the project (images.toml, containers/, train_scripts/) for tests that build it."""
    from tests.projects import copy_project

    return copy_project(tmp_path_factory.mktemp("project"))


@pytest.fixture(scope="session")
def project_images(scratch_project, standin_xgboost, standin_pytorch) -> dict[str, str]:
    """Both images of images.toml, built on the stand-in bases as `make build BASE=local` builds them,
    in a scratch copy of the project: name -> local image reference."""
    from tests.projects import build_local

    return build_local(scratch_project)


@pytest.fixture(scope="session")
def registry():
    """A real registry server on loopback with htpasswd authentication."""
    server = Registry().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def moto_server():
    server = MotoServer().start()
    yield server
    server.stop()


@pytest.fixture
def moto(moto_server, monkeypatch):
    """moto, fresh for this test, with every boto3 client of the test pointed at it."""
    moto_server.reset()
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server.url)
    return moto_server


# -------------------------------------------------------------------------------------------------
# Nothing in a test process may reach beyond this machine: every connection and name lookup is
# checked, anything but loopback and unix sockets is refused (as a network error, which is what a
# library would see offline) and recorded, and the test that caused it fails.

NETWORK_VIOLATIONS: list[str] = []


def _loopback(host) -> bool:
    if host in (None, "", "localhost") or (isinstance(host, str) and host.endswith(".localhost")):
        return True
    try:
        return ipaddress.ip_address(str(host).strip("[]")).is_loopback
    except ValueError:
        return False


def _network_guard(event: str, args) -> None:
    if event == "socket.getaddrinfo":
        host = args[0]
        host = host.decode() if isinstance(host, bytes) else host
        if not _loopback(host):
            NETWORK_VIOLATIONS.append(f"name lookup of {host}")
            raise socket.gaierror(socket.EAI_NONAME, f"blocked by the test suite: lookup of {host}")
    elif event == "socket.connect":
        sock, address = args
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(address[0]):
            NETWORK_VIOLATIONS.append(f"connection to {address}")
            raise ConnectionRefusedError(f"blocked by the test suite: connection to {address}")


sys.addaudithook(_network_guard)


@pytest.fixture(autouse=True)
def no_network_beyond_loopback():
    start = len(NETWORK_VIOLATIONS)
    yield
    assert NETWORK_VIOLATIONS[start:] == [], f"the test tried to reach the network: {NETWORK_VIOLATIONS[start:]}"


# -------------------------------------------------------------------------------------------------
# The suite never writes into the checkout: its build/images.json (the user's pinned digests), its
# local_mode/runs/ and the images its manifest names are the same after the session as before. Any
# change fails the session (exit status 1), naming what changed.

_CHECKOUT = Path(__file__).resolve().parent.parent


def _checkout_state() -> dict[str, object]:
    manifest = _CHECKOUT / "build" / "images.json"
    runs = _CHECKOUT / "local_mode" / "runs"
    state: dict[str, object] = {
        "build/images.json": hashlib.sha256(manifest.read_bytes()).hexdigest() if manifest.exists() else None,
        "local_mode/runs/": sorted(p.name for p in runs.iterdir()) if runs.is_dir() else [],
    }
    try:  # where each image the checkout's manifest names points (its tags are the user's)
        import json

        import docker

        entries = json.loads(manifest.read_text()).get("images", {}).values() if manifest.exists() else []
        refs = [e.get("local_ref") for e in entries]
        refs += [f"{e['repository']}:{tag}" for e in entries if e.get("repository") for tag in e.get("moving_tags") or []]
        client = docker.from_env(timeout=10)
        for ref in filter(None, refs):
            try:
                state[f"tag {ref}"] = client.images.get(ref).id
            except docker.errors.ImageNotFound:
                state[f"tag {ref}"] = None
    except Exception:  # no engine: only the files are compared
        pass
    return state


def pytest_sessionstart(session):
    session.config._smkit_checkout_state = _checkout_state()


def pytest_sessionfinish(session, exitstatus):
    before = getattr(session.config, "_smkit_checkout_state", None)
    if before is None:
        return
    after = _checkout_state()
    changed = [key for key in sorted(set(before) | set(after)) if before.get(key) != after.get(key)]
    if changed:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        message = f"the test session changed the checkout: {', '.join(changed)} (tests must use scratch projects)"
        if reporter is not None:
            reporter.ensure_newline()
            reporter.write_line(f"FAILED {message}", red=True, bold=True)
        else:
            print(message, file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
