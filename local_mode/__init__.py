"""Run any built image as a SageMaker training job: SDK local mode, directly through Docker, or in the cloud.

    from local_mode import JobSpec, Channel, run
    result = run(JobSpec(image="smkit-xgboost:abc1234-0123456789",
                         channels=[Channel("train", "data/train")],
                         hyperparameters={"num_round": 50}), backend="direct")   # sdk | direct | cloud
    result.status, result.metrics, result.model_artifact

CLI: `python -m local_mode run --image xgboost --backend direct` (see `python -m local_mode --help`).
"""

from local_mode.backends import BACKENDS, run
from local_mode.job import Channel, JobSpec
from local_mode.result import JobResult
from local_mode.runner import run_local

__all__ = ["BACKENDS", "Channel", "JobSpec", "JobResult", "run", "run_local"]
