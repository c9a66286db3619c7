"""The XGBoost and PyTorch images, built on the stand-in bases, trained through SageMaker SDK local mode
(v2 Estimator and v3 ModelTrainer, one and two instances) on real data that scikit-learn ships, and
judged on a held-out split the job never saw."""

from __future__ import annotations

import importlib.util
import json
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import xgboost as xgb
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split

from local_mode import Channel, JobSpec
from local_mode import run as run_job
from smkit import catalog, images

pytestmark = pytest.mark.docker
REPO = Path(__file__).resolve().parent.parent
SDK3_PYTHON = str(REPO / ".venv-sdk3" / "bin" / "python")


@pytest.fixture(scope="module")
def built(standin_xgboost, standin_pytorch) -> dict[str, str]:
    """Both images of images.toml, built on the stand-in bases exactly as `make build BASE=local` does."""
    specs = catalog.load()
    return {name: images.build_image(specs[name], base_choice="local").ref for name in ("xgboost", "pytorch")}


def split(X, y, seed=0):
    """train / validation / held-out test: 60 / 20 / 20."""
    X_rest, X_test, y_rest, y_test = train_test_split(X, y, test_size=0.2, random_state=seed, stratify=y)
    X_train, X_val, y_train, y_val = train_test_split(X_rest, y_rest, test_size=0.25, random_state=seed, stratify=y_rest)
    return (X_train, y_train), (X_val, y_val), (X_test, y_test)


def run(image: str, channels: dict[str, Path], hyperparameters: dict, runs: Path, hosts: int = 1, sdk: str = "v2"):
    spec = JobSpec(image=image, channels=[Channel(n, str(p)) for n, p in channels.items()],
                   hyperparameters=hyperparameters, instance_count=hosts, sdk=sdk)
    return run_job(spec, "sdk", runs_dir=runs, python=SDK3_PYTHON if sdk == "v3" else None, stream=False, timeout=600)


def unpack(result, into: Path) -> Path:
    assert result.ok, f"{result.status}: {result.failure_reason or result.error}\n{result.log()[-4000:]}"
    with tarfile.open(result.model_artifact) as archive:
        archive.extractall(into, filter="data")
    return into


# -------------------------------------------------------------------------------------------------
# XGBoost


@pytest.fixture(scope="module")
def cancer(tmp_path_factory):
    root = tmp_path_factory.mktemp("cancer")
    train, val, test = split(*load_breast_cancer(return_X_y=True))
    for name, (X, y) in (("train", train), ("validation", val)):
        (root / name).mkdir()
        np.savetxt(root / name / f"{name}.csv", np.column_stack([y, X]), delimiter=",", fmt="%.10g")
    return {"train": root / "train", "validation": root / "validation"}, test


XGB_HPS = {"objective": "binary:logistic", "eval_metric": "auc", "num_round": 40, "max_depth": 3, "eta": 0.3, "seed": 7}


def xgb_test_auc(model_dir: Path, test) -> float:
    booster = xgb.Booster(model_file=str(model_dir / "xgboost-model"))  # plain xgboost, no pickle
    X, y = test
    return roc_auc_score(y, booster.predict(xgb.DMatrix(X)))


@pytest.mark.parametrize("sdk,hosts", [("v2", 1), ("v2", 2), ("v3", 1), ("v3", 2)])
def test_xgboost_image_trains_in_local_mode(built, cancer, tmp_path, sdk, hosts):
    channels, test = cancer
    result = run(built["xgboost"], channels, XGB_HPS, tmp_path / "runs", hosts, sdk)
    model_dir = unpack(result, tmp_path / "model")
    assert result.sdk == sdk
    assert sorted(p.name for p in model_dir.iterdir()) == ["model-metadata.json", "xgboost-model"]
    assert xgb_test_auc(model_dir, test) > 0.97
    metadata = json.loads((model_dir / "model-metadata.json").read_text())
    assert metadata["num_features"] == 30 and metadata["metrics"]["validation:auc"] == pytest.approx(result.metrics["validation:auc"], rel=1e-5)
    assert result.metrics["validation:auc"] > 0.95
    if hosts == 2:
        log = result.log()
        assert "Joined the collective as rank 0 of 2." in log and "Joined the collective as rank 1 of 2." in log


def test_xgboost_image_reports_bad_input(built, cancer, tmp_path):
    channels, _ = cancer
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "part-0.csv").write_text("1,2.5,3\n0,4\n1,1,1\n")  # a ragged row
    result = run(built["xgboost"], {"train": bad}, XGB_HPS, tmp_path / "runs")
    assert result.status == "Failed" and result.model_artifact is not None
    assert result.failure_reason == ("File train/part-0.csv has a row with 2 fields at row 2 where the others have 3 "
                                     "('0,4'); give every row the same number of fields.")
    with tarfile.open(result.model_artifact) as archive:
        assert [m for m in archive.getmembers() if m.isfile()] == []  # no partial model


# -------------------------------------------------------------------------------------------------
# PyTorch


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    X, y = load_digits(return_X_y=True)
    train, val, test = split(X.astype(np.float32), y)
    for name, (Xs, ys) in (("train", train), ("validation", val)):
        (root / name).mkdir()
        np.savez(root / name / f"{name}.npz", X=Xs, y=ys)
    return {"train": root / "train", "validation": root / "validation"}, test


TORCH_HPS = {"epochs": 15, "hidden_sizes": [64], "batch_size": 64, "learning_rate": 0.003, "seed": 3}


def torch_test_accuracy(model_dir: Path, test) -> float:
    """Rebuild from model.pt (weights_only) + model-config.json, and check the TorchScript export agrees."""
    spec = importlib.util.spec_from_file_location("pytorch_train", REPO / "train_scripts" / "pytorch" / "train.py")
    module = sys.modules.setdefault(spec.name, importlib.util.module_from_spec(spec))
    spec.loader.exec_module(module)
    predictor, config = module.load_model(model_dir)
    X, y = test
    with torch.no_grad():
        logits = predictor(torch.from_numpy(X))
        scripted = torch.jit.load(str(model_dir / "model.ts"))(torch.from_numpy(X))
    torch.testing.assert_close(scripted, logits)
    return float((logits.argmax(1).numpy() == y).mean())


@pytest.mark.parametrize("sdk,hosts", [("v2", 1), ("v2", 2), ("v3", 1), ("v3", 2)])
def test_pytorch_image_trains_in_local_mode(built, digits, tmp_path, sdk, hosts):
    channels, test = digits
    result = run(built["pytorch"], channels, TORCH_HPS, tmp_path / "runs", hosts, sdk)
    model_dir = unpack(result, tmp_path / "model")
    state = torch.load(model_dir / "model.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert torch_test_accuracy(model_dir, test) >= 0.93
    log = result.log()
    if hosts == 2:  # both hosts joined one process group
        assert "world_size=2 rank=0 backend=gloo" in log and "world_size=2 rank=1 backend=gloo" in log
    else:
        assert "world_size=1" in log


def test_pytorch_image_reports_bad_input(built, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    np.savez(bad / "data.npz", features=np.zeros((4, 3)), labels=np.zeros(4))
    result = run(built["pytorch"], {"train": bad}, TORCH_HPS, tmp_path / "runs")
    assert result.status == "Failed"
    assert "data.npz" in result.failure_reason
    with tarfile.open(result.model_artifact) as archive:
        assert [m for m in archive.getmembers() if m.isfile()] == []
