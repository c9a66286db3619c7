"""A small Debug Adapter Protocol client (what VS Code speaks to debugpy), for tests that debug a real job.

Messages are JSON bodies after a `Content-Length: N\\r\\n\\r\\n` header, in both directions. The client
sends requests (seq, command, arguments) and reads responses (request_seq, success, body) and events
(event, body) from one reader thread into a queue.
"""

from __future__ import annotations

import json
import queue
import socket
import threading
import time


class DAPClient:
    def __init__(self, host: str, port: int, connect_timeout: float = 120):
        deadline = time.monotonic() + connect_timeout
        while True:
            try:
                self.sock = socket.create_connection((host, port), timeout=5)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        self.sock.settimeout(None)
        self._seq = 0
        self._messages: queue.Queue = queue.Queue()
        self.events: list[dict] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        stream = self.sock.makefile("rb")
        try:
            while True:
                length = None
                while True:
                    line = stream.readline()
                    if not line:
                        return
                    line = line.strip()
                    if not line:
                        break
                    name, _, value = line.decode().partition(":")
                    if name.lower() == "content-length":
                        length = int(value)
                self._messages.put(json.loads(stream.read(length)))
        except OSError:
            return
        finally:
            self._messages.put(None)

    def send(self, command: str, **arguments) -> int:
        self._seq += 1
        body = json.dumps({"seq": self._seq, "type": "request", "command": command, "arguments": arguments}).encode()
        self.sock.sendall(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        return self._seq

    def _next(self, timeout: float) -> dict:
        message = self._messages.get(timeout=timeout)
        if message is None:
            raise ConnectionError("the debug adapter closed the connection")
        if message.get("type") == "event":
            self.events.append(message)
        return message

    def wait_response(self, seq: int, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            message = self._next(max(0.1, deadline - time.monotonic()))
            if message.get("type") == "response" and message.get("request_seq") == seq:
                if not message.get("success"):
                    raise RuntimeError(f"{message.get('command')} failed: {message.get('message')}")
                return message

    def request(self, command: str, timeout: float = 60, **arguments) -> dict:
        return self.wait_response(self.send(command, **arguments), timeout).get("body") or {}

    def wait_event(self, name: str, timeout: float = 120) -> dict:
        for event in self.events:
            if event.get("event") == name:
                self.events.remove(event)
                return event.get("body") or {}
        deadline = time.monotonic() + timeout
        while True:
            message = self._next(max(0.1, deadline - time.monotonic()))
            if message.get("type") == "event" and message.get("event") == name:
                self.events.remove(message)
                return message.get("body") or {}

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def connect_and_initialize(host: str, port: int, timeout: float = 180) -> tuple[DAPClient, dict]:
    """A client that has had its `initialize` answered. Docker's port proxy accepts a connection before
    anything listens in the container, and closes it then: retry until the adapter answers."""
    deadline = time.monotonic() + timeout
    while True:
        client = DAPClient(host, port, connect_timeout=max(1.0, deadline - time.monotonic()))
        try:
            capabilities = client.request("initialize", timeout=10, clientID="smkit-tests", adapterID="debugpy",
                                          pathFormat="path", linesStartAt1=True, columnsStartAt1=True)
            return client, capabilities
        except (ConnectionError, queue.Empty):
            client.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
