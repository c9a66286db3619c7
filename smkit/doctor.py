"""`build.py doctor`: everything a build, a local run and a push depend on, checked, with a fix for each problem."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

from rich.table import Table

from smkit import bases, console

FAIL, WARN, OK = "FAIL", "WARN", "ok"


@dataclass
class Finding:
    check: str
    status: str
    detail: str
    fix: str = ""


def check_engine() -> list[Finding]:
    from smkit import engine
    from smkit.errors import ToolkitError

    try:
        client = engine.client()
    except ToolkitError as exc:
        return [Finding("docker engine", FAIL, exc.what, exc.fix)]
    info = client.info()
    findings = [Finding("docker engine", OK, f"{info.get('ServerVersion')} ({info.get('Driver')}, cgroups v{info.get('CgroupVersion', '?')})")]
    arch = info.get("Architecture", "")
    if arch in ("x86_64", "amd64"):
        findings.append(Finding("architecture", OK, f"{arch}: builds are native linux/amd64"))
    else:
        findings.append(Finding("architecture", WARN, f"{arch}: linux/amd64 images need emulation here",
                                "install binfmt emulation (`docker run --privileged --rm tonistiigi/binfmt --install amd64`); "
                                "builds are slower but correct"))
    root = info.get("DockerRootDir", "/var/lib/docker")
    try:
        free = shutil.disk_usage(root).free / 1e9
        status = OK if free >= 20 else (WARN if free >= 5 else FAIL)
        findings.append(Finding("disk", status, f"{free:.0f} GB free in {root}",
                                "" if status == OK else "free space: `docker system prune` (images of these bases are ~2 GB each)"))
    except OSError:
        pass
    return findings


def check_compose() -> Finding:
    for command in (["docker", "compose", "version", "--short"], ["docker-compose", "version", "--short"]):
        if shutil.which(command[0]) is None:
            continue
        proc = subprocess.run(command, capture_output=True, text=True)
        if proc.returncode == 0:
            return Finding("docker compose", OK, f"{' '.join(command[:-2])} {proc.stdout.strip()} (SageMaker local mode runs it)")
    return Finding("docker compose", FAIL, "neither `docker compose` nor `docker-compose` is installed; SageMaker local mode needs one",
                   "install the compose plugin (docker-compose-plugin) or `apt-get install docker-compose`")


def check_aws(region: str | None) -> list[Finding]:
    import boto3
    import botocore.exceptions

    from smkit import ecr

    region = bases.session_region(region)
    if not region:
        return [Finding("aws region", FAIL, "no region is set", "pass --region, or set AWS_DEFAULT_REGION (local builds need none: --base local)")]
    findings = [Finding("aws region", OK, region)]
    session = boto3.Session(region_name=region)
    if session.get_credentials() is None:
        findings.append(Finding("aws credentials", FAIL, "none found",
                                "`aws configure`, `aws sso login`, AWS_PROFILE, or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"))
        return findings
    try:
        identity = session.client("sts").get_caller_identity()
        findings.append(Finding("aws credentials", OK, f"{identity['Arn']}"))
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        error = ecr.explain(exc, "check the credentials (sts get-caller-identity)", region)
        findings.append(Finding("aws credentials", FAIL, error.what, error.fix))
        return findings
    try:
        login = ecr.login(region)
        expires = f", token valid until {login.expires_at:%Y-%m-%d %H:%M %Z}" if login.expires_at else ""
        findings.append(Finding("ecr login", OK, f"{login.registry}{expires} (fetched fresh for every push)"))
    except Exception as exc:  # ToolkitError from ecr.login
        findings.append(Finding("ecr login", FAIL, getattr(exc, "what", str(exc)), getattr(exc, "fix", "")))
    return findings


def check_registry(registry_arg: str) -> list[Finding]:
    from smkit import registry
    from smkit.errors import ToolkitError

    try:
        target = registry.oci_target(registry_arg, "smkit-doctor-probe")
    except ToolkitError as exc:
        return [Finding("registry", FAIL, exc.what, exc.fix)]
    findings = []
    try:
        registry.remote_digest(target, "doctor-probe")
        findings.append(Finding("registry", OK, f"{target.registry} answers"))
        findings.append(Finding("registry login", OK if target.auth else WARN,
                                "credentials found in the docker config" if target.auth else "no credentials in the docker config (fine for an open registry)",
                                "" if target.auth else f"`docker login {target.registry}` if it requires authentication"))
    except ToolkitError as exc:
        status = FAIL
        findings.append(Finding("registry", status, exc.what, exc.fix))
    return findings


def check_sdk() -> Finding:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return Finding("sagemaker sdk", OK, version("sagemaker"))
    except PackageNotFoundError:
        return Finding("sagemaker sdk", FAIL, "not installed", "`make venv`, or pip install sagemaker")


def run(region: str | None = None, registry_arg: str | None = None) -> int:
    findings = check_engine()
    findings.append(check_compose())
    findings.append(check_sdk())
    findings += check_aws(region)
    if registry_arg:
        findings += check_registry(registry_arg)
    table = Table(show_header=True, header_style="bold", box=None)
    for column in ("check", "status", "detail", "fix"):
        table.add_column(column, overflow="fold")
    colours = {OK: "green", WARN: "yellow", FAIL: "red"}
    for f in findings:
        table.add_row(f.check, f"[{colours[f.status]}]{f.status}[/]", f.detail, f.fix)
    console.out.print(table)
    failed = [f for f in findings if f.status == FAIL]
    console.out.print(f"{len(failed)} problem(s) found" if failed else "everything checked is ready")
    return 1 if failed else 0
