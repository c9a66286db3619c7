"""What decides whether a job works on the real prebuilt bases, checked on the faithful stand-ins
(containers/standin/, facts in containers/standin/real_bases.toml, docs/build.md compares row by row).

1. The script's own one-sentence failure reason survives the legacy sagemaker-containers toolkit of the
   XGBoost image, which overwrites /opt/ml/output/failure on every non-zero exit.
2. The legacy script-mode dispatch really happens (setup.py written, `pip install .` at job start,
   `python -m train` from /opt/ml/code) and needs no network.
"""

from __future__ import annotations

import os
import re
import tarfile
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest

from local_mode import Channel, JobSpec, run_local
from smkit import builder, engine, standin
from smkit.context import BuildContext
from smkit.paths import IN_IMAGE_MODULES, REPO

pytestmark = pytest.mark.docker
REAL_BASES = tomllib.loads((REPO / "containers" / "standin" / "real_bases.toml").read_text())
XGB_BAD_ROUND = ("Hyperparameter num_round='abc' is invalid (expected an integer); "
                 "use an integer of at least 1.")


@pytest.fixture(scope="module")
def xgboost_image(standin_xgboost, project_images) -> str:
    """The XGBoost image of images.toml on the faithful stand-in, as `make build BASE=local` builds it (in a
    scratch copy of the project)."""
    assert standin_xgboost == standin.STANDINS["xgboost"] == "smkit/standin-xgboost:3.0-5"
    return project_images["xgboost"]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3))
    y = (X[:, 0] > 0).astype(int)
    np.savetxt(root / "train.csv", np.column_stack([y, X]), delimiter=",", fmt="%.6g")
    return root


def test_bad_hyperparameter_reason_survives_the_legacy_toolkit(xgboost_image, tiny_data, tmp_path):
    """SDK local mode, a bad hyperparameter: FailureReason is the script's sentence, not the toolkit's
    `ExecuteUserScriptError: Command "... -m train --num_round abc"`."""
    spec = JobSpec(image=xgboost_image, channels=[Channel("train", str(tiny_data))],
                   hyperparameters={"num_round": "abc"})
    result = run_local(spec, runs_dir=tmp_path, stream=False, timeout=300)
    log = result.log()
    assert result.status == "Failed", log[-3000:]
    # The legacy dispatch really ran (so this is the real base's path, not sagemaker-training's).
    assert "-m pip install ." in log and "-m train --num_round abc" in log, log[-3000:]
    assert result.failure_reason == XGB_BAD_ROUND, log[-3000:]
    with tarfile.open(result.model_artifact) as archive:
        assert [m for m in archive.getmembers() if m.isfile()] == []  # no partial model


# -------------------------------------------------------------------------------------------------
# The keep-failure piece (containers/smkit_keep_failure.py), for any user script, on both toolkits

KEEP_FAILURE_BLOCK = re.compile(r"^# >>> smkit keep-failure.*?^# <<< smkit keep-failure\n", re.S | re.M)
OWN_REASON = "Own reason from the script: fix the input."
PROBE_SCRIPT = f'''\
import os, signal, sys, time
mode = sys.argv[sys.argv.index("--mode") + 1] if "--mode" in sys.argv else "ok"
if mode == "stop":  # saves on SageMaker's stop, as a checkpointing script would
    def save_and_exit(signum, frame):
        with open(os.path.join(os.environ["SM_MODEL_DIR"], "model.txt"), "w") as handle:
            handle.write("saved on SIGTERM")
        sys.exit(0)
    signal.signal(signal.SIGTERM, save_and_exit)
    print("probe: training", flush=True)
    time.sleep(120)
    sys.exit(4)
if mode == "reason":
    with open("/opt/ml/output/failure", "w") as handle:
        handle.write("{OWN_REASON}\\n")
    sys.exit(3)
if mode == "silent":
    sys.exit(3)
with open(os.path.join(os.environ["SM_MODEL_DIR"], "model.txt"), "w") as handle:
    handle.write("ok")
'''


def keep_failure_lines() -> str:
    """The block the template Dockerfile carries (every image built from it has it), exactly as it is there."""
    match = KEEP_FAILURE_BLOCK.search((REPO / "containers" / "Dockerfile").read_text())
    assert match, "containers/Dockerfile lost its `smkit keep-failure` block"
    return match.group(0)


def test_every_dockerfile_carries_the_same_keep_failure_block():
    carriers = [p for p in (REPO / "containers").rglob("Dockerfile*") if "smkit keep-failure" in p.read_text()]
    assert REPO / "containers" / "Dockerfile" in carriers  # the template: every image without its own Dockerfile
    carriers += [REPO / "tests" / "fixtures" / "tiny_xgboost" / "Dockerfile"]
    for path in carriers:
        match = KEEP_FAILURE_BLOCK.search(path.read_text())
        assert match and match.group(0) == keep_failure_lines(), f"{path} has another keep-failure block"


def probe_image(base: str, tag: str, keep_failure: bool) -> str:
    """A user script we did not write (probe.py), baked onto `base` like any derived image."""
    ctx = BuildContext(REPO)
    ctx.add_bytes("probe.py", PROBE_SCRIPT.encode())
    for module in IN_IMAGE_MODULES:
        ctx.add_file_as(module, module.name)
    ctx.add_bytes("Dockerfile", (
        "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\n" + (keep_failure_lines() if keep_failure else "")
        + "ENV SAGEMAKER_PROGRAM=probe.py\nCOPY probe.py /opt/ml/code/probe.py\nCMD [\"train\"]\n").encode())
    builder.build(ctx, dockerfile="Dockerfile", tag=tag, buildargs={"BASE_IMAGE": base}, title=tag)
    return tag


def start_job(image: str, root: Path, channels: dict[str, Path], hyperparameters: dict):
    """The image started as SageMaker starts it, one host with no network (local_mode's direct backend)."""
    from local_mode import Channel, JobSpec
    from local_mode.direct import start_direct

    spec = JobSpec(image=image, channels=[Channel(name, str(path)) for name, path in channels.items()],
                   hyperparameters=hyperparameters)
    return start_direct(spec, runs_dir=root, stream=False, keep_work=True)


def failure_of(job) -> str | None:
    path = job.output_dir() / "failure"
    return path.read_text().strip() if path.exists() else None


def run_probe(image: str, mode: str, root: Path) -> tuple[int, str | None, str, str | None]:
    """(exit code, failure reason, log, the model.txt the script wrote or None)."""
    (root / "data").mkdir(parents=True)
    (root / "data" / "x.csv").write_text("1,2\n")
    job = start_job(image, root / "job", {"train": root / "data"}, {"mode": mode})
    try:
        code = job.wait(timeout=180)
        model = job.model_dir / "model.txt"
        return code, failure_of(job), job.logs(), model.read_text() if model.exists() else None
    finally:
        job.cleanup()


@pytest.fixture(scope="module")
def probes(standin_xgboost, standin_pytorch) -> dict[str, str]:
    return {
        "legacy": probe_image(standin_xgboost, "smkit-test/keep-failure-legacy:latest", keep_failure=True),
        "legacy-bare": probe_image(standin_xgboost, "smkit-test/keep-failure-legacy-bare:latest", keep_failure=False),
        "training": probe_image(standin_pytorch, "smkit-test/keep-failure-training:latest", keep_failure=True),
        "training-bare": probe_image(standin_pytorch, "smkit-test/keep-failure-training-bare:latest", keep_failure=False),
    }


def test_legacy_toolkit_overwrites_the_reason_without_the_piece(probes, tmp_path):
    """The stand-in is faithful to the real XGBoost base: the toolkit's text replaces the script's."""
    code, failure, log, _ = run_probe(probes["legacy-bare"], "reason", tmp_path)
    assert code != 0, log[-2000:]
    assert failure and failure.startswith("ExecuteUserScriptError:") and "-m probe --mode reason" in failure, failure


@pytest.mark.parametrize("toolkit", ["legacy", "training"])
def test_keep_failure_keeps_the_scripts_reason_and_nothing_else(probes, tmp_path, toolkit):
    image = probes[toolkit]
    env = docker_env(image)
    expected_base = {"legacy": "sagemaker_xgboost_container.training:main",
                     "training": "sagemaker_pytorch_container.training:main"}[toolkit]
    assert env["SAGEMAKER_TRAINING_MODULE"] == "smkit_keep_failure:main"
    assert env["SMKIT_BASE_TRAINING_MODULE"] == expected_base

    code, failure, log, _ = run_probe(image, "reason", tmp_path / "reason")
    assert code != 0 and failure == OWN_REASON, log[-2000:]
    # A script that wrote no reason keeps the toolkit's own message (nothing is invented).
    code, failure, log, _ = run_probe(image, "silent", tmp_path / "silent")
    assert code != 0 and failure and "ExecuteUserScriptError" in failure, log[-2000:]
    # Success is untouched.
    code, failure, log, model = run_probe(image, "ok", tmp_path / "ok")
    assert code == 0 and failure is None, log[-2000:]
    assert model == "ok"


def pid1_of(container) -> str:
    return container.exec_run(["cat", "/proc/1/cmdline"]).output.replace(b"\0", b" ").decode().strip()


@pytest.mark.parametrize("probe, pid1, reaches", [
    ("legacy-bare", "/miniconda3/bin/python3 /miniconda3/bin/train", False),  # the toolkit's train, no handler
    ("training-bare", "bash -m start_with_right_hostname.sh train", False),  # the DLC's bash, train its child
    ("legacy", "/miniconda3/bin/python3 /miniconda3/bin/train", True),  # train passes it on
    ("training", "-m smkit_init bash -m start_with_right_hostname.sh train", True),  # the same line, under smkit_init
])
def test_sagemakers_stop_reaches_the_script(probes, tmp_path, probe, pid1, reaches):
    """SIGTERM to the container (StopTrainingJob, a spot interruption, `docker stop`). On both real bases as
    they are (the stand-ins keep the same PID 1: `pid1` in real_bases.toml) the signal is dropped; with the keep-failure lines of the
    template the script's handler runs and its save lands in the model."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x.csv").write_text("1,2\n")
    job = start_job(probes[probe], tmp_path / "job", {"train": tmp_path / "data"}, {"mode": "stop"})
    try:
        deadline = time.monotonic() + 120
        while "probe: training" not in job.logs() and time.monotonic() < deadline and not job.exit_codes:
            time.sleep(0.2)
        assert "probe: training" in job.logs(), job.logs()[-2000:]
        container = job.containers[job.hosts[0]]
        seen = pid1_of(container)
        assert seen.endswith(pid1), seen
        if probe.endswith("-bare"):
            real = REAL_BASES["xgboost" if probe.startswith("legacy") else "pytorch"]["pid1"]
            assert os.path.basename(seen.split()[-1 if real == "train" else 0]) == real
        container.kill(signal="SIGTERM")
        code = job.wait(timeout=20 if reaches else 4)
        if reaches:
            assert code == 0, job.logs()[-2000:]
            assert (job.model_dir / "model.txt").read_text() == "saved on SIGTERM"
        else:
            assert code is None, job.logs()[-2000:]  # still running: SageMaker would SIGKILL it after 120 s
            job.stop(grace=0)
            assert not (job.model_dir / "model.txt").exists()
    finally:
        job.cleanup()


def test_keep_failure_records_the_first_base_module_when_an_image_is_itself_a_base(probes):
    """FROM a derived image: the recorded base module stays the real base's, never this module."""
    tag = probe_image(probes["legacy"], "smkit-test/keep-failure-twice:latest", keep_failure=True)
    env = docker_env(tag)
    assert env["SMKIT_BASE_TRAINING_MODULE"] == "sagemaker_xgboost_container.training:main"
    assert env["SAGEMAKER_TRAINING_MODULE"] == "smkit_keep_failure:main"


def docker_env(image: str) -> dict[str, str]:
    config = engine.client().images.get(image).attrs["Config"]
    return dict(item.split("=", 1) for item in config.get("Env") or [])


# -------------------------------------------------------------------------------------------------
# The legacy dispatch, without network


def test_legacy_dispatch_runs_pip_install_and_python_m_without_network(xgboost_image, tiny_data, tmp_path):
    """As the real base: setup.py written into /opt/ml/code, `pip install .` there at job start, then
    `python -m train` from /opt/ml/code; all with the container's network disabled."""
    job = start_job(xgboost_image, tmp_path / "job", {"train": tiny_data}, {"num_round": 3, "nthread": 1})
    try:
        code = job.wait(timeout=300)
        container = job.containers[job.hosts[0]]
        container.reload()
        changed = {change["Path"] for change in container.diff() or []}
        network = container.attrs["HostConfig"]["NetworkMode"]
        logs = job.logs()
        model_files = sorted(p.name for p in job.model_dir.iterdir())
    finally:
        job.cleanup()
    assert network == "none"
    assert code == 0, logs[-3000:]
    assert "-m pip install ." in logs and "Successfully installed train-1.0.0" in logs, logs[-3000:]
    assert "-m train --nthread 1 --num_round 3" in logs, logs[-3000:]
    assert {"/opt/ml/code/setup.py", "/opt/ml/code/setup.cfg", "/opt/ml/code/MANIFEST.in"} <= changed, sorted(changed)
    assert model_files == ["model-metadata.json", "xgboost-model"]
