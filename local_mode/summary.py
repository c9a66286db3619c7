"""The few lines a person reads after a job: status, time, metrics, where the artifacts are, and why it failed."""

from __future__ import annotations

from rich.table import Table

from smkit import console


def show(result) -> None:
    """Print a JobResult (local or cloud) as a short table on stdout."""
    colour = "green" if result.ok else "red"
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    table.add_row("job", f"{result.job_name} ({result.mode}" + (f", SDK {result.sdk}" if result.sdk else "") + ")")
    table.add_row("status", f"[{colour}]{result.status}[/]")
    table.add_row("image", result.image)
    table.add_row("instances", str(result.instance_count))
    table.add_row("wall time", f"{result.wall_seconds:.1f}s")
    for name, value in sorted(result.metrics.items()):
        table.add_row(name, f"{value:.6g}")
    if result.model_artifact:
        table.add_row("model", result.model_artifact)
    if result.output_artifact:
        table.add_row("output", result.output_artifact)
    if result.failure_reason:
        table.add_row("failure", f"[red]{result.failure_reason}[/]")
    elif result.error and not result.ok:
        table.add_row("error", f"[red]{result.error}[/]")
    if result.log_path:
        table.add_row("log", result.log_path)
    console.out.print(table)
