"""Inside the job, with the real engine: `run --shell` through a pseudo-terminal, `run --exec`, `run --debug`
with a real Debug Adapter Protocol client, the docker run options observed from inside the container, and
`check IMAGE` on good and deliberately broken images.

Every run writes into a scratch --runs-dir, never the checkout's local_mode/runs; images get i16 tags.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from local_mode import inside, runtime
from local_mode.check import BY_ID, ImageCheck
from local_mode.job import Channel, JobSpec, job_name_for
from local_mode.runtime import RuntimeOptions
from smkit.errors import ConfigError
from tests.dap import connect_and_initialize

pytestmark = pytest.mark.docker
REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "check"
SAMPLE = REPO / "local_mode" / "sample_data"
PY = sys.executable


def build(context: Path, tag: str, base: str, **buildargs) -> str:
    from smkit import builder
    from smkit.context import BuildContext

    ctx = BuildContext(context)
    ctx.add(".")
    builder.build(ctx, dockerfile="Dockerfile", tag=tag, buildargs={"BASE_IMAGE": base, **buildargs}, title=tag)
    return tag


@pytest.fixture(scope="module")
def tutorial(standin_xgboost) -> str:
    return build(FIXTURES / "tutorial", "smkit-test/i16-tutorial:latest", standin_xgboost)


@pytest.fixture(scope="module")
def tutorial_from_init(standin_xgboost, tmp_path_factory) -> str:
    """The same tutorial script as a user brings it: `init tut --from train.py`, then `build` (the template)."""
    from tests.projects import built_refs, copy_project, run_build_py

    project = copy_project(tmp_path_factory.mktemp("tutorial-project"))
    run_build_py(project, "init", "tut", "--framework", "xgboost", "--from", str(FIXTURES / "tutorial" / "train.py"))
    run_build_py(project, "build", "--base", "local", "--image", "tut")
    return built_refs(project)["tut"]


@pytest.fixture(scope="module")
def byoc(standin_xgboost):
    """The bring-your-own-container fixture, built on demand per DEFECT (none: honours every rule)."""
    built = {}

    def get(defect: str = "none") -> str:
        if defect not in built:
            built[defect] = build(FIXTURES / "byoc", f"smkit-test/i16-byoc:{defect}", standin_xgboost, DEFECT=defect)
        return built[defect]

    return get


@pytest.fixture
def runs(tmp_path) -> Path:
    path = tmp_path / "runs"
    path.mkdir()
    return path


def cli(*args: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "local_mode", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, **kwargs)


def leftovers(image: str) -> list[str]:
    from smkit import engine

    return [c.name for c in engine.client().containers.list(all=True, filters={"label": "smkit.job"})
            if image in (c.image.tags or [])]


# ---- run --shell / --exec ---------------------------------------------------------------------------

def test_shell_in_a_pseudo_terminal_shows_the_jobs_layout(tutorial, runs):
    """Typed into a real terminal: the channel, the hyperparameters file, then `exit`."""
    argv = [PY, "-m", "local_mode", "run", "--image", tutorial, "--channel", f"train={SAMPLE / 'xgboost' / 'train'}",
            "--hp", "num_round=3", "--runs-dir", str(runs), "--shell"]
    pid, fd = pty.fork()
    if pid == 0:  # the child: the CLI, its stdin/stdout a terminal
        os.chdir(REPO)
        os.execv(PY, argv)
    output = b""

    def read_until(pattern: bytes, timeout: float) -> bool:
        nonlocal output
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if re.search(pattern, output):
                return True
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:
                    return bool(re.search(pattern, output))
                if not chunk:
                    break
                output += chunk
        return bool(re.search(pattern, output))

    try:
        assert read_until(rb"configuration:", 120), output.decode(errors="replace")
        assert read_until(rb"[#$] $", 30), output.decode(errors="replace")  # the prompt
        os.write(fd, b"ls $SM_CHANNEL_TRAIN; cat /opt/ml/input/config/hyperparameters.json; echo; exit\n")
        read_until(rb"\Zx", 30)  # until the CLI closes the terminal
    finally:
        _, status = os.waitpid(pid, 0)
    text = output.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 0, text
    assert "train.csv" in text
    assert '{"num_round": "3"}' in text  # SDK v2's form: every value a string
    # the commands to run by hand, as the image's toolkit (sagemaker-training) builds them
    assert "the whole job:  train" in text
    # sagemaker-training: `python train.py ...`; the legacy sagemaker-containers: `python -m train ...`
    assert re.search(r"the script:\s+cd /opt/ml/code && \S*python3? (train\.py|-m train) --num_round 3", text), text
    assert leftovers(tutorial) == [] and list(runs.iterdir()) == []


def test_exec_sees_the_job_environment_and_returns_its_exit_code(tutorial, runs):
    done = cli("run", "--image", tutorial, "--channel", f"train={SAMPLE / 'xgboost' / 'train'}", "--hp", "eta=0.5",
               "--env", "EXTRA=from-the-cli", "--runs-dir", str(runs),
               "--exec", 'echo "$SM_CHANNEL_TRAIN|$SM_HP_ETA|$SM_MODEL_DIR|$EXTRA|$(pwd)"; ls /opt/ml/input/config; exit 7')
    assert done.returncode == 7, done.stderr
    assert "/opt/ml/input/data/train|0.5|/opt/ml/model|from-the-cli|/opt/ml/code" in done.stdout
    assert {"hyperparameters.json", "inputdataconfig.json", "resourceconfig.json"} <= set(done.stdout.split())
    assert leftovers(tutorial) == []


def test_exec_stopped_by_sigterm_leaves_no_container(tutorial, runs):
    """A CI timeout's SIGTERM to the CLI: the container goes with it."""
    from smkit import engine

    process = subprocess.Popen([PY, "-m", "local_mode", "run", "--image", tutorial, "--channel",
                                f"train={SAMPLE / 'xgboost' / 'train'}", "--runs-dir", str(runs), "--exec", "sleep 120"],
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any(
                c.status == "running" for c in engine.client().containers.list(filters={"label": "smkit.job"})
                if tutorial in (c.image.tags or [])):
            time.sleep(0.3)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 128 + signal.SIGTERM, err
    assert "interrupted (SIGTERM)" in err
    assert leftovers(tutorial) == [] and list(runs.iterdir()) == []


def test_exec_two_hosts_shows_both_hosts(tutorial, runs):
    done = cli("run", "--image", tutorial, "--channel", f"train={SAMPLE / 'xgboost' / 'train'}", "--instance-count", "2",
               "--sdk", "v3", "--runs-dir", str(runs), "--exec", "cat /opt/ml/input/config/resourceconfig.json")
    assert done.returncode == 0, done.stderr
    config = json.loads(done.stdout.strip().splitlines()[-1])
    assert config["hosts"] == ["algo-1", "algo-2"] and config["current_host"] == "algo-1"


# ---- run --debug ------------------------------------------------------------------------------------

def test_debug_with_a_real_debugpy_client(tutorial, runs):
    """Attach, break in the script, read a local variable, continue: the job then completes."""
    port = inside.free_port()
    script_dir = FIXTURES / "tutorial"
    line = next(i for i, text in enumerate((script_dir / "train.py").read_text().splitlines(), 1) if "DMatrix" in text)
    process = subprocess.Popen(
        [PY, "-m", "local_mode", "run", "--image", tutorial, "--channel", f"train={SAMPLE / 'xgboost' / 'train'}",
         "--hp", "num_round=4", "--runs-dir", str(runs), "--debug", "--debug-port", str(port), "--code-dir", str(script_dir)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        client, capabilities = connect_and_initialize("127.0.0.1", port, timeout=180)
        assert capabilities.get("supportsConfigurationDoneRequest")
        attach = client.send("attach", justMyCode=True,
                             pathMappings=[{"localRoot": str(script_dir), "remoteRoot": "/opt/ml/code"}])
        client.wait_event("initialized")
        breakpoints = client.request("setBreakpoints", source={"path": str(script_dir / "train.py")},
                                     breakpoints=[{"line": line}])["breakpoints"]
        assert breakpoints[0]["verified"], breakpoints
        client.request("configurationDone")
        client.wait_response(attach)
        stopped = client.wait_event("stopped", timeout=120)
        assert stopped["reason"] == "breakpoint"
        frame = client.request("stackTrace", threadId=stopped["threadId"])["stackFrames"][0]
        assert frame["source"]["path"] == str(script_dir / "train.py") and frame["line"] == line  # mapped back
        scope = client.request("scopes", frameId=frame["id"])["scopes"][0]
        variables = {v["name"]: v for v in client.request("variables", variablesReference=scope["variablesReference"])["variables"]}
        assert "train.csv" in variables["files"]["value"]
        namespace = client.request("variables", variablesReference=variables["args"]["variablesReference"])["variables"]
        assert {v["name"]: v["value"] for v in namespace}["num_round"] == "4"
        client.request("continue", threadId=stopped["threadId"])
        client.close()
        out, err = process.communicate(timeout=180)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.communicate(timeout=60)
    assert process.returncode == 0, err[-3000:]
    launch = json.loads(out[out.index("{"):out.index("}\n", out.index('"justMyCode"')) + 1])  # the printed VS Code config
    assert launch["connect"] == {"host": "127.0.0.1", "port": port}
    assert launch["pathMappings"] == [{"localRoot": str(script_dir), "remoteRoot": "/opt/ml/code"}]
    assert "Completed" in out + err and "debugger attached" in err
    assert leftovers(tutorial) == []


def test_debug_hook_listens_only_in_the_users_program(monkeypatch):
    """sitecustomize picks the process running SAGEMAKER_PROGRAM, as `python train.py` or `python -m train`."""
    import importlib.util

    path = inside.INCONTAINER / "debug" / "sitecustomize.py"
    spec = importlib.util.spec_from_file_location("smkit_debug_hook", path)
    hook = importlib.util.module_from_spec(spec)
    monkeypatch.delenv("SAGEMAKER_PROGRAM", raising=False)
    monkeypatch.delenv("SMKIT_DEBUG_PROGRAM", raising=False)
    spec.loader.exec_module(hook)  # no program: a no-op (and it chained to this Python's own sitecustomize)
    cases = {
        ("/usr/bin/python3", "--", "train.py", "--eta", "0.1"): True,  # sagemaker-training 5
        ("/usr/bin/python3", "train.py"): True,
        ("/miniconda3/bin/python3", "-m", "train", "--num_round", "3"): True,  # sagemaker-containers (legacy)
        ("/usr/bin/python3", "-u", "/opt/ml/code/train.py"): True,  # torchrun's workers
        ("/usr/bin/python3", "/usr/local/bin/train"): False,  # the toolkit itself
        ("/usr/bin/python3", "-m", "pip", "install", "."): False,
        ("/usr/bin/python3", "-m", "debugpy.adapter"): False,
        ("/usr/bin/python3", "other.py"): False,
    }
    for argv, expected in cases.items():
        monkeypatch.setattr(sys, "orig_argv", list(argv), raising=False)
        assert hook._is_user_program("train.py") is expected, argv


# ---- docker run options -----------------------------------------------------------------------------

PROBE = ("df -k /dev/shm | tail -1 | awk '{print \"shm=\" $2}'; "
         "echo memory=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max); "
         "echo cpu=$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us 2>/dev/null || cut -d' ' -f1 /sys/fs/cgroup/cpu.max); "
         "echo nets=$(ls /sys/class/net | tr '\\n' ,); echo extra=$EXTRA")


def probe(output: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in output.splitlines() if re.match(r"^(shm|memory|cpu|nets|extra)=", line))


def test_instance_type_shm_size_and_env_are_seen_inside(byoc, runs):
    done = cli("run", "--image", byoc(), "--channel", f"train={SAMPLE / 'xgboost' / 'train'}", "--runs-dir", str(runs),
               "--instance-type", "ml.m5.large", "--shm-size", "300m", "--env", "EXTRA=yes", "--exec", PROBE)
    assert done.returncode == 0, done.stderr
    seen = probe(done.stdout)
    assert int(seen["shm"]) == 300 * 1024
    assert int(seen["memory"]) == 8 * 2**30  # ml.m5.large: 8 GiB
    assert int(seen["cpu"]) == 2 * 100000  # 2 vCPUs (CFS quota of a 100 ms period)
    assert seen["extra"] == "yes"
    assert "rehearsing ml.m5.large: 2 vCPUs, 8 GiB" in done.stderr
    assert seen["nets"] == "lo,"  # no network by default


def test_memory_and_cpus_win_over_the_instance_type_and_host_network(byoc, runs):
    done = cli("run", "--image", byoc(), "--channel", f"train={SAMPLE / 'xgboost' / 'train'}", "--runs-dir", str(runs),
               "--instance-type", "ml.m5.xlarge", "--memory", "1g", "--cpus", "0.5", "--network", "host", "--exec", PROBE)
    assert done.returncode == 0, done.stderr
    seen = probe(done.stdout)
    assert int(seen["memory"]) == 2**30 and int(seen["cpu"]) == 50000
    host_nets = sorted(os.listdir("/sys/class/net"))
    assert sorted(filter(None, seen["nets"].split(","))) == host_nets  # the host's own interfaces


def test_publish_reaches_a_port_inside(byoc, runs):
    port = inside.free_port()
    server = ("python3 -c \"import socket; s = socket.socket(); s.bind(('0.0.0.0', 8000)); s.listen(1); "
              "c, _ = s.accept(); c.sendall(b'hello from the job'); c.close()\"")
    process = subprocess.Popen([PY, "-m", "local_mode", "run", "--image", byoc(), "--channel",
                                f"train={SAMPLE / 'xgboost' / 'train'}", "--runs-dir", str(runs), "--network",
                                "--publish", f"127.0.0.1:{port}:8000", "--exec", server],
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    received = b""
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and not received:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                    received = sock.recv(100)
            except OSError:
                pass
            if not received:
                time.sleep(0.5)
        process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert received == b"hello from the job"
    assert process.returncode == 0


def test_gpus_reach_the_docker_api_as_device_requests(byoc, tmp_path):
    """No GPU here: the request the Docker API received, read back from the created container."""
    from local_mode.job import create_run_dir, prepare_local

    for gpus, expected in (("all", {"Count": -1, "DeviceIDs": []}), ("0,2", {"Count": 0, "DeviceIDs": ["0", "2"]})):
        spec = JobSpec(image=byoc(), channels=[Channel("train", str(SAMPLE / "xgboost" / "train"))],
                       job_name=job_name_for("gpus"), instance_type="local_gpu")
        prepare_local(spec)
        options = RuntimeOptions(gpus=runtime.parse_gpus(gpus)).docker_options()
        job = inside._CreatedOnly(spec, create_run_dir(tmp_path, spec), docker_options=options, stream=False)
        try:
            job.start()  # created, not started: there is no GPU to start it with
            container = job.containers[job.hosts[0]]
            container.reload()
            requests = container.attrs["HostConfig"]["DeviceRequests"]
        finally:
            job.cleanup()
        assert len(requests) == 1 and requests[0]["Capabilities"] == [["gpu"]]
        assert {k: requests[0][k] for k in ("Count", "DeviceIDs")} == expected


def test_sdk_backend_takes_what_the_sdk_allows_and_refuses_the_rest():
    v2 = RuntimeOptions(shm_size="1g", memory="2g", cpus=1.5, publish=["6006:6006"]).sdk_container_config(2, 1)
    assert v2 == {"shm_size": "1g", "mem_limit": "2g", "cpus": 1.5, "ports": ["6006:6006"]}
    refusals = [
        (RuntimeOptions(network_host=True), 2, 1, "--network host"),
        (RuntimeOptions(gpus="0"), 2, 1, "--gpus 0"),
        (RuntimeOptions(publish=["6006:6006"]), 2, 2, "--publish with more than one host"),
        (RuntimeOptions(shm_size="1g"), 3, 1, "--shm-size (SDK v3"),
    ]
    for options, major, count, named in refusals:
        with pytest.raises(ConfigError) as refused:
            options.sdk_container_config(major, count)
        assert named in refused.value.what and "--backend direct" in refused.value.fix
    assert RuntimeOptions(gpus="all").sdk_container_config(3, 1) == {}  # local_gpu: all GPUs, both SDKs


def test_sdk_v2_runs_with_container_config(byoc, runs):
    """SDK v2 local mode merges local.container_config into its compose file: the limits reach the container."""
    done = cli("run", "--image", byoc(), "--channel", f"train={SAMPLE / 'xgboost' / 'train'}", "--runs-dir", str(runs),
               "--backend", "sdk", "--sdk", "v2", "--shm-size", "200m", "--memory", "1g", "--cpus", "1")
    assert done.returncode == 0, done.stderr[-3000:]
    limits = re.search(r"byoc: limits shm=(\d+) memory=(\d+) cpu=(\S+)", done.stderr + done.stdout)
    assert limits, done.stderr[-3000:]
    assert int(limits.group(1)) == 200 * 2**20 and int(limits.group(2)) == 2**30 and limits.group(3) in ("100000", "100000 100000")


def test_cli_refusals_name_the_fix(byoc, runs):
    channel = f"train={SAMPLE / 'xgboost' / 'train'}"
    done = cli("run", "--image", byoc(), "--channel", channel, "--runs-dir", str(runs), "--sdk", "v3", "--shm-size", "1g",
               "--dry-run")
    assert done.returncode == 2 and "SDK v3 local mode cannot pass --shm-size" in done.stderr and "--backend direct" in done.stderr
    done = cli("run", "--image", byoc(), "--channel", channel, "--runs-dir", str(runs), "--instance-type", "ml.x9.huge",
               "--backend", "direct", "--dry-run")
    assert done.returncode == 2 and "ml.x9.huge" in done.stderr and "--memory 8g --cpus 2" in done.stderr


# ---- check IMAGE ------------------------------------------------------------------------------------

def run_check(image: str, *extra: str, report: Path | None = None) -> subprocess.CompletedProcess:
    args = [PY, "build.py", "check", image, "--grace", "15", *extra] + (["--report", str(report)] if report else [])
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=900)


def outcome(done: subprocess.CompletedProcess) -> dict[str, str]:
    return {m.group(2): m.group(1) for m in re.finditer(r"^(PASS|FAIL|----) (\S+)", done.stdout, re.M)}


def test_check_passes_an_image_that_honours_the_contract(byoc, tmp_path):
    report = tmp_path / "report.json"
    done = run_check(byoc(), report=report)
    assert done.returncode == 0, done.stdout
    assert outcome(done) == {check: "PASS" for check in BY_ID}
    data = json.loads(report.read_text())
    assert data["ok"] and [c["id"] for c in data["checks"]] == list(BY_ID)


@pytest.mark.parametrize("defect, failed", [
    ("no-train", "train"),
    ("ignores-sigterm", "sigterm"),
    ("model-elsewhere", "model"),
    ("needs-network", "offline"),
])
def test_check_names_what_a_broken_image_breaks(byoc, tmp_path, defect, failed):
    report = tmp_path / "report.md"
    done = run_check(byoc(defect), report=report)
    assert done.returncode == 1, done.stdout
    results = outcome(done)
    assert results[failed] == "FAIL", done.stdout
    # nothing else is blamed: the other checks pass, or were not run because this one failed first
    assert {k for k, v in results.items() if v == "FAIL"} == {failed} | ({"completes"} if defect == "needs-network" else set())
    row = next(line for line in report.read_text().splitlines() if line.startswith(f"| {failed}: "))
    assert "| FAIL |" in row and report.read_text().count("| FAIL |") == len({k for k, v in results.items() if v == "FAIL"})
    assert "fix:" in done.stdout


def test_check_tutorial_and_reference_images(tutorial, tutorial_from_init, reference_images, tmp_path):
    """A plain tutorial script made into an image by `init --from` + `build`, and both reference images, pass
    every check, `sigterm` included: the template's keep-failure lines pass SageMaker's stop on (from `train`
    as PID 1 on XGBoost; from smkit_init in front of the PyTorch DLC's ENTRYPOINT bash). The same script in a
    hand-written Dockerfile without those lines fails `sigterm` only: the toolkit's `train` is PID 1 and drops
    it (sagemaker-training-toolkit#125), and the fix names the template's block."""
    by_hand = run_check(tutorial)
    results = outcome(by_hand)
    assert {k for k, v in results.items() if v != "PASS"} == {"sigterm"} and by_hand.returncode == 1, by_hand.stdout
    assert "sagemaker-training-toolkit#125" in by_hand.stdout and "smkit keep-failure" in by_hand.stdout
    sample = {name: json.loads((SAMPLE / name / "job.json").read_text()) for name in ("xgboost", "pytorch")}
    cases = [(tutorial_from_init, [], "train")]
    for name, ref in reference_images.items():
        args = [f"--channel=train={SAMPLE / name / 'train'}", f"--channel=validation={SAMPLE / name / 'validation'}"]
        hyperparameters = {**sample[name]["hyperparameters"], **({"epochs": 4} if name == "pytorch" else {})}  # short
        for key, value in hyperparameters.items():
            args.append(f"--hp={key}={json.dumps(value) if not isinstance(value, str) else value}")
        for channel, content_type in sample[name].get("content_types", {}).items():
            args.append(f"--content-type={channel}={content_type}")
        cases.append((ref, args, "smkit_init bash -m start_with_right_hostname.sh train" if name == "pytorch" else "train"))
    for image, args, pid1 in cases:
        done = run_check(image, *args)
        results = outcome(done)
        assert done.returncode == 0 and set(results.values()) == {"PASS"}, (image, done.stdout)
        assert re.search(rf"PID 1 \([^)]*{re.escape(pid1)}\) handles SIGTERM", done.stdout), done.stdout


@pytest.fixture(scope="module")
def reference_images(standin_xgboost, standin_pytorch, tmp_path_factory) -> dict[str, str]:
    """Both images of images.toml built on the stand-ins as `make build BASE=local` does, from a scratch
    copy of the project (SMKIT_PROJECT), so the checkout's build/images.json is never written."""
    project = tmp_path_factory.mktemp("project")
    for name in ("images.toml", "containers", "train_scripts"):
        source = REPO / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, project / name)
    env = {**os.environ, "SMKIT_PROJECT": str(project)}
    done = subprocess.run([PY, "build.py", "build", "--base", "local"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    built = json.loads((project / "build" / "images.json").read_text())["images"]
    return {name: built[name]["local_ref"] for name in ("xgboost", "pytorch")}


def test_check_unit_garbage_keeps_names(tmp_path):
    from local_mode.check import garbage_channels, generated_channels

    channels = generated_channels(tmp_path / "data")
    copies = garbage_channels(channels, tmp_path / "garbage")
    for channel, copy in zip(channels, copies):
        original = sorted(p.name for p in Path(channel.source).iterdir())
        assert sorted(p.name for p in Path(copy.source).iterdir()) == original
        assert b"not data" in next(Path(copy.source).iterdir()).read_bytes()
    with pytest.raises(ConfigError):
        ImageCheck("x:y", channels, only=["nonsense"])


def test_runtime_options_unit():
    from local_mode.instance_types import INSTANCE_TYPES, lookup

    assert lookup("ml.m5.large").memory_bytes == 8 * 2**30 and lookup("ml.g5.xlarge").gpus == 1
    assert all(t.vcpus > 0 and t.memory_gib > 0 for t in INSTANCE_TYPES.values())
    with pytest.raises(ConfigError) as unknown:
        lookup("ml.x9.huge")
    assert "--memory 8g --cpus 2" in unknown.value.fix
    options = RuntimeOptions(shm_size="2g", memory="1g", cpus=0.5, publish=["127.0.0.1:8888:8888", "6006"],
                             network_host=True, instance_type=lookup("ml.m5.xlarge")).docker_options()
    assert options["shm_size"] == "2g" and options["mem_limit"] == "1g" and options["nano_cpus"] == 500_000_000
    assert options["ports"] == {"8888/tcp": ("127.0.0.1", 8888), "6006/tcp": None}
    assert options["network_mode"] == "host" and options["network"] is None
    assert runtime.parse_gpus("device=0,1") == "0,1"
    for bad, call in (("two", lambda: runtime.parse_gpus("two")), ("lots", lambda: runtime.parse_size("lots", "--shm-size")),
                      ("x:y", lambda: RuntimeOptions(publish=["x:y"]).ports())):
        with pytest.raises(ConfigError):
            call()


def test_path_mappings_for_several_baked_directories(tmp_path):
    """The program's directory maps as a whole; each file of the other baked directories on its own first."""
    program, common = tmp_path / "xgboost", tmp_path / "common"
    for directory, name in ((program, "train.py"), (common, "sm_contract.py")):
        directory.mkdir()
        (directory / name).write_text("")
    assert inside.path_mappings([program, common]) == [
        {"localRoot": str(common / "sm_contract.py"), "remoteRoot": "/opt/ml/code/sm_contract.py"},
        {"localRoot": str(program), "remoteRoot": "/opt/ml/code"},
    ]
    text = inside.attach_instructions(5678, inside.path_mappings([program]))
    assert '"port": 5678' in text and f"{program}  =  /opt/ml/code" in text
