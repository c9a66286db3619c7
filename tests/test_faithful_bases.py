"""What decides whether a job works on the real prebuilt bases, checked on the faithful stand-ins
(containers/standin/, facts in containers/standin/real_bases.toml, docs/build.md compares row by row).

1. The script's own one-sentence failure reason survives the legacy sagemaker-containers toolkit of the
   XGBoost image, which overwrites /opt/ml/output/failure on every non-zero exit.
2. The legacy script-mode dispatch really happens (setup.py written, `pip install .` at job start,
   `python -m train` from /opt/ml/code) and needs no network.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest

from local_mode import Channel, JobSpec, run_local
from smkit import catalog, images, standin

pytestmark = pytest.mark.docker
XGB_BAD_ROUND = ("Hyperparameter num_round='abc' is invalid (expected an integer); "
                 "use an integer of at least 1.")


@pytest.fixture(scope="module")
def xgboost_image(standin_xgboost) -> str:
    """The XGBoost image of images.toml on the faithful stand-in, as `make build BASE=local` builds it."""
    assert standin_xgboost == standin.STANDINS["xgboost"] == "smkit/standin-xgboost:3.0-5"
    return images.build_image(catalog.load()["xgboost"], base_choice="local").ref


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3))
    y = (X[:, 0] > 0).astype(int)
    np.savetxt(root / "train.csv", np.column_stack([y, X]), delimiter=",", fmt="%.6g")
    return root


def test_bad_hyperparameter_reason_survives_the_legacy_toolkit(xgboost_image, tiny_data, tmp_path):
    """SDK local mode, a bad hyperparameter: FailureReason is the script's sentence, not the toolkit's
    `ExecuteUserScriptError: Command "... -m train --num_round abc"`."""
    spec = JobSpec(image=xgboost_image, channels=[Channel("train", str(tiny_data))],
                   hyperparameters={"num_round": "abc"})
    result = run_local(spec, runs_dir=tmp_path, stream=False, timeout=300)
    log = result.log()
    assert result.status == "Failed", log[-3000:]
    # The legacy dispatch really ran (so this is the real base's path, not sagemaker-training's).
    assert "-m pip install ." in log and "-m train --num_round abc" in log, log[-3000:]
    assert result.failure_reason == XGB_BAD_ROUND, log[-3000:]
    with tarfile.open(result.model_artifact) as archive:
        assert [m for m in archive.getmembers() if m.isfile()] == []  # no partial model
