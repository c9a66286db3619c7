"""images.toml: the one declarative list of the images this repository builds."""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

from smkit.errors import ConfigError
from smkit.paths import IMAGES_FILE

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

FRAMEWORKS = ("xgboost", "pytorch")
PROCESSORS = ("cpu", "gpu")
# ECR's rule for repository names (also valid for any OCI registry).
REPOSITORY_NAME = re.compile(r"^(?:[a-z0-9]+(?:[._-][a-z0-9]+)*/)*[a-z0-9]+(?:[._-][a-z0-9]+)*$")


@dataclass(frozen=True)
class ImageSpec:
    name: str
    framework: str
    version: str
    dockerfile: str
    scripts: tuple[str, ...]
    requirements: str
    program: str
    repository: str
    processor: str = "cpu"
    py_version: str | None = None
    metrics: tuple[str, ...] = ()  # metric names the script prints, for SageMaker metric_definitions

    @property
    def build_inputs(self) -> tuple[str, ...]:
        """Every path the build reads: the Dockerfile's directory, the requirements and the scripts."""
        return (str(Path(self.dockerfile).parent), self.requirements, *self.scripts)


def check_repository_name(name: str) -> str:
    if len(name) > 256 or not REPOSITORY_NAME.match(name):
        raise ConfigError(
            f"{name!r} is not a valid repository name.",
            "use lowercase letters, digits and . _ - separators, optionally with / namespaces "
            "(e.g. `team/xgboost-train`), at most 256 characters",
        )
    return name


def load(path: Path = IMAGES_FILE) -> dict[str, ImageSpec]:
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist.", "run from the repository root, or restore images.toml") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}.", "fix the line it names") from None
    specs = {}
    for name, table in (data.get("images") or {}).items():
        where = f"{Path(path).name} [images.{name}]"
        known = set(ImageSpec.__dataclass_fields__) - {"name"}
        unknown = set(table) - known
        if unknown:
            raise ConfigError(f"{where} has unknown keys {sorted(unknown)}.", f"use only {sorted(known)}")
        missing = {"framework", "version", "dockerfile", "scripts", "requirements", "program", "repository"} - set(table)
        if missing:
            raise ConfigError(f"{where} lacks {sorted(missing)}.", "add them (see the comment at the top of images.toml)")
        if table["framework"] not in FRAMEWORKS:
            raise ConfigError(f"{where} framework {table['framework']!r} is not supported.", f"use one of {FRAMEWORKS}")
        if table.get("processor", "cpu") not in PROCESSORS:
            raise ConfigError(f"{where} processor {table['processor']!r} is not valid.", f"use one of {PROCESSORS}")
        if table["framework"] == "pytorch" and not table.get("py_version"):
            raise ConfigError(f"{where} needs py_version for a PyTorch base.", 'add e.g. py_version = "py312"')
        check_repository_name(table["repository"])
        specs[name] = ImageSpec(name=name, **{**table, "scripts": tuple(table["scripts"]), "metrics": tuple(table.get("metrics", ()))})
    if not specs:
        raise ConfigError(f"{path} lists no images.", "add an [images.<name>] table")
    return specs


def select(specs: dict[str, ImageSpec], names: list[str] | None) -> list[ImageSpec]:
    if not names:
        return list(specs.values())
    unknown = [n for n in names if n not in specs]
    if unknown:
        raise ConfigError(f"No image named {', '.join(unknown)} in images.toml.", f"choose from {', '.join(specs)}")
    return [specs[n] for n in names]
