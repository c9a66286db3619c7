"""The foundation: stand-in bases that honour the prebuilt images' contract, cached by their inputs,
and a first image that really trains through SageMaker SDK local mode."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest
import xgboost as xgb

from local_mode import Channel, JobSpec, run
from smkit import standin

pytestmark = pytest.mark.docker
SAMPLE = Path(__file__).parent.parent / "local_mode" / "sample_data" / "xgboost"


def run_in(client, image: str, *command: str, entrypoint=None) -> str:
    out = client.containers.run(image, list(command), entrypoint=entrypoint, remove=True, network_disabled=True)
    return out.decode().strip()


@pytest.mark.parametrize("framework,module", [("xgboost", "xgboost"), ("pytorch", "torch")])
def test_standin_base_honours_the_training_contract(docker_client, standin_xgboost, standin_pytorch, framework, module):
    name = standin.STANDINS[framework]
    attrs = docker_client.images.get(name).attrs
    assert attrs["Config"]["Cmd"] == ["train"]
    assert attrs["Architecture"] == "amd64" and attrs["Os"] == "linux"
    # sagemaker-training's console script, Python 3.10+, and the framework itself
    probe = (
        "import shutil, sys, importlib; import sagemaker_training; "
        f"m = importlib.import_module('{module}'); "
        "print(shutil.which('train'), sys.version_info >= (3, 10), m.__version__)"
    )
    train_path, modern, version = run_in(docker_client, name, "-c", probe, entrypoint=["python3"]).split()
    assert train_path.endswith("/train") and modern == "True"
    assert version.startswith("3.0.5" if framework == "xgboost" else "2.")
    if framework == "pytorch":
        # Same ENTRYPOINT and framework module as the prebuilt PyTorch images.
        assert attrs["Config"]["Entrypoint"] == ["bash", "-m", "start_with_right_hostname.sh"]
        assert "SAGEMAKER_TRAINING_MODULE=sagemaker_pytorch_container.training:main" in attrs["Config"]["Env"]


def test_standin_is_cached_by_the_hash_of_its_inputs(docker_client, standin_xgboost):
    before = docker_client.images.get(standin_xgboost)
    ctx = standin.standin_context("xgboost")
    python_base = standin.python_base("auto")
    expected = ctx.digest(f"PYTHON_BASE={docker_client.images.get(python_base).id}", f"TORCH_VERSION={standin.TORCH_VERSION}")
    assert before.labels[standin.INPUTS_LABEL] == expected
    assert standin.ensure_standin("xgboost") == standin_xgboost
    assert docker_client.images.get(standin_xgboost).id == before.id  # not rebuilt
    # Any change to an input changes the hash, so the next `make bases` rebuilds.
    ctx.add_bytes("requirements.txt", b"xgboost==3.0.5\nnumpy==2.1.0\n")
    assert ctx.digest(f"PYTHON_BASE={docker_client.images.get(python_base).id}", f"TORCH_VERSION={standin.TORCH_VERSION}") != expected


def test_tiny_image_trains_in_sdk_local_mode(tiny_image, tmp_path):
    result = run(
        JobSpec(image=tiny_image, channels=[Channel("train", str(SAMPLE / "train"))], hyperparameters={"num_round": 20}),
        runs_dir=tmp_path, stream=False, timeout=300,
    )
    assert result.ok, result.log()[-3000:]
    with tarfile.open(result.model_artifact) as archive:
        assert [m.name for m in archive.getmembers() if m.isfile()] == ["xgboost-model.ubj"]
        archive.extractall(tmp_path / "model", filter="data")
    booster = xgb.Booster(model_file=str(tmp_path / "model" / "xgboost-model.ubj"))
    assert booster.num_boosted_rounds() == 20
    # It learned something real: held-out AUC on the sample's validation split.
    data = np.loadtxt(SAMPLE / "validation" / "validation.csv", delimiter=",")
    scores = booster.predict(xgb.DMatrix(data[:, 1:]))
    positives, negatives = scores[data[:, 0] == 1], scores[data[:, 0] == 0]
    auc = (positives[:, None] > negatives[None, :]).mean()
    assert auc > 0.95
    assert result.metrics["train:auc"] > 0.95


def test_failing_job_reports_the_scripts_reason(tiny_image, tmp_path):
    result = run(
        JobSpec(image=tiny_image, channels=[Channel("train", str(SAMPLE / "train"))], hyperparameters={"fail": True}),
        runs_dir=tmp_path, stream=False, timeout=300,
    )
    assert not result.ok and result.status == "Failed"
    assert result.failure_reason == "Tiny script asked to fail by hyperparameter fail=true; remove it to train."
