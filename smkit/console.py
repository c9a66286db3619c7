"""One rich console for every command: progress and messages on stderr, results on stdout."""

from __future__ import annotations

from typing import Callable

from rich.console import Console
from rich.markup import escape

from smkit.errors import ToolkitError

err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)


def step(message: str) -> None:
    err.print(f"[bold cyan]==>[/] {message}")


def note(message: str) -> None:
    err.print(f"    {message}")


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/] {message}")


def run_command(command: Callable[[], int], error_exit: int | None = None) -> int:
    """Run a CLI verb: a ToolkitError becomes its `error:`/`fix:` pair and an exit code, never a traceback."""
    try:
        return command()
    except ToolkitError as exc:
        err.print(f"[red]error:[/] {escape(exc.what)}\n  [bold]fix:[/] {escape(exc.fix)}")  # [images.x] is text
        return exc.exit_code if error_exit is None else error_exit
    except KeyboardInterrupt:
        err.print("[red]interrupted[/]")
        return 130
