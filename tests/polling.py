"""Waiting for something a test cannot be told about (a file appearing, a container exiting)."""

from __future__ import annotations

import time


def wait_for(predicate, timeout: float = 120, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False
