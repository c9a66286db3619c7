"""Run a job in SageMaker local mode and report what happened.

Each run gets a directory (local_mode/runs/<job name>/ by default) holding its spec, the full log,
model.tar.gz and output.tar.gz, and summary.json. The SDK's scratch directories under it are removed
afterwards, root-owned files written by the containers included, and so are any containers a timeout
left running.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import docker.errors

from local_mode import artifacts, curves
from local_mode.job import LOCAL_INSTANCE_TYPES, RUNS_DIR, JobSpec, job_name_for
from local_mode.sdk import local_environment
from smkit import bases, console, engine
from smkit.errors import ConfigError, ToolkitError
from smkit.paths import REPO

COMPOSE_DIR_LABEL = "com.docker.compose.project.working_dir"


@dataclass
class JobResult:
    job_name: str
    mode: str  # local | cloud
    status: str  # Completed | Failed | Stopped
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

    @property
    def ok(self) -> bool:
        return self.status == "Completed"

    def log(self) -> str:
        return Path(self.log_path).read_text(errors="replace") if self.log_path else ""


def _check_local_inputs(spec: JobSpec) -> None:
    if spec.instance_type not in LOCAL_INSTANCE_TYPES:
        raise ConfigError(f"Instance type {spec.instance_type!r} is not a local one.", "use local or local_gpu (or --cloud)")
    if spec.instance_count < 1:
        raise ConfigError(f"Instance count {spec.instance_count} is not positive.", "use --instance-count 1 or more")
    if not spec.channels:
        raise ConfigError("The job has no input channels.", "pass --channel train=DIR (or --sample for the bundled data)")
    for channel in spec.channels:
        if channel.source.startswith("s3://"):
            raise ConfigError(
                f"Channel {channel.name} is in S3 ({channel.source}); local runs read local directories only.",
                "download it first (`aws s3 sync URI DIR`), or run in the cloud with --cloud",
            )
        if not Path(channel.source).exists():
            raise ConfigError(f"Channel {channel.name}: {channel.source} does not exist.", "pass an existing directory or file")
        if channel.distribution != "FullyReplicated":
            raise ConfigError(
                f"Channel {channel.name} asks for {channel.distribution}; SageMaker local mode supports FullyReplicated only.",
                "drop the option for local runs (the scripts shard FullyReplicated channels themselves)",
            )
    try:
        engine.client().images.get(spec.image)
    except docker.errors.ImageNotFound:
        raise ConfigError(
            f"The image {spec.image} is not in the local Docker engine.",
            "build it (`make build BASE=local`) or pull it; local runs never pull from a registry",
        ) from None


def stop_containers(run_dir: Path) -> int:
    """Remove every container that docker compose started for this run (e.g. after a timeout)."""
    client = engine.client()
    stopped = 0
    for container in client.containers.list(all=True, filters={"label": COMPOSE_DIR_LABEL}):
        if str(container.labels.get(COMPOSE_DIR_LABEL, "")).startswith(str(run_dir)):
            try:
                container.remove(force=True)
                stopped += 1
            except docker.errors.APIError:
                pass
    return stopped


def remove_tree(path: Path, image: str) -> None:
    """rmtree that also removes what containers wrote as root when this process is not root."""
    if not path.exists():
        return
    try:
        shutil.rmtree(path)
        return
    except PermissionError:
        pass
    engine.client().containers.run(
        image, entrypoint=["sh", "-c", "rm -rf /cleanup/* /cleanup/.[!.]* 2>/dev/null; true"],
        volumes={str(path.resolve()): {"bind": "/cleanup", "mode": "rw"}}, remove=True, network_disabled=True,
    )
    shutil.rmtree(path, ignore_errors=True)


def run_local(
    spec: JobSpec,
    runs_dir: Path = RUNS_DIR,
    python: str | None = None,
    timeout: float | None = None,
    stream: bool = True,
    keep_work: bool = False,
) -> JobResult:
    """Run `spec` in SageMaker local mode with the SDK of `python` (default: this interpreter)."""
    spec.job_name = spec.job_name or job_name_for(spec.image_name or spec.image.split("/")[-1].split(":")[0])
    spec.region = spec.region or bases.session_region() or "us-east-1"
    _check_local_inputs(spec)
    run_dir = Path(runs_dir) / spec.job_name
    if run_dir.exists():
        raise ConfigError(f"{run_dir} exists already.", "use another --job-name or remove the directory")
    run_dir.mkdir(parents=True)
    (run_dir / "spec.json").write_text(spec.to_json())
    log_path = run_dir / "log.txt"
    env = local_environment(run_dir, spec.region)
    env["PYTHONPATH"] = str(REPO)
    command = [python or sys.executable, "-m", "local_mode.driver", str(run_dir)]

    console.step(f"local run {spec.job_name}: {spec.image} x{spec.instance_count} ({spec.instance_type})")
    started = time.monotonic()
    status_override = None
    with open(log_path, "w") as log:
        # Its own process group: on a timeout the driver and the docker compose it started die together
        # (killing the driver alone leaves compose, and the containers, running).
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=REPO, text=True,
                                   bufsize=1, start_new_session=True)
        expired = threading.Event()

        def stop(reason: str) -> None:
            expired.set()
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            stop_containers(run_dir)
            log.write(f"\n[local_mode] stopped: {reason}\n")

        watchdog = threading.Timer(timeout, stop, args=(f"timeout after {timeout:.0f}s",)) if timeout else None
        if watchdog:
            watchdog.daemon = True
            watchdog.start()
        try:
            assert process.stdout is not None
            for line in process.stdout:
                log.write(artifacts.strip_ansi(line))
                if stream:
                    console.err.out(line.rstrip("\n"), highlight=False)
            process.wait()
        except KeyboardInterrupt:
            stop("interrupted")
            process.wait()
        finally:
            if watchdog:
                watchdog.cancel()
                watchdog.join()  # if it fired, let it finish removing the containers
            removed = stop_containers(run_dir)
            if removed:
                log.write(f"[local_mode] removed {removed} container(s) left behind by docker compose\n")
        if expired.is_set():
            status_override = "Stopped"
    wall = time.monotonic() - started

    driver_result = {}
    result_file = run_dir / "driver-result.json"
    if result_file.exists():
        driver_result = json.loads(result_file.read_text())
    log_text = log_path.read_text(errors="replace")
    metrics, history = artifacts.parse_metrics(log_text)
    curve_files = curves.record(history, run_dir)
    model = Path(driver_result.get("model_artifact") or run_dir / "output" / "model.tar.gz")
    output = Path(driver_result.get("output_artifact") or run_dir / "output" / "output.tar.gz")
    status = status_override or driver_result.get("status") or "Failed"
    result = JobResult(
        job_name=spec.job_name,
        mode="local",
        status=status,
        wall_seconds=round(wall, 2),
        image=spec.image,
        sdk=driver_result.get("sdk"),
        instance_count=spec.instance_count,
        failure_reason=artifacts.failure_reason(output) if status != "Completed" else None,
        error=driver_result.get("error") or (None if status == "Completed" else f"driver exited {process.returncode}"),
        metrics=metrics,
        model_artifact=str(model) if model.exists() else None,
        output_artifact=str(output) if output.exists() else None,
        run_dir=str(run_dir),
        log_path=str(log_path),
        extra={"sdk_version": driver_result.get("sdk_version"), "metric_lines": len(history), **curve_files},
    )
    (run_dir / "summary.json").write_text(json.dumps(asdict(result), indent=2, sort_keys=True))
    if not keep_work:
        try:
            remove_tree(run_dir / f"work-{spec.job_name}", spec.image)
        except (docker.errors.DockerException, ToolkitError) as exc:
            console.warn(f"could not remove the scratch directory of {run_dir}: {exc}")
    return result
