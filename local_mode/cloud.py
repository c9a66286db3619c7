"""The same job, submitted to SageMaker: S3 channels, the pushed image, real instances.

The spec is the one a local run uses; what changes is the data location (s3://), the image URI (the
pinned digest from build/images.json, so the cloud runs exactly what was tested), the instance type,
and the options only the cloud has (spot, checkpoint sync to S3). The request goes through the
installed SDK, v2 `Estimator.fit(wait=False)` or v3 `ModelTrainer.train(wait=False)`, then the job is
followed with DescribeTrainingJob until it ends. All AWS clients honour AWS_ENDPOINT_URL, which is how
the tests point them at moto.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import boto3
import botocore.exceptions

from local_mode import interrupt
from local_mode.job import RUNS_DIR, JobSpec, job_name_for
from local_mode.result import JobResult
from local_mode.sdk import sdk_major
from smkit import bases, console, ecr, images_json, images_toml, metrics
from smkit.errors import ConfigError, ToolkitError

TERMINAL = ("Completed", "Failed", "Stopped")


def pushed_image(image: str) -> tuple[str, str | None]:
    """The pinned URI the image was pushed as (build/images.json), or the reference as given."""
    images = images_json.load()["images"]
    if image in images:
        pushed = images[image].get("pushed")
        if not pushed:
            raise ConfigError(f"{image} was built but never pushed, so the cloud cannot pull it.",
                              f"push it first: `make push IMAGE={image} REGION=...`")
        return pushed["pinned_image_uri"], image
    if "/" not in image:
        raise ConfigError(f"{image!r} is neither a pushed image in build/images.json nor a registry URI.",
                          "build and push it (`make build push IMAGE=...`) or pass the full ECR image URI")
    return image, None


def last_run_metric_names(image_name: str, runs_dir: Path = RUNS_DIR) -> list[str]:
    """The metric names the last local run of `image_name` printed (its summary.json), or []."""
    runs = []
    for summary in Path(runs_dir).glob("*/summary.json"):
        try:
            spec = json.loads((summary.parent / "spec.json").read_text())
        except (OSError, ValueError):
            continue
        if spec.get("image_name") == image_name:
            runs.append((summary.stat().st_mtime, summary))
    if not runs:
        return []
    return sorted(json.loads(max(runs)[1].read_text()).get("metrics", {}))


def metric_definitions(image_name: str | None, runs_dir: Path = RUNS_DIR) -> list[dict[str, str]]:
    """One SageMaker metric definition per name declared in images.toml (`metrics`) or printed by the
    last local run of the image; each regex matches exactly the lines the local summary parses."""
    if not image_name:
        return []
    try:
        spec = images_toml.load().get(image_name)
    except ToolkitError:
        spec = None
    names = list(dict.fromkeys([*(spec.metrics if spec else ()), *last_run_metric_names(image_name, runs_dir)]))
    if len(names) > metrics.MAX_DEFINITIONS:
        console.warn(f"{image_name} has {len(names)} metric names; SageMaker takes {metrics.MAX_DEFINITIONS}, "
                     f"so {', '.join(names[metrics.MAX_DEFINITIONS:])} get no definition")
    return metrics.definitions(names)


def _check(spec: JobSpec) -> None:
    if not spec.role or not spec.role.startswith("arn:"):
        raise ConfigError("A cloud job needs an execution role ARN.", "pass --role arn:aws:iam::<account>:role/<name> or set SAGEMAKER_ROLE")
    if spec.instance_type.startswith("local"):
        raise ConfigError(f"{spec.instance_type} is a local instance type.", "pass --instance-type ml.m5.xlarge (or another ml.* type)")
    if not spec.output_path or not spec.output_path.startswith("s3://"):
        raise ConfigError("A cloud job needs an s3:// output path for model.tar.gz.", "pass --output-path s3://bucket/prefix")
    if spec.spot and not spec.max_wait_seconds:
        raise ConfigError("Spot training needs a maximum wait.", "pass --max-wait SECONDS (at least --max-run)")
    if spec.spot and spec.max_wait_seconds < spec.max_run_seconds:
        raise ConfigError(f"--max-wait {spec.max_wait_seconds} is shorter than --max-run {spec.max_run_seconds}.",
                          "SageMaker requires max wait >= max run; raise --max-wait")
    for channel in spec.channels:
        if not channel.source.startswith("s3://"):
            raise ConfigError(f"Channel {channel.name} is local ({channel.source}).",
                              "pass an s3:// URI, or --upload-prefix s3://bucket/prefix to upload it first")


def upload_channels(spec: JobSpec, prefix: str) -> None:
    """Upload local channel directories under `prefix/<job name>/<channel>/` and point the spec at them."""
    bucket, _, key_prefix = prefix.replace("s3://", "", 1).partition("/")
    s3 = boto3.client("s3", region_name=spec.region)
    for channel in spec.channels:
        if channel.source.startswith("s3://"):
            continue
        source = Path(channel.source)
        files = [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.is_file())
        base = "/".join(part for part in (key_prefix.strip("/"), spec.job_name, channel.name) if part)
        with console.err.status(f"uploading channel {channel.name} ({len(files)} files) to s3://{bucket}/{base}/"):
            for path in files:
                relative = path.name if source.is_file() else path.relative_to(source).as_posix()
                s3.upload_file(str(path), bucket, f"{base}/{relative}")
        channel.source = f"s3://{bucket}/{base}/"


def _sagemaker_session(region: str):
    """A session with the user's own SDK defaults config (VPC, KMS, tags...), telemetry turned off:
    a submission sends nothing to AWS but the job itself."""
    boto_session = boto3.Session(region_name=region)
    if sdk_major() >= 3:
        from sagemaker.core.config.config import load_sagemaker_config
        from sagemaker.core.helper.session_helper import Session
    else:
        from sagemaker.config import load_sagemaker_config
        from sagemaker.session import Session
    config = load_sagemaker_config() or {}
    config.setdefault("SchemaVersion", "1.0")
    config.setdefault("SageMaker", {}).setdefault("PythonSDK", {}).setdefault("Modules", {})["TelemetryOptOut"] = True
    return Session(boto_session=boto_session, sagemaker_config=config)


def submit_v2(spec: JobSpec) -> None:
    from sagemaker.estimator import Estimator
    from sagemaker.inputs import TrainingInput

    estimator = Estimator(
        image_uri=spec.image,
        role=spec.role,
        instance_count=spec.instance_count,
        instance_type=spec.instance_type,
        output_path=spec.output_path,
        hyperparameters=spec.hyperparameters or None,
        environment=spec.environment or None,
        max_run=spec.max_run_seconds,
        use_spot_instances=spec.spot,
        max_wait=spec.max_wait_seconds if spec.spot else None,
        checkpoint_s3_uri=spec.checkpoint_s3_uri,
        checkpoint_local_path=spec.checkpoint_local_path,
        metric_definitions=spec.metric_definitions or None,
        sagemaker_session=_sagemaker_session(spec.region),
        debugger_hook_config=False,  # the scripts report their own metrics; no smdebug hook
        disable_profiler=True,
    )
    inputs = {c.name: TrainingInput(c.source, content_type=c.content_type, distribution=c.distribution) for c in spec.channels}
    estimator.fit(inputs, job_name=spec.job_name, wait=False, logs=False)


def submit_v3(spec: JobSpec) -> None:
    from sagemaker.core.shapes import MetricDefinition
    from sagemaker.core.training.configs import CheckpointConfig, Compute, InputData, OutputDataConfig, StoppingCondition
    from sagemaker.train import ModelTrainer
    from sagemaker.train.model_trainer import Mode

    trainer = ModelTrainer(
        training_image=spec.image,
        training_mode=Mode.SAGEMAKER_TRAINING_JOB,
        role=spec.role,
        compute=Compute(instance_type=spec.instance_type, instance_count=spec.instance_count,
                        enable_managed_spot_training=spec.spot or None),
        stopping_condition=StoppingCondition(max_runtime_in_seconds=spec.max_run_seconds,
                                             max_wait_time_in_seconds=spec.max_wait_seconds if spec.spot else None),
        output_data_config=OutputDataConfig(s3_output_path=spec.output_path),
        hyperparameters=spec.hyperparameters or None,
        environment=spec.environment or None,
        sagemaker_session=_sagemaker_session(spec.region),
        base_job_name=spec.job_name,
    )
    if spec.checkpoint_s3_uri:
        trainer = trainer.with_checkpoint_config(CheckpointConfig(s3_uri=spec.checkpoint_s3_uri, local_path=spec.checkpoint_local_path))
    if spec.metric_definitions:
        trainer = trainer.with_metric_definitions([MetricDefinition(name=m["Name"], regex=m["Regex"]) for m in spec.metric_definitions])
    # content_type only when set: InputData refuses None.
    channels = [InputData(channel_name=c.name, data_source=c.source, **({"content_type": c.content_type} if c.content_type else {}))
                for c in spec.channels]
    trainer.train(input_data_config=channels, wait=False, logs=False)
    spec.job_name = trainer._latest_training_job.training_job_name  # v3 appends its own timestamp


def print_request(spec: JobSpec, upload_prefix: str | None = None) -> None:
    """--dry-run: the job as it would be submitted (no AWS call)."""
    prepare(spec, upload_prefix, dry_run=True)
    console.out.print_json(data={
        "TrainingJobName": spec.job_name,
        "AlgorithmSpecification": {"TrainingImage": spec.image, "TrainingInputMode": "File", "MetricDefinitions": spec.metric_definitions},
        "RoleArn": spec.role,
        "HyperParameters": {k: str(v) for k, v in spec.hyperparameters.items()},
        "InputDataConfig": [{"ChannelName": c.name, "S3Uri": c.source, "ContentType": c.content_type} for c in spec.channels],
        "OutputDataConfig": {"S3OutputPath": spec.output_path},
        "ResourceConfig": {"InstanceType": spec.instance_type, "InstanceCount": spec.instance_count},
        "StoppingCondition": {"MaxRuntimeInSeconds": spec.max_run_seconds, **({"MaxWaitTimeInSeconds": spec.max_wait_seconds} if spec.spot else {})},
        "EnableManagedSpotTraining": spec.spot,
        "CheckpointConfig": {"S3Uri": spec.checkpoint_s3_uri} if spec.checkpoint_s3_uri else None,
        "Environment": spec.environment,
    })


def prepare(spec: JobSpec, upload_prefix: str | None, dry_run: bool = False) -> None:
    spec.region = bases.require_region(spec.region)
    spec.role = spec.role or os.environ.get("SAGEMAKER_ROLE", "")
    spec.job_name = spec.job_name or job_name_for(spec.image_name or "job")
    spec.metric_definitions = spec.metric_definitions or metric_definitions(spec.image_name)
    if upload_prefix:
        if not upload_prefix.startswith("s3://"):
            raise ConfigError(f"--upload-prefix {upload_prefix} is not an s3:// URI.", "write e.g. --upload-prefix s3://my-bucket/data")
        if dry_run:
            for channel in spec.channels:
                if not channel.source.startswith("s3://"):
                    channel.source = f"{upload_prefix.rstrip('/')}/{spec.job_name}/{channel.name}/ (uploaded from {channel.source})"
            return
        upload_channels(spec, upload_prefix)
    if not dry_run:
        _check(spec)


def run_cloud(spec: JobSpec, upload_prefix: str | None = None, wait: bool = True, timeout: float | None = None,
              poll_seconds: float = 15.0) -> JobResult:
    prepare(spec, upload_prefix)
    major = sdk_major()
    started = time.monotonic()
    console.step(f"submitting {spec.job_name}: {spec.image} on {spec.instance_count} x {spec.instance_type} (SDK v{major})")
    try:
        submit_v3(spec) if major >= 3 else submit_v2(spec)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise ecr.explain(exc, f"create the training job {spec.job_name}", spec.region) from None
    client = boto3.client("sagemaker", region_name=spec.region)
    description, last = {}, None
    stop_reason, interrupted = None, None
    try:
        with console.err.status(f"{spec.job_name}: submitted") as status:
            while True:
                description = client.describe_training_job(TrainingJobName=spec.job_name)
                state = (description["TrainingJobStatus"], description.get("SecondaryStatus"))
                if state != last:
                    console.note(f"{spec.job_name}: {state[0]} / {state[1]}")
                    last = state
                status.update(f"{spec.job_name}: {state[0]} / {state[1]} ({time.monotonic() - started:.0f}s)")
                if not wait or state[0] in TERMINAL or (timeout is not None and time.monotonic() - started > timeout):
                    break
                time.sleep(poll_seconds)
    except (interrupt.Interrupted, KeyboardInterrupt) as exc:
        interrupted, stop_reason = exc, interrupt.reason(exc)
        description = stop_job(client, spec.job_name, stop_reason) or description
    metrics = {m["MetricName"]: m["Value"] for m in description.get("FinalMetricDataList", [])}
    output_prefix = f"{spec.output_path.rstrip('/')}/{spec.job_name}/output"
    result = JobResult(
        job_name=spec.job_name,
        mode="cloud",
        backend="cloud",
        status=description.get("TrainingJobStatus", "InProgress"),
        wall_seconds=round(time.monotonic() - started, 2),
        image=spec.image,
        sdk=f"v{major}",
        instance_count=spec.instance_count,
        failure_reason=description.get("FailureReason"),
        stop_reason=stop_reason,
        metrics=metrics,
        model_artifact=description.get("ModelArtifacts", {}).get("S3ModelArtifacts"),
        output_artifact=f"{output_prefix}/output.tar.gz",
        extra={"arn": description.get("TrainingJobArn"), "billable_seconds": description.get("BillableTimeInSeconds")},
    )
    if interrupted is not None:
        interrupted.result = result
        raise interrupted
    return result


def stop_job(client, job_name: str, reason: str) -> dict | None:
    """An interrupted wait stops the job it was waiting for (StopTrainingJob): leaving it running would
    bill instances nobody watches. Returns the job's description afterwards (None if that failed too)."""
    console.note(f"{job_name}: {reason}, stopping the training job")
    try:
        client.stop_training_job(TrainingJobName=job_name)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        console.warn(f"could not stop {job_name}: {exc}; stop it with "
                     f"`aws sagemaker stop-training-job --training-job-name {job_name}`")
    try:
        return client.describe_training_job(TrainingJobName=job_name)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
        return None
