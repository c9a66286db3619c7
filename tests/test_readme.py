"""The README's "Bring your own script" section, run as written: the commands of its shell block (with the
installed `smkit` command, in a project directory outside the repository, against a real registry), and
its Python snippet compiled."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_build import docker_config
from tests.test_cli_install import install_smkit, smkit_env

pytestmark = pytest.mark.docker
REPO = Path(__file__).resolve().parent.parent
README_REGISTRY = "127.0.0.1:5000"


def section_blocks(title: str) -> list[tuple[str, str]]:
    text = (REPO / "README.md").read_text()
    section = text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(\w+)\n(.*?)```", section, flags=re.S)


def test_bring_your_own_script_runs_as_written(tmp_path, registry, standin_sklearn, docker_client):
    blocks = section_blocks("Bring your own script")
    (shell,) = [body for kind, body in blocks if kind == "bash"]
    (python,) = [body for kind, body in blocks if kind == "python"]
    compile(python, "README.md", "exec")

    commands = [line.split("  #")[0].strip() for line in shell.strip().splitlines()]
    assert commands[0].startswith("pip install ") and commands[1] == "cd my-project", commands
    smkit = install_smkit(tmp_path)  # what `pip install ./smkit` does (offline, non-editable)
    project = tmp_path / "my-project"
    project.mkdir()
    shutil.copy(REPO / "tests" / "fixtures" / "byo" / "sklearn_tutorial.py", project / "train.py")
    env = smkit_env(smkit)
    env["DOCKER_CONFIG"] = str(docker_config(tmp_path / "docker", registry))
    outputs = []
    for command in commands[2:]:
        words = shlex.split(command.replace(README_REGISTRY, registry.host))
        assert words[0] == "smkit", command
        proc = subprocess.run([sys.executable, str(smkit), *words[1:]], cwd=project, env=env, capture_output=True,
                              text=True, timeout=900)
        assert proc.returncode == 0, f"{command}\n{proc.stdout}\n{proc.stderr}"
        outputs.append(proc.stdout)

    (summary,) = [json.loads(p.read_text()) for p in (project / "local_mode" / "runs").glob("*/summary.json")]
    assert summary["status"] == "Completed" and "accuracy" in summary["metrics"]
    pushed = json.loads((project / "build" / "images.json").read_text())["images"]["churn"]["pushed"]
    assert f"pinned:    {registry.host}/team/churn@{pushed['digest']}" in outputs[-1]
    assert registry.manifest_digest("team/churn", pushed["tags"][0]) == pushed["digest"]

    # The cloud job of the same image gets a metric definition for each name the local run printed.
    cloud = subprocess.run([sys.executable, str(smkit), "run", "--image", "churn", "--cloud", "--dry-run", "--region", "us-east-1",
                            "--role", "arn:aws:iam::123456789012:role/SageMaker", "--channel", "train=s3://bucket/train",
                            "--output-path", "s3://bucket/out"], cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert cloud.returncode == 0, cloud.stdout + cloud.stderr
    request = json.loads(cloud.stdout)
    definitions = request["AlgorithmSpecification"]["MetricDefinitions"]
    assert [d["Name"] for d in definitions] == sorted(summary["metrics"])
    assert request["AlgorithmSpecification"]["TrainingImage"] == f"{registry.host}/team/churn@{pushed['digest']}"
    log = next((project / "local_mode" / "runs").glob("*/log.txt")).read_text()
    for definition in definitions:  # each regex finds, in the local log, the value the summary shows
        values = [float(m.group(1)) for m in map(re.compile(definition["Regex"]).search, log.splitlines()) if m]
        assert values and values[-1] == summary["metrics"][definition["Name"]]
