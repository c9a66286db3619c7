"""`SAGEMAKER_TRAINING_MODULE=sagemaker_xgboost_container.training:main` of the XGBoost stand-in.

Written from the public behaviour of the prebuilt image (aws/sagemaker-xgboost-container
src/sagemaker_xgboost_container/training.py, not copied): the legacy sagemaker-containers `train`
imports this module and calls main(). With a user entry point (SAGEMAKER_PROGRAM or the
sagemaker_program hyperparameter) it hands the script to sagemaker-containers' run_module, which

  1. unpacks a submitted source dir into /opt/ml/code only if that directory is empty,
  2. writes setup.py, setup.cfg and MANIFEST.in into /opt/ml/code unless a setup.py is there,
  3. runs `python -m pip install .` (plus `-r requirements.txt` if present) in /opt/ml/code, every job,
  4. runs `python -m <module> --key value ...` with cwd /opt/ml/code and the SM_* environment.

A non-zero exit raises ExecuteUserScriptError, which the toolkit writes to /opt/ml/output/failure
(mode "w": whatever the script wrote there is replaced). The built-in algorithm mode (no entry point)
of the real image is not part of the stand-in: it fails with a sentence saying so.
"""

from __future__ import annotations

import sys

import sagemaker_containers.beta.framework as framework
from sagemaker_containers import _errors


def train(env) -> None:
    if env.user_entry_point is None:
        raise _errors.ClientError(
            "The XGBoost stand-in runs script mode only; set SAGEMAKER_PROGRAM (or the sagemaker_program "
            "hyperparameter) to the training script, or use the prebuilt image for the built-in algorithm."
        )
    # capture_error=False, as the real image: the script's stderr goes to the log, not into the error.
    framework.modules.run_module(
        env.module_dir, env.to_cmd_args(), env.to_env_vars(), env.module_name, capture_error=False
    )


def main() -> None:
    train(framework.training_env())
    sys.exit(0)
