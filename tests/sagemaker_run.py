"""Run a training image by hand exactly as SageMaker starts it, without the SDK: for the tests that need
control the SDK does not give (killing a container midway, disabling its network) and for benchmarks.

SageMaker's layout: input/config/{hyperparameters,inputdataconfig,resourceconfig}.json, one directory per
channel under input/data/, and model/, output/ and checkpoints/ mounted separately (mounting all of
/opt/ml would hide the code baked into /opt/ml/code). With `--network none` the container cannot resolve
even its own host name, so it gets `--hostname` and `--add-host` (sagemaker-training looks every host up
before it starts the script, and retries for 15 minutes otherwise).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import docker

from smkit import engine


@dataclass
class Job:
    container: "docker.models.containers.Container"
    root: Path

    @property
    def model_dir(self) -> Path:
        return self.root / "model"

    @property
    def output_dir(self) -> Path:
        return self.root / "output"

    @property
    def checkpoint_dir(self) -> Path:
        return self.root / "checkpoints"

    def wait(self, timeout: float = 600) -> int:
        try:
            return self.container.wait(timeout=timeout)["StatusCode"]
        finally:
            self.logs = self.container.logs().decode(errors="replace")

    def failure(self) -> str | None:
        path = self.output_dir / "failure"
        return path.read_text().strip() if path.exists() else None

    def remove(self) -> None:
        try:
            self.container.remove(force=True)
        except docker.errors.APIError:
            pass


def write_config(root: Path, channels: dict[str, Path], hyperparameters: dict, host: str,
                 content_types: dict[str, str] | None = None, checkpoints: bool = False) -> None:
    config = root / "input" / "config"
    config.mkdir(parents=True, exist_ok=True)
    # SageMaker stores every hyperparameter as a string (the SDK json-encodes non-strings).
    hps = {k: v if isinstance(v, str) else json.dumps(v) for k, v in hyperparameters.items()}
    (config / "hyperparameters.json").write_text(json.dumps(hps))
    (config / "inputdataconfig.json").write_text(json.dumps({
        name: {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated", "RecordWrapperType": "None",
               **({"ContentType": content_types[name]} if content_types and name in content_types else {})}
        for name in channels
    }))
    (config / "resourceconfig.json").write_text(json.dumps({
        "current_host": host, "hosts": [host], "network_interface_name": "eth0", "current_instance_type": "local",
    }))
    if checkpoints:
        (config / "checkpointconfig.json").write_text(json.dumps({"LocalPath": "/opt/ml/checkpoints"}))
    for sub in ("model", "output/data", "checkpoints"):
        (root / sub).mkdir(parents=True, exist_ok=True)


def start(image: str, root: Path, channels: dict[str, Path], hyperparameters: dict | None = None,
          network: bool = False, checkpoints: bool = False, content_types: dict[str, str] | None = None,
          environment: dict[str, str] | None = None, mem_limit: str | None = None, host: str = "algo-1") -> Job:
    """Start `image` with `train` as SageMaker does; returns at once (Job.wait() for the exit code)."""
    root = Path(root)
    write_config(root, channels, hyperparameters or {}, host, content_types, checkpoints)
    volumes = {
        str(root / "input" / "config"): {"bind": "/opt/ml/input/config", "mode": "ro"},
        str(root / "model"): {"bind": "/opt/ml/model", "mode": "rw"},
        str(root / "output"): {"bind": "/opt/ml/output", "mode": "rw"},
    }
    for name, path in channels.items():
        volumes[str(Path(path).resolve())] = {"bind": f"/opt/ml/input/data/{name}", "mode": "ro"}
    if checkpoints:
        volumes[str(root / "checkpoints")] = {"bind": "/opt/ml/checkpoints", "mode": "rw"}
    kwargs = {}
    if not network:
        kwargs.update(network_mode="none", extra_hosts={host: "127.0.0.1"})
    container = engine.client().containers.run(
        image, ["train"], detach=True, volumes=volumes, hostname=host, name=f"smkit-test-{uuid.uuid4().hex[:10]}",
        environment={"TRAINING_JOB_NAME": "by-hand", **(environment or {})}, mem_limit=mem_limit, **kwargs,
    )
    return Job(container=container, root=root)


def wait_for(predicate, timeout: float = 120, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False
