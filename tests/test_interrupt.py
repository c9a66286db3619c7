"""Stopping a run stops its containers, whatever runs it: SIGINT, SIGTERM or SIGHUP to the
`python -m local_mode run` process ends the job within seconds, leaves no container (and, for the direct
backend, no network) behind, keeps what the job wrote so far (log, partial output), and the summary says
the job was interrupted. The cloud backend: see docs/local_mode.md (moto has no running jobs to stop).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from local_mode.cleanup import RUN_DIR_LABEL
from local_mode.runner import COMPOSE_DIR_LABEL
from tests.polling import wait_for

pytestmark = pytest.mark.docker
REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "local_mode" / "sample_data" / "xgboost"
SIGNALS = {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM, "SIGHUP": signal.SIGHUP}


def start_cli(backend: str, image: str, runs: Path, signame: str, hosts: int) -> subprocess.Popen:
    def dispositions() -> None:
        # SIGHUP at its default whatever the test runner has (nohup); SIGINT ignored, as a background job
        # of a non-interactive shell starts: `kill -INT` must stop the run all the same.
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_IGN if signame == "SIGINT" else signal.SIG_DFL)

    command = [sys.executable, "-m", "local_mode", "run", "--backend", backend, "--image", image,
               "--channel", f"train={SAMPLE / 'train'}", "--hp", "sleep=600", "--instance-count", str(hosts),
               "--runs-dir", str(runs), "--quiet"]
    return subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "COLUMNS": "200"}, preexec_fn=dispositions)


def containers_of(docker_client, run_dir: Path) -> list:
    ours = docker_client.containers.list(all=True, filters={"label": f"{RUN_DIR_LABEL}={run_dir.resolve()}"})
    compose = [c for c in docker_client.containers.list(all=True, filters={"label": COMPOSE_DIR_LABEL})
               if c.labels.get(COMPOSE_DIR_LABEL, "").startswith(str(run_dir))]
    return ours + compose


@pytest.mark.parametrize("signame", list(SIGNALS))
@pytest.mark.parametrize("backend,hosts", [("sdk", 1), ("direct", 2)])
def test_a_signal_stops_the_job_and_its_containers(backend, hosts, signame, tiny_image, tmp_path, docker_client):
    proc = start_cli(backend, tiny_image, tmp_path, signame, hosts)
    try:
        # Every host's script is running (it prints its host, writes output/data/progress.txt and sleeps).
        def running() -> bool:
            logs = list(tmp_path.glob("*/log.txt"))
            return bool(logs) and logs[0].read_text(errors="replace").count("tiny: host") == hosts
        assert wait_for(lambda: running() or proc.poll() is not None, timeout=240, interval=0.3), "the job never started"
        assert proc.poll() is None, proc.communicate()
        (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
        assert len([c for c in containers_of(docker_client, run_dir) if c.status == "running"]) == hosts
        if backend == "direct":
            assert docker_client.networks.list(filters={"label": f"{RUN_DIR_LABEL}={run_dir.resolve()}"})

        signalled = time.monotonic()
        proc.send_signal(SIGNALS[signame])  # to the CLI process alone, not its group
        stdout, stderr = proc.communicate(timeout=60)
        stopped_in = time.monotonic() - signalled
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()

    assert proc.returncode == 128 + SIGNALS[signame], stdout + stderr
    assert stopped_in < 30, f"took {stopped_in:.1f}s to stop"
    assert f"Stopped (interrupted ({signame}))" in stdout, stdout + stderr
    assert "driver exited" not in stdout
    # Nothing left running or lying around: containers, the direct backend's network, the SDK's scratch.
    assert containers_of(docker_client, run_dir) == []
    assert docker_client.networks.list(filters={"label": f"{RUN_DIR_LABEL}={run_dir.resolve()}"}) == []
    assert not list(run_dir.glob("work*"))
    # What the job wrote so far is kept: its log, its partial output, and the summary.
    assert "tiny: host" in (run_dir / "log.txt").read_text()
    with tarfile.open(run_dir / "output" / "output.tar.gz") as archive:
        assert "data/progress.txt" in archive.getnames()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "Stopped" and summary["stop_reason"] == f"interrupted ({signame})"
    assert summary["backend"] == backend
