"""The generated Dockerfile (the template) and a hand-written one build the same image contract, and a
hand-written one that disagrees with images.toml stops the build with the fix."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from smkit import dockerfile, images_toml
from smkit.standin import STANDINS
from smkit.errors import ConfigError
from tests.test_build import manifest_entry, run_build

pytestmark = pytest.mark.docker

SCRIPT = "import os\nprint('hello from', os.environ.get('SAGEMAKER_PROGRAM'))\n"
TOML = """
[images.generated]
framework = "xgboost"
version = "3.0-5"
scripts = ["src/common", "src/model"]
requirements = "src/requirements.txt"
program = "fit.py"

[images.handwritten]
framework = "xgboost"
version = "3.0-5"
dockerfile = "docker/Dockerfile"
scripts = ["src/common", "src/model"]
requirements = "src/requirements.txt"
program = "fit.py"
"""

def _keep_failure_block() -> str:
    """The template's keep-failure lines (containers/smkit_keep_failure.py), which an own Dockerfile carries too."""
    from smkit.paths import TEMPLATE

    text = TEMPLATE.read_text()
    return text[text.index("# >>> smkit keep-failure"):text.index("# <<< smkit keep-failure")]


# What a user would write by hand for the same image (the template's steps, with project paths).
HANDWRITTEN = """
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
COPY build-ca.crt src/requirements.txt /tmp/smkit-build/
RUN PIP_CERT=/tmp/smkit-build/build-ca.crt python3 -m pip install --no-cache-dir -r /tmp/smkit-build/requirements.txt \\
    && rm -rf /tmp/smkit-build /root/.cache
""" + _keep_failure_block() + """
ENV SAGEMAKER_PROGRAM=fit.py
COPY src/common/ src/model/ /opt/ml/code/
CMD ["train"]
"""


def make_project(root: Path, handwritten: str = HANDWRITTEN) -> Path:
    (root / "src" / "common").mkdir(parents=True)
    (root / "src" / "model").mkdir(parents=True)
    (root / "docker").mkdir()
    (root / "src" / "common" / "helpers.py").write_text("VALUE = 1\n")
    (root / "src" / "model" / "fit.py").write_text(SCRIPT)
    (root / "src" / "requirements.txt").write_text("# nothing beyond the base\n")
    (root / "docker" / "Dockerfile").write_text(handwritten)
    (root / "images.toml").write_text(TOML)
    return root


def code_listing(docker_client, image: str) -> list[str]:
    """Every file of /opt/ml/code with its mode and content hash."""
    out = docker_client.containers.run(
        image, ["-c", "cd /opt/ml/code && find . -type f -exec stat -c '%n %a' {} \\; -exec sha256sum {} \\; | sort"],
        entrypoint=["sh"], remove=True, network_disabled=True)
    return out.decode().splitlines()


def last_layer_step(docker_client, image: str) -> str:
    """The instruction of the image's last non-empty layer before the label-only pass."""
    steps = [h for h in docker_client.images.get(image).history() if h.get("Size", 0) > 0]
    return steps[0]["CreatedBy"]


def test_generated_and_handwritten_dockerfiles_give_the_same_contract(tmp_path, docker_client, standin_xgboost):
    project = make_project(tmp_path / "project")
    run_build(project, "build", "--base", "local")
    generated, handwritten = manifest_entry(project, "generated"), manifest_entry(project, "handwritten")
    g = docker_client.images.get(generated["local_ref"]).attrs["Config"]
    h = docker_client.images.get(handwritten["local_ref"]).attrs["Config"]
    program = lambda config: [e for e in config["Env"] if e.startswith("SAGEMAKER_PROGRAM=")]  # noqa: E731
    assert program(g) == program(h) == ["SAGEMAKER_PROGRAM=fit.py"]
    assert g["Entrypoint"] == h["Entrypoint"] == docker_client.images.get(standin_xgboost).attrs["Config"]["Entrypoint"]
    assert g["Cmd"] == h["Cmd"] == ["train"]
    # The code layer: same files, modes and bytes (no requirements.txt left for job start), and it is the last layer.
    listing = code_listing(docker_client, generated["local_ref"])
    assert listing == code_listing(docker_client, handwritten["local_ref"])
    assert any(line.startswith("./fit.py ") for line in listing) and any(line.startswith("./helpers.py ") for line in listing)
    for entry in (generated, handwritten):
        assert "/opt/ml/code/" in last_layer_step(docker_client, entry["local_ref"])
    # (The layer digests themselves differ: the engine stamps /opt/ml/code's own mtime at build time.)
    assert len(generated["layers"]) == len(handwritten["layers"])


def test_a_handwritten_dockerfile_that_disagrees_stops_the_build(tmp_path, docker_client, standin_xgboost):
    project = make_project(tmp_path / "project", HANDWRITTEN.replace("SAGEMAKER_PROGRAM=fit.py", "SAGEMAKER_PROGRAM=train.py"))
    proc = run_build(project, "build", "--image", "handwritten", "--base", "local", check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "sets SAGEMAKER_PROGRAM=train.py, but images.toml says program = \"fit.py\"" in proc.stderr
    assert "fix:" in proc.stderr and "ENV SAGEMAKER_PROGRAM=fit.py" in proc.stderr and "Traceback" not in proc.stderr
    assert not (project / "build").exists()
    # --dry-run names the Dockerfile and the build args of each image (and checks the own one too).
    dry = run_build(project, "build", "--image", "generated", "--base", "local", "--dry-run")
    assert f"Dockerfile --build-arg BASE_IMAGE={STANDINS['xgboost']} --build-arg PROGRAM=fit.py" in dry.stdout
    assert "code/ = src/common + src/model" in dry.stdout


def spec_of(body: str) -> images_toml.ImageSpec:
    (name, table), = __import__("tomllib").loads(textwrap.dedent(body))["images"].items()
    return images_toml.spec_from_table(name, table, name)


@pytest.mark.parametrize("text,message", [
    (HANDWRITTEN, None),
    (HANDWRITTEN.replace("ENV SAGEMAKER_PROGRAM=fit.py", "ARG PROGRAM=fit.py\nENV SAGEMAKER_PROGRAM=${PROGRAM}"), None),
    (HANDWRITTEN.replace("ENV SAGEMAKER_PROGRAM=fit.py", "ENV SAGEMAKER_PROGRAM fit.py"), None),
    (HANDWRITTEN.replace("ENV SAGEMAKER_PROGRAM=fit.py\n", ""), "sets no SAGEMAKER_PROGRAM"),
    (HANDWRITTEN.replace("ENV SAGEMAKER_PROGRAM=fit.py", "ENV A=1 SAGEMAKER_PROGRAM=main.py"), "SAGEMAKER_PROGRAM=main.py, but"),
    (HANDWRITTEN.replace("COPY src/common/ src/model/", "COPY src/model/"), "copies no src/common into /opt/ml/code"),
    (HANDWRITTEN.replace("src/requirements.txt /tmp", "/tmp"), "never copies src/requirements.txt"),
])
def test_handwritten_dockerfile_checks(text, message):
    spec = spec_of(TOML.split("[images.handwritten]")[0].replace("[images.generated]", "[images.h]")
                   .replace("program", 'dockerfile = "docker/Dockerfile"\nprogram'))
    if message is None:
        dockerfile.check_agrees(spec, text, {"BASE_IMAGE": "b", "PROGRAM": spec.program})
    else:
        with pytest.raises(ConfigError) as raised:
            dockerfile.check_agrees(spec, text, {"BASE_IMAGE": "b", "PROGRAM": spec.program})
        assert message in raised.value.what and raised.value.fix


def test_any_base_image_by_uri(tmp_path, docker_client, standin_xgboost):
    """base_uri: a team's own base, used as it is (no region, no SageMaker registry), with the template."""
    project = make_project(tmp_path / "project")
    with open(project / "images.toml", "a") as handle:
        handle.write(f'\n[images.own-base]\nbase_uri = "{standin_xgboost}"\nscripts = "src/model"\nprogram = "fit.py"\n')
    dry = run_build(project, "build", "--image", "own-base", "--dry-run", env={"AWS_REGION": "", "AWS_DEFAULT_REGION": ""})
    assert f"own-base: base {standin_xgboost} (uri)" in dry.stdout
    run_build(project, "build", "--image", "own-base")
    entry = manifest_entry(project, "own-base")
    assert entry["base"] == standin_xgboost and entry["base_kind"] == "uri" and entry["repository"] == "own-base"
    out = docker_client.containers.run(entry["local_ref"], ["-c", "ls /opt/ml/code; echo $SAGEMAKER_PROGRAM"], entrypoint=["sh"],
                                       remove=True, network_disabled=True).decode().split()
    assert out == ["fit.py", "fit.py"]
    refused = run_build(project, "build", "--image", "own-base", "--base", "local", check=False)
    assert refused.returncode == 1 and "has no offline stand-in" in refused.stderr and "fix:" in refused.stderr
