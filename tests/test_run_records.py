"""What every local run leaves for later: its learning curves (metrics.csv, curves.png) and its line in
`python -m local_mode runs`. Real SDK local-mode jobs of the reference XGBoost image on the sample data,
built from a scratch copy of the project; the runs live in a temporary directory."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from local_mode import Channel, JobSpec, run_local
from local_mode.curves import COLUMNS

pytestmark = pytest.mark.docker
REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "local_mode" / "sample_data" / "xgboost"


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "local_mode", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "COLUMNS": "80", **(env or {})})


@pytest.fixture(scope="module")
def xgboost_image(tmp_path_factory, standin_xgboost) -> str:
    """The reference XGBoost image, built by build.py from a scratch copy of the project."""
    project = tmp_path_factory.mktemp("project")
    shutil.copy(REPO / "images.toml", project / "images.toml")
    shutil.copy(REPO / ".dockerignore", project / ".dockerignore")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "containers" / "xgboost", project / "containers" / "xgboost", ignore=ignore)
    for scripts in ("common", "xgboost"):
        shutil.copytree(REPO / "train_scripts" / scripts, project / "train_scripts" / scripts, ignore=ignore)
    proc = subprocess.run([sys.executable, str(REPO / "build.py"), "build", "--image", "xgboost", "--base", "local"],
                          capture_output=True, text=True, timeout=900, env={**os.environ, "SMKIT_PROJECT": str(project)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads((project / "build" / "images.json").read_text())["images"]["xgboost"]["local_ref"]


@pytest.fixture(scope="module")
def two_runs(xgboost_image, tmp_path_factory):
    """Two real jobs, one after the other: (runs dir, [older result, newer result])."""
    runs_dir = tmp_path_factory.mktemp("runs")
    channels = [Channel("train", str(SAMPLE / "train"), "text/csv"), Channel("validation", str(SAMPLE / "validation"), "text/csv")]
    results = []
    for hyperparameters in ({"objective": "binary:logistic", "eval_metric": "auc", "num_round": 4},
                            {"objective": "binary:logistic", "eval_metric": ["auc", "logloss"], "num_round": 6, "max_depth": 3}):
        spec = JobSpec(image=xgboost_image, image_name="xgboost", channels=channels, hyperparameters=hyperparameters, sdk="v2")
        result = run_local(spec, runs_dir=runs_dir, stream=False, timeout=600)
        assert result.ok, result.log()[-3000:]
        results.append(result)
    return runs_dir, results


def test_a_run_writes_its_learning_curves(two_runs):
    _, (_, result) = two_runs
    run_dir = Path(result.run_dir)
    assert result.extra["metrics_csv"] == str(run_dir / "metrics.csv")
    assert result.extra["curves"] == str(run_dir / "curves.png")
    with open(run_dir / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == COLUMNS
    # Every round the script printed, every metric of it, in the log's order, the host named.
    names = ["train:auc", "train:logloss", "validation:auc", "validation:logloss"]
    assert {r["metric"] for r in rows} == set(names)
    assert [int(r["step"]) for r in rows if r["metric"] == "validation:logloss"] == list(range(6))
    assert {r["kind"] for r in rows} == {"round"} and all(r["host"] for r in rows)
    last = {r["metric"]: float(r["value"]) for r in rows}
    assert last == pytest.approx(result.metrics)  # the final values are the summary's
    # A real PNG, with one panel per family (train and validation together): two columns of 480 pixels.
    with Image.open(run_dir / "curves.png") as image:
        image.verify()
    with Image.open(run_dir / "curves.png") as image:
        assert image.format == "PNG" and image.size == (960, 390)
        assert image.info["Description"] == "panels: auc, logloss"
        assert image.info["Title"] == result.job_name


def test_the_summary_prints_where_the_curves_are(two_runs):
    from local_mode import summary
    from smkit import console
    from rich.console import Console
    import io

    _, (_, result) = two_runs
    buffer = io.StringIO()
    saved, console.out = console.out, Console(file=buffer, width=60, color_system=None)
    try:
        summary.show(result)
    finally:
        console.out = saved
    assert result.extra["curves"] in buffer.getvalue() and result.extra["metrics_csv"] in buffer.getvalue()


def test_runs_lists_past_runs_newest_first(two_runs):
    runs_dir, (older, newer) = two_runs
    listed = json.loads(cli("runs", "--runs-dir", str(runs_dir), "--json").stdout)
    assert [r["job_name"] for r in listed] == [newer.job_name, older.job_name]
    assert listed[0]["hyperparameters"]["num_round"] == 6 and listed[1]["hyperparameters"]["num_round"] == 4
    assert listed[0]["metrics"] == newer.metrics and listed[0]["status"] == "Completed"
    assert listed[0]["wall_seconds"] == newer.wall_seconds and listed[0]["sdk"] == "v2" and listed[0]["backend"] == "sdk"
    assert listed[0]["curves"] == newer.extra["curves"]

    plain = cli("runs", "--runs-dir", str(runs_dir))
    assert plain.returncode == 0, plain.stderr
    lines = plain.stdout.splitlines()
    assert lines[0].split()[:3] == ["started", "(UTC)", "status"]
    # One line per run, newest first, never folded at the (narrow) terminal width.
    assert len(lines) == 3 and newer.job_name in lines[1] and older.job_name in lines[2]
    assert "num_round=6" in lines[1] and "validation:logloss=" in lines[1] and "Completed" in lines[1]
    assert lines[1].index(newer.job_name) == lines[2].index(older.job_name)  # aligned

    assert len(json.loads(cli("runs", "--runs-dir", str(runs_dir), "--image", "xgboost", "--json").stdout)) == 2
    assert json.loads(cli("runs", "--runs-dir", str(runs_dir), "--image", "pytorch", "--json").stdout) == []
    assert [r["job_name"] for r in json.loads(cli("runs", "--runs-dir", str(runs_dir), "--last", "1", "--json").stdout)] == [newer.job_name]


def test_the_cli_prints_the_summary_before_it_draws_the_curves(xgboost_image, tmp_path):
    """The plot (matplotlib's import and rendering, ~0.8 s) comes after the result, yet is there when the CLI exits."""
    proc = cli("run", "--backend", "direct", "--image", xgboost_image, "--quiet", "--runs-dir", str(tmp_path),
               "--channel", f"train={SAMPLE / 'train'}", "--channel", f"validation={SAMPLE / 'validation'}",
               "--content-type", "train=text/csv", "--content-type", "validation=text/csv",
               "--hp", "objective=binary:logistic", "--hp", "eval_metric=auc", "--hp", "num_round=5")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    png = run_dir / "curves.png"
    assert str(png) in proc.stdout and png.stat().st_size > 0
    # Written after summary.json, which the job's end writes just before the summary is printed.
    assert png.stat().st_mtime_ns >= (run_dir / "summary.json").stat().st_mtime_ns


def test_deferred_curves_are_drawn_when_asked_or_at_the_end(tmp_path):
    from local_mode import curves

    history = [{"kind": "round", "step": i, "host": "algo-1", "metrics": {"train:auc": 0.5 + i / 10, "validation:auc": 0.4 + i / 10}}
               for i in range(3)]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with curves.drawing_deferred():
        first = curves.write_curves(history, tmp_path / "a")
        assert first.csv.exists() and first.png == tmp_path / "a" / "curves.png" and not first.png.exists()
        curves.draw_pending()
        assert first.png.exists()
        second = curves.write_curves(history, tmp_path / "b")
        assert not second.png.exists()
    assert second.png.exists()
    third = curves.write_curves(history, tmp_path / "a", title="drawn at once")  # outside the block: at once
    assert third.png.exists() and third.png.stat().st_mtime_ns >= first.png.stat().st_mtime_ns
