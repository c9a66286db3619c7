"""Unit tests of the toolkit's own pieces: the build context, images.toml, tags and the metric parser."""

from __future__ import annotations

import os
import tarfile
import textwrap
from pathlib import Path

import pytest

from smkit import bases, images_toml
from smkit.standin import STANDINS
from smkit.context import BuildContext
from smkit.errors import ConfigError


def make_tree(root: Path) -> Path:
    (root / "scripts").mkdir(parents=True)
    (root / "scripts" / "train.py").write_text("print(1)\n")
    (root / "scripts" / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(root / "scripts" / "run.sh", 0o755)
    (root / "scripts" / "__pycache__").mkdir()
    (root / "scripts" / "__pycache__" / "train.cpython-311.pyc").write_bytes(b"\0")
    return root


def test_context_is_deterministic_and_tracks_content_and_mode(tmp_path):
    root = make_tree(tmp_path / "a")
    first = BuildContext(root)
    first.add("scripts")
    os.utime(root / "scripts" / "train.py", (1, 1))  # checkout time must not matter
    second = BuildContext(root)
    second.add("scripts")
    assert first.digest() == second.digest() and first.tar().getvalue() == second.tar().getvalue()
    assert sorted(first.files) == ["scripts/run.sh", "scripts/train.py"]  # no bytecode
    with tarfile.open(fileobj=first.tar()) as archive:
        modes = {m.name: m.mode for m in archive.getmembers()}
        assert modes == {"scripts/run.sh": 0o755, "scripts/train.py": 0o644}
        assert {m.mtime for m in archive.getmembers()} == {1_700_000_000}
    (root / "scripts" / "train.py").write_text("print(2)\n")
    third = BuildContext(root)
    third.add("scripts")
    assert third.digest() != first.digest()
    assert first.digest("BASE_IMAGE=a") != first.digest("BASE_IMAGE=b")


def test_context_refuses_secrets_by_name_and_content(tmp_path):
    root = make_tree(tmp_path)
    (root / ".dockerignore").write_text("**/*.log\n")
    secrets = {
        "scripts/.env": "TOKEN=x\n",
        "scripts/nested/.aws/config": "[default]\n",
        "scripts/key.pem": "x",
        "scripts/creds.txt": "aws_secret_access_key = abc\n",
        "scripts/dockercfg.json": '{"auths": {"r": {"auth": "eA=="}}}',
        "scripts/ssh.txt": "-----BEGIN RSA PRIVATE KEY-----\n",
        "scripts/debug.log": "log\n",
    }
    for name, text in secrets.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    ctx = BuildContext(root)
    ctx.add("scripts")
    assert sorted(ctx.files) == ["scripts/run.sh", "scripts/train.py"]
    assert sorted(path for path, _ in ctx.left_out) == sorted(secrets)
    assert dict(ctx.left_out)["scripts/debug.log"] == ".dockerignore"
    with pytest.raises(ConfigError, match="does not exist"):
        ctx.add("missing")


@pytest.mark.parametrize("text", [
    "ghp_" + "a1" * 18, "github_pat_" + "A1b2" * 6, "pypi-AgEIcHlwaS5vcmc" + "x" * 20,
    "//npm.example.com/:_authToken=abc", "xoxb-1234567890-abcdef", "aws_session_token = abc",
    "key = AKIA" + "ABCDEFGHIJKLMNOP", "-----BEGIN EC PRIVATE KEY-----", "-----BEGIN PRIVATE KEY-----",
])
def test_context_refuses_tokens_and_keys_by_their_shape(tmp_path, text):
    root = make_tree(tmp_path)
    (root / "scripts" / "settings.yaml").write_text(f"value: {text}\n")
    ctx = BuildContext(root)
    ctx.add("scripts")
    assert dict(ctx.left_out) == {"scripts/settings.yaml": "its contents look like a credential or a private key"}
    assert "scripts/settings.yaml" not in ctx.files


def write_toml(tmp_path, body: str) -> Path:
    path = tmp_path / "images.toml"
    path.write_text(textwrap.dedent(body))
    return path


GOOD = """
[images.x]
framework = "xgboost"
version = "3.0-5"
dockerfile = "containers/xgboost/Dockerfile"
scripts = ["train_scripts/xgboost"]
requirements = "containers/xgboost/requirements.txt"
program = "train.py"
repository = "team/x-train"
"""


@pytest.mark.parametrize("change,message", [
    (("framework = \"xgboost\"", "framework = \"lightgbm\""), "framework 'lightgbm' is not supported"),
    (("repository = \"team/x-train\"", "repository = \"Team X\""), "'Team X' is not a valid repository name"),
    (("program = \"train.py\"", "program = \"train.py\"\ncolour = \"red\""), "unknown keys ['colour']"),
    (("program = \"train.py\"\n", ""), "lacks ['program']"),
    (("version = \"3.0-5\"", "version = \"3.0-5\"\nprocessor = \"tpu\""), "processor 'tpu' is not valid"),
    (("[images.x]", "[images.x"), "is not valid TOML"),
])
def test_images_toml_errors_name_the_problem(tmp_path, change, message):
    assert images_toml.load(write_toml(tmp_path, GOOD))["x"].repository == "team/x-train"
    with pytest.raises(ConfigError) as raised:
        images_toml.load(write_toml(tmp_path, GOOD.replace(*change)))
    assert message in raised.value.what and raised.value.fix


def test_pytorch_needs_a_python_version(tmp_path):
    body = GOOD.replace('framework = "xgboost"', 'framework = "pytorch"')
    with pytest.raises(ConfigError, match="py_version"):
        images_toml.load(write_toml(tmp_path, body))


def test_deps_digest_ignores_scripts_and_tracks_everything_else(tmp_path):
    from smkit import label_pass

    root = tmp_path / "p"
    for path, text in {"containers/x/Dockerfile": "FROM b\n", "containers/x/requirements.txt": "a==1\n",
                       "train_scripts/x/train.py": "print(1)\n"}.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)

    def digest(*extra):
        ctx = BuildContext(root)
        for path in ("containers/x", "train_scripts/x"):
            ctx.add(path)
        return label_pass.deps_digest(ctx, ["train_scripts/x"], *extra)

    before = digest("base=1")
    (root / "train_scripts/x/train.py").write_text("print(2)\n")
    assert digest("base=1") == before
    assert digest("base=2") != before
    (root / "containers/x/requirements.txt").write_text("a==2\n")
    assert digest("base=1") != before


@pytest.mark.parametrize("dockerfile, tail", [
    ("FROM b\nCOPY req.txt /tmp/\nRUN pip install -r /tmp/req.txt\nCOPY train_scripts/x/ /opt/ml/code/\nCMD [\"train\"]\n", 1),
    ("FROM b\n# scripts\ncopy --chown=1:1 \\\n    train_scripts/common/ train_scripts/x/ /opt/ml/code/\nENV A=1\nCOPY more.txt /m\n", 2),
    ('FROM b\nCOPY ["train_scripts/x/train.py", "/opt/ml/code/"]\n', 1),
    ("FROM b\nCOPY train_scripts/ /opt/ml/code/\n", 1),  # a parent of the scripts
    ("FROM b\nCOPY . /src\n", 1),  # the whole context
    # Something may run on the scripts (install them, compile them): the freeze must be read again.
    ("FROM b\nCOPY train_scripts/x/ /opt/ml/code/\nRUN pip install /opt/ml/code\n", None),
    ("FROM b AS s\nCOPY train_scripts/x/ /c/\nFROM b\nCOPY --from=s /c /opt/ml/code\n", None),
    ("FROM b\nCOPY other/ /opt/ml/code/\n", None),  # the scripts are not copied at all
])
def test_scripts_tail_says_when_nothing_runs_on_the_scripts(dockerfile, tail):
    from smkit import label_pass

    assert label_pass.scripts_tail(dockerfile, ("train_scripts/common", "train_scripts/x")) == tail


def test_same_deps_layers_allows_only_the_scripts_layers_to_differ():
    from smkit.label_pass import Previous, same_deps_layers

    previous = Previous(ref="r", freeze="a==1", layers=["base", "deps", "scripts"], tail=1)
    assert same_deps_layers(previous, ["base", "deps", "scripts2"])
    assert not same_deps_layers(previous, ["base", "deps2", "scripts2"])  # deps rebuilt
    assert not same_deps_layers(previous, ["base", "deps", "extra", "scripts2"])
    assert not same_deps_layers(Previous(ref="r", freeze="a", layers=["scripts"], tail=1), ["scripts2"])


def test_images_toml_schema_defaults_and_any_base(tmp_path):
    body = """
    [images.byo]
    framework = "sklearn"
    version = "1.4-2"
    scripts = "train_scripts/byo"
    program = "train.py"

    [images.team]
    base_uri = "registry.example.com/ml/base:7"
    scripts = ["src/common", "src/team"]
    program = "main.py"

    [images.Team_Two]
    base_uri = "registry.example.com/ml/base:7"
    framework = "pytorch"
    scripts = "src"
    program = "main.py"
    """
    specs = images_toml.load(write_toml(tmp_path, body))
    byo, team, two = specs["byo"], specs["team"], specs["Team_Two"]
    assert byo.scripts == ("train_scripts/byo",) and byo.requirements is None and byo.dockerfile is None
    assert byo.repository == "byo" and byo.py_version == "py3"  # the default repository; sklearn's only Python
    assert byo.build_inputs == ("train_scripts/byo",)
    assert team.framework is None and team.base_uri == "registry.example.com/ml/base:7" and team.py_version is None
    assert two.repository == "team-two" and two.framework == "pytorch"  # a stand-in for --base local, no py_version needed
    # The prebuilt scikit-learn image, resolved by the SDK; a base_uri is used as it is, whatever the region.
    assert bases.prebuilt_uri(byo, "us-east-1") == "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-scikit-learn:1.4-2-cpu-py3"
    assert bases.resolve(team, "aws", None) == bases.Base("registry.example.com/ml/base:7", "uri")
    assert bases.resolve(two, "local", None).uri == STANDINS["pytorch"]
    with pytest.raises(ConfigError) as raised:
        bases.resolve(team, "local", None)
    assert "has no offline stand-in" in raised.value.what and "framework" in raised.value.fix


@pytest.mark.parametrize("body,message", [
    ('scripts = "s"\nprogram = "t.py"', "lacks ['framework', 'version']"),
    ('base_uri = "b:1"\nscripts = []\nprogram = "t.py"', "scripts must name a directory"),
    ('base_uri = "b:1"\nscripts = "s"\nprogram = "dir/t.py"', "is not a file name"),
    ('framework = "lightgbm"\nversion = "1"\nscripts = "s"\nprogram = "t.py"', "base_uri"),
])
def test_images_toml_schema_errors(tmp_path, body, message):
    with pytest.raises(ConfigError) as raised:
        images_toml.load(write_toml(tmp_path, f"[images.x]\n{body}\n"))
    assert message in raised.value.what + raised.value.fix


def test_the_region_comes_from_the_environment_then_the_aws_config_and_costs_no_boto3_without_one(tmp_path):
    import subprocess
    import sys

    probe = ("import sys; from smkit import bases; "
             "print(bases.session_region(), 'boto3' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    repo = Path(__file__).resolve().parent.parent

    def region(**extra) -> str:
        proc = subprocess.run([sys.executable, "-c", probe], cwd=repo, capture_output=True, text=True, timeout=60,
                              env={**env, **extra})
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()

    # No variable and no config file: no region, and boto3 (~0.15 s of every local run) never imported.
    assert region(AWS_CONFIG_FILE=str(tmp_path / "none"), HOME=str(tmp_path)) == "None False"
    config = tmp_path / "config"
    config.write_text("[default]\nregion = eu-west-3\n")
    assert region(AWS_CONFIG_FILE=str(config)) == "eu-west-3 True"
    assert region(AWS_CONFIG_FILE=str(config), AWS_DEFAULT_REGION="ap-south-1") == "ap-south-1 False"
