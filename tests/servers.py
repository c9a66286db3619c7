"""Real servers on loopback for the tests and benchmarks: a registry (CNCF distribution, Debian's
docker-registry) with htpasswd authentication, and moto's AWS API server. Both are started on a free
127.0.0.1 port and stopped (with their data) afterwards."""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import bcrypt


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(url: str, timeout: float = 30, ok=(200, 401)) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status in ok:
                    return
        except urllib.error.HTTPError as exc:
            if exc.code in ok:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer within {timeout:.0f}s")
        time.sleep(0.2)


@dataclass
class Registry:
    """A registry server: `docker push 127.0.0.1:<port>/name:tag` with user/password (None: no auth)."""

    users: dict[str, str] = field(default_factory=lambda: {"smkit": "smkit-test-password"})
    port: int = 0
    root: Path | None = None
    process: subprocess.Popen | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def auth(self) -> dict[str, str] | None:
        if not self.users:
            return None
        user, password = next(iter(self.users.items()))
        return {"username": user, "password": password}

    def start(self) -> "Registry":
        binary = shutil.which("docker-registry")
        if binary is None:
            raise RuntimeError("docker-registry is not installed (make engine installs it)")
        self.root = self.root or Path(tempfile.mkdtemp(prefix="smkit-registry-"))  # a restart keeps the data
        self.port = self.port or free_port()
        config = {
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": str(self.root / "data")}, "delete": {"enabled": True}},
            "http": {"addr": self.host, "secret": "smkit-test"},
        }
        if self.users:
            lines = []
            for user, password in self.users.items():
                hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()
                lines.append(f"{user}:{hashed.replace('$2b$', '$2y$', 1)}")
            (self.root / "htpasswd").write_text("\n".join(lines) + "\n")
            config["auth"] = {"htpasswd": {"realm": "smkit-test", "path": str(self.root / "htpasswd")}}
        # JSON is valid YAML, which is what the registry reads.
        (self.root / "config.yml").write_text(json.dumps(config))
        self.log = open(self.root / "registry.log", "ab")
        self.process = subprocess.Popen(
            [binary, "serve", str(self.root / "config.yml")], stdout=self.log, stderr=subprocess.STDOUT
        )
        wait_for_http(f"http://{self.host}/v2/")
        return self

    def kill(self) -> None:
        """Stop the server abruptly (SIGKILL), keeping its data: start() brings it back on the same port."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None
            self.log.close()

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
            self.process = None
            self.log.close()
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def request(self, path: str, method: str = "GET", headers: dict | None = None):
        """An authenticated request to the registry API; returns (status, headers, body)."""
        request = urllib.request.Request(f"http://{self.host}{path}", method=method, headers=headers or {})
        if self.auth:
            token = base64.b64encode(f"{self.auth['username']}:{self.auth['password']}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()

    def manifest_digest(self, repository: str, tag: str) -> str | None:
        accept = ", ".join([
            "application/vnd.docker.distribution.manifest.v2+json",
            "application/vnd.oci.image.manifest.v1+json",
        ])
        status, headers, _ = self.request(f"/v2/{repository}/manifests/{tag}", "HEAD", {"Accept": accept})
        if status != 200:
            return None
        return {k.lower(): v for k, v in headers.items()}.get("docker-content-digest")

    def blob_count(self) -> int:
        blobs = self.root / "data/docker/registry/v2/blobs" if self.root else None
        return sum(1 for _ in blobs.rglob("data")) if blobs and blobs.exists() else 0


class FaultyProxy:
    """A reverse proxy in front of a registry that injects faults into chosen requests.

    `rule(method, path)` is asked for every request (counting is up to the rule); it returns None to
    pass the request through, or a fault:
    - (status, body): answer with that instead (e.g. 503, a counted number of times);
    - RESET: drop the connection with a TCP reset (the client sees "connection reset by peer");
    - (STALL, seconds): answer nothing for that long, then drop the connection (the client times out).
    `start(refuse_for=s)` listens only after s seconds: until then every connection is refused.
    Docker pushes to it as to any registry on loopback. `log` holds (method, path, status) per request,
    `events` (monotonic time, method, path, status or fault name), so tests can count attempts and
    measure the waits between them.
    """

    RESET = "reset"
    STALL = "stall"

    def __init__(self, upstream: str, rule):
        import http.server

        self.upstream, self.rule, self.port = upstream, rule, free_port()
        self.log: list[tuple[str, str, int]] = []
        self.events: list[tuple[float, str, str, object]] = []
        self.server = None
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    data = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            self.rfile.readline()
                            return data
                        data += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _handle(self):
                import http.client

                body = self._body()
                fault = proxy.rule(self.command, self.path)
                if fault == FaultyProxy.RESET or (isinstance(fault, tuple) and fault[0] == FaultyProxy.STALL):
                    proxy.events.append((time.monotonic(), self.command, self.path, fault if fault == FaultyProxy.RESET else fault[0]))
                    if fault != FaultyProxy.RESET:
                        time.sleep(fault[1])
                    # SO_LINGER 0: close() sends RST instead of FIN.
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.connection.close()
                    self.close_connection = True
                    return
                if fault is not None:
                    status, payload = fault
                    proxy.events.append((time.monotonic(), self.command, self.path, status))
                    proxy.log.append((self.command, self.path, status))
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                connection = http.client.HTTPConnection(proxy.upstream, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("transfer-encoding", "content-length")}
                headers["Content-Length"] = str(len(body))
                connection.request(self.command, self.path, body=body, headers=headers)
                response = connection.getresponse()
                payload = response.read()
                proxy.log.append((self.command, self.path, response.status))
                proxy.events.append((time.monotonic(), self.command, self.path, response.status))
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("transfer-encoding", "content-length", "connection"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)
                connection.close()

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):  # a connection the proxy reset on purpose
                pass

        self._make_server = lambda: Server(("127.0.0.1", self.port), Handler)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, refuse_for: float = 0.0) -> "FaultyProxy":
        import threading

        self.listening_at = time.monotonic() + refuse_for
        if refuse_for <= 0:
            self.server = self._make_server()
            threading.Thread(target=self.server.serve_forever, daemon=True).start()
            return self

        def listen_later():
            time.sleep(refuse_for)
            self.server = self._make_server()
            self.server.serve_forever()

        threading.Thread(target=listen_later, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


@dataclass
class MotoServer:
    """moto's real HTTP server implementing ECR, S3, STS and the SageMaker control plane."""

    port: int = 0
    server: object = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "MotoServer":
        # moto's recorder keeps every request it serves (body included): the tests read back exactly what
        # reached e.g. CreateTrainingJob. The path is read when moto is imported.
        self.recording = Path(tempfile.mkdtemp(prefix="smkit-moto-")) / "recording.jsonl"
        os.environ["MOTO_RECORDER_FILEPATH"] = str(self.recording)
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no access log lines in the test output

        self.port = self.port or free_port()
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()
        wait_for_http(f"{self.url}/moto-api/", ok=(200,))
        return self

    def reset(self) -> None:
        urllib.request.urlopen(urllib.request.Request(f"{self.url}/moto-api/reset", method="POST"), timeout=10)
        for action in ("reset-recording", "start-recording"):
            urllib.request.urlopen(urllib.request.Request(f"{self.url}/moto-api/recorder/{action}", method="POST"), timeout=10)

    def requests(self, target: str | None = None) -> list[dict]:
        """Recorded requests since the last reset, as {method, url, headers, json}; `target` filters on
        the X-Amz-Target operation (e.g. "CreateTrainingJob")."""
        found = []
        if not self.recording.exists():
            return found
        for line in self.recording.read_text().splitlines():
            entry = json.loads(line)
            body = entry.get("body") or ""
            if entry.get("body_encoded"):
                body = base64.b64decode(body).decode(errors="replace")
            operation = (entry["headers"].get("X-Amz-Target") or entry["headers"].get("x-amz-target") or "").split(".")[-1]
            if target and operation != target:
                continue
            try:
                entry["json"] = json.loads(body) if body else None
            except ValueError:
                entry["json"] = None
            entry["operation"] = operation
            found.append(entry)
        return found

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
