"""Guards against drifting away from the real prebuilt bases (containers/standin/real_bases.toml):

1. The code that runs inside the images (train_scripts/**, sm_contract, the keep-failure module) uses no
   Python feature newer than the oldest real base's Python (3.10, sagemaker-xgboost:3.0-5), checked
   statically with vermin; the stand-ins run 3.11 and would not notice.
2. Each stand-in's packages match the recorded real-image pins, both in its requirements file and in the
   built image; its toolkit, training module, entry point, command, workdir and `train` match too.
3. The derived images change nothing the real bases rely on (smkit/basecheck.py): WORKDIR/USER/ENTRYPOINT,
   no setup.py/requirements.txt left in /opt/ml/code, /opt/ml/code writable.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from smkit import basecheck, builder, engine, standin
from smkit.context import BuildContext
from smkit.paths import REPO

REAL_BASES = tomllib.loads((REPO / "containers" / "standin" / "real_bases.toml").read_text())
OLDEST_PYTHON = "3.10"  # sagemaker-xgboost:3.0-5 (the PyTorch DLC runs 3.12)
IN_IMAGE_CODE = [REPO / "train_scripts", REPO / "containers" / "smkit_keep_failure.py", REPO / "containers" / "smkit_init.py"]
VERMIN = Path(sys.executable).parent / "vermin"


# -------------------------------------------------------------------------------------------------
# 1. Python version


def vermin(*paths: Path) -> subprocess.CompletedProcess:
    # --exclude long: the Python 2 builtin `long`, which a variable of that name would otherwise match; its
    # "2.x only" verdict makes vermin give up on the whole file ("versions could not be combined").
    return subprocess.run(
        [str(VERMIN), f"-t={OLDEST_PYTHON}-", "--no-tips", "--violations", "--eval-annotations", "--exclude", "long",
         *map(str, paths)],
        capture_output=True, text=True,
    )


def test_real_bases_oldest_python_is_the_guards_target():
    assert min((REAL_BASES[f]["python"] for f in ("xgboost", "pytorch")), key=lambda v: tuple(map(int, v.split(".")))) \
        == OLDEST_PYTHON


def test_code_in_the_images_runs_on_the_oldest_real_python():
    result = vermin(*IN_IMAGE_CODE)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "could not be combined" not in output, output  # vermin gave up on a file: it checked nothing there
    assert "Analyzing" in output


def test_vermin_catches_a_feature_newer_than_the_target(tmp_path):
    """The guard can fail: 3.11-only features in an otherwise valid script."""
    script = tmp_path / "train.py"
    script.write_text((REPO / "train_scripts" / "common" / "sm_contract.py").read_text()
                      + "\nimport tomllib\n\ntry:\n    pass\nexcept* ValueError:\n    pass\n")
    result = vermin(script)
    assert result.returncode != 0
    assert "'tomllib' module requires !2, 3.11" in result.stdout and "`except*` requires !2, 3.11" in result.stdout


# -------------------------------------------------------------------------------------------------
# 2. Stand-in pins


def satisfies(installed: str, recorded: str) -> bool:
    """`recorded` is an exact version, "" (present, any version) or a specifier such as "<81"."""
    if recorded == "":
        return True
    if recorded[0] in "<>=!~":
        return installed in SpecifierSet(recorded)
    return installed == recorded


def expected_packages(framework: str) -> dict[str, str]:
    """The real pins, with the stand-in's recorded, explained differences applied."""
    packages = {canonicalize_name(k): v for k, v in REAL_BASES[framework]["packages"].items()}
    overrides = REAL_BASES[framework].get("standin", {})
    if "torch" in overrides:
        packages["torch"] = overrides["torch"]
    return packages


def requirement_pins(framework: str) -> dict[str, str]:
    pins = {}
    for line in (REPO / "containers" / "standin" / framework / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            requirement = Requirement(line)
            pins[canonicalize_name(requirement.name)] = str(requirement.specifier)
    return pins


@pytest.mark.parametrize("framework", ["xgboost", "pytorch"])
def test_standin_requirements_pin_the_recorded_real_versions(framework):
    pins = requirement_pins(framework)
    for name, recorded in expected_packages(framework).items():
        if name in ("pip", "torch"):  # installed by the Dockerfile itself, checked in the image below
            continue
        assert name in pins, f"{framework} stand-in requirements.txt does not install {name}"
        pinned = pins[name].removeprefix("==")
        assert satisfies(pinned, recorded), f"{framework}: {name} pinned {pins[name]}, the real image has {recorded!r}"


def test_pin_check_fails_on_drift():
    assert not satisfies("2.2.0", "2.1.0") and not satisfies("81.0.0", "<81")
    assert satisfies("80.9.0", "<81") and satisfies("1.0", "")


def image_facts(image: str) -> dict:
    probe = ("import json, shutil, sys, importlib.metadata as m; "
             "print(json.dumps({'python': '%d.%d' % sys.version_info[:2], 'train': shutil.which('train'), "
             "'packages': {d.metadata['Name']: d.version for d in m.distributions()}}))")
    out = engine.client().containers.run(image, ["-c", probe], entrypoint=["python3"], remove=True, network_disabled=True)
    return json.loads(out.decode().strip().splitlines()[-1])


@pytest.mark.docker
@pytest.mark.parametrize("framework", ["xgboost", "pytorch"])
def test_built_standin_matches_the_recorded_real_image(docker_client, standin_xgboost, standin_pytorch, framework):
    real, differs = REAL_BASES[framework], REAL_BASES[framework]["standin"]
    image = standin.STANDINS[framework]
    assert image == differs["image"]
    config = docker_client.images.get(image).attrs["Config"]
    env = dict(item.split("=", 1) for item in config.get("Env") or [])
    assert env["SAGEMAKER_TRAINING_MODULE"] == real["training_module"]
    assert (config.get("Entrypoint") or []) == real["entrypoint"]
    assert config.get("Cmd") == real["cmd"]
    assert (config.get("WorkingDir") or "/") == real["workdir"]
    assert (config.get("User") or "root") == real["user"]
    facts = image_facts(image)
    assert facts["python"] == differs.get("python", real["python"])
    if framework == "xgboost":
        assert facts["train"] == real["train"]
    installed = {canonicalize_name(k): v for k, v in facts["packages"].items()}
    for name, recorded in expected_packages(framework).items():
        assert name in installed, f"{image} lacks {name}"
        assert satisfies(installed[name].split("+")[0], recorded), f"{image}: {name} {installed[name]}, real {recorded!r}"
    toolkit = real["toolkit"].split()[0]
    if "==" in toolkit:  # the one toolkit that runs `train`, and not its successor
        name, version = toolkit.split("==")
        assert installed[canonicalize_name(name)] == version
        assert "sagemaker-training" not in installed


# -------------------------------------------------------------------------------------------------
# 3. Derived images


@pytest.fixture(scope="module")
def derived(project_images) -> dict[str, tuple[str, str]]:
    """Both images of images.toml on the stand-ins (built in a scratch copy of the project): name -> (image, base)."""
    from smkit.standin import STANDINS

    return {name: (project_images[name], STANDINS[name]) for name in ("xgboost", "pytorch")}


@pytest.mark.docker
@pytest.mark.parametrize("name", ["xgboost", "pytorch"])
def test_derived_images_keep_what_the_real_bases_rely_on(derived, name):
    image, base = derived[name]
    assert basecheck.config_differences(image, base) == []
    assert basecheck.code_dir_problems(image) == []


@pytest.mark.docker
def test_derived_image_checks_name_what_breaks(derived, tmp_path):
    """The checks can fail: WORKDIR and USER changed, a requirements.txt and setup.py baked into a
    read-only /opt/ml/code."""
    _, base = derived["xgboost"]
    ctx = BuildContext(REPO)
    ctx.add_bytes("Dockerfile", (
        "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\n"
        "RUN mkdir -p /opt/ml/code && echo numpy > /opt/ml/code/requirements.txt && touch /opt/ml/code/setup.py "
        "&& useradd -M trainer && chmod 555 /opt/ml/code\n"
        "WORKDIR /opt/ml/code\nUSER trainer\n").encode())
    builder.build(ctx, dockerfile="Dockerfile", tag="smkit-test/breaks-real-base:latest", buildargs={"BASE_IMAGE": base},
                  title="breaks")
    differences = basecheck.config_differences("smkit-test/breaks-real-base:latest", base)
    assert [d.split()[0] for d in differences] == ["WORKDIR", "USER"], differences
    problems = basecheck.code_dir_problems("smkit-test/breaks-real-base:latest")
    assert [p.split()[0] for p in problems] == ["/opt/ml/code/setup.py", "/opt/ml/code/requirements.txt",
                                                "/opt/ml/code"], problems
    assert "not writable" in problems[-1]
    assert basecheck.code_dir_problems("smkit-test/breaks-real-base:latest", meant=("setup.py", "requirements.txt")) \
        == [problems[-1]]
