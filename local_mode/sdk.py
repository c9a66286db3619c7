"""Which SageMaker Python SDK is installed, and the sandbox a local run gives it.

A local run must make no AWS call at all (the image is local, the data is file://), must not send
telemetry, and must not depend on or change the user's ~/.config/sagemaker or ~/.aws:
- the SDK's defaults config is pointed at a file of the run's own (SAGEMAKER_USER_CONFIG_OVERRIDE and
  SAGEMAKER_ADMIN_CONFIG_OVERRIDE) that opts out of telemetry;
- AWS credentials are placeholders: the SDK copies the session's credentials into the containers'
  environment, and a session token would make it probe the EC2 metadata service; placeholders keep
  real keys out of local containers and keep the SDK off the network;
- the region comes from --region / AWS_REGION / the AWS config, else us-east-1 (local mode needs one).
"""

from __future__ import annotations

import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from smkit.errors import ToolkitError

SDK_CONFIG = """\
SchemaVersion: '1.0'
SageMaker:
  PythonSDK:
    Modules:
      TelemetryOptOut: true
"""


def sdk_version() -> str:
    try:
        return version("sagemaker")
    except PackageNotFoundError:
        raise ToolkitError(
            "The SageMaker Python SDK is not installed in this Python.",
            "pip install 'sagemaker>=2.257' (v2) or 'sagemaker>=3' (v3); `make venv` sets one up",
        ) from None


def sdk_major() -> int:
    return int(sdk_version().split(".")[0])


def local_environment(run_dir: Path, region: str) -> dict[str, str]:
    """The environment for the driver subprocess of a local run."""
    config = run_dir / "sagemaker-config.yaml"
    config.write_text(SDK_CONFIG)
    env = dict(os.environ)
    for name in list(env):
        # Real credentials and endpoints have no business in a local run.
        if name.startswith("AWS_") and name not in ("AWS_REGION", "AWS_DEFAULT_REGION"):
            env.pop(name)
    env.update(
        SAGEMAKER_USER_CONFIG_OVERRIDE=str(config),
        SAGEMAKER_ADMIN_CONFIG_OVERRIDE=str(config),
        SAGEMAKER_SUPPRESS_V2_WARNING="1",
        AWS_REGION=region,
        AWS_DEFAULT_REGION=region,
        AWS_ACCESS_KEY_ID="local-mode-placeholder",
        AWS_SECRET_ACCESS_KEY="local-mode-placeholder",
        AWS_EC2_METADATA_DISABLED="true",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        PYTHONUNBUFFERED="1",
    )
    return env
