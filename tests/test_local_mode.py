"""local_mode: the runner and CLI around SageMaker SDK local mode (v2 here, v3 in its own virtualenv),
and the cloud submission of the same job against moto."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import boto3
import pytest

from local_mode import Channel, JobSpec, run
from local_mode.artifacts import parse_metrics
from local_mode.cleanup import RUN_DIR_LABEL
from local_mode.runner import COMPOSE_DIR_LABEL

pytestmark = pytest.mark.docker
REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "local_mode" / "sample_data" / "xgboost"
SDK3_PYTHON = REPO / ".venv-sdk3" / "bin" / "python"


def cli(*args: str, python: str = sys.executable, env: dict | None = None, wrap: list[str] | None = None, timeout: int = 600):
    command = [*(wrap or []), python, "-m", "local_mode", *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "COLUMNS": "200", **(env or {})})


def leftover_containers(docker_client, run_dir: Path) -> list:
    return [c for c in docker_client.containers.list(all=True, filters={"label": COMPOSE_DIR_LABEL})
            if c.labels.get(COMPOSE_DIR_LABEL, "").startswith(str(run_dir))]


def test_metrics_are_parsed_from_compose_prefixed_lines():
    log = (
        "algo-1-x1y2z  | [round 1] train:auc=0.9 validation:auc=0.85\n"
        "\x1b[36malgo-2_1  |\x1b[0m [round 2] train:auc=0.95 validation:auc=8.5e-1\n"
        "noise [epoch 3] validation:accuracy=0.97 text=notanumber\n"
    )
    final, history = parse_metrics(log)
    assert final == {"train:auc": 0.95, "validation:auc": 0.85, "validation:accuracy": 0.97}
    assert [h["host"] for h in history] == ["algo-1-x1y2z", "algo-2_1", None]


@pytest.mark.parametrize("sdk", ["v2", "v3"])
def test_cli_local_run_summary_matches_the_files(sdk, tiny_image, tmp_path, docker_client):
    python = sys.executable if sdk == "v2" else str(SDK3_PYTHON)
    proc = cli("run", "--image", tiny_image, "--channel", f"train={SAMPLE / 'train'}", "--hp", "num_round=7",
               "--sdk", sdk, "--runs-dir", str(tmp_path), "--quiet", python=python,
               env={"COLUMNS": "60"})  # narrow: the artifact paths must still print whole, to be copied
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (run_dir,) = list(tmp_path.iterdir())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "Completed" and summary["sdk"] == sdk
    # The summary's numbers are the files': metrics as the log has them, artifacts where it says.
    final, _ = parse_metrics((run_dir / "log.txt").read_text())
    assert summary["metrics"] == final and "train:auc" in final
    assert f"train:auc" in proc.stdout and summary["model_artifact"] in proc.stdout
    with tarfile.open(summary["model_artifact"]) as archive:
        assert "xgboost-model.ubj" in archive.getnames()
    assert Path(summary["output_artifact"]).exists()
    # Scratch directories (root-owned, written by the containers) and containers are gone.
    assert sorted(p.name for p in run_dir.iterdir()) == ["driver-result.json", "log.txt", "output", "sagemaker-config.yaml",
                                                          "spec.json", "summary.json"]
    assert leftover_containers(docker_client, run_dir) == []


def test_cli_direct_run_summary_matches_the_files(tiny_image, tmp_path, docker_client):
    proc = cli("run", "--backend", "direct", "--image", tiny_image, "--channel", f"train={SAMPLE / 'train'}",
               "--hp", "num_round=7", "--runs-dir", str(tmp_path), "--quiet", env={"COLUMNS": "60"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (run_dir,) = list(tmp_path.iterdir())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "Completed" and summary["backend"] == "direct" and summary["sdk"] is None
    assert summary["extra"]["network"] == "none"  # one host: no network unless --network
    final, _ = parse_metrics((run_dir / "log.txt").read_text())
    assert summary["metrics"] == final and "train:auc" in final
    assert "(direct, contract v2)" in proc.stdout and summary["model_artifact"] in proc.stdout
    with tarfile.open(summary["model_artifact"]) as archive:
        assert "xgboost-model.ubj" in archive.getnames()
    # The scratch directory (root-owned files) is gone, and so are the containers.
    assert sorted(p.name for p in run_dir.iterdir()) == ["log.txt", "output", "spec.json", "summary.json"]
    assert docker_client.containers.list(all=True, filters={"label": f"{RUN_DIR_LABEL}={run_dir.resolve()}"}) == []


def test_cli_backend_options_are_checked(tmp_path):
    proc = cli("run", "--image", "x:1", "--channel", f"train={SAMPLE / 'train'}", "--network", "--runs-dir", str(tmp_path))
    assert proc.returncode == 2 and "--network applies to the direct backend only" in proc.stderr and "fix:" in proc.stderr
    proc = cli("run", "--image", "x:1", "--cloud", "--backend", "direct", "--channel", "train=s3://b/t")
    assert proc.returncode == 2 and "--cloud contradicts --backend direct" in proc.stderr
    dry = cli("run", "--backend", "direct", "--dry-run", "--image", "x:1", "--channel", f"train={SAMPLE / 'train'}",
              "--hp", "flag=true", "--sdk", "v3", "--instance-count", "2")
    assert dry.returncode == 0, dry.stderr
    assert '/opt/ml/input/config/hyperparameters.json: {"flag": "true"}' in dry.stdout
    assert '"hosts": ["algo-1", "algo-2"], "network_interface_name": "ethwe"' in dry.stdout
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("backend", ["sdk", "direct"])
def test_failed_job_exits_non_zero_with_its_reason(backend, tiny_image, tmp_path):
    proc = cli("run", "--backend", backend, "--image", tiny_image, "--channel", f"train={SAMPLE / 'train'}", "--hp", "fail=true",
               "--runs-dir", str(tmp_path), "--quiet")
    assert proc.returncode == 1
    assert "Failed" in proc.stdout
    assert "Tiny script asked to fail by hyperparameter fail=true; remove it to train." in proc.stdout


def test_local_run_makes_no_network_call_beyond_loopback(tiny_image, tmp_path):
    """The whole CLI runs in a network namespace that has only loopback: any AWS call, telemetry
    request or name lookup would fail the run. The containers run in the engine's own network."""
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.fail("this check needs root and util-linux unshare (CI runs as root)")
    wrap = ["unshare", "--net", "sh", "-c", 'ip link set lo up 2>/dev/null || true; exec "$@"', "sh"]
    proc = cli("run", "--image", tiny_image, "--channel", f"train={SAMPLE / 'train'}", "--runs-dir", str(tmp_path),
               "--quiet", wrap=wrap)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (run_dir,) = list(tmp_path.iterdir())
    log = (run_dir / "log.txt").read_text()
    assert "Request exception" not in log and "amazonaws.com" not in log
    # Telemetry is opted out through the run's own SDK config, not the user's home.
    assert (run_dir / "sagemaker-config.yaml").read_text().count("TelemetryOptOut: true") == 1
    assert "Applied value from config key = SageMaker.PythonSDK.Modules.TelemetryOptOut" in log


@pytest.mark.parametrize("backend", ["sdk", "direct"])
def test_timeout_stops_the_job_and_its_containers(backend, tiny_image, tmp_path, docker_client):
    spec = JobSpec(image=tiny_image, channels=[Channel("train", str(SAMPLE / "train"))], hyperparameters={"sleep": 600})
    result = run(spec, backend, runs_dir=tmp_path, stream=False, timeout=25)
    assert result.status == "Stopped" and not result.ok and result.stop_reason == "timeout after 25s"
    assert leftover_containers(docker_client, Path(result.run_dir)) == []
    assert docker_client.containers.list(all=True, filters={"label": f"{RUN_DIR_LABEL}={Path(result.run_dir).resolve()}"}) == []
    assert "stopping: timeout" in result.log()


def test_two_hosts_get_distinct_sorted_host_names(tiny_image, tmp_path):
    spec = JobSpec(image=tiny_image, channels=[Channel("train", str(SAMPLE / "train"))], instance_count=2)
    result = run(spec, "sdk", runs_dir=tmp_path, stream=False, timeout=300)
    assert result.ok, result.log()[-2000:]
    lines = [line.split("tiny: ", 1)[1] for line in result.log().splitlines() if "tiny: host " in line]
    assert len(lines) == 2
    hosts = json.loads(lines[0].split(" of ", 1)[1])
    assert len(hosts) == 2 and hosts == sorted(hosts) and all(h.startswith("algo-") for h in hosts)


def test_bad_local_inputs_are_refused_before_anything_runs(tiny_image, tmp_path):
    proc = cli("run", "--image", tiny_image, "--channel", "train=s3://bucket/train", "--runs-dir", str(tmp_path))
    assert proc.returncode == 2 and "local runs read local directories only" in proc.stderr and "fix:" in proc.stderr
    for backend in ("sdk", "direct"):
        proc = cli("run", "--backend", backend, "--image", "no-such-image:1", "--channel", f"train={SAMPLE / 'train'}",
                   "--runs-dir", str(tmp_path))
        assert proc.returncode == 2 and "is not in the local Docker engine" in proc.stderr
    assert list(tmp_path.iterdir()) == []


# -------------------------------------------------------------------------------------------------
# The same job in the cloud, against moto

CLOUD_IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/smkit-xgboost@sha256:" + "ab" * 32


@pytest.mark.parametrize("sdk", ["v2", "v3"])
def test_cloud_submission_sends_the_same_job(sdk, moto, tmp_path):
    s3 = boto3.client("s3", region_name="us-east-1", endpoint_url=moto.url)
    s3.create_bucket(Bucket="smkit-data")
    boto3.client("iam", region_name="us-east-1", endpoint_url=moto.url).create_role(
        RoleName="SageMakerExecution", AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Principal": {"Service": "sagemaker.amazonaws.com"}, "Action": "sts:AssumeRole"}]}))
    python = sys.executable if sdk == "v2" else str(SDK3_PYTHON)
    proc = cli(
        "run", "--cloud", "--image", CLOUD_IMAGE, "--sdk", sdk, "--job-name", f"cloud-{sdk}",
        "--channel", f"train={SAMPLE / 'train'}", "--channel", f"validation={SAMPLE / 'validation'}",
        "--content-type", "train=text/csv", "--upload-prefix", "s3://smkit-data/in",
        "--hp", "num_round=50", "--hp", "eta=0.1", "--instance-type", "ml.m5.2xlarge", "--instance-count", "2",
        "--role", "arn:aws:iam::123456789012:role/SageMakerExecution", "--output-path", "s3://smkit-data/out",
        "--checkpoint-s3-uri", "s3://smkit-data/ckpt", "--spot", "--max-run", "3600", "--max-wait", "7200",
        "--region", "us-east-1", python=python,
        # SDK v3 checks the role with iam:SimulatePrincipalPolicy first, which moto does not implement.
        env={"AWS_ENDPOINT_URL": moto.url, "SAGEMAKER_VALIDATE_ROLE": "false"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (request,) = [r["json"] for r in moto.requests("CreateTrainingJob")]
    assert request["TrainingJobName"].startswith(f"cloud-{sdk}")
    assert request["AlgorithmSpecification"]["TrainingImage"] == CLOUD_IMAGE
    assert request["AlgorithmSpecification"]["TrainingInputMode"] == "File"
    assert request["RoleArn"] == "arn:aws:iam::123456789012:role/SageMakerExecution"
    assert {k: v.strip('"') for k, v in request["HyperParameters"].items()} == {"num_round": "50", "eta": "0.1"}
    channels = {c["ChannelName"]: c for c in request["InputDataConfig"]}
    assert set(channels) == {"train", "validation"}
    for name, channel in channels.items():
        uri = channel["DataSource"]["S3DataSource"]["S3Uri"]
        assert uri.startswith("s3://smkit-data/in/cloud-") and uri.rstrip("/").endswith(name)
        key_prefix = uri.replace("s3://smkit-data/", "")
        uploaded = [o["Key"] for o in s3.list_objects_v2(Bucket="smkit-data", Prefix=key_prefix)["Contents"]]
        assert [k.rsplit("/", 1)[1] for k in uploaded] == [f"{name}.csv"]
    # Both SDKs must carry --content-type into the request (v3 once dropped it silently).
    assert channels["train"]["ContentType"] == "text/csv"
    assert request["OutputDataConfig"]["S3OutputPath"] == "s3://smkit-data/out"
    assert request["ResourceConfig"]["InstanceType"] == "ml.m5.2xlarge"
    assert request["ResourceConfig"]["InstanceCount"] == 2
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 3600, "MaxWaitTimeInSeconds": 7200}
    assert request["EnableManagedSpotTraining"] is True
    assert request["CheckpointConfig"]["S3Uri"] == "s3://smkit-data/ckpt"
    # It waited for the job and printed the result like a local run.
    assert "Completed" in proc.stdout and "s3://smkit-data/out/" in proc.stdout


def test_cloud_dry_run_and_missing_role(tmp_path):
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9"}  # nothing answers: neither may need AWS
    dry = cli("run", "--cloud", "--dry-run", "--image", CLOUD_IMAGE, "--channel", "train=s3://b/train",
              "--role", "arn:aws:iam::123456789012:role/R", "--output-path", "s3://b/out", "--region", "us-east-1", env=env)
    assert dry.returncode == 0, dry.stderr
    request = json.loads(dry.stdout)
    assert request["AlgorithmSpecification"]["TrainingImage"] == CLOUD_IMAGE
    assert request["InputDataConfig"] == [{"ChannelName": "train", "S3Uri": "s3://b/train", "ContentType": None}]
    no_role = cli("run", "--cloud", "--image", CLOUD_IMAGE, "--channel", "train=s3://b/train", "--output-path", "s3://b/out",
                  "--region", "us-east-1", env=dict(env, SAGEMAKER_ROLE=""))
    assert no_role.returncode == 2 and "needs an execution role ARN" in no_role.stderr and "--role" in no_role.stderr
