"""Unit tests of the toolkit's own pieces: the build context, images.toml, tags and the metric parser."""

from __future__ import annotations

import os
import tarfile
import textwrap
from pathlib import Path

import pytest

from smkit import catalog
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
    assert catalog.load(write_toml(tmp_path, GOOD))["x"].repository == "team/x-train"
    with pytest.raises(ConfigError) as raised:
        catalog.load(write_toml(tmp_path, GOOD.replace(*change)))
    assert message in raised.value.what and raised.value.fix


def test_pytorch_needs_a_python_version(tmp_path):
    body = GOOD.replace('framework = "xgboost"', 'framework = "pytorch"')
    with pytest.raises(ConfigError, match="py_version"):
        catalog.load(write_toml(tmp_path, body))
