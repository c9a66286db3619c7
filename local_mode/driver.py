"""Runs one job through the SageMaker Python SDK's local mode; started by runner.py as a subprocess.

A subprocess because the SDK prints container logs straight to stdout, reads its defaults config and
AWS settings from the environment at import time, and may leave compose processes behind: the runner
captures the log, hands it a sandboxed environment, and stops whatever outlives a timeout.

    python -m local_mode.driver RUN_DIR      (RUN_DIR/spec.json in, RUN_DIR/driver-result.json out)

SDK v2: sagemaker.estimator.Estimator(image_uri=..., instance_type="local"|"local_gpu").fit(...)
SDK v3: sagemaker.train.ModelTrainer(training_image=..., training_mode=Mode.LOCAL_CONTAINER).train(...)
"""

from __future__ import annotations

import json
import os
import signal
import sys
import traceback
from pathlib import Path

from local_mode.job import JobSpec
from local_mode.sdk import sdk_major, sdk_version


def run_v2(spec: JobSpec, work: Path, output: Path) -> dict:
    import boto3
    from sagemaker.estimator import Estimator
    from sagemaker.inputs import TrainingInput
    from sagemaker.local import LocalSession

    session = LocalSession(boto_session=boto3.Session(region_name=spec.region))
    # container_root: the SDK's scratch directories (and the compose file) live in this run's directory.
    session.config = {"local": {"local_code": True, "container_root": str(work)}}
    if spec.container_config:  # docker run options the SDK lets through (local_mode/runtime.py)
        session.config["local"]["container_config"] = spec.container_config
    estimator = Estimator(
        image_uri=spec.image,
        role=spec.role,
        instance_count=spec.instance_count,
        instance_type="local_gpu" if spec.instance_type == "local_gpu" else "local",
        output_path=f"file://{output}",
        sagemaker_session=session,
        hyperparameters=spec.hyperparameters or None,
        environment=spec.environment or None,
        max_run=spec.max_run_seconds,
        checkpoint_local_path=spec.checkpoint_local_path,
    )
    inputs = {
        c.name: TrainingInput(f"file://{Path(c.source).resolve()}", content_type=c.content_type, distribution=c.distribution)
        for c in spec.channels
    }
    try:
        estimator.fit(inputs, job_name=spec.job_name, wait=True, logs="All")
        status, error = "Completed", None
    except Exception as exc:  # the SDK raises RuntimeError("Failed to run: ...") on a non-zero exit
        status, error = "Failed", f"{type(exc).__name__}: {exc}"
    except KeyboardInterrupt:  # the runner stopping the job (SIGINT); the SDK has packaged what there was
        status, error = "Stopped", "interrupted"
    return {
        "status": status,
        "error": error,
        "model_artifact": str(output / "model.tar.gz"),
        "output_artifact": str(output / "output.tar.gz"),
    }


def run_v3(spec: JobSpec, work: Path, output: Path) -> dict:
    from sagemaker.core.training.configs import Compute, InputData
    from sagemaker.train import ModelTrainer
    from sagemaker.train.model_trainer import Mode

    instance_type = "local_gpu" if spec.instance_type == "local_gpu" else "local_cpu"
    trainer = ModelTrainer(
        training_image=spec.image,
        training_mode=Mode.LOCAL_CONTAINER,
        compute=Compute(instance_type=instance_type, instance_count=spec.instance_count),
        local_container_root=str(work),
        hyperparameters={k: v for k, v in spec.hyperparameters.items()} or None,
        environment=spec.environment or None,
        role=spec.role,
        base_job_name=spec.job_name.rsplit("-", 3)[0] or "job",
    )
    # content_type only when set: InputData refuses None.
    channels = [InputData(channel_name=c.name, data_source=str(Path(c.source).resolve()),
                          **({"content_type": c.content_type} if c.content_type else {}))
                for c in spec.channels]
    try:
        trainer.train(input_data_config=channels, wait=True, logs=True)
        status, error = "Completed", None
    except Exception as exc:
        status, error = "Failed", f"{type(exc).__name__}: {exc}"
    except KeyboardInterrupt:
        status, error = "Stopped", "interrupted"
    artifacts = work / "compressed_artifacts"
    for name in ("model.tar.gz", "output.tar.gz"):
        if (artifacts / name).exists():
            os.replace(artifacts / name, output / name)
    return {
        "status": status,
        "error": error,
        "model_artifact": str(output / "model.tar.gz"),
        "output_artifact": str(output / "output.tar.gz"),
    }


def main(run_dir: str) -> int:
    # The runner stops a job with SIGINT: KeyboardInterrupt here even if this process inherited SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    run = Path(run_dir)
    spec = JobSpec.from_json((run / "spec.json").read_text())
    # docker compose names its project after this directory: unique per job, so concurrent runs never share containers.
    work, output = run / f"work-{spec.job_name}", run / "output"
    work.mkdir(parents=True, exist_ok=True)
    output.mkdir(parents=True, exist_ok=True)
    major = sdk_major()
    wanted = spec.sdk if spec.sdk != "auto" else f"v{major}"
    if wanted != f"v{major}":
        result = {"status": "Failed", "error": f"SDK {wanted} was asked for but this Python has SageMaker SDK v{major}"}
    else:
        try:
            result = run_v2(spec, work, output) if major == 2 else run_v3(spec, work, output)
        except Exception as exc:  # a failure of the SDK itself, before any container ran
            traceback.print_exc()
            result = {"status": "Failed", "error": f"{type(exc).__name__}: {exc}"}
        except KeyboardInterrupt:  # stopped before the SDK started the containers
            result = {"status": "Stopped", "error": "interrupted"}
    result.update(sdk=f"v{major}", sdk_version=sdk_version())
    (run / "driver-result.json").write_text(json.dumps(result, indent=2))
    return 0 if result["status"] == "Completed" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
