"""Stopping a run stops its containers, whatever runs it: SIGINT, SIGTERM or SIGHUP to the
`python -m local_mode run` process ends the job within seconds, leaves no container (and, for the direct
backend, no network) behind, keeps what the job wrote so far (log, partial output), and the summary says
the job was interrupted. The cloud backend against moto: a signal during the upload of local channels
stops it before anything is submitted. Its wait loop (StopTrainingJob on a signal) cannot be reached
against moto, whose training jobs complete the moment they are created (docs/local_mode.md).
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


def start_cli(args: list[str], signame: str, env: dict | None = None) -> subprocess.Popen:
    def dispositions() -> None:
        # SIGHUP at its default whatever the test runner has (nohup); SIGINT ignored, as a background job
        # of a non-interactive shell starts: `kill -INT` must stop the run all the same.
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_IGN if signame == "SIGINT" else signal.SIG_DFL)

    return subprocess.Popen([sys.executable, "-m", "local_mode", "run", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "200", **(env or {})},
                            preexec_fn=dispositions)


def containers_of(docker_client, run_dir: Path) -> list:
    ours = docker_client.containers.list(all=True, filters={"label": f"{RUN_DIR_LABEL}={run_dir.resolve()}"})
    compose = [c for c in docker_client.containers.list(all=True, filters={"label": COMPOSE_DIR_LABEL})
               if c.labels.get(COMPOSE_DIR_LABEL, "").startswith(str(run_dir))]
    return ours + compose


@pytest.mark.parametrize("signame", list(SIGNALS))
@pytest.mark.parametrize("backend,hosts", [("sdk", 1), ("direct", 2)])
def test_a_signal_stops_the_job_and_its_containers(backend, hosts, signame, tiny_image, tmp_path, docker_client):
    proc = start_cli(["--backend", backend, "--image", tiny_image, "--channel", f"train={SAMPLE / 'train'}",
                      "--hp", "sleep=600", "--instance-count", str(hosts), "--runs-dir", str(tmp_path), "--quiet"], signame)
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


CLOUD_IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/smkit-xgboost@sha256:" + "ab" * 32


@pytest.mark.parametrize("signame", list(SIGNALS))
def test_a_signal_during_a_cloud_upload_submits_nothing(signame, moto, tmp_path):
    import boto3

    data = tmp_path / "data"
    data.mkdir()
    for i in range(3000):  # long enough an upload that the signal lands in it
        (data / f"part-{i:05d}.csv").write_text(f"{i % 2},{i}\n")
    s3 = boto3.client("s3", region_name="us-east-1", endpoint_url=moto.url)
    s3.create_bucket(Bucket="smkit-data")
    proc = start_cli(["--backend", "cloud", "--image", CLOUD_IMAGE, "--channel", f"train={data}",
                      "--upload-prefix", "s3://smkit-data/in", "--role", "arn:aws:iam::123456789012:role/SageMakerExecution",
                      "--output-path", "s3://smkit-data/out", "--region", "us-east-1"], signame,
                     env={"AWS_ENDPOINT_URL": moto.url, "SAGEMAKER_VALIDATE_ROLE": "false"})
    uploaded = lambda: s3.list_objects_v2(Bucket="smkit-data", Prefix="in/").get("KeyCount", 0)  # noqa: E731
    try:
        assert wait_for(lambda: uploaded() >= 20 or proc.poll() is not None, timeout=120), "the upload never started"
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(SIGNALS[signame])
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 128 + SIGNALS[signame], stdout + stderr
    assert f"interrupted ({signame}) before the job started" in stderr
    assert moto.requests("CreateTrainingJob") == []
    assert uploaded() < 3000
