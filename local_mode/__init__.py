"""Run any built image through SageMaker Python SDK local mode, then submit the same job to the cloud.

    from local_mode import JobSpec, Channel, run_local
    result = run_local(JobSpec(image="smkit-xgboost:abc1234-0123456789",
                               channels=[Channel("train", "data/train")],
                               hyperparameters={"num_round": 50}))
    result.status, result.metrics, result.model_artifact

CLI: `python -m local_mode run --image xgboost --sample` (see `python -m local_mode --help`).
"""

from local_mode.job import Channel, JobSpec
from local_mode.runner import JobResult, run_local

__all__ = ["Channel", "JobSpec", "JobResult", "run_local"]
