"""What a finished job left behind: metrics in its log, files in model.tar.gz and output.tar.gz."""

from __future__ import annotations

import re
import tarfile
from pathlib import Path

from smkit import metrics

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def strip_ansi(text: str) -> str:
    """docker compose colours each container's lines; the saved log and the parsers want plain text."""
    return ANSI.sub("", text)


def parse_metrics(log: str) -> tuple[dict[str, float], list[dict]]:
    """(last value of each metric, every metric line as {kind, step, host, metrics}): smkit.metrics' format."""
    return metrics.parse_log(strip_ansi(log))


def tar_members(path: Path) -> list[str]:
    if not path.exists():
        return []
    with tarfile.open(path) as archive:
        return sorted(m.name.lstrip("./") for m in archive.getmembers() if m.isfile())


def read_member(path: Path, name: str) -> bytes | None:
    """The bytes of `name` (with or without a leading ./) in a tarball, or None."""
    if not path.exists():
        return None
    with tarfile.open(path) as archive:
        for member in archive.getmembers():
            if member.isfile() and member.name.lstrip("./") == name:
                extracted = archive.extractfile(member)
                return extracted.read() if extracted else None
    return None


def failure_reason(output_tar: Path) -> str | None:
    """The reason the job wrote to /opt/ml/output/failure (what SageMaker shows as FailureReason)."""
    data = read_member(output_tar, "failure")
    return data.decode(errors="replace").strip()[:1024] if data else None


def extract(path: Path, destination: Path) -> Path:
    destination.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path) as archive:
        archive.extractall(destination, filter="data")
    return destination
