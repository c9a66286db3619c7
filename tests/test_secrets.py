"""No secret reaches an image, a log, a label or the build manifest.

The scratch project's script directories are salted with what developers leave lying around: an .env,
AWS credentials, a private key, a copy of ~/.docker/config.json under another name. Every layer of the
built image is then read back with `docker save`."""

from __future__ import annotations

import base64
import io
import json
import tarfile

import pytest

from tests.test_build import docker_config, make_project, manifest_entry, run_build

pytestmark = pytest.mark.docker
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYSECRETKEYX"
PRIVATE_KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ\n-----END OPENSSH PRIVATE KEY-----\n"


def salt(project):
    scripts = project / "train_scripts" / "xgboost"
    (scripts / ".env").write_text(f"AWS_SECRET_ACCESS_KEY={AWS_SECRET}\n")
    (scripts / ".aws").mkdir()
    (scripts / ".aws" / "credentials").write_text(f"[default]\naws_access_key_id=AKIAABCDEFGHIJKLMNOP\naws_secret_access_key={AWS_SECRET}\n")
    (scripts / "deploy.pem").write_text(PRIVATE_KEY)
    (scripts / "id_ed25519").write_text(PRIVATE_KEY)
    token = base64.b64encode(b"me:registry-password-123").decode()
    (scripts / "settings.json").write_text(json.dumps({"auths": {"registry.example.com": {"auth": token}}}))  # renamed docker config
    (scripts / "notes.scratch").write_text("ignored by .dockerignore\n")
    (scripts / "helper.py").write_text("VALUE = 1\n")  # an ordinary file next to them, which must go in
    with open(project / ".dockerignore", "a") as handle:
        handle.write("**/*.scratch\n")
    return {".env", "credentials", "deploy.pem", "id_ed25519", "settings.json", "notes.scratch"}


def layer_files(docker_client, ref: str) -> dict[str, bytes]:
    """Every regular file of every layer of the image (path -> content), from `docker save`."""
    archive = tarfile.open(fileobj=io.BytesIO(b"".join(docker_client.images.get(ref).save())))
    files = {}
    for member in archive.getmembers():
        if member.name.endswith("layer.tar") or (member.isfile() and member.name.startswith("blobs/")):
            data = archive.extractfile(member).read()
            try:
                layer = tarfile.open(fileobj=io.BytesIO(data))
                for item in layer.getmembers():
                    if item.isfile():
                        files[f"{member.name}:{item.name}"] = layer.extractfile(item).read()
            except tarfile.ReadError:
                continue  # config or manifest blobs
    return files


def test_secrets_never_reach_the_image_logs_labels_or_manifest(tmp_path, docker_client, registry, standin_xgboost):
    project = make_project(tmp_path / "project")
    secret_names = salt(project)
    build = run_build(project, "build", "--image", "xgboost", "--base", "local", "--verbose")
    for name in (".env", ".aws/credentials", "deploy.pem", "id_ed25519"):
        assert f"train_scripts/xgboost/{name} left out of the build context (its name marks it as a secret)" in build.stderr
    assert "train_scripts/xgboost/settings.json left out of the build context (its contents look like" in build.stderr
    assert "train_scripts/xgboost/notes.scratch left out of the build context (.dockerignore)" in build.stderr

    ref = manifest_entry(project)["local_ref"]
    files = layer_files(docker_client, ref)
    code = {path.split(":", 1)[1] for path in files if ":opt/ml/code/" in path}
    assert code == {"opt/ml/code/helper.py", "opt/ml/code/sm_contract.py", "opt/ml/code/train.py"}
    leaked = [path for path, data in files.items()
              if path.rsplit("/", 1)[-1] in secret_names or AWS_SECRET.encode() in data or b"registry-password-123" in data]
    assert leaked == []

    env = {"DOCKER_CONFIG": str(docker_config(tmp_path / "docker", registry))}
    push = run_build(project, "push", "--image", "xgboost", "--registry", f"{registry.host}/team", "--verbose", env=env)
    labels = json.dumps(docker_client.images.get(ref).labels)
    manifest_text = (project / "build" / "images.json").read_text()
    password = registry.auth["password"]
    for text in (build.stdout, build.stderr, push.stdout, push.stderr, labels, manifest_text):
        assert password not in text and AWS_SECRET not in text and "registry-password-123" not in text
