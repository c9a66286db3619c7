"""build.py against a real engine, a real registry server (htpasswd auth) and ECR's API on moto.

Each test works on a scratch copy of the project (SMKIT_PROJECT), so it can edit a training script and
watch what a rebuild and a push do, without touching the checkout.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import boto3
import pytest

from smkit import standin
from tests.servers import Registry, free_port

pytestmark = pytest.mark.docker
REPO = Path(__file__).resolve().parent.parent
MOTO_ACCOUNT = "123456789012"  # moto's default account; its ECR tokens are "AWS:<account>-auth-token"


def make_project(root: Path) -> Path:
    """A scratch project: images.toml, the XGBoost Dockerfile and scripts (a small script of its own)."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "images.toml", root / "images.toml")
    shutil.copy(REPO / ".dockerignore", root / ".dockerignore")
    for framework in ("xgboost", "pytorch"):
        shutil.copytree(REPO / "containers" / framework, root / "containers" / framework)
        (root / "train_scripts" / framework).mkdir(parents=True)
        (root / "train_scripts" / framework / "train.py").write_text("print('version 1')\n")
    shutil.copytree(REPO / "train_scripts" / "common", root / "train_scripts" / "common", ignore=shutil.ignore_patterns("__pycache__"))
    return root


def run_build(project: Path, *args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, SMKIT_PROJECT=str(project), COLUMNS="200", **(env or {}))
    proc = subprocess.run([sys.executable, str(REPO / "build.py"), *args], capture_output=True, text=True, env=full_env, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"build.py {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def docker_config(directory: Path, registry: Registry) -> Path:
    """A DOCKER_CONFIG holding the registry's credentials, as `docker login` would leave it."""
    directory.mkdir(parents=True, exist_ok=True)
    auth = base64.b64encode(f"{registry.auth['username']}:{registry.auth['password']}".encode()).decode()
    (directory / "config.json").write_text(json.dumps({"auths": {registry.host: {"auth": auth}}}))
    return directory


def manifest_entry(project: Path, name: str = "xgboost") -> dict:
    return json.loads((project / "build" / "images.json").read_text())["images"][name]


@pytest.fixture
def project(tmp_path, standin_xgboost) -> Path:
    return make_project(tmp_path / "project")


def test_build_labels_layout_and_contract(project, docker_client, standin_xgboost):
    out = run_build(project, "build", "--image", "xgboost", "--base", "local")
    entry = manifest_entry(project)
    assert re.fullmatch(r"nogit-[0-9a-f]{10}", entry["tag"])  # the scratch project is not a git checkout
    assert entry["local_ref"] in out.stdout
    image = docker_client.images.get(entry["local_ref"])
    config = image.attrs["Config"]
    base = docker_client.images.get(standin_xgboost).attrs["Config"]
    assert image.attrs["Architecture"] == "amd64" and image.attrs["Os"] == "linux"
    assert config["Cmd"] == ["train"] and config["Entrypoint"] == base["Entrypoint"]
    assert "SAGEMAKER_PROGRAM=train.py" in config["Env"]
    # The legacy toolkit's job-start `pip install` must not look up pypi.org (10 s on a network with no route out).
    assert "PIP_DISABLE_PIP_VERSION_CHECK=1" in config["Env"]
    labels = config["Labels"]
    assert labels["org.opencontainers.image.base.name"] == standin_xgboost
    assert labels["org.opencontainers.image.base.digest"] == docker_client.images.get(standin_xgboost).id
    assert labels["io.smkit.inputs-sha256"] == entry["inputs_sha256"]
    assert "xgboost==3.0.5" in labels["io.smkit.pip-freeze"].splitlines()
    code = docker_client.containers.run(image.id, ["-c", "ls -A /opt/ml/code; test -w /opt/ml/code && echo writable"],
                                        entrypoint=["sh"], remove=True, network_disabled=True).decode().split()
    assert sorted(code) == ["sm_contract.py", "train.py", "writable"]  # no requirements.txt left for job start
    assert entry["size"] == image.attrs["Size"] and entry["layers"] == image.attrs["RootFS"]["Layers"]

    again = run_build(project, "build", "--image", "xgboost", "--base", "local")
    assert "unchanged" in again.stdout
    assert manifest_entry(project)["image_id"] == image.id


def test_script_edit_rebuilds_and_pushes_only_the_last_layer(project, docker_client, registry, tmp_path):
    env = {"DOCKER_CONFIG": str(docker_config(tmp_path / "docker", registry))}
    target = f"{registry.host}/team"
    run_build(project, "build", "--image", "xgboost", "--base", "local")
    first = manifest_entry(project)
    pushed = run_build(project, "push", "--image", "xgboost", "--registry", target, "--quiet", env=env)
    record = manifest_entry(project)["pushed"]
    digest = registry.manifest_digest("team/smkit-xgboost", first["tag"])
    # What is printed is what the registry holds.
    assert record["digest"] == digest
    assert f"image_uri: {target}/smkit-xgboost:{first['tag']}" in pushed.stdout
    assert f"pinned:    {target}/smkit-xgboost@{digest}" in pushed.stdout

    again = run_build(project, "push", "--image", "xgboost", "--registry", target, "--quiet", env=env)
    assert manifest_entry(project)["pushed"]["skipped"] is True
    assert "nothing pushed" in again.stderr

    (project / "train_scripts" / "xgboost" / "train.py").write_text("print('version 2')\n")
    run_build(project, "build", "--image", "xgboost", "--base", "local")
    second = manifest_entry(project)
    assert second["tag"] != first["tag"]
    assert second["layers"][:-1] == first["layers"][:-1] and second["layers"][-1] != first["layers"][-1]
    blobs_before = registry.blob_count()
    run_build(project, "push", "--image", "xgboost", "--registry", target, "--quiet", env=env)
    record = manifest_entry(project)["pushed"]
    assert record["layers_pushed"] == 1 and record["layers_existing"] == len(first["layers"]) - 1
    # The registry stores the manifest as a blob too: script layer + image config + manifest, nothing else.
    assert registry.blob_count() - blobs_before == 3
    assert registry.manifest_digest("team/smkit-xgboost", second["tag"]) == record["digest"]


@pytest.fixture
def ecr_registry():
    """A registry that accepts moto's ECR token, standing in for ECR's data plane."""
    server = Registry(users={"AWS": f"{MOTO_ACCOUNT}-auth-token"}).start()
    yield server
    server.stop()


def test_ecr_push_creates_a_safe_repository_and_logs_in_for_this_push_only(project, moto, ecr_registry, tmp_path, docker_client):
    docker_dir = tmp_path / "docker"
    docker_dir.mkdir()
    env = {"AWS_ENDPOINT_URL": moto.url, "DOCKER_CONFIG": str(docker_dir)}
    run_build(project, "build", "--image", "xgboost", "--base", "local")
    tag = manifest_entry(project)["tag"]
    out = run_build(project, "push", "--image", "xgboost", "--region", "us-east-1", "--registry-host", ecr_registry.host,
                    "--immutable-tags", "--tag", "release-1", "--verbose", env=env)
    assert "created ECR repository smkit-xgboost" in out.stderr

    ecr = boto3.client("ecr", region_name="us-east-1", endpoint_url=moto.url)
    repo = ecr.describe_repositories(repositoryNames=["smkit-xgboost"])["repositories"][0]
    assert repo["imageScanningConfiguration"]["scanOnPush"] is True
    assert repo["encryptionConfiguration"]["encryptionType"] == "AES256"
    assert repo["imageTagMutability"] == "IMMUTABLE"
    policy = json.loads(ecr.get_lifecycle_policy(repositoryName="smkit-xgboost")["lifecyclePolicyText"])
    # Untagged images expire 14 days after their push (docs/build.md).
    assert [rule["selection"] for rule in policy["rules"]] == [
        {"tagStatus": "untagged", "countType": "sinceImagePushed", "countUnit": "days", "countNumber": 14}]
    assert [rule["action"] for rule in policy["rules"]] == [{"type": "expire"}]
    assert len(moto.requests("GetAuthorizationToken")) == 1  # a fresh token for this push
    # The token was used for this push only: nothing was written to the docker config.
    assert not (docker_dir / "config.json").exists()
    digest = ecr_registry.manifest_digest("smkit-xgboost", tag)
    assert digest and ecr_registry.manifest_digest("smkit-xgboost", "release-1") == digest
    assert manifest_entry(project)["pushed"]["pinned_image_uri"] == f"{ecr_registry.host}/smkit-xgboost@{digest}"

    # The same image again: the registry already holds the tag at this digest, so nothing is uploaded,
    # and the existing repository is left as it is.
    again = run_build(project, "push", "--image", "xgboost", "--region", "us-east-1", "--registry-host", ecr_registry.host,
                      "--quiet", env=env)
    assert manifest_entry(project)["pushed"]["skipped"] is True and "nothing pushed" in again.stderr
    assert "created ECR repository" not in again.stderr
    # Without --immutable-tags/--mutable-tags an existing repository is left as it is.
    assert ecr.describe_repositories(repositoryNames=["smkit-xgboost"])["repositories"][0]["imageTagMutability"] == "IMMUTABLE"
    assert len(moto.requests("GetAuthorizationToken")) == 2  # still a fresh token for every push
    # The ECR token (what moto's GetAuthorizationToken hands out) never reaches the output, the labels or
    # build/images.json: neither the token nor the password inside it, raw or base64.
    token = ecr.get_authorization_token()["authorizationData"][0]["authorizationToken"]
    password = base64.b64decode(token).decode().split(":", 1)[1]
    labels = json.dumps(docker_client.images.get(manifest_entry(project)["local_ref"]).labels)
    for text in (out.stdout, out.stderr, again.stdout, again.stderr, labels, (project / "build" / "images.json").read_text()):
        for form in (token, password, base64.b64encode(password.encode()).decode()):
            assert form not in text

    # An immutable tag is never moved: a changed image under the same moving tag is refused up front.
    (project / "train_scripts" / "xgboost" / "train.py").write_text("print('changed')\n")
    run_build(project, "build", "--image", "xgboost", "--base", "local")
    blobs = ecr_registry.blob_count()
    refused = run_build(project, "push", "--image", "xgboost", "--region", "us-east-1", "--registry-host", ecr_registry.host,
                        "--tag", "release-1", "--quiet", env=env, check=False)
    # Refused before any upload: the changed script layer never reached the registry, nor did its new tag.
    assert ecr_registry.blob_count() == blobs
    assert ecr_registry.manifest_digest("smkit-xgboost", manifest_entry(project)["tag"]) is None
    assert ecr_registry.manifest_digest("smkit-xgboost", "release-1") == digest
    assert refused.returncode != 0
    assert "release-1 already exists with another digest" in refused.stderr and "IMMUTABLE" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_kms_key_encrypts_a_new_repository_with_that_key(moto, project):
    """`push --kms-key`: a repository created by the push is encrypted with that KMS key (ECR on moto)."""
    from smkit import ecr as smkit_ecr

    key = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    state = smkit_ecr.ensure_repository("us-east-1", "smkit-kms", kms_key=key)
    assert state.created
    ecr = boto3.client("ecr", region_name="us-east-1", endpoint_url=moto.url)
    repo = ecr.describe_repositories(repositoryNames=["smkit-kms"])["repositories"][0]
    assert repo["encryptionConfiguration"] == {"encryptionType": "KMS", "kmsKey": key}
    # The CLI hands --kms-key through (its dry run names it), and without it a repository is AES256.
    (project / "build").mkdir(exist_ok=True)
    (project / "build" / "images.json").write_text(json.dumps({"schema": 1, "images": {"xgboost": {
        "local_ref": "smkit-xgboost:nogit-0", "tag": "nogit-0", "moving_tags": []}}}))
    dry = run_build(project, "push", "--image", "xgboost", "--region", "us-east-1", "--kms-key", key, "--dry-run",
                    env={"AWS_ENDPOINT_URL": moto.url}).stdout
    assert key in dry, dry
    smkit_ecr.ensure_repository("us-east-1", "smkit-aes")
    assert ecr.describe_repositories(repositoryNames=["smkit-aes"])["repositories"][0]["encryptionConfiguration"] == \
        {"encryptionType": "AES256"}


def test_dry_run_prints_every_action_and_touches_nothing(project, tmp_path):
    # Neither an AWS endpoint nor a Docker engine answers: a dry run needs neither, so it can change
    # neither (judged by what it can reach, not by listing the engine's images, which other suites
    # sharing the engine change meanwhile).
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}", "DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"}
    out = run_build(project, "build", "--region", "us-east-1", "--dry-run", env=env).stdout
    xgboost_base = "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-xgboost:3.0-5"
    steps = [
        "ecr get-authorization-token --registry-ids 683313688378 --region us-east-1",
        f"docker pull {xgboost_base}",
        # No dockerfile in images.toml: the template, with the base and the entry point as build args.
        f"containers/Dockerfile --build-arg BASE_IMAGE={xgboost_base} --build-arg PROGRAM=train.py",
        "python3 -m pip freeze",
        "-t smkit-xgboost:nogit-",
        "check the image is linux/amd64",
    ]
    positions = [out.find(step) for step in steps]
    assert -1 not in positions and positions == sorted(positions), out
    assert "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:2.8.0-cpu-py312" in out
    assert not (project / "build").exists()

    (project / "build").mkdir()
    (project / "build" / "images.json").write_text(json.dumps({"schema": 1, "images": {"xgboost": {
        "local_ref": "smkit-xgboost:nogit-0", "tag": "nogit-0", "moving_tags": []}}}))
    push = run_build(project, "push", "--image", "xgboost", "--region", "eu-west-1", "--immutable-tags", "--dry-run", env=env).stdout
    for step in ("ecr describe-repositories smkit-xgboost --region eu-west-1", "scan on push", "IMMUTABLE tags",
                 "ecr get-authorization-token --region eu-west-1", "docker tag + docker push"):
        assert step in push


def test_doctor_checks_everything_and_names_fixes(moto, registry, tmp_path):
    env = {"AWS_ENDPOINT_URL": moto.url, "DOCKER_CONFIG": str(docker_config(tmp_path / "docker", registry))}
    ok = run_build(REPO, "doctor", "--region", "us-east-1", "--registry", f"{registry.host}/team", env=env)
    for check in ("docker engine", "docker compose", "architecture", "aws credentials", "ecr login", "registry login"):
        assert re.search(rf"{check}\s+ok", ok.stdout), ok.stdout
    assert "everything checked is ready" in ok.stdout

    closed = f"127.0.0.1:{free_port()}"
    bad = run_build(REPO, "doctor", "--region", "us-east-1", "--registry", closed, env=env, check=False)
    assert bad.returncode == 1
    assert re.search(r"registry\s+FAIL", bad.stdout) and f"The registry {closed} cannot be reached" in bad.stdout

    no_engine = run_build(REPO, "doctor", "--region", "us-east-1", env=dict(env, DOCKER_HOST="unix:///nonexistent.sock"), check=False)
    assert no_engine.returncode == 1
    assert "No Docker engine answers at unix:///nonexistent.sock" in no_engine.stdout and "make engine" in no_engine.stdout


def test_failures_name_the_cause_and_the_fix(project, registry, tmp_path):
    def fails(*args, env=None, expect: str):
        proc = run_build(project, *args, env=env, check=False)
        assert proc.returncode != 0
        assert expect in proc.stderr and "fix:" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr + proc.stdout
        return proc

    fails("build", "--image", "lightgbm", "--base", "local", expect="No image named lightgbm in images.toml")
    fails("build", "--image", "xgboost", "--base", f"127.0.0.1:{free_port()}/nope:1", expect="The base image")
    text = (project / "images.toml").read_text().replace('repository = "smkit-xgboost"', 'repository = "Bad Name!"')
    (project / "images.toml").write_text(text)
    fails("build", "--base", "local", expect="'Bad Name!' is not a valid repository name")
    (project / "images.toml").write_text(text.replace('repository = "Bad Name!"', 'repository = "smkit-xgboost"'))

    run_build(project, "build", "--image", "xgboost", "--base", "local")
    fails("push", "--image", "xgboost", "--registry", f"127.0.0.1:{free_port()}/team", "--quiet", expect="cannot be reached")
    wrong = tmp_path / "wrong-docker"
    wrong.mkdir()
    (wrong / "config.json").write_text(json.dumps({"auths": {registry.host: {"auth": base64.b64encode(b"smkit:wrong").decode()}}}))
    proc = fails("push", "--image", "xgboost", "--registry", f"{registry.host}/team", "--quiet", env={"DOCKER_CONFIG": str(wrong)},
                 expect="refused the credentials")
    assert "docker login" in proc.stderr


def test_tags_and_labels_follow_git(project, docker_client):
    def git(*args):
        subprocess.run(["git", "-C", str(project), *args], check=True, capture_output=True)

    git("init", "-q")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "scripts v1")
    git("remote", "add", "origin", "https://me:remote-token-123@git.example.com/team/repo.git")
    commit = subprocess.run(["git", "-C", str(project), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    run_build(project, "build", "--image", "xgboost", "--base", "local", "--tag", "latest")
    clean = manifest_entry(project)
    assert re.fullmatch(rf"{commit[:7]}-[0-9a-f]{{10}}", clean["tag"])
    labels = docker_client.images.get(clean["local_ref"]).labels
    assert labels["org.opencontainers.image.revision"] == commit
    # The source is recorded without the user or token the remote URL carries.
    assert labels["org.opencontainers.image.source"] == "https://git.example.com/team/repo.git"
    assert "remote-token-123" not in json.dumps(labels) + (project / "build" / "images.json").read_text()
    assert docker_client.images.get("smkit-xgboost:latest").id == clean["image_id"]  # the moving tag

    # An edited input is never passed off as the commit.
    (project / "train_scripts" / "xgboost" / "train.py").write_text("print('uncommitted')\n")
    run_build(project, "build", "--image", "xgboost", "--base", "local")
    dirty = manifest_entry(project)
    assert re.fullmatch(rf"{commit[:7]}-dirty-[0-9a-f]{{10}}", dirty["tag"])
    assert docker_client.images.get(dirty["local_ref"]).labels["org.opencontainers.image.revision"] == commit + "-dirty"
    # A change outside the image's inputs does not make it dirty.
    (project / "README.txt").write_text("notes\n")
    (project / "train_scripts" / "xgboost" / "train.py").write_text("print('version 1')\n")
    run_build(project, "build", "--image", "xgboost", "--base", "local")
    assert manifest_entry(project)["tag"] == clean["tag"]


def _containers_started(docker_client, since: float, until: float) -> list[str]:
    """Ids of the images that containers were started from in [since, until] (engine events, every client)."""
    events = docker_client.events(since=int(since) - 1, until=int(until) + 2, decode=True,
                                  filters={"type": "container", "event": "start"})
    return [e["Actor"]["Attributes"].get("image", "").removeprefix("sha256:") for e in events]


def _build_watched(project, docker_client) -> tuple[dict, dict, set[str], list[str]]:
    """Build xgboost; (manifest entry, labels, the ids of the image's layers-chain, images containers started from)."""
    import time

    started = time.time()
    run_build(project, "build", "--image", "xgboost", "--base", "local")
    ended = time.time()
    entry = manifest_entry(project)
    image = docker_client.images.get(entry["local_ref"])
    chain = {h["Id"].removeprefix("sha256:") for h in image.history() if h["Id"] != "<missing>"}
    return entry, image.labels, chain, _containers_started(docker_client, started, ended)


def test_script_only_rebuild_reuses_pip_freeze_and_starts_no_container(project, docker_client):
    import uuid

    # Inputs of this run only: no build may find its image already made (by an earlier run of this test).
    run = uuid.uuid4().hex[:12]
    script = project / "train_scripts" / "xgboost" / "train.py"
    script.write_text(f"print('version 1')  # {run}\n")
    first, first_labels, _, _ = _build_watched(project, docker_client)
    assert first["freeze_reused_from"] is None and "xgboost==3.0.5" in first_labels["io.smkit.pip-freeze"]

    script.write_text(f"print('version 2')  # {run}\n")
    second, labels, chain, started = _build_watched(project, docker_client)
    # Nothing ran in a container for this image: neither a RUN step (all cached) nor `pip freeze`.
    assert chain & set(started) == set(), started
    assert second["freeze_reused_from"] == first["local_ref"]
    assert labels["io.smkit.pip-freeze"] == first_labels["io.smkit.pip-freeze"]
    assert labels["io.smkit.deps-sha256"] == first_labels["io.smkit.deps-sha256"] == second["deps_sha256"]
    assert labels["io.smkit.scripts-sha256"] == second["scripts_sha256"] != first["scripts_sha256"]
    assert labels["io.smkit.inputs-sha256"] == second["inputs_sha256"] != first["inputs_sha256"]
    assert labels["org.opencontainers.image.base.name"] == first_labels["org.opencontainers.image.base.name"]
    # The same image a full build makes: the deps layers shared, the scripts layer new, the code in place.
    assert second["layers"][:-1] == first["layers"][:-1] and second["layers"][-1] != first["layers"][-1]
    code = docker_client.containers.run(second["local_ref"], ["-c", "ls -A /opt/ml/code; cat /opt/ml/code/train.py"],
                                        entrypoint=["sh"], remove=True, network_disabled=True).decode().split()
    assert code == ["sm_contract.py", "train.py", "print('version", "2')", "#", run]  # nothing of the one-pass build leaked in

    # An edit of the requirements changes what pip sees: pip freeze runs again, in a container of the built image.
    requirements = project / "containers" / "xgboost" / "requirements.txt"
    requirements.write_text(requirements.read_text() + f"# an edit {run}\n")
    third, third_labels, chain, started = _build_watched(project, docker_client)
    assert third["freeze_reused_from"] is None
    assert third_labels["io.smkit.deps-sha256"] == third["deps_sha256"] != second["deps_sha256"]
    assert "xgboost==3.0.5" in third_labels["io.smkit.pip-freeze"].splitlines()
    history = docker_client.images.get(third["local_ref"]).history()
    built = history[1]["Id"].removeprefix("sha256:")  # the image the labels were committed onto
    assert built in started, (built, started)  # the pip freeze container
    for entry in (second, third):
        # The labels are all the label commit changed: entrypoint, command, environment... are the build's.
        labelled = docker_client.images.get(entry["local_ref"])
        unlabelled = docker_client.images.get(labelled.attrs["Parent"])
        assert {k: v for k, v in labelled.attrs["Config"].items() if k != "Labels"} == \
            {k: v for k, v in unlabelled.attrs["Config"].items() if k != "Labels"}
        assert labelled.attrs["Config"]["Entrypoint"] is None and labelled.attrs["Config"]["Cmd"] == ["train"]
        assert labelled.attrs["RootFS"] == unlabelled.attrs["RootFS"]


def import_bare_image(docker_client, stem: str):
    """(repository, image) of `<repository>:base`: one file, no shell, no python, no entrypoint or command."""
    import io
    import tarfile
    import uuid

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("hello.txt")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"hello"))
    repository = f"smkit-test/{stem}-{uuid.uuid4().hex[:8]}"
    docker_client.api.import_image_from_data(buffer.getvalue(), repository=repository, tag="base")
    return repository, docker_client.images.get(f"{repository}:base")


def test_labels_go_on_an_image_without_entrypoint_or_command(docker_client):
    """No container can be created from such an image: the labels take a build step instead of a commit."""
    from smkit import label_pass

    repository, base = import_bare_image(docker_client, "bare")
    assert not base.attrs["Config"] or not (base.attrs["Config"].get("Cmd") or base.attrs["Config"].get("Entrypoint"))
    try:
        image_id = label_pass.apply_labels(base.id, {"io.x.freeze": 'a==1\nb==2 "q" $HOME', "io.x.n": "1"}, f"{repository}:labelled")
        labelled = docker_client.images.get(f"{repository}:labelled")
        assert labelled.id == image_id
        assert labelled.labels == {"io.x.freeze": 'a==1\nb==2 "q" $HOME', "io.x.n": "1"}
        assert not labelled.attrs["Config"].get("Cmd") and not labelled.attrs["Config"].get("Entrypoint")
        assert labelled.attrs["RootFS"]["Layers"] == base.attrs["RootFS"]["Layers"]
    finally:
        for tag in ("labelled", "base"):
            try:
                docker_client.images.remove(f"{repository}:{tag}")
            except Exception:  # noqa: BLE001 - already gone
                pass


def test_an_image_that_is_not_linux_amd64_is_refused(docker_client):
    """docs/build.md: anything but linux/amd64 is refused before it can reach a registry (SageMaker would
    fail it with `exec format error`). FROM scratch + COPY builds for arm64 without emulation."""
    import io
    import tarfile

    from smkit import builder
    from smkit.errors import BuildFailed

    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        for name, data in (("Dockerfile", b"FROM scratch\nCOPY one /one\n"), ("one", b"1\n")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    context.seek(0)
    image, _ = docker_client.images.build(fileobj=context, custom_context=True, platform="linux/arm64",
                                          tag="smkit-test/arm64:latest", rm=True)
    assert image.attrs["Architecture"] == "arm64"
    with pytest.raises(BuildFailed) as refused:
        builder.check_platform("smkit-test/arm64:latest")
    assert "linux/arm64" in refused.value.what and "linux/amd64" in refused.value.what
    builder.check_platform(docker_client.images.get(standin.STANDINS["xgboost"]).id)  # the stand-in passes


def test_pip_freeze_of_an_image_without_python_leaves_no_container(docker_client):
    """The pip-freeze label of an image where pip cannot run is empty, and the container that tried is gone
    (docker's run(remove=True) leaves a container behind when it cannot start)."""
    from smkit import image_build

    repository, image = import_bare_image(docker_client, "no-python")
    try:
        assert image_build._pip_freeze(image.id) == ""
        assert docker_client.containers.list(all=True, filters={"ancestor": image.id}) == []
    finally:
        docker_client.images.remove(f"{repository}:base", force=True)
