"""The sdk backend: run a job in SageMaker Python SDK local mode (v2 or v3) and report what happened.

Each run gets a directory (local_mode/runs/<job name>/ by default) holding its spec, the full log,
model.tar.gz and output.tar.gz, and summary.json. The SDK's scratch directories under it are removed
afterwards, root-owned files written by the containers included, and so are any containers a timeout
or a signal left running. JobResult and remove_tree are re-exported here for older imports.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import docker.errors

from local_mode import artifacts, interrupt
from local_mode.cleanup import remove_tree
from local_mode.job import RUNS_DIR, JobSpec, create_run_dir, prepare_local
from local_mode.result import JobResult
from local_mode.sdk import local_environment
from smkit import console, engine
from smkit.errors import ToolkitError
from smkit.paths import REPO

COMPOSE_DIR_LABEL = "com.docker.compose.project.working_dir"


def stop_containers(run_dir: Path) -> int:
    """Remove every container that docker compose started for this run (after a timeout or a signal)."""
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


def run_local(
    spec: JobSpec,
    runs_dir: Path = RUNS_DIR,
    python: str | None = None,
    timeout: float | None = None,
    stream: bool = True,
    keep_work: bool = False,
) -> JobResult:
    """The sdk backend: run `spec` in SageMaker local mode with the SDK of `python` (default: this
    interpreter). On SIGINT/SIGTERM/SIGHUP (interrupt.Interrupted) or Ctrl-C the job is stopped (see
    _Stopper), and the exception is re-raised with `.result` set to the stopped job's JobResult."""
    prepare_local(spec)
    run_dir = create_run_dir(runs_dir, spec)
    log_path = run_dir / "log.txt"
    env = local_environment(run_dir, spec.region)
    env["PYTHONPATH"] = str(REPO)
    command = [python or sys.executable, "-m", "local_mode.driver", str(run_dir)]

    console.step(f"local run {spec.job_name}: {spec.image} x{spec.instance_count} ({spec.instance_type})")
    started = time.monotonic()
    interrupted: BaseException | None = None
    with open(log_path, "w", buffering=1) as log:
        # Its own process group: the driver and the docker compose it started are stopped together
        # (stopping the driver alone leaves compose, and the containers, running).
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=REPO, text=True,
                                   bufsize=1, start_new_session=True)
        stopper = _Stopper(process, run_dir, log)
        watchdog = threading.Timer(timeout, stopper.stop, args=(f"timeout after {timeout:.0f}s",)) if timeout else None
        if watchdog:
            watchdog.daemon = True
            watchdog.start()
        assert process.stdout is not None
        try:
            for line in process.stdout:
                log.write(artifacts.strip_ansi(line))
                if stream:
                    console.err.out(line.rstrip("\n"), highlight=False)
        except (interrupt.Interrupted, KeyboardInterrupt) as exc:
            interrupted = exc
            # Stop in the background and keep reading: the SDK still writes while it packages.
            threading.Thread(target=stopper.stop, args=(interrupt.reason(exc),), daemon=True).start()
            for line in process.stdout:
                log.write(artifacts.strip_ansi(line))
        finally:
            process.wait()
            if watchdog:
                watchdog.cancel()
            stopper.finish()
    wall = time.monotonic() - started

    driver_result = {}
    result_file = run_dir / "driver-result.json"
    if result_file.exists():
        driver_result = json.loads(result_file.read_text())
    log_text = log_path.read_text(errors="replace")
    metrics, history = artifacts.parse_metrics(log_text)
    model = Path(driver_result.get("model_artifact") or run_dir / "output" / "model.tar.gz")
    output = Path(driver_result.get("output_artifact") or run_dir / "output" / "output.tar.gz")
    status = "Stopped" if stopper.reason else driver_result.get("status") or "Failed"
    result = JobResult(
        job_name=spec.job_name,
        mode="local",
        backend="sdk",
        status=status,
        wall_seconds=round(wall, 2),
        image=spec.image,
        sdk=driver_result.get("sdk"),
        instance_count=spec.instance_count,
        failure_reason=artifacts.failure_reason(output) if status != "Completed" else None,
        error=None if status in ("Completed", "Stopped") else driver_result.get("error") or f"driver exited {process.returncode}",
        stop_reason=stopper.reason,
        metrics=metrics,
        model_artifact=str(model) if model.exists() else None,
        output_artifact=str(output) if output.exists() else None,
        run_dir=str(run_dir),
        log_path=str(log_path),
        extra={"sdk_version": driver_result.get("sdk_version"), "metric_lines": len(history)},
    )
    result.save()
    if not keep_work:
        try:
            remove_tree(run_dir / f"work-{spec.job_name}", spec.image)
        except (docker.errors.DockerException, ToolkitError) as exc:
            console.warn(f"could not remove the scratch directory of {run_dir}: {exc}")
    if interrupted is not None:
        interrupted.result = result
        raise interrupted
    return result


class _Stopper:
    """Stops an SDK local-mode job so that it keeps what it wrote: the containers get SIGTERM (SIGKILL
    after 2 s), the driver SIGINT, so the SDK still packages model.tar.gz/output.tar.gz from what the
    containers left; whatever still runs after GRACE seconds (the driver, docker compose) is killed
    with its process group, and the containers are swept once more."""

    GRACE = 15

    def __init__(self, process: subprocess.Popen, run_dir: Path, log):
        self.process = process
        self.run_dir = run_dir
        self.log = log
        self.reason: str | None = None
        self._lock = threading.Lock()
        self._done = threading.Event()

    def stop(self, reason: str) -> None:
        with self._lock:
            if self.reason is not None:
                return
            self.reason = reason
        self.log.write(f"\n[local_mode] stopping: {reason}\n")
        try:
            os.kill(self.process.pid, signal.SIGINT)  # the driver: stop waiting, package, report
        except ProcessLookupError:
            pass
        _stop_compose_containers(self.run_dir, grace=2)
        try:
            self.process.wait(self.GRACE)
        except subprocess.TimeoutExpired:
            pass
        self._kill_group()
        self._done.set()

    def _kill_group(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def finish(self) -> None:
        """After the driver ended: wait for a stop in progress, then leave no process or container behind."""
        if self.reason is not None:
            self._done.wait(self.GRACE + 30)
        self._kill_group()  # a compose the driver left behind
        removed = stop_containers(self.run_dir)
        if removed:
            self.log.write(f"[local_mode] removed {removed} container(s) left behind by docker compose\n")


def _stop_compose_containers(run_dir: Path, grace: float) -> None:
    threads = []
    for container in engine.client().containers.list(all=True, filters={"label": COMPOSE_DIR_LABEL}):
        if str(container.labels.get(COMPOSE_DIR_LABEL, "")).startswith(str(run_dir)):
            thread = threading.Thread(target=_stop_quietly, args=(container, grace), daemon=True)
            thread.start()
            threads.append(thread)
    for thread in threads:
        thread.join()


def _stop_quietly(container, grace: float) -> None:
    try:
        container.stop(timeout=grace)
    except docker.errors.APIError:
        pass
