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

FRAMEWORKS = ("xgboost", "pytorch", "sklearn")
PROCESSORS = ("cpu", "gpu")
# ECR's rule for repository names (also valid for any OCI registry).
REPOSITORY_NAME = re.compile(r"^(?:[a-z0-9]+(?:[._-][a-z0-9]+)*/)*[a-z0-9]+(?:[._-][a-z0-9]+)*$")
# The Python of each prebuilt base family, where image_uris.retrieve needs one and the family has only one.
DEFAULT_PY_VERSION = {"sklearn": "py3"}


@dataclass(frozen=True)
class ImageSpec:
    """One [images.<name>] table: everything the build needs to know about an image.

    The base is `framework` + `version` (+ `py_version`, `processor`): the prebuilt SageMaker image that
    sagemaker.image_uris.retrieve names; or `base_uri`: any image (then `framework`, if given, only picks
    the offline stand-in for `--base local`). Without `dockerfile` the image is built from the toolkit's
    template (containers/Dockerfile); with one, that Dockerfile must agree with this table."""

    name: str
    scripts: tuple[str, ...]
    program: str
    repository: str
    framework: str | None = None
    version: str | None = None
    base_uri: str | None = None
    dockerfile: str | None = None
    requirements: str | None = None
    processor: str = "cpu"
    py_version: str | None = None
    metrics: tuple[str, ...] = ()  # metric names declared for cloud metric definitions (optional)

    @property
    def build_inputs(self) -> tuple[str, ...]:
        """Every project path the build reads: the Dockerfile's directory (if any), the requirements and the scripts."""
        inputs = [str(Path(self.dockerfile).parent)] if self.dockerfile else []
        if self.requirements:
            inputs.append(self.requirements)
        return tuple(dict.fromkeys([*inputs, *self.scripts]))


KEYS = set(ImageSpec.__dataclass_fields__) - {"name"}
REQUIRED = {"scripts", "program"}


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
        specs[name] = spec_from_table(name, table, f"{Path(path).name} [images.{name}]")
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


def default_repository(name: str) -> str:
    """The repository an image is pushed to when images.toml names none: its name, made valid."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "image"


def spec_from_table(name: str, table: dict, where: str) -> ImageSpec:
    unknown = set(table) - KEYS
    if unknown:
        raise ConfigError(f"{where} has unknown keys {sorted(unknown)}.", f"use only {sorted(KEYS)}")
    missing = REQUIRED - set(table)
    if not table.get("base_uri"):
        missing |= {"framework", "version"} - set(table)
    if missing:
        raise ConfigError(f"{where} lacks {sorted(missing)}.",
                          "add them (see the comment at the top of images.toml, or docs/build.md)")
    framework = table.get("framework")
    if framework is not None and framework not in FRAMEWORKS:
        raise ConfigError(f"{where} framework {framework!r} is not supported.",
                          f"use one of {FRAMEWORKS}, or give any base image as base_uri = \"...\"")
    if table.get("processor", "cpu") not in PROCESSORS:
        raise ConfigError(f"{where} processor {table['processor']!r} is not valid.", f"use one of {PROCESSORS}")
    py_version = table.get("py_version") or (DEFAULT_PY_VERSION.get(framework) if not table.get("base_uri") else None)
    if framework == "pytorch" and not table.get("base_uri") and not py_version:
        raise ConfigError(f"{where} needs py_version for a PyTorch base.", 'add e.g. py_version = "py312"')
    scripts = table["scripts"]
    scripts = (scripts,) if isinstance(scripts, str) else tuple(scripts)
    if not scripts or not all(isinstance(s, str) and s for s in scripts):
        raise ConfigError(f"{where} scripts must name a directory or a list of directories.",
                          'write e.g. scripts = "train_scripts/my-model"')
    program = table["program"]
    if not isinstance(program, str) or "/" in program or not program:
        raise ConfigError(f"{where} program {program!r} is not a file name.",
                          'name the entry point inside the scripts directory, e.g. program = "train.py"')
    repository = check_repository_name(table.get("repository") or default_repository(name))
    return ImageSpec(
        name=name,
        scripts=scripts,
        program=program,
        repository=repository,
        framework=framework,
        version=table.get("version"),
        base_uri=table.get("base_uri"),
        dockerfile=table.get("dockerfile"),
        requirements=table.get("requirements") or None,
        processor=table.get("processor", "cpu"),
        py_version=py_version,
        metrics=tuple(table.get("metrics", ())),
    )
