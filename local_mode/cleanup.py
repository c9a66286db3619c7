"""Removing what a run leaves behind: its containers, its network, and scratch directories holding
files the containers wrote as root."""

from __future__ import annotations

import shutil
from pathlib import Path

import docker.errors

from smkit import engine

# Every container and network the direct backend creates carries these labels.
JOB_LABEL = "smkit.job"
RUN_DIR_LABEL = "smkit.run-dir"


def remove_containers(label: str, value: str) -> int:
    """Force-remove every container (running or not) whose `label` is `value`; how many were removed."""
    removed = 0
    for container in engine.client().containers.list(all=True, filters={"label": f"{label}={value}"}):
        try:
            container.remove(force=True)
            removed += 1
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError:
            pass  # already being removed
    return removed


def remove_networks(label: str, value: str) -> int:
    removed = 0
    for network in engine.client().networks.list(filters={"label": f"{label}={value}"}):
        try:
            network.remove()
            removed += 1
        except docker.errors.NotFound:
            pass
    return removed


def remove_tree(path: Path, image: str) -> None:
    """rmtree that also removes what containers wrote as root when this process is not root."""
    if not path.exists():
        return
    try:
        shutil.rmtree(path)
        return
    except PermissionError:
        pass
    engine.client().containers.run(
        image, entrypoint=["sh", "-c", "rm -rf /cleanup/* /cleanup/.[!.]* 2>/dev/null; true"],
        volumes={str(path.resolve()): {"bind": "/cleanup", "mode": "rw"}}, remove=True, network_disabled=True,
    )
    shutil.rmtree(path, ignore_errors=True)
