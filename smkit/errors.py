"""Failures a user can fix, reported as what went wrong and how to fix it (never a bare traceback)."""

from __future__ import annotations


class ToolkitError(Exception):
    """A failure with its cause and its fix; the CLIs print both and exit non-zero."""

    exit_code = 1

    def __init__(self, what: str, fix: str):
        super().__init__(what)
        self.what = what
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.what}\n  fix: {self.fix}"


class EngineUnavailable(ToolkitError):
    """The Docker engine does not answer."""


class BuildFailed(ToolkitError):
    """`docker build` stopped at a step."""


class RegistryError(ToolkitError):
    """A registry refused or broke off a push or a query."""

    def __init__(self, what: str, fix: str, transient: bool = False):
        super().__init__(what, fix)
        self.transient = transient


class ConfigError(ToolkitError):
    """images.toml, an option or an argument is wrong."""
