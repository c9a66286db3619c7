"""No secret reaches an image, a log, a label or the build manifest.

The scratch project's script directory is salted with what developers leave lying around: every kind of
file refused by its name (.env, .aws/, .ssh/, .docker/, .git/, .kube/, *.pem, *.key, *.p12, id_rsa*,
id_ed25519, .netrc, .pypirc, .git-credentials) and every kind of content refused whatever the file is
called (private keys, AWS keys, a docker config, tokens). Each holds a secret of its own. The built image
is read back with `docker save` (every layer, its config and history) and searched for every secret, raw
and base64-encoded; so are the build and push output, the labels and build/images.json."""

from __future__ import annotations

import base64
import io
import json
import secrets
import tarfile

import pytest

from tests.test_build import docker_config, make_project, manifest_entry, run_build

pytestmark = pytest.mark.docker


def _value(prefix: str = "", n: int = 24) -> str:
    return prefix + secrets.token_hex(n // 2)


def _private_key(kind: str) -> tuple[str, str]:
    body = base64.b64encode(secrets.token_bytes(48)).decode()
    return f"-----BEGIN {kind}PRIVATE KEY-----\n{body}\n-----END {kind}PRIVATE KEY-----\n", body


def _docker_config(user: str, password: str) -> str:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return json.dumps({"auths": {"registry.example.com": {"auth": token}}})


def plants() -> list[tuple[str, str, list[str], str]]:
    """(path under train_scripts/xgboost, content, its secret values, why it is left out)."""
    by_name, by_content = "its name marks it as a secret", "its contents look like a credential or a private key"
    aws_secret, aws_secret_2 = _value(n=40), _value(n=40)
    key_rsa, rsa_body = _private_key("RSA ")
    key_pkcs8, pkcs8_body = _private_key("")
    key_ec, ec_body = _private_key("EC ")
    key_ssh, ssh_body = _private_key("OPENSSH ")
    values = {k: _value(k + "-") for k in ("env", "envprod", "sshcfg", "dockerpw", "gitpw", "kube", "p12", "pub",
                                           "netrc", "pypirc", "gitcred", "renamedpw", "session")}
    github = "ghp_" + secrets.token_hex(18)
    pypi = "pypi-AgEIcHlwaS5vcmc" + secrets.token_hex(16)
    npm, slack = _value("npm-"), "xoxb-" + secrets.token_hex(12)
    akia, akia_2 = ("AKIA" + "".join(secrets.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567") for _ in range(16)) for _ in "12")
    return [
        # refused by name
        (".env", f"API_TOKEN={values['env']}\n", [values["env"]], by_name),
        (".env.production", f"DB_PASSWORD={values['envprod']}\n", [values["envprod"]], by_name),
        (".aws/credentials", f"[default]\naws_access_key_id={akia}\naws_secret_access_key={aws_secret}\n", [akia, aws_secret], by_name),
        (".ssh/config", f"Host build\n  IdentityFile ~/.ssh/{values['sshcfg']}\n", [values["sshcfg"]], by_name),
        (".docker/config.json", _docker_config("me", values["dockerpw"]), [values["dockerpw"], f"me:{values['dockerpw']}"], by_name),
        (".git/config", f'[remote "origin"]\n\turl = https://me:{values["gitpw"]}@git.example.com/team/repo\n', [values["gitpw"]], by_name),
        (".kube/config", f"users:\n- name: ci\n  user:\n    token: {values['kube']}\n", [values["kube"]], by_name),
        ("server.key", key_rsa, [rsa_body], by_name),
        ("client.p12", f"\x30\x82binary-pkcs12 {values['p12']}", [values["p12"]], by_name),
        ("id_rsa", key_ssh, [ssh_body], by_name),
        ("id_rsa.pub", f"ssh-rsa {values['pub']} me@laptop\n", [values["pub"]], by_name),
        ("id_ed25519", key_ssh.replace(ssh_body, ssh_body[::-1]), [ssh_body[::-1]], by_name),
        ("deploy.pem", key_pkcs8.replace(pkcs8_body, pkcs8_body[::-1]), [pkcs8_body[::-1]], by_name),
        (".netrc", f"machine api.example.com login me password {values['netrc']}\n", [values["netrc"]], by_name),
        (".pypirc", f"[pypi]\nusername = me\npassword = {values['pypirc']}\n", [values["pypirc"]], by_name),
        (".git-credentials", f"https://me:{values['gitcred']}@git.example.com\n", [values["gitcred"]], by_name),
        # refused by content, whatever the name
        ("notes.txt", "the deploy key:\n" + key_rsa.replace(rsa_body, rsa_body[::-1]), [rsa_body[::-1]], by_content),
        ("material.txt", key_pkcs8, [pkcs8_body], by_content),
        ("curve.txt", key_ec, [ec_body], by_content),
        ("settings.ini", f"[aws]\naws_secret_access_key = {aws_secret_2}\n", [aws_secret_2], by_content),
        ("ids.cfg", f"key_id = {akia_2}\n", [akia_2], by_content),
        ("session.txt", f"aws_session_token = {values['session']}\n", [values["session"]], by_content),
        ("settings.json", _docker_config("me", values["renamedpw"]), [values["renamedpw"], f"me:{values['renamedpw']}"], by_content),
        ("ci.yaml", f"github: {github}\n", [github], by_content),
        ("upload.cfg", f"token = {pypi}\n", [pypi], by_content),
        ("registry.rc", f"//npm.example.com/:_authToken={npm}\n", [npm], by_content),
        ("chat.yaml", f"slack: {slack}\n", [slack], by_content),
    ]


def forms(value: str) -> list[bytes]:
    """A secret as it may sit in bytes: raw, and base64-encoded (standard and URL-safe)."""
    raw = value.encode()
    return [raw, base64.b64encode(raw), base64.urlsafe_b64encode(raw)]


def layer_files(image_tar: bytes) -> dict[str, bytes]:
    """Every regular file of every layer of a `docker save` archive (path -> content)."""
    archive = tarfile.open(fileobj=io.BytesIO(image_tar))
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


def found(haystack: bytes, value: str) -> bool:
    return any(form in haystack for form in forms(value))


def test_secrets_never_reach_the_image_logs_labels_or_manifest(tmp_path, docker_client, registry, standin_xgboost):
    project = make_project(tmp_path / "project")
    scripts = project / "train_scripts" / "xgboost"
    planted = plants()
    for path, content, _, _ in planted:
        (scripts / path).parent.mkdir(parents=True, exist_ok=True)
        (scripts / path).write_text(content)
    # Controls, which must go in: they prove the search below finds a value raw and a value base64-encoded.
    control_raw, control_encoded = _value("control-"), _value("control-")
    (scripts / "helper.py").write_text(f"VALUE = {control_raw!r}\nBLOB = {base64.b64encode(control_encoded.encode()).decode()!r}\n")
    (scripts / "notes.scratch").write_text("ignored by .dockerignore\n")
    with open(project / ".dockerignore", "a") as handle:
        handle.write("**/*.scratch\n")

    build = run_build(project, "build", "--image", "xgboost", "--base", "local", "--verbose")
    ref = manifest_entry(project)["local_ref"]
    image_tar = b"".join(docker_client.images.get(ref).save())  # every layer, the config (labels, env) and history
    files = layer_files(image_tar)
    assert found(image_tar, control_raw) and found(image_tar, control_encoded)
    leaked = [(path, value) for path, _, values, _ in planted for value in values if found(image_tar, value)]
    assert leaked == []
    for path, _, _, why in planted:  # and the user is told, file by file
        assert f"train_scripts/xgboost/{path} left out of the build context ({why})" in build.stderr, path
    assert "train_scripts/xgboost/notes.scratch left out of the build context (.dockerignore)" in build.stderr
    code = {path.split(":", 1)[1] for path in files if ":opt/ml/code/" in path}
    assert code == {"opt/ml/code/helper.py", "opt/ml/code/sm_contract.py", "opt/ml/code/train.py"}
    # By name too, wherever the project's files may land (the base's own files, e.g. a test key some
    # library ships, are not the project's: the content search above covers every layer).
    names = {path.rsplit("/", 1)[-1] for path, *_ in planted}
    assert [path for path in files if ":opt/ml/" in path and path.rsplit("/", 1)[-1] in names] == []

    env = {"DOCKER_CONFIG": str(docker_config(tmp_path / "docker", registry))}
    push = run_build(project, "push", "--image", "xgboost", "--registry", f"{registry.host}/team", "--verbose", env=env)
    labels = json.dumps(docker_client.images.get(ref).labels)
    manifest_text = (project / "build" / "images.json").read_text()
    login = f"{registry.auth['username']}:{registry.auth['password']}"
    for text in (build.stdout, build.stderr, push.stdout, push.stderr, labels, manifest_text):
        data = text.encode()
        assert not found(data, registry.auth["password"]) and not found(data, login)
        assert [value for _, _, values, _ in planted for value in values if found(data, value)] == []
