"""The Docker engine: one place that connects to it and explains why it cannot."""

from __future__ import annotations

import functools
import os

import docker
import docker.errors

from smkit.errors import EngineUnavailable

START_HINT = (
    "start the engine (`sudo systemctl start docker`, or `make engine`, which installs Debian's docker.io "
    "and starts dockerd when none answers), or point DOCKER_HOST at a running one"
)


@functools.lru_cache(maxsize=None)
def client(timeout: int = 600) -> docker.DockerClient:
    """A client of the engine that DOCKER_HOST (or the default socket) names, checked with a ping."""
    where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        engine = docker.from_env(timeout=timeout)
        engine.ping()
    except docker.errors.DockerException as exc:
        reason = str(exc).split("\n")[0]
        if "Permission denied" in reason:
            raise EngineUnavailable(
                f"The Docker engine at {where} refused this user ({reason}).",
                "add yourself to the `docker` group (`sudo usermod -aG docker $USER`, then log in again) "
                "or run as root",
            ) from None
        raise EngineUnavailable(f"No Docker engine answers at {where} ({reason}).", START_HINT) from None
    return engine


def image_exists(name: str) -> bool:
    try:
        client().images.get(name)
        return True
    except docker.errors.ImageNotFound:
        return False
