"""The inner loop against the real engine: `run --mount-code` runs an edited script without a build,
`build.py push` refuses the image that does not hold it, and `run --watch` re-runs on real file edits
(restarting a run still going, showing a syntax error, recovering on the next good save).

Everything works on a scratch project (SMKIT_PROJECT) with a small script of its own; the checkout's
build/ and local_mode/runs/ are never touched."""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest

from smkit.standin import STANDINS
from tests.servers import free_port

pytestmark = pytest.mark.docker
REPO = Path(__file__).resolve().parent.parent

SCRIPT = """\
import json, os, time
VERSION = {version}
DELAY = {delay}
print(f"script version {{VERSION}}", flush=True)
# Every host holds until all have started (the model directory is shared): the first host to exit stops
# the others, as in SageMaker local mode, and each host's line must be in the log.
hosts = json.loads(os.environ.get("SM_HOSTS") or "[1]")
with open(f"/opt/ml/model/started-{{os.environ.get('SM_CURRENT_HOST', 'algo-1')}}", "w") as handle:
    handle.write(str(VERSION))
deadline = time.time() + 120
while len([n for n in os.listdir("/opt/ml/model") if n.startswith("started-")]) < len(hosts) and time.time() < deadline:
    time.sleep(0.1)
time.sleep(DELAY)
print(f"[epoch 1] validation:score={{VERSION / 10}}", flush=True)
with open("/opt/ml/model/model.txt", "w") as handle:
    handle.write(str(VERSION))
# What the legacy toolkit of the real XGBoost base does at job start (it writes setup.py there): the
# mounted code directory must be writable, and what lands in it must stay out of the working tree.
with open("/opt/ml/code/written-by-the-job.txt", "w") as handle:
    handle.write(str(VERSION))
"""


def write_script(project: Path, version: int, delay: float = 0, extra: str = "") -> None:
    path = project / "train_scripts" / "xgboost" / "train.py"
    path.write_text(SCRIPT.format(version=version, delay=delay) + extra)


def env_for(project: Path) -> dict:
    return dict(os.environ, SMKIT_PROJECT=str(project), COLUMNS="200", PYTHONUNBUFFERED="1")


def cli(project: Path, module_args: list[str], check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *module_args], capture_output=True, text=True, env=env_for(project),
                          cwd=REPO, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(module_args)} exited {proc.returncode}:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def build(project: Path) -> dict:
    cli(project, [str(REPO / "build.py"), "build", "--image", "xgboost", "--base", "local"], timeout=900)
    return json.loads((project / "build" / "images.json").read_text())["images"]["xgboost"]


def tree_files(project: Path) -> dict[str, bytes]:
    return {str(p.relative_to(project)): p.read_bytes() for p in (project / "train_scripts").rglob("*") if p.is_file()}


def leftovers(docker_client, runs: Path) -> list[str]:
    """Containers and networks of any run under `runs` (the direct backend labels both with the run dir)."""
    found = [c.name for c in docker_client.containers.list(all=True, filters={"label": "smkit.run-dir"})
             if c.labels.get("smkit.run-dir", "").startswith(str(runs.resolve()))]
    found += [n.name for n in docker_client.networks.list(filters={"label": "smkit.run-dir"})
              if n.attrs.get("Labels", {}).get("smkit.run-dir", "").startswith(str(runs.resolve()))]
    return found


@pytest.fixture(scope="module")
def project(tmp_path_factory, standin_xgboost) -> Path:
    root = tmp_path_factory.mktemp("dev-loop") / "project"
    root.mkdir()
    shutil.copy(REPO / "images.toml", root / "images.toml")
    shutil.copy(REPO / ".dockerignore", root / ".dockerignore")
    shutil.copytree(REPO / "containers" / "xgboost", root / "containers" / "xgboost")
    shutil.copytree(REPO / "train_scripts" / "common", root / "train_scripts" / "common",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (root / "train_scripts" / "xgboost").mkdir(parents=True)
    write_script(root, 1)
    (root / "data" / "train").mkdir(parents=True)
    (root / "data" / "train" / "rows.csv").write_text("1,2\n")
    return root


@pytest.fixture(scope="module")
def built(project) -> dict:
    return build(project)


def run_args(project: Path, runs: Path, *extra: str) -> list[str]:
    return ["-m", "local_mode", "run", "--image", "xgboost", "--channel", f"train={project / 'data' / 'train'}",
            "--runs-dir", str(runs), *extra]


def test_mount_code_runs_the_edit_without_a_build_and_push_refuses_the_stale_image(project, built, docker_client, tmp_path):
    runs = tmp_path / "runs"
    image = docker_client.images.get(built["local_ref"])
    labels_before = dict(image.labels)

    same = cli(project, run_args(project, runs, "--backend", "direct", "--mount-code"))
    assert "script version 1" in same.stderr
    assert "the image holds the same code" in same.stdout and "does not hold" not in same.stdout

    write_script(project, 2)
    before = tree_files(project)
    edited = cli(project, run_args(project, runs, "--backend", "direct", "--mount-code", "--instance-count", "2"))
    # Both hosts ran the edited script (each from its own copy), with no build in between.
    hosts = set(re.findall(r"^(algo-\d-\w+) \| script version 2$", edited.stderr, re.M))
    assert len(hosts) == 2, edited.stderr[-3000:]
    assert "script version 1" not in edited.stderr
    assert re.search(r"^code\s+mounted from the working tree .*the image "
                     + re.escape(built["local_ref"]) + r" does not hold this code yet: rebuild \(`make build IMAGE=xgboost`\)",
                     edited.stdout, re.M), edited.stdout
    newest = max(runs.glob("*/summary.json"), key=lambda p: p.stat().st_mtime)
    summary = json.loads(newest.read_text())
    assert summary["status"] == "Completed" and summary["extra"]["code"]["image_holds_it"] is False
    with tarfile.open(summary["model_artifact"]) as archive:
        assert archive.extractfile("model.txt").read() == b"2"
    # The image is as it was built, the working tree as the user left it (nothing the job wrote in
    # /opt/ml/code landed there), and no container or network is left.
    image = docker_client.images.get(built["local_ref"])
    assert image.id == built["image_id"] and image.labels == labels_before
    assert tree_files(project) == before and not list(project.rglob("written-by-the-job.txt"))
    assert leftovers(docker_client, runs) == []

    refused = cli(project, [str(REPO / "build.py"), "push", "--image", "xgboost", "--registry",
                            f"127.0.0.1:{free_port()}/team", "--quiet"], check=False)
    assert refused.returncode != 0
    assert f"The image {built['local_ref']} does not hold the working tree's xgboost code" in refused.stderr
    assert "fix: rebuild it first: `make build IMAGE=xgboost`" in refused.stderr
    assert "Traceback" not in refused.stdout + refused.stderr

    # Rebuilt, the same push gets past the check (and fails only at the closed port it was given).
    rebuilt = build(project)
    assert rebuilt["image_id"] != built["image_id"]
    again = cli(project, [str(REPO / "build.py"), "push", "--image", "xgboost", "--registry",
                          f"127.0.0.1:{free_port()}/team", "--quiet", "--retries", "0"], check=False)
    assert "does not hold" not in again.stderr and "cannot be reached" in again.stderr, again.stderr
    write_script(project, 1)


def test_mount_code_and_watch_are_refused_where_they_cannot_work(project, tmp_path):
    runs = tmp_path / "runs"
    sdk = cli(project, run_args(project, runs, "--mount-code"), check=False)
    assert sdk.returncode == 2 and "--mount-code applies to the direct backend only" in sdk.stderr
    watch = cli(project, run_args(project, runs, "--watch", "--backend", "sdk"), check=False)
    assert watch.returncode == 2 and "--watch runs the direct backend, not sdk" in watch.stderr
    ref = cli(project, ["-m", "local_mode", "run", "--image", STANDINS["xgboost"], "--backend", "direct",
                        "--mount-code", "--channel", f"train={project / 'data' / 'train'}", "--runs-dir", str(runs)],
              check=False)
    assert ref.returncode == 2 and "--mount-code needs an image of images.toml" in ref.stderr and "fix:" in ref.stderr
    assert not runs.exists()


class Watcher:
    """`python -m local_mode run --watch` as a user starts it, its output read line by line."""

    def __init__(self, project: Path, runs: Path):
        self.proc = subprocess.Popen([sys.executable, *run_args(project, runs, "--watch")], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, env=env_for(project), cwd=REPO)
        self.lines: queue.Queue = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def expect(self, pattern: str, timeout: float = 180) -> str:
        """Wait for a line matching `pattern` (after those already matched)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=1)
            except queue.Empty:
                continue
            if line is None:
                break
            self.seen.append(line)
            if re.search(pattern, line):
                return line
        raise AssertionError(f"no line matching {pattern!r}; output so far:\n" + "\n".join(self.seen[-80:]))

    def output(self) -> str:
        return "\n".join(self.seen)


def test_watch_reruns_on_save_restarts_a_running_job_and_recovers_from_a_syntax_error(project, built, docker_client, tmp_path):
    runs = tmp_path / "runs"
    write_script(project, 1)
    watcher = Watcher(project, runs)
    try:
        watcher.expect(r"^watch: run 1 Completed$")
        watcher.expect(r"^  validation:score  0\.1$")
        watcher.expect(r"^watch: waiting for the next save")

        # A slow version, and a second save while it runs: that run is stopped, not waited for.
        write_script(project, 2, delay=600)
        watcher.expect(r"^watch: run 2 starting$")
        watcher.expect(r"\| script version 2$")
        write_script(project, 3)
        watcher.expect(r"^watch: the code changed during run 2: stopping it$")
        watcher.expect(r"^watch: run 2 Stopped \(code changed\): starting again$")
        watcher.expect(r"^watch: run 3 Completed$")
        watcher.expect(r"^watch: metrics of run 3 against run 1:$")
        watcher.expect(r"^  validation:score  0\.1 -> 0\.3  \(\+0\.2\)$")

        # A syntax error: the failure is shown and the watch goes on.
        write_script(project, 4, extra="def broken(:\n")
        watcher.expect(r"^watch: run 4 Failed$")
        assert "SyntaxError" in watcher.output()
        watcher.expect(r"^watch: waiting for the next save")
        write_script(project, 5)
        watcher.expect(r"^watch: run 5 Completed$")
        watcher.expect(r"^watch: metrics of run 5 against run 3:$")
        watcher.expect(r"^  validation:score  0\.3 -> 0\.5  \(\+0\.2\)$")
        watcher.expect(r"^watch: waiting for the next save")

        # Ctrl-C during a run ends the watch and stops that run's containers.
        write_script(project, 6, delay=600)
        watcher.expect(r"\| script version 6$")
        watcher.proc.send_signal(signal.SIGINT)
        assert watcher.proc.wait(timeout=120) == 0
        watcher.expect(r"^watch: ended \(interrupted \(SIGINT\)\) after 6 run\(s\)$", timeout=10)
    finally:
        if watcher.proc.poll() is None:
            watcher.proc.kill()
        write_script(project, 1)
    assert leftovers(docker_client, runs) == []
    statuses = {}
    for path in runs.glob("*/summary.json"):
        summary = json.loads(path.read_text())
        statuses[summary["job_name"]] = (summary["status"], summary.get("stop_reason"))
    assert sorted(statuses.values(), key=str) == sorted([
        ("Completed", None), ("Stopped", "code changed"), ("Completed", None), ("Failed", None), ("Completed", None),
        ("Stopped", "interrupted (SIGINT)")], key=str), statuses


def test_sigterm_ends_the_watch_and_stops_the_running_job(project, built, docker_client, tmp_path):
    runs = tmp_path / "runs"
    write_script(project, 8, delay=600)
    watcher = Watcher(project, runs)
    try:
        watcher.expect(r"\| script version 8$")
        watcher.proc.send_signal(signal.SIGTERM)  # what `timeout(1)` or a CI job's cancel sends
        assert watcher.proc.wait(timeout=120) == 128 + signal.SIGTERM
        watcher.expect(r"^watch: ended \(interrupted \(SIGTERM\)\) after 1 run\(s\)$", timeout=10)
    finally:
        if watcher.proc.poll() is None:
            watcher.proc.kill()
        write_script(project, 1)
    assert leftovers(docker_client, runs) == []
    (summary,) = [json.loads(p.read_text()) for p in runs.glob("*/summary.json")]
    assert summary["status"] == "Stopped" and summary["stop_reason"] == "interrupted (SIGTERM)"
