"""Pushes when the registry misbehaves: it answers 5xx, it dies mid-push, it rejects an expired token.

Transient faults are retried and the push completes; refusals fail at once with the fix; and a tag never
points at an incomplete image (the engine uploads every layer before the manifest that names the tag).
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from smkit import builder, registry
from smkit.context import BuildContext
from smkit.errors import RegistryError
from tests.polling import wait_for
from tests.servers import FaultyProxy, Registry

pytestmark = pytest.mark.docker
REPOSITORY = "faults/app"


@pytest.fixture(scope="module")
def image(docker_client) -> str:
    """Two layers of incompressible bytes (the upload takes long enough to be interrupted)."""
    ctx = BuildContext(Path(__file__).parent)
    ctx.add_bytes("Dockerfile", b"FROM scratch\nCOPY one /one\nCOPY two /two\n")
    ctx.add_bytes("one", os.urandom(24 * 2**20))
    ctx.add_bytes("two", os.urandom(24 * 2**20))
    return builder.build(ctx, dockerfile="Dockerfile", tag="smkit-test/faults:latest", title="faults").image_id


@pytest.fixture
def server():
    started = Registry().start()
    yield started
    started.stop()


def target(host: str, server: Registry) -> registry.Target:
    return registry.Target(kind="oci", registry=host, repository=REPOSITORY, auth=dict(server.auth))


def test_a_5xx_answer_is_retried_and_the_push_completes(image, server):
    failures = {"left": 1}

    def unavailable_once(method, path):
        if method == "PUT" and "/manifests/" in path and failures["left"]:
            failures["left"] -= 1
            return 503, b'{"errors":[{"code":"UNAVAILABLE","message":"service unavailable"}]}'
        return None

    proxy = FaultyProxy(server.host, unavailable_once).start()
    try:
        result = registry.push(image, target(proxy.host, server), "v1", retries=2, backoff=0.1, show_progress=False)
    finally:
        proxy.stop()
    assert result.attempts == 2
    assert ("PUT", f"/v2/{REPOSITORY}/manifests/v1", 503) in proxy.log
    assert server.manifest_digest(REPOSITORY, "v1") == result.digest


def test_registry_dying_mid_push_leaves_no_tag_and_a_retry_completes(image, server):
    uploads = server.root / "data/docker/registry/v2/repositories" / REPOSITORY / "_uploads"
    outcome: dict = {}

    def push():
        try:
            outcome["result"] = registry.push(image, target(server.host, server), "v1", retries=0, show_progress=False)
        except RegistryError as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=push)
    worker.start()
    assert wait_for(lambda: uploads.exists() and any(uploads.iterdir()), timeout=120), "no upload started"
    server.kill()
    worker.join(timeout=300)
    error = outcome.get("error")
    assert error is not None, outcome
    assert "Pushing faults/app:v1" in error.what and "fix:" in str(error)
    assert error.transient

    server.start()  # same storage, same port: what did the dead push leave behind?
    assert server.manifest_digest(REPOSITORY, "v1") is None  # no tag on an incomplete image
    result = registry.push(image, target(server.host, server), "v1", retries=2, backoff=0.5, show_progress=False)
    assert server.manifest_digest(REPOSITORY, "v1") == result.digest


def test_an_expired_token_fails_at_once_with_the_fix(image, server):
    expired = json.dumps({"errors": [{"code": "DENIED", "message": "Your authorization token has expired. "
                                      "Reauthenticate and try again."}]}).encode()

    def deny_uploads(method, path):
        return (403, expired) if method == "POST" and "/blobs/uploads/" in path else None

    proxy = FaultyProxy(server.host, deny_uploads).start()
    try:
        with pytest.raises(RegistryError) as raised:
            registry.push(image, target(proxy.host, server), "v1", retries=3, backoff=0.1, show_progress=False)
    finally:
        proxy.stop()
    error = raised.value
    assert "refused the push" in error.what and "authorization token has expired" in error.what
    assert "docker login" in error.fix and not error.transient
    denied = [entry for entry in proxy.log if entry[2] == 403]
    assert denied and len({path for _, path, _ in denied}) <= 2  # one attempt (a request per layer), no retries
    assert server.manifest_digest(REPOSITORY, "v1") is None


def test_make_registry_serves_pushes_and_keeps_its_data(image, tmp_path):
    """`make registry` (tools/local-registry.sh): the README's way to try a push without an AWS account."""
    import subprocess
    import urllib.request

    from tests.servers import free_port

    port = free_port()
    env = dict(os.environ, PORT=str(port), SMKIT_REGISTRY_DIR=str(tmp_path / "registry"))
    script = [str(Path(__file__).resolve().parent.parent / "tools" / "local-registry.sh")]
    local = registry.Target(kind="oci", registry=f"127.0.0.1:{port}", repository="smkit/app")

    def call(verb: str) -> subprocess.CompletedProcess:
        return subprocess.run(script + [verb], env=env, capture_output=True, text=True, timeout=60)

    started = call("start")
    assert started.returncode == 0, started.stderr
    assert f"REGISTRY=127.0.0.1:{port}/smkit" in started.stdout
    try:
        assert "already running" in call("start").stdout
        pushed = registry.push(image, local, "v1", retries=0, show_progress=False)
        assert pushed.layers_pushed == 2
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/smkit/app/tags/list", timeout=5) as answer:
            assert json.load(answer)["tags"] == ["v1"]
    finally:
        stopped = call("stop")
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert call("status").returncode == 1
    # The data outlives the server: a restart serves the same image, and a push finds it there.
    assert call("start").returncode == 0
    try:
        again = registry.push(image, local, "v1", retries=0, show_progress=False)
        assert again.skipped and again.digest == pushed.digest
    finally:
        call("stop")
