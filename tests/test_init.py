"""`init` end to end on the real engine and SageMaker SDK local mode: a new image per framework (the
example script, and three tutorial-style scripts that know nothing of smkit) builds on its stand-in base
and trains on the sample data init wrote, with no other edit. Every test works in a scratch project."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.test_build import manifest_entry, run_build

pytestmark = pytest.mark.docker
REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures" / "byo"
# What each example script prints (the summary must list them all).
EXAMPLE_METRICS = {
    "xgboost": {"train:auc", "train:logloss", "validation:auc", "validation:logloss"},
    "pytorch": {"train:loss", "validation:loss", "validation:accuracy"},
    "sklearn": {"train:accuracy", "validation:accuracy"},
}
MODEL_FILE = {"xgboost": "xgboost-model.json", "pytorch": "model.pth", "sklearn": "model.joblib"}


def local_run(project: Path, *args: str) -> dict:
    """`python -m local_mode run` in the project (what `make local` runs); returns its summary.json."""
    proc = subprocess.run([sys.executable, "-m", "local_mode", "run", "--quiet", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=900, env=dict(os.environ, SMKIT_PROJECT=str(project), COLUMNS="200"))
    runs = sorted((project / "local_mode" / "runs").glob("*/summary.json"), key=lambda p: p.stat().st_mtime)
    assert proc.returncode == 0 and runs, proc.stdout + proc.stderr + (runs[-1].parent.joinpath("log.txt").read_text() if runs else "")
    summary = json.loads(runs[-1].read_text())
    for name in summary["metrics"]:
        assert name in proc.stdout  # the printed summary lists them too
    return summary


def model_files(summary: dict) -> list[str]:
    with tarfile.open(summary["model_artifact"]) as archive:
        return [name.lstrip("./") for name in archive.getnames()]


@pytest.fixture
def project(tmp_path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    return root


@pytest.mark.parametrize("framework", ["xgboost", "pytorch", "sklearn"])
def test_init_example_builds_and_trains(framework, project, request, docker_client):
    request.getfixturevalue(f"standin_{framework}")
    name = f"my-{framework}"
    run_build(project, "init", name, "--framework", framework)
    script = (project / "train_scripts" / name / "train.py").read_text()
    assert "sm_contract" not in script and "SM_MODEL_DIR" in script and "failure" in script
    run_build(project, "build", "--image", name, "--base", "local")
    image = docker_client.images.get(manifest_entry(project, name)["local_ref"])
    assert f"SAGEMAKER_PROGRAM=train.py" in image.attrs["Config"]["Env"]
    summary = local_run(project, "--image", name)
    assert summary["status"] == "Completed"
    assert set(summary["metrics"]) == EXAMPLE_METRICS[framework]
    assert MODEL_FILE[framework] in model_files(summary)


def test_init_refuses_to_overwrite(project):
    first = run_build(project, "init", "model", "--framework", "sklearn")
    toml = (project / "images.toml").read_text()
    (project / "train_scripts" / "model" / "train.py").write_text("# mine\n")
    again = run_build(project, "init", "model", "--framework", "xgboost", check=False)
    assert again.returncode == 1 and "init would overwrite what exists" in again.stderr and "fix:" in again.stderr
    assert "[images.model]" in again.stderr and "Traceback" not in again.stderr
    assert (project / "train_scripts" / "model" / "train.py").read_text() == "# mine\n"
    assert (project / "images.toml").read_text() == toml
    # Only the table is taken: a second image appends its table and keeps the comments.
    (project / "images.toml").write_text("# our images\n" + toml)
    run_build(project, "init", "other", "--framework", "xgboost")
    text = (project / "images.toml").read_text()
    assert text.startswith("# our images\n") and "[images.model]" in text and "[images.other]" in text
    assert "next, build it" in first.stdout


def test_init_from_writes_requirements_from_the_imports(project):
    run_build(project, "init", "tut", "--framework", "xgboost", "--from", str(FIXTURES / "xgboost_tutorial.py"))
    lines = (project / "train_scripts" / "tut" / "requirements.txt").read_text().splitlines()
    packages = [line for line in lines if line and not line.startswith("#")]
    assert packages == ["joblib"]  # argparse, os: standard library
    # What the real XGBoost base ships (containers/standin/real_bases.toml) is commented out, sklearn under its pip name.
    assert "# pandas  (the base ships it 2.2.3)" in lines and "# xgboost  (the base ships it 3.0.5)" in lines
    assert "# scikit-learn  (the base ships it 1.5.2)" in lines
    entry = (project / "images.toml").read_text()
    assert 'program = "xgboost_tutorial.py"' in entry and 'scripts = "train_scripts/tut"' in entry
    # A helper module next to the script is the user's own code, not a pip package: init says to copy it.
    source = project.parent / "src"
    source.mkdir()
    (source / "helpers.py").write_text("X = 1\n")
    (source / "fit.py").write_text("import helpers\nimport requests\nfrom sklearn import tree\n")
    proc = run_build(project, "init", "two", "--framework", "sklearn", "--from", str(source / "fit.py"))
    assert "fit.py imports helpers, which sits next to it: copy it into train_scripts/two/" in proc.stderr
    lines = (project / "train_scripts" / "two" / "requirements.txt").read_text().splitlines()
    assert [line for line in lines if line and not line.startswith("#")] == ["requests"]
    assert "# scikit-learn  (the base ships it 1.4.2)" in lines


@pytest.mark.parametrize("framework,script,args,metrics", [
    ("xgboost", "xgboost_tutorial.py", [], {"validation:accuracy", "validation:auc"}),
    ("pytorch", "pytorch_tutorial.py", ["--hp", "train_file=/opt/ml/input/data/train/train.npz",
                                         "--hp", "test_file=/opt/ml/input/data/validation/validation.npz"],
     {"loss", "test_accuracy"}),
    ("sklearn", "sklearn_tutorial.py", [], {"accuracy"}),
])
def test_init_from_a_tutorial_script_trains_unchanged(framework, script, args, metrics, project, request, docker_client):
    request.getfixturevalue(f"standin_{framework}")
    run_build(project, "init", "tut", "--framework", framework, "--from", str(FIXTURES / script))
    assert (project / "train_scripts" / "tut" / script).read_bytes() == (FIXTURES / script).read_bytes()
    run_build(project, "build", "--image", "tut", "--base", "local")
    summary = local_run(project, "--image", "tut", *args)
    assert summary["status"] == "Completed"
    assert set(summary["metrics"]) == metrics
    assert 0.8 < max(v for k, v in summary["metrics"].items() if "acc" in k) <= 1.0
    assert model_files(summary)
