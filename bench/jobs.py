"""Running a training job for a benchmark through local_mode's run layer, and measuring it: SageMaker SDK
local mode (v2 or v3) or the direct backend (local_mode.run), or the direct backend's handle with a memory
limit and the container's memory sampled (start_direct). The script as plain Python is run by the
benchmarks themselves (bench.common.run_measured)."""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import HOST_PYTHON, SDK3_PYTHON, BenchError
from bench.context import Context, StampedConsole


@dataclass
class Job:
    wall: float  # seconds the caller waited, clean-up included
    ok: bool
    lines: list[tuple[float, str]] = field(default_factory=list)  # (seconds since start, log line)
    metrics: dict[str, float] = field(default_factory=dict)
    returncode: int | None = None
    oom_killed: bool = False
    peak_memory: dict[str, int] = field(default_factory=dict)  # bytes, sampled from the container's cgroup
    detail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def check(self, what: str) -> "Job":
        if not self.ok:
            tail = "\n".join(line for _, line in self.lines[-30:])
            raise BenchError(f"{what} failed: {self.detail}\n{tail}")
        return self


def local_job(ctx: Context, image: str, channels: list, hyperparameters: dict, sdk: str = "v2", instances: int = 1,
              stamp: bool = False, timeout: float = 1200, backend: str = "sdk") -> Job:
    """One job through local_mode.run (`backend` sdk or direct; `sdk` picks the SDK, or the direct
    backend's contract dialect); `stamp` records the log lines with their arrival times."""
    from local_mode import JobSpec, run

    spec = JobSpec(image=image, channels=list(channels), hyperparameters=dict(hyperparameters), instance_count=instances,
                   sdk=sdk, region="us-east-1")
    options = {"python": HOST_PYTHON if sdk == "v2" else str(SDK3_PYTHON)} if backend == "sdk" else {}
    stamped = StampedConsole(echo=ctx.cfg.verbose)
    started = time.monotonic()
    with stamped.active() if stamp else contextlib.nullcontext():
        result = run(spec, backend, runs_dir=ctx.work("runs"), timeout=timeout, stream=stamp, **options)
    wall = time.monotonic() - started
    lines = stamped.lines if stamp else [(0.0, line) for line in result.log().splitlines()]
    job = Job(wall=wall, ok=result.ok, lines=lines, metrics=dict(result.metrics),
              detail=f"{result.status}: {result.error or ''} {result.failure_reason or ''}".strip(),
              extra={"runner_wall": result.wall_seconds, "sdk_version": result.extra.get("sdk_version")})
    if result.run_dir:
        shutil.rmtree(result.run_dir, ignore_errors=True)
    return job


def _cgroup_dir(container_id: str) -> Path | None:
    for path in (Path(f"/sys/fs/cgroup/memory/docker/{container_id}"),
                 Path(f"/sys/fs/cgroup/system.slice/docker-{container_id}.scope")):
        if path.exists():
            return path
    return None


def docker_job(image: str, root: Path, channels: dict[str, Path], hyperparameters: dict, mem_limit: str | None = None,
               content_types: dict[str, str] | None = None, timeout: float = 1800, poll_memory: bool = False) -> Job:
    """One container started as SageMaker starts it (the direct backend's handle, network disabled), with an
    optional memory limit and its memory sampled from its cgroup; waited for and removed."""
    from local_mode import Channel, JobSpec
    from local_mode.direct import start_direct

    spec = JobSpec(image=image, hyperparameters=dict(hyperparameters), sdk="v3", region="us-east-1",
                   channels=[Channel(name, str(path), (content_types or {}).get(name)) for name, path in channels.items()])
    started = time.monotonic()
    job = start_direct(spec, runs_dir=root, stream=False, mem_limit=mem_limit)
    (container,) = job.containers.values()
    peak: dict[str, int] = {}
    done = threading.Event()

    def poll() -> None:
        directory = None
        while not done.is_set():
            directory = directory or _cgroup_dir(container.id)
            if directory is not None:
                try:
                    stat = dict(line.split() for line in (directory / "memory.stat").read_text().splitlines())
                    anon = int(stat.get("total_rss", stat.get("anon", 0)))
                    cache = int(stat.get("total_cache", stat.get("file", 0)))
                    peak["anon"] = max(peak.get("anon", 0), anon)
                    peak["anon_plus_cache"] = max(peak.get("anon_plus_cache", 0), anon + cache)
                except (OSError, ValueError):
                    pass
            done.wait(0.1)

    poller = threading.Thread(target=poll, daemon=True) if poll_memory else None
    if poller:
        poller.start()
    try:
        code = job.wait(timeout=timeout)
        result = job.finish()
    finally:
        done.set()
        if poller:
            poller.join()
        job.cleanup()
    if code is None:
        raise BenchError(f"the direct job of {image} did not finish within {timeout:.0f}s")
    wall = time.monotonic() - started
    lines = [(0.0, line) for line in job.logs().splitlines()]
    oom = bool(result.extra.get("oom_killed"))
    failure = result.failure_reason
    return Job(wall=wall, ok=code == 0, lines=lines, returncode=code, oom_killed=oom, peak_memory=peak,
               metrics=dict(result.metrics),
               detail=f"exit {code}" + (" (OOM-killed)" if oom else "") + (f": {failure}" if failure else ""))
