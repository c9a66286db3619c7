"""Pushes when the registry misbehaves: it answers 5xx, resets, stalls or refuses connections, dies
mid-push, or rejects an expired token.

Transient faults are retried, a counted number of times, with waits that grow (exponential backoff), and
the push completes; refusals fail at once with the fix, after exactly one attempt; and a tag never points
at an incomplete image (the engine uploads every layer before the manifest that names the tag). The
faults come from tests/servers.FaultyProxy in front of a real registry server.
"""

from __future__ import annotations

import json
import os
import re
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


@pytest.fixture(scope="module")
def small_image(docker_client) -> str:
    """One small layer: the retry tests are about requests, not bytes."""
    ctx = BuildContext(Path(__file__).parent)
    ctx.add_bytes("Dockerfile", b"FROM scratch\nCOPY one /one\n")
    ctx.add_bytes("one", os.urandom(64 * 2**10))
    return builder.build(ctx, dockerfile="Dockerfile", tag="smkit-test/faults-small:latest", title="faults-small").image_id


def target(host: str, server: Registry) -> registry.Target:
    return registry.Target(kind="oci", registry=host, repository=REPOSITORY, auth=dict(server.auth))


def first_n(n: int, fault, method: str, part: str):
    """A proxy rule: `fault` for the first n requests `method ...part...`, then pass everything through."""
    left = {"n": n}

    def rule(request_method, path):
        if request_method == method and part in path and left["n"] > 0:
            left["n"] -= 1
            return fault
        return None

    return rule


def times_of(proxy: FaultyProxy, method: str, part: str) -> list[tuple[float, object]]:
    return [(at, outcome) for at, m, path, outcome in proxy.events if m == method and part in path]


def retry_warnings(stderr: str, what: str) -> list[str]:
    """The waits the product announced, in order ("push attempt 1 failed (...); retrying in 0.5s")."""
    return re.findall(rf"{what}(?: \([^)]*\))? attempt \d+ failed .*?; retrying in ([0-9.]+)s", " ".join(stderr.split()))


def assert_waits_grow(times: list[float], backoff: float, each_attempt: float = 0.0) -> None:
    """Between attempt k and k+1 (k from 0) at least each_attempt + backoff * 2**k seconds passed, as the
    proxy saw them: the waits double (0.05 s: the proxy stamps a request a moment after it was sent)."""
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert all(gap >= each_attempt + backoff * 2**k - 0.05 for k, gap in enumerate(gaps)), gaps


UNAVAILABLE = (503, b'{"errors":[{"code":"UNAVAILABLE","message":"service unavailable"}]}')


def test_5xx_answers_are_retried_a_counted_number_of_times_with_growing_waits(small_image, server, capfd):
    proxy = FaultyProxy(server.host, first_n(3, UNAVAILABLE, "PUT", "/manifests/")).start()
    try:
        result = registry.push(small_image, target(proxy.host, server), "v1", retries=4, backoff=0.5, show_progress=False)
    finally:
        proxy.stop()
    manifest_puts = times_of(proxy, "PUT", "/manifests/v1")
    assert [outcome for _, outcome in manifest_puts] == [503, 503, 503, 201]
    assert result.attempts == 4
    # One `docker push` per attempt: each starts with the engine's ping of /v2/.
    assert len([1 for _, m, path, _ in proxy.events if m == "GET" and path == "/v2/"]) == 4
    assert retry_warnings(capfd.readouterr().err, "push") == ["0.5", "1", "2"]
    assert_waits_grow([at for at, _ in manifest_puts], backoff=0.5)
    assert server.manifest_digest(REPOSITORY, "v1") == result.digest


def test_5xx_answers_beyond_the_retries_fail_with_the_count_and_no_tag(small_image, server):
    proxy = FaultyProxy(server.host, first_n(99, UNAVAILABLE, "PUT", "/manifests/")).start()
    try:
        with pytest.raises(RegistryError) as raised:
            registry.push(small_image, target(proxy.host, server), "v1", retries=2, backoff=0.1, show_progress=False)
    finally:
        proxy.stop()
    assert "failed after 3 attempts" in raised.value.what and raised.value.transient
    assert [outcome for _, outcome in times_of(proxy, "PUT", "/manifests/v1")] == [503, 503, 503]
    assert server.manifest_digest(REPOSITORY, "v1") is None


def test_a_reset_connection_is_retried(small_image, server, capfd):
    proxy = FaultyProxy(server.host, first_n(2, FaultyProxy.RESET, "PUT", "/manifests/")).start()
    try:
        result = registry.push(small_image, target(proxy.host, server), "v1", retries=4, backoff=0.3, show_progress=False)
    finally:
        proxy.stop()
    manifest_puts = times_of(proxy, "PUT", "/manifests/v1")
    assert [outcome for _, outcome in manifest_puts] == ["reset", "reset", 201]
    assert result.attempts == 3
    assert retry_warnings(capfd.readouterr().err, "push") == ["0.3", "0.6"]
    assert_waits_grow([at for at, _ in manifest_puts], backoff=0.3)
    assert server.manifest_digest(REPOSITORY, "v1") == result.digest


def test_a_stalled_registry_times_out_and_is_retried(small_image, server, capfd):
    """The registry API request (HEAD of the tag) that hangs counts as a timeout and is retried."""
    proxy = FaultyProxy(server.host, first_n(2, (FaultyProxy.STALL, 4), "HEAD", "/manifests/")).start()
    try:
        result = registry.push(small_image, target(proxy.host, server), "v1", retries=4, backoff=0.3,
                               show_progress=False, api_timeout=1)
    finally:
        proxy.stop()
    heads = times_of(proxy, "HEAD", "/manifests/v1")
    assert [outcome for _, outcome in heads][:3] == ["stall", "stall", 404]
    err = capfd.readouterr().err
    assert retry_warnings(err, "registry API request")[:2] == ["0.3", "0.6"] and "timed out" in err
    # Each stalled attempt took the timeout (1 s) plus the wait before the next one.
    assert_waits_grow([at for at, _ in heads[:3]], backoff=0.3, each_attempt=1)
    assert server.manifest_digest(REPOSITORY, "v1") == result.digest


def test_a_refused_connection_is_retried_until_the_registry_listens(small_image, server, capfd):
    proxy = FaultyProxy(server.host, lambda method, path: None).start(refuse_for=2.5)
    try:
        result = registry.push(small_image, target(proxy.host, server), "v1", retries=4, backoff=0.5, show_progress=False)
    finally:
        proxy.stop()
    err = capfd.readouterr().err
    # Refused at 0, 0.5 and 1.5 s; the fourth attempt, at 3.5 s, finds the registry listening.
    assert retry_warnings(err, "registry API request") == ["0.5", "1", "2"]
    assert " ".join(err.split()).count("Connection refused") == 3
    assert min(at for at, *_ in proxy.events) >= proxy.listening_at
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


def test_an_expired_token_fails_at_once_with_the_fix(small_image, server, capfd):
    expired = json.dumps({"errors": [{"code": "DENIED", "message": "Your authorization token has expired. "
                                      "Reauthenticate and try again."}]}).encode()

    def deny_uploads(method, path):
        return (403, expired) if method == "POST" and "/blobs/uploads/" in path else None

    proxy = FaultyProxy(server.host, deny_uploads).start()
    try:
        with pytest.raises(RegistryError) as raised:
            registry.push(small_image, target(proxy.host, server), "v1", retries=3, backoff=0.1, show_progress=False)
    finally:
        proxy.stop()
    error = raised.value
    assert [entry for entry in proxy.log if entry[2] == 403], proxy.log
    # Exactly one attempt: one `docker push` (one ping of /v2/ by the engine), and no retry announced.
    assert len([1 for _, m, path, _ in proxy.events if m == "GET" and path == "/v2/"]) == 1, proxy.events
    assert "retrying" not in capfd.readouterr().err
    assert "refused the push" in error.what and "authorization token has expired" in error.what
    assert "docker login" in error.fix and not error.transient
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
