"""The SageMaker training-container contract, written by hand: what a container finds in /opt/ml and in
its environment, and how its model and output become model.tar.gz and output.tar.gz.

One definition, used by the direct backend, and checked against SageMaker SDK local mode (v2 and v3) by
tests/test_parity.py. The SDKs differ in a few places; a *dialect* ("v2" or "v3") picks which one a
direct run reproduces, so that `--backend direct` and `--backend sdk` with the same SDK write the same
files. What each SDK does, read from its source (v2 `sagemaker/local/image.py`, v3
`sagemaker/train/local/local_container.py` and `sagemaker/train/utils.py:safe_serialize`):

| | SDK v2 (`Estimator`, no source_dir) | SDK v3 (`ModelTrainer`) |
|---|---|---|
| hyperparameter values | `str(v)`: `True`, `[64, 32]`, `0.1` | strings as-is, else `json.dumps(v)`: `true`, `[64, 32]` |
| host names | `algo-<i>-<5 random [a-z0-9]>` | `algo-<i>` |
| `network_interface_name` | `eth0` | `ethwe` |
| `current_instance_type` | `local` / `local_gpu` | `local_cpu` / `local_gpu` |

Both write `inputdataconfig.json` as {channel: {"TrainingInputMode": "File"[, "ContentType"]}}, mount one
model directory shared by all hosts and one input/ and output/ directory per host, and package the
model directory and the hosts' output directories merged (a later host's file replaces an earlier
one's) into one tarball each, every top-level entry under its own name.
"""

from __future__ import annotations

import json
import random
import shutil
import string
import tarfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

DIALECTS = ("v2", "v3")
OPT_ML = "/opt/ml"
CHECKPOINT_PATH = "/opt/ml/checkpoints"  # SageMaker's default CheckpointConfig.LocalPath
NETWORK_INTERFACE = {"v2": "eth0", "v3": "ethwe"}


def resolve_dialect(sdk: str = "auto") -> str:
    """v2 | v3 as asked; `auto` follows the SDK installed in this Python (v3 when there is none), so a
    direct run and an SDK run from the same Python write the same files. The SDK is not imported."""
    if sdk in DIALECTS:
        return sdk
    try:
        return "v2" if version("sagemaker").split(".")[0] == "2" else "v3"
    except PackageNotFoundError:
        return "v3"


def host_names(count: int, dialect: str, rng: random.Random | None = None) -> list[str]:
    """The SDK's host names: v3 `algo-1..N`; v2 adds one random suffix per job (so parallel jobs on its
    shared network never clash)."""
    if dialect == "v3":
        return [f"algo-{i}" for i in range(1, count + 1)]
    rng = rng or random.SystemRandom()
    suffix = "".join(rng.choice(string.ascii_lowercase + string.digits) for _ in range(5))
    return [f"algo-{i}-{suffix}" for i in range(1, count + 1)]


def encode_hyperparameters(hyperparameters: dict[str, Any], dialect: str) -> dict[str, str]:
    """Every value a string, as the SDK of `dialect` sends it (see the table above)."""
    if dialect == "v2":
        return {str(k): str(v) for k, v in hyperparameters.items()}
    encoded = {}
    for key, value in hyperparameters.items():
        if isinstance(value, str):
            encoded[str(key)] = value
        else:
            try:
                encoded[str(key)] = json.dumps(value)
            except TypeError:
                encoded[str(key)] = str(value)
    return encoded


def instance_type(local_type: str, dialect: str) -> str:
    if local_type == "local_gpu":
        return "local_gpu"
    return "local_cpu" if dialect == "v3" else "local"


def input_data_config(channels) -> dict[str, dict[str, str]]:
    config = {}
    for channel in channels:
        config[channel.name] = {"TrainingInputMode": "File"}
        if channel.content_type:
            config[channel.name]["ContentType"] = channel.content_type
    return config


def resource_config(host: str, hosts: list[str], local_type: str, dialect: str) -> dict[str, Any]:
    return {"current_host": host, "hosts": hosts, "network_interface_name": NETWORK_INTERFACE[dialect],
            "current_instance_type": instance_type(local_type, dialect)}


def checkpoint_config(local_path: str, s3_uri: str | None) -> dict[str, str]:
    """What SageMaker writes when the job has a CheckpointConfig (SDK local mode never writes it: it has
    no checkpoint sync). The XGBoost image reads LocalPath from it."""
    return {"LocalPath": local_path, **({"S3Uri": s3_uri} if s3_uri else {})}


def write_config(config_dir: Path, *, host: str, hosts: list[str], spec, dialect: str,
                 checkpoints: dict[str, str] | None = None) -> None:
    """/opt/ml/input/config of one host: the files SageMaker (and SDK local mode) write, byte for byte
    as json.dump writes them."""
    config_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "hyperparameters.json": encode_hyperparameters(spec.hyperparameters, dialect),
        "resourceconfig.json": resource_config(host, hosts, spec.instance_type, dialect),
        "inputdataconfig.json": input_data_config(spec.channels),
    }
    if checkpoints is not None:
        files["checkpointconfig.json"] = checkpoints
    for name, content in files.items():
        (config_dir / name).write_text(json.dumps(content))


def environment(spec, region: str, dialect: str) -> dict[str, str]:
    """What SDK local mode adds to the container's environment: the job name, and in v2 the region (v3
    sets AWS_REGION only when it has a session, which local mode with local data never has); then the
    job's own variables (they win, as in the SDKs). Not copied: SDK v2 also passes the session's AWS
    credentials (placeholders in local_mode's sandbox) and an S3 endpoint; a direct run hands no
    credentials to a container."""
    platform = {"TRAINING_JOB_NAME": spec.job_name}
    if dialect == "v2":
        platform["AWS_REGION"] = region
    return {**platform, **(spec.environment or {})}


def _copy_merged(source: Path, destination: Path) -> None:
    """sagemaker.local.utils.recursive_copy: files of a later source replace those of an earlier one."""
    if source.is_dir():
        shutil.copytree(source, destination, dirs_exist_ok=True, symlinks=True)


def package(model_dir: Path, output_dirs: list[Path], destination: Path, scratch: Path) -> tuple[Path, Path]:
    """model.tar.gz and output.tar.gz in `destination`, as SDK local mode packages them: the model
    directory, and the hosts' output directories merged in host order, each top-level entry added under
    its own name. `scratch` holds the merged copies (it is removed afterwards)."""
    destination.mkdir(parents=True, exist_ok=True)
    merged_model, merged_output = scratch / "model", scratch / "output"
    for path in (merged_model, merged_output):
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
    _copy_merged(model_dir, merged_model)
    for output in output_dirs:
        _copy_merged(output, merged_output)
    tarballs = []
    for name, merged in (("model.tar.gz", merged_model), ("output.tar.gz", merged_output)):
        with tarfile.open(destination / name, "w:gz") as archive:
            for entry in sorted(merged.iterdir()):
                archive.add(entry, arcname=entry.name)
        tarballs.append(destination / name)
    shutil.rmtree(scratch, ignore_errors=True)
    return tarballs[0], tarballs[1]
