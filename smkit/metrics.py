"""The metric-line format, defined once: what a training script prints, what a local run's summary lists,
and what a cloud job's SageMaker metric definitions match.

A metric is `name=value`, `name: value` or `name = value` anywhere in a log line, as scripts and
tutorials print them:

    [round 12] train:rmse=0.35 validation:rmse=0.41      (sm_contract.log_metrics)
    validation:accuracy = 0.7039
    epoch 3: loss: 0.52, accuracy: 0.91

A name is a metric when it appears on a `[kind step]` line or at least once with a fractional value
(`threads=2`, `world_size=1` on their own are settings a script logs, not metrics). A name starts with a
letter or `_` and may hold `: . / -` inside (`validation:accuracy`, `val/loss`); it
stands at the start of the line or after a space, `,`, `;`, `|` or a bracket; the value is a plain or
scientific number followed by the end of the line, a space, `,`, `;`, `|` or a closing bracket. The local
parser and the cloud regex of each name are built from the same pieces below, so a line is a metric in
the summary exactly when SageMaker would record it in the cloud (tests/test_metrics.py checks both ways).

SageMaker runs each metric definition's regex over every log line and records its first capture group;
it allows at most 40 definitions per job.
"""

from __future__ import annotations

import re
from typing import Iterable

NAME = r"[A-Za-z_](?:[\w:./-]*\w)?"
SEPARATOR = r"\s*[=:]\s*"
VALUE = r"[-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?"
BEFORE_CHARS = r"\s,;|(\[\]"
AFTER_CHARS = r"\s,;|)\]"
MAX_DEFINITIONS = 40  # SageMaker's limit per training job

# The local parser: every metric of a line (look-arounds, so neighbouring metrics share a space).
METRIC = re.compile(
    rf"(?:^|(?<=[{BEFORE_CHARS}]))(?P<name>{NAME}){SEPARATOR}(?P<value>{VALUE})(?=[{AFTER_CHARS}]|$)"
)
# `[round 12] ...` / `[epoch 3] ...`: the step a line's metrics belong to (for learning curves).
STEP = re.compile(r"\[(?P<kind>[A-Za-z_]+) (?P<step>[^\]\s]+)\]")
# `algo-1-abcde  | `: the prefix docker compose puts before each container's lines in multi-host runs.
HOST_PREFIX = re.compile(r"^(?P<host>[\w.-]+)\s+\|\s?")
# SM_HPS=..., SM_NUM_CPUS=2: the training toolkit prints its environment; those are settings, not metrics.
ENVIRONMENT_NAME = re.compile(r"^[A-Z][A-Z0-9]*_[A-Z0-9_]*$")


def regex_for(name: str) -> str:
    """The SageMaker metric-definition regex of `name`: one capture group, the value; it matches the same
    lines as the local parser (plain groups instead of look-arounds, which every regex engine has)."""
    return rf"(?:^|[{BEFORE_CHARS}]){re.escape(name)}{SEPARATOR}({VALUE})(?:[{AFTER_CHARS}]|$)"


def definitions(names: Iterable[str]) -> list[dict[str, str]]:
    """[{"Name", "Regex"}] for each name, in order, without duplicates, at most MAX_DEFINITIONS."""
    unique = list(dict.fromkeys(names))[:MAX_DEFINITIONS]
    return [{"Name": name, "Regex": regex_for(name)} for name in unique]


def _line_values(line: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for match in METRIC.finditer(line):
        name = match.group("name")
        if not ENVIRONMENT_NAME.match(name):
            found[name] = match.group("value")
    return found


def parse_line(line: str) -> dict[str, float]:
    """The name=value pairs of one line (without a host prefix), in order; the last of a repeated name wins."""
    return {name: float(text) for name, text in _line_values(line).items()}


def _whole(text: str) -> bool:
    return not any(c in text for c in ".eE")


def parse_log(log: str) -> tuple[dict[str, float], list[dict]]:
    """(last value of each metric, one {kind, step, host, metrics} per line that has metrics).

    kind/step come from a `[round 12]` style prefix and are None on lines without one. A name is a metric
    when it appears on a step line, or at least once with a value that is not a whole number: log lines such
    as `distributed: world_size=1 rank=0` or `threads=2` are settings, not metrics. (Every line of a metric
    counts, whole numbers included, so the values are those the name's cloud regex records.)"""
    lines: list[tuple[str | None, str | None, str | None, dict[str, str]]] = []
    metric_names: set[str] = set()
    for raw in log.splitlines():
        host, line = None, raw
        prefix = HOST_PREFIX.match(raw)
        if prefix:
            host, line = prefix.group("host"), raw[prefix.end():]
        values = _line_values(line)
        if not values:
            continue
        step = STEP.search(line)
        metric_names.update(name for name, text in values.items() if step or not _whole(text))
        lines.append((step.group("kind") if step else None, step.group("step") if step else None, host, values))
    final: dict[str, float] = {}
    history: list[dict] = []
    for kind, step, host, values in lines:
        metrics = {name: float(text) for name, text in values.items() if name in metric_names}
        if metrics:
            history.append({"kind": kind, "step": step, "host": host, "metrics": metrics})
            final.update(metrics)
    return final, history
