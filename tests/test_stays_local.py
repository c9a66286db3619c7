"""Local runs stay local: SDK v2 and v3 local jobs (`python -m local_mode run`) and `build.py build
--base local` each run in a network namespace that has only loopback (tests/netns.py). The verdict is the
namespace's: the command succeeded where no route leads off the machine, so nothing it did needed one:
no AWS call, no telemetry, no name lookup of a remote host. The containers themselves run in dockerd's
network, outside the namespace."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.netns import assert_no_route_out, loopback_only
from tests.projects import copy_project, run_build_py

pytestmark = pytest.mark.docker
REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "local_mode" / "sample_data" / "xgboost"
SDK_PYTHON = {"v2": sys.executable, "v3": str(REPO / ".venv-sdk3" / "bin" / "python")}


@pytest.mark.parametrize("sdk", ["v2", "v3"])
def test_a_local_job_runs_where_there_is_no_route_out(sdk, tiny_image, tmp_path):
    runs, probe = tmp_path / "runs", tmp_path / "probe"
    wrap, env = loopback_only(probe)
    proc = subprocess.run(
        [*wrap, SDK_PYTHON[sdk], "-m", "local_mode", "run", "--image", tiny_image, "--sdk", sdk,
         "--channel", f"train={SAMPLE / 'train'}", "--content-type", "train=text/csv", "--hp", "num_round=3",
         "--runs-dir", str(runs), "--quiet"],
        cwd=REPO, capture_output=True, text=True, timeout=600, env={**os.environ, "COLUMNS": "200", **env},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_no_route_out(probe)
    (run_dir,) = list(runs.iterdir())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "Completed" and summary["sdk"] == sdk
    assert Path(summary["model_artifact"]).exists()
    # The job is the one asked for: the channel's ContentType reached the container (v3 once dropped it).
    (line,) = {l.split("tiny: inputdataconfig ", 1)[1] for l in (run_dir / "log.txt").read_text().splitlines()
               if "tiny: inputdataconfig " in l}
    assert json.loads(line)["train"]["ContentType"] == "text/csv", line
    # Telemetry is opted out through the run's own SDK config, not the user's home.
    assert (run_dir / "sagemaker-config.yaml").read_text().count("TelemetryOptOut: true") == 1


def test_build_base_local_runs_where_there_is_no_route_out(standin_xgboost, tmp_path):
    """A real build (the script edited, so the image is rebuilt, pip-frozen and labelled), no route out."""
    project = copy_project(tmp_path / "project")
    with open(project / "train_scripts" / "xgboost" / "train.py", "a") as script:
        script.write(f"\n# edited by {__name__} ({tmp_path.name})\n")  # new inputs: a real build, not "up to date"
    probe = tmp_path / "probe"
    wrap, env = loopback_only(probe)
    proc = run_build_py(project, "build", "--base", "local", "--image", "xgboost", wrap=wrap, env=env)
    assert_no_route_out(probe)
    entry = json.loads((project / "build" / "images.json").read_text())["images"]["xgboost"]
    assert entry["cached"] is False and entry["base_kind"] and entry["local_ref"] in proc.stdout
