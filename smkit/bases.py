"""Which image a build starts FROM: the prebuilt SageMaker image, the offline stand-in, or a given URI."""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass

from smkit.images_toml import ImageSpec
from smkit.errors import ConfigError

# An instance type per processor, only to tell image_uris.retrieve which variant to return.
INSTANCE_FOR = {"cpu": "ml.m5.xlarge", "gpu": "ml.g5.xlarge"}
ECR_HOST = re.compile(r"^(?P<account>\d{12})\.dkr\.ecr(?:-fips)?\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(?:\.cn)?$")


@dataclass(frozen=True)
class Base:
    uri: str
    kind: str  # "aws" (prebuilt SageMaker image), "local" (stand-in) or "uri" (given)

    @property
    def ecr(self) -> tuple[str, str] | None:
        """(account, region) when the base lives in a private ECR registry that needs a login."""
        match = ECR_HOST.match(self.uri.split("/", 1)[0])
        return (match["account"], match["region"]) if match else None


def _image_uris():
    # The SDK logs where it looked for its defaults config at INFO on import; not our users' business here.
    logging.getLogger("sagemaker.config").setLevel(logging.WARNING)
    os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")  # v2 works; the migration is the user's call
    try:  # SDK v2
        from sagemaker import image_uris
    except ImportError:  # SDK v3 moved it
        from sagemaker.core import image_uris
    return image_uris


def session_region(explicit: str | None = None) -> str | None:
    """--region, else AWS_REGION / AWS_DEFAULT_REGION, else the AWS config profile's region."""
    if explicit:
        return explicit
    for var in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        if os.environ.get(var):
            return os.environ[var]
    config = os.environ.get("AWS_CONFIG_FILE") or os.path.join(os.path.expanduser("~"), ".aws", "config")
    if not os.path.exists(config):
        return None  # nowhere else to find one; and importing boto3 costs every local run ~0.15 s
    import boto3

    return boto3.session.Session().region_name


def require_region(explicit: str | None) -> str:
    region = session_region(explicit)
    if not region:
        raise ConfigError(
            "No AWS region is set, and the prebuilt base image and ECR repository depend on it.",
            "pass --region us-east-1 (or REGION=... to make), or set AWS_DEFAULT_REGION; "
            "for an offline build use --base local",
        )
    return region


def prebuilt_uri(spec: ImageSpec, region: str, processor: str | None = None) -> str:
    """The prebuilt SageMaker training image for the spec, resolved offline by the SageMaker SDK
    (or the spec's own base_uri)."""
    if spec.base_uri:
        return spec.base_uri
    processor = processor or spec.processor
    kwargs = dict(region=region, version=spec.version, image_scope="training", instance_type=INSTANCE_FOR[processor])
    if spec.py_version:
        kwargs["py_version"] = spec.py_version
    try:
        return _image_uris().retrieve(spec.framework, **kwargs)
    except ValueError as exc:
        raise ConfigError(
            f"The SageMaker SDK knows no {spec.framework} {spec.version} ({processor}) training image "
            f"in {region}: {exc}",
            f"change `version`/`py_version` of [images.{spec.name}] in images.toml, or --region",
        ) from None


def resolve(spec: ImageSpec, choice: str, region: str | None, processor: str | None = None) -> Base:
    """choice: "aws" (default), "local" (the stand-in, built on demand), or an image reference."""
    if choice == "aws":
        if spec.base_uri:  # the image's own base: no region, no SageMaker registry
            return Base(spec.base_uri, "uri")
        return Base(prebuilt_uri(spec, require_region(region), processor), "aws")
    if choice == "local":
        from smkit import standin

        if spec.framework not in standin.STANDINS:
            raise ConfigError(
                f"[images.{spec.name}] builds on {spec.base_uri}, which has no offline stand-in.",
                "build on it as it is (--base aws, the default), or add framework = \"xgboost|pytorch|sklearn\" to "
                "its table to say which stand-in plays its part offline",
            )
        return Base(standin.STANDINS[spec.framework], "local")
    return Base(choice, "uri")
