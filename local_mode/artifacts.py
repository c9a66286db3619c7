"""What a finished job left behind: metrics in its log, files in model.tar.gz and output.tar.gz."""

from __future__ import annotations

import re
import tarfile
from pathlib import Path

# Lines the training scripts print with sm_contract.log_metrics: `[round 12] train:rmse=0.35 ...`,
# possibly behind the `algo-1-abcde  | ` prefix docker compose adds in multi-container runs.
STEP_LINE = re.compile(r"\[(?P<kind>[A-Za-z_]+) (?P<step>[^\]\s]+)\] (?P<fields>.*)$")
FIELD = re.compile(r"(?P<name>[A-Za-z_][\w:./-]*)=(?P<value>[-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)(?=\s|$)")
HOST_PREFIX = re.compile(r"^(?P<host>[\w.-]+)\s+\|\s?")
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def strip_ansi(text: str) -> str:
    """docker compose colours each container's lines; the saved log and the parsers want plain text."""
    return ANSI.sub("", text)


def parse_metrics(log: str) -> tuple[dict[str, float], list[dict]]:
    """(last value of each metric, every step line as {kind, step, host, metrics})."""
    final: dict[str, float] = {}
    history: list[dict] = []
    for raw in strip_ansi(log).splitlines():
        host = None
        prefix = HOST_PREFIX.match(raw)
        line = raw
        if prefix:
            host, line = prefix.group("host"), raw[prefix.end():]
        match = STEP_LINE.search(line)
        if not match:
            continue
        metrics = {m.group("name"): float(m.group("value")) for m in FIELD.finditer(match.group("fields"))}
        if not metrics:
            continue
        history.append({"kind": match.group("kind"), "step": match.group("step"), "host": host, "metrics": metrics})
        final.update(metrics)
    return final, history


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
