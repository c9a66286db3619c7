"""A training job, described once and run either in SageMaker local mode or in the cloud.

The description is the same for both; only where the data and artifacts live (file:// or s3://) and
where the containers run (Docker here, instances there) differ. That is the point of testing locally.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from smkit import bases, engine, images_json
from smkit.errors import ConfigError
from smkit.paths import PROJECT

SAMPLE_DATA = Path(__file__).resolve().parent / "sample_data"
PROJECT_SAMPLE_DATA = PROJECT / "sample_data"  # an image's own sample data: sample_data/<name>/{job.json,<channel>/}
RUNS_DIR = PROJECT / "local_mode" / "runs"  # the project's: a team's own repository keeps its runs
# Local mode never calls IAM, but the SDK wants an ARN-shaped role; nothing is ever assumed with it.
PLACEHOLDER_ROLE = "arn:aws:iam::111111111111:role/smkit-local-mode-placeholder"
LOCAL_INSTANCE_TYPES = ("local", "local_gpu", "local_cpu")


@dataclass
class Channel:
    name: str
    source: str  # a directory / file path (local) or an s3:// URI (cloud)
    content_type: str | None = None
    distribution: str = "FullyReplicated"


@dataclass
class JobSpec:
    image: str  # an image reference (local ref, or the pushed URI for the cloud)
    channels: list[Channel]
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, str] = field(default_factory=dict)
    instance_type: str = "local"
    instance_count: int = 1
    job_name: str = ""
    image_name: str | None = None  # the images.toml name, when the image came from the build manifest
    max_run_seconds: int = 24 * 3600
    output_path: str | None = None  # s3:// for the cloud; local runs use their run directory
    checkpoint_s3_uri: str | None = None
    checkpoint_local_path: str | None = None
    # Local runs: a directory on this machine in the role of checkpoint_s3_uri, mounted at the checkpoint
    # path with checkpointconfig.json written (direct backend; SDK local mode has no checkpoint sync).
    checkpoint_dir: str | None = None
    spot: bool = False
    max_wait_seconds: int | None = None
    role: str = PLACEHOLDER_ROLE
    region: str | None = None
    metric_definitions: list[dict[str, str]] = field(default_factory=list)
    sdk: str = "auto"  # auto | v2 | v3
    # SDK v2 local mode: compose service keys merged into every container (LocalSession config
    # local.container_config): shm_size, mem_limit, cpus, ports. See local_mode/runtime.py.
    container_config: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "JobSpec":
        data = json.loads(text)
        data["channels"] = [Channel(**c) for c in data["channels"]]
        return cls(**data)


def job_name_for(image_name: str | None) -> str:
    """SageMaker's rule: 1-63 characters, alphanumerics and hyphens; unique by a millisecond stamp."""
    stem = re.sub(r"[^A-Za-z0-9-]+", "-", (image_name or "job")).strip("-")[:30] or "job"
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + f"-{int(time.time() * 1000) % 1000:03d}"
    return f"{stem}-{stamp}"


def resolve_image(image: str) -> tuple[str, str | None]:
    """`xgboost` (a name in build/images.json) -> its local ref; anything else is taken as a reference."""
    images = images_json.load()["images"]
    if image in images:
        return images[image]["local_ref"], image
    if "/" not in image and ":" not in image:
        raise ConfigError(
            f"{image!r} is neither an image in build/images.json nor an image reference.",
            f"build it first (`make build IMAGE={image} BASE=local`), or pass a full reference like name:tag",
        )
    return image, None


def parse_channels(pairs: list[str], content_types: list[str] | None = None) -> list[Channel]:
    """`name=path` pairs (and optional `name=content/type` pairs)."""
    types = {}
    for pair in content_types or []:
        name, _, value = pair.partition("=")
        if not value:
            raise ConfigError(f"--content-type {pair!r} is not NAME=TYPE.", "write e.g. --content-type train=text/csv")
        types[name] = value
    channels = []
    for pair in pairs:
        name, _, source = pair.partition("=")
        if not source or not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", name):
            raise ConfigError(
                f"--channel {pair!r} is not NAME=PATH.",
                "write e.g. --channel train=data/train (channel names: letters, digits, . _ -)",
            )
        channels.append(Channel(name=name, source=source, content_type=types.get(name)))
    return channels


def sample_job(image_name: str) -> tuple[list[Channel], dict[str, Any]]:
    """The sample data of an image and the hyperparameters that suit it: the project's own
    (sample_data/<image name>/, as `init` writes it), else the bundled one of its framework."""
    framework = image_name
    try:
        framework = images_json.entry(image_name).get("framework", image_name)
    except ConfigError:
        pass
    directory = PROJECT_SAMPLE_DATA / image_name
    if not (directory / "job.json").is_file():
        directory = SAMPLE_DATA / str(framework)
    if not directory.is_dir():
        raise ConfigError(
            f"There is no bundled sample data for {image_name!r}.",
            f"pass --channel NAME=DIR (samples exist for {', '.join(p.name for p in SAMPLE_DATA.iterdir() if p.is_dir())})",
        )
    config = json.loads((directory / "job.json").read_text())
    types = config.get("content_types", {})
    channels = [
        Channel(name=sub.name, source=str(sub), content_type=types.get(sub.name))
        for sub in sorted(directory.iterdir())
        if sub.is_dir()
    ]
    return channels, dict(config.get("hyperparameters", {}))


def prepare_local(spec: JobSpec) -> None:
    """Name the job, settle its region, and refuse what a local run cannot do, before anything runs."""
    spec.job_name = spec.job_name or job_name_for(spec.image_name or spec.image.split("/")[-1].split(":")[0])
    spec.region = spec.region or bases.session_region() or "us-east-1"
    if spec.instance_type not in LOCAL_INSTANCE_TYPES:
        raise ConfigError(f"Instance type {spec.instance_type!r} is not a local one.", "use local or local_gpu (or --backend cloud)")
    if spec.instance_count < 1:
        raise ConfigError(f"Instance count {spec.instance_count} is not positive.", "use --instance-count 1 or more")
    if not spec.channels:
        raise ConfigError("The job has no input channels.", "pass --channel train=DIR (or --sample for the bundled data)")
    for channel in spec.channels:
        if channel.source.startswith("s3://"):
            raise ConfigError(
                f"Channel {channel.name} is in S3 ({channel.source}); local runs read local directories only.",
                "download it first (`aws s3 sync URI DIR`), or run in the cloud with --backend cloud",
            )
        if not Path(channel.source).exists():
            raise ConfigError(f"Channel {channel.name}: {channel.source} does not exist.", "pass an existing directory or file")
        if channel.distribution != "FullyReplicated":
            raise ConfigError(
                f"Channel {channel.name} asks for {channel.distribution}; SageMaker local mode supports FullyReplicated only.",
                "drop the option for local runs (the scripts shard FullyReplicated channels themselves)",
            )
    import docker.errors

    try:
        engine.client().images.get(spec.image)
    except docker.errors.ImageNotFound:
        raise ConfigError(
            f"The image {spec.image} is not in the local Docker engine.",
            "build it (`make build BASE=local`) or pull it; local runs never pull from a registry",
        ) from None


def create_run_dir(runs_dir: Path, spec: JobSpec) -> Path:
    """local_mode/runs/<job name>/ (or under runs_dir) with the job's spec.json; it must be new."""
    run_dir = Path(runs_dir) / spec.job_name
    if run_dir.exists():
        raise ConfigError(f"{run_dir} exists already.", "use another --job-name or remove the directory")
    run_dir.mkdir(parents=True)
    (run_dir / "spec.json").write_text(spec.to_json())
    return run_dir
