"""One rich console for every command: progress and messages on stderr, results on stdout."""

from __future__ import annotations

from rich.console import Console

err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)


def step(message: str) -> None:
    err.print(f"[bold cyan]==>[/] {message}")


def note(message: str) -> None:
    err.print(f"    {message}")


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/] {message}")
