"""Image tags that say what is inside: the git commit and a hash of the build inputs.

`<short sha>-<inputs hash>` names exactly one set of inputs, so a rebuild of the same inputs gets the
same tag (and a push can be skipped), and a changed script gets a new one. When an input differs from
the commit (edited or untracked files) the tag says `dirty` instead of pretending to be that commit.
"""

from __future__ import annotations

import re
import subprocess

from smkit.errors import ConfigError
from smkit.paths import PROJECT

TAG_RULE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


def _git(*args: str) -> str | None:
    try:
        proc = subprocess.run(["git", "-C", str(PROJECT), *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def git_commit(short: bool = False) -> str | None:
    return _git("rev-parse", "--short=7", "HEAD") if short else _git("rev-parse", "HEAD")


def dirty_inputs(paths: list[str]) -> list[str]:
    """Inputs that differ from HEAD: modified, added or untracked (ignored files are not inputs)."""
    out = _git("status", "--porcelain", "--untracked-files=all", "--", *paths)
    if out is None:
        return []
    return [line[3:] for line in out.splitlines() if line.strip()]


def content_tag(inputs_sha256: str, paths: list[str]) -> str:
    commit = git_commit(short=True)
    short_hash = inputs_sha256[:10]
    if commit is None:
        return f"nogit-{short_hash}"
    if dirty_inputs(paths):
        return f"{commit}-dirty-{short_hash}"
    return f"{commit}-{short_hash}"


def check_tag(tag: str) -> str:
    if not TAG_RULE.match(tag):
        raise ConfigError(
            f"{tag!r} is not a valid image tag.",
            "use letters, digits, _ . and -, starting with a letter, digit or _, at most 128 characters",
        )
    return tag
