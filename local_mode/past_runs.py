"""`python -m local_mode runs`: the runs under a runs directory, newest first, from what each left behind.

A run directory holds spec.json (written when the run starts: image, hyperparameters, instances) and
summary.json (written when it ends: status, SDK, wall time, final metrics, the curves). A directory with
a spec but no summary is a run still going, or one whose process was killed: it is listed as unfinished.
"Newest" is when spec.json was written, i.e. when the run started.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from rich.markup import escape

from smkit import console

STATUS_COLOURS = {"Completed": "green", "Failed": "red"}


@dataclass
class PastRun:
    job_name: str
    run_dir: str
    started: str  # UTC, ISO 8601, seconds
    status: str  # Completed | Failed | Stopped | ... | unfinished
    image: str
    image_name: str | None
    backend: str  # sdk | direct | cloud (runs from before the backends: local | cloud, their mode)
    sdk: str | None
    instance_count: int
    hyperparameters: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    wall_seconds: float | None = None
    curves: str | None = None


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def load_run(run_dir: Path) -> PastRun | None:
    """The run in `run_dir`, or None when the directory is not a run (no readable spec.json)."""
    spec = _read_json(run_dir / "spec.json")
    if spec is None:
        return None
    summary = _read_json(run_dir / "summary.json") or {}
    started = datetime.fromtimestamp((run_dir / "spec.json").stat().st_mtime, timezone.utc)
    return PastRun(
        job_name=summary.get("job_name") or spec.get("job_name") or run_dir.name,
        run_dir=str(run_dir),
        started=started.isoformat(timespec="seconds"),
        status=summary.get("status") or "unfinished",
        image=summary.get("image") or spec.get("image", ""),
        image_name=spec.get("image_name"),
        backend=summary.get("backend") or summary.get("mode") or "local",
        sdk=summary.get("sdk"),
        instance_count=int(summary.get("instance_count") or spec.get("instance_count") or 1),
        hyperparameters=spec.get("hyperparameters") or {},
        metrics=summary.get("metrics") or {},
        wall_seconds=summary.get("wall_seconds"),
        curves=(summary.get("extra") or {}).get("curves"),
    )


def matches(run: PastRun, image: str) -> bool:
    """--image NAME: the images.toml name, the full reference, or its repository (with or without registry)."""
    repository = run.image.rsplit(":", 1)[0] if ":" in run.image.rsplit("/", 1)[-1] else run.image
    return image in (run.image_name, run.image, repository, repository.rsplit("/", 1)[-1])


def find_runs(runs_dir: Path | str, image: str | None = None) -> list[PastRun]:
    """Every run under `runs_dir` (of `image` only, if given), newest first."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    runs = [run for path in runs_dir.iterdir() if path.is_dir() and (run := load_run(path)) is not None]
    if image:
        runs = [run for run in runs if matches(run, image)]
    return sorted(runs, key=lambda run: (run.started, run.job_name), reverse=True)


def _value(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def show_runs(runs: list[PastRun]) -> None:
    """One aligned plain line per run (not a rich Table: a table folds long values at the terminal width)."""
    header = ("started (UTC)", "status", "image", "backend", "sdk", "hosts", "wall", "job", "hyperparameters", "final metrics")
    lines = [
        (
            run.started.replace("T", " ").removesuffix("+00:00"),
            run.status,
            run.image_name or run.image,
            run.backend,
            run.sdk or "-",
            str(run.instance_count),
            f"{run.wall_seconds:.1f}s" if run.wall_seconds is not None else "-",
            run.job_name,
            " ".join(f"{key}={_value(value)}" for key, value in sorted(run.hyperparameters.items())) or "-",
            " ".join(f"{name}={value:.4g}" for name, value in sorted(run.metrics.items())) or "-",
        )
        for run in runs
    ]
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header) - 1)]

    def render(row, style=None) -> str:
        cells = []
        for i, cell in enumerate(row):
            padded = escape(cell) + " " * ((widths[i] - len(cell)) if i < len(widths) else 0)
            if style:
                padded = f"[{style}]{padded}[/]"
            elif i == 1 and cell in STATUS_COLOURS:
                padded = f"[{STATUS_COLOURS[cell]}]{padded}[/]"
            cells.append(padded)
        return "  ".join(cells).rstrip()

    console.out.print(render(header, "bold"), soft_wrap=True)
    for row in lines:
        console.out.print(render(row), soft_wrap=True)


def as_json(runs: list[PastRun]) -> str:
    return json.dumps([asdict(run) for run in runs], indent=2, sort_keys=True)
