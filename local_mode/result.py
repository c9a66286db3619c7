"""What a run of any backend reports: status, time, metrics, artifacts, and why it failed or stopped."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class JobResult:
    job_name: str
    mode: str  # local | cloud
    status: str  # Completed | Failed | Stopped (| InProgress for a cloud job not waited for)
    wall_seconds: float
    image: str
    sdk: str | None = None
    instance_count: int = 1
    failure_reason: str | None = None
    error: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    model_artifact: str | None = None
    output_artifact: str | None = None
    run_dir: str | None = None
    log_path: str | None = None
    extra: dict = field(default_factory=dict)
    backend: str = "sdk"  # sdk | direct | cloud
    stop_reason: str | None = None  # why a Stopped job stopped: "interrupted (SIGTERM)", "timeout after 25s"

    @property
    def ok(self) -> bool:
        return self.status == "Completed"

    def log(self) -> str:
        return Path(self.log_path).read_text(errors="replace") if self.log_path else ""

    def save(self) -> None:
        """summary.json in the run directory (local runs)."""
        if self.run_dir:
            (Path(self.run_dir) / "summary.json").write_text(json.dumps(asdict(self), indent=2, sort_keys=True))
