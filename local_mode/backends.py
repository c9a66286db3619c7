"""One entry point for running a job, whatever runs it:

    from local_mode import Channel, JobSpec, run
    result = run(spec, backend="direct")        # sdk (default) | direct | cloud

- sdk: SageMaker Python SDK local mode (v2 Estimator or v3 ModelTrainer, the SDK of `python`): the fidelity
  gate before the cloud. local_mode/runner.py.
- direct: the same containers started through the Docker API, the contract written by local_mode/contract.py
  (proven equal to the SDK's by tests/test_parity.py): the inner loop. local_mode/direct.py.
- cloud: the same job submitted to SageMaker and followed to its end. local_mode/cloud.py.

Every backend returns a JobResult; on SIGINT/SIGTERM/SIGHUP (with interrupt.signals_interrupt active, as the
CLI has it) or Ctrl-C it stops the job and re-raises the exception with `.result` set.
"""

from __future__ import annotations

from pathlib import Path

from local_mode.job import RUNS_DIR, JobSpec
from local_mode.result import JobResult
from smkit.errors import ConfigError

BACKENDS = ("sdk", "direct", "cloud")
DIRECT_ONLY = ("network", "mem_limit", "mounts", "command", "docker_options", "dialect")


def run(spec: JobSpec, backend: str = "sdk", *, runs_dir: Path = RUNS_DIR, timeout: float | None = None,
        stream: bool = True, keep_work: bool = False, python: str | None = None, upload_prefix: str | None = None,
        wait: bool = True, **direct_options) -> JobResult:
    """Run `spec` with `backend`. `python`: the interpreter whose SDK runs an sdk job (e.g. .venv-sdk3's);
    `upload_prefix`/`wait`: cloud only; more keyword arguments go to the direct backend (DirectJob)."""
    if backend not in BACKENDS:
        raise ConfigError(f"There is no backend {backend!r}.", f"use one of {', '.join(BACKENDS)}")
    unknown = set(direct_options) - set(DIRECT_ONLY)
    if unknown:
        raise TypeError(f"unknown option(s) {', '.join(sorted(unknown))}")
    if direct_options and backend != "direct":
        raise ConfigError(f"{', '.join(sorted(direct_options))} only apply to the direct backend.",
                          "drop them, or run with --backend direct")
    if backend == "direct":
        from local_mode.direct import run_direct

        return run_direct(spec, runs_dir=runs_dir, timeout=timeout, stream=stream, keep_work=keep_work, **direct_options)
    if backend == "cloud":
        from local_mode.cloud import run_cloud

        return run_cloud(spec, upload_prefix=upload_prefix, wait=wait, timeout=timeout)
    from local_mode.runner import run_local

    return run_local(spec, runs_dir=runs_dir, python=python, timeout=timeout, stream=stream, keep_work=keep_work)
