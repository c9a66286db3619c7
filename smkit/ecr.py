"""Amazon ECR: repositories with safe defaults, and short-lived logins used for one pull or push.

Logins are never stored: the token from GetAuthorizationToken (valid 12 hours) is handed to the engine
with the one request that needs it, so a stale `docker login` from yesterday can never be what a push
relies on, and no token lands in ~/.docker/config.json.

Every boto3 client honours AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_ECR, which is how the tests point them
at a local moto server.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from datetime import datetime

import boto3
import botocore.exceptions

from smkit.errors import ToolkitError

# Untagged images pile up with every push of a moving tag; two weeks is long enough to roll back.
LIFECYCLE_POLICY = {
    "rules": [
        {
            "rulePriority": 1,
            "description": "expire untagged images 14 days after push (smkit default)",
            "selection": {"tagStatus": "untagged", "countType": "sinceImagePushed", "countUnit": "days", "countNumber": 14},
            "action": {"type": "expire"},
        }
    ]
}


def client(region: str):
    return boto3.client("ecr", region_name=region)


def explain(exc: Exception, action: str, region: str) -> ToolkitError:
    """Turn a boto3/botocore failure into what failed and how to fix it."""
    if isinstance(exc, (botocore.exceptions.NoCredentialsError, botocore.exceptions.PartialCredentialsError)):
        return ToolkitError(
            f"No AWS credentials were found to {action}.",
            "configure them (`aws configure`, `aws sso login`, AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY), "
            "or build offline with --base local and push to --registry HOST/NAMESPACE",
        )
    if isinstance(exc, botocore.exceptions.EndpointConnectionError):
        return ToolkitError(
            f"Could not reach the AWS API in {region} to {action} ({exc}).",
            "check the network/proxy settings and the region (--region)",
        )
    if isinstance(exc, botocore.exceptions.ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        message = exc.response.get("Error", {}).get("Message", str(exc))
        if code in ("UnrecognizedClientException", "InvalidSignatureException", "ExpiredTokenException", "ExpiredToken"):
            return ToolkitError(
                f"AWS rejected the credentials while trying to {action}: {message}",
                "refresh them (`aws sso login`, or new access keys) and check the clock of this machine",
            )
        if code in ("AccessDeniedException", "AccessDenied"):
            return ToolkitError(
                f"Access denied while trying to {action}: {message}",
                "grant this identity ecr:GetAuthorizationToken, ecr:DescribeRepositories, ecr:CreateRepository, "
                "ecr:PutLifecyclePolicy and the ecr:*Layer*/ecr:PutImage push actions on the repository",
            )
        if code == "InvalidParameterException":
            return ToolkitError(f"ECR refused a parameter while trying to {action}: {message}", "fix the name or option it names")
        return ToolkitError(f"ECR failed to {action}: {code} {message}", "see the message; rerun with --verbose")
    return ToolkitError(f"Failed to {action}: {exc}", "rerun with --verbose")


@dataclass(frozen=True)
class Login:
    """Credentials for one registry, valid until `expires_at`; repr never shows the password."""

    registry: str
    username: str
    password: str = field(repr=False)
    expires_at: datetime | None = None

    @property
    def auth_config(self) -> dict[str, str]:
        return {"username": self.username, "password": self.password, "serveraddress": self.registry}


def login(region: str, registry_id: str | None = None) -> Login:
    """A fresh token for the registry of `registry_id` (default: the caller's own account)."""
    kwargs = {"registryIds": [registry_id]} if registry_id else {}
    try:
        data = client(region).get_authorization_token(**kwargs)["authorizationData"][0]
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        target = f"registry {registry_id} in {region}" if registry_id else f"your ECR registry in {region}"
        raise explain(exc, f"log in to {target}", region) from None
    username, password = base64.b64decode(data["authorizationToken"]).decode().split(":", 1)
    registry = data["proxyEndpoint"].replace("https://", "").replace("http://", "").rstrip("/")
    return Login(registry=registry, username=username, password=password, expires_at=data.get("expiresAt"))


@dataclass
class RepositoryState:
    name: str
    uri: str
    created: bool
    immutable: bool
    scan_on_push: bool
    encryption: str


def ensure_repository(region: str, name: str, immutable: bool | None = None, kms_key: str | None = None) -> RepositoryState:
    """The repository `name`, created if missing with scan-on-push, encryption at rest (AES256, or KMS
    with `kms_key`), a lifecycle policy for untagged images, and MUTABLE or IMMUTABLE tags. An existing
    repository is left as it is, except that an explicit `immutable` choice is applied."""
    ecr = client(region)
    created = False
    try:
        repo = ecr.describe_repositories(repositoryNames=[name])["repositories"][0]
    except botocore.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "RepositoryNotFoundException":
            raise explain(exc, f"look up the ECR repository {name}", region) from None
        encryption = {"encryptionType": "KMS", "kmsKey": kms_key} if kms_key else {"encryptionType": "AES256"}
        try:
            repo = ecr.create_repository(
                repositoryName=name,
                imageTagMutability="IMMUTABLE" if immutable else "MUTABLE",
                imageScanningConfiguration={"scanOnPush": True},
                encryptionConfiguration=encryption,
                tags=[{"Key": "created-by", "Value": "smkit"}],
            )["repository"]
            ecr.put_lifecycle_policy(repositoryName=name, lifecyclePolicyText=json.dumps(LIFECYCLE_POLICY))
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc2:
            raise explain(exc2, f"create the ECR repository {name}", region) from None
        created = True
    except botocore.exceptions.BotoCoreError as exc:
        raise explain(exc, f"look up the ECR repository {name}", region) from None
    mutability = repo.get("imageTagMutability", "MUTABLE")
    if immutable is not None and (mutability == "IMMUTABLE") != immutable:
        mutability = "IMMUTABLE" if immutable else "MUTABLE"
        try:
            ecr.put_image_tag_mutability(repositoryName=name, imageTagMutability=mutability)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise explain(exc, f"set tag mutability of {name}", region) from None
    return RepositoryState(
        name=name,
        uri=repo["repositoryUri"],
        created=created,
        immutable=mutability == "IMMUTABLE",
        scan_on_push=repo.get("imageScanningConfiguration", {}).get("scanOnPush", False),
        encryption=repo.get("encryptionConfiguration", {}).get("encryptionType", "AES256"),
    )
