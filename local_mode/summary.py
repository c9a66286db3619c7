"""The few lines a person reads after a job: status, time, metrics, where the artifacts are, and why it failed."""

from __future__ import annotations

from rich.markup import escape

from smkit import console


def show(result) -> None:
    """Print a JobResult (local or cloud) as short aligned lines on stdout."""
    colour = "green" if result.ok else "red"
    # Plain aligned lines, not a rich Table: a table folds long values at the terminal width (80 columns
    # when piped), and a path cut in two cannot be copied. Values are escaped: a failure reason may hold [brackets].
    how = getattr(result, "backend", None) or result.mode
    if result.sdk:
        how += f", SDK {result.sdk}"
    elif (result.extra or {}).get("contract"):
        how += f", contract {result.extra['contract']}"
    status = result.status + (f" ({result.stop_reason})" if getattr(result, "stop_reason", None) else "")
    rows: list[tuple[str, str]] = [
        ("job", escape(f"{result.job_name} ({how})")),
        ("status", f"[{colour}]{escape(status)}[/]"),
        ("image", escape(result.image)),
        ("instances", str(result.instance_count)),
        ("wall time", f"{result.wall_seconds:.1f}s"),
    ]
    rows += [(escape(name), f"{value:.6g}") for name, value in sorted(result.metrics.items())]
    if result.model_artifact:
        rows.append(("model", escape(result.model_artifact)))
    if result.output_artifact:
        rows.append(("output", escape(result.output_artifact)))
    if result.failure_reason:
        rows.append(("failure", f"[red]{escape(result.failure_reason)}[/]"))
    elif result.error and not result.ok:
        rows.append(("error", f"[red]{escape(str(result.error))}[/]"))
    if result.log_path:
        rows.append(("log", escape(str(result.log_path))))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        console.out.print(f"[bold]{name:<{width}}[/]  {value}", soft_wrap=True)
