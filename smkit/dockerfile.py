"""Which Dockerfile an image is built from, and whether a hand-written one agrees with images.toml.

Without `dockerfile` in images.toml every image is built from the toolkit's template (containers/Dockerfile):
the context puts the scripts at code/ and the requirements at requirements.txt, and the build args say
the rest. A hand-written Dockerfile repeats some of images.toml (the entry point, the script directories,
the requirements); the build reads it and refuses to go on when the two disagree, because the image would
silently run something else than images.toml says.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from smkit.images_toml import ImageSpec
from smkit.errors import ConfigError
from smkit.paths import PROJECT, TEMPLATE

CODE_DIR = "code"  # where the template context puts the scripts
REQUIREMENTS = "requirements.txt"  # where it puts the requirements
CONTEXT_DOCKERFILE = "Dockerfile"  # where it puts the template itself


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case
    args: str


def instructions(text: str) -> list[Instruction]:
    """The instructions of a Dockerfile: comments dropped, continuation lines joined."""
    result: list[Instruction] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if current and line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        keyword, _, args = current.strip().partition(" ")
        result.append(Instruction(keyword.upper(), args.strip()))
        current = ""
    return result


def _env_pairs(args: str) -> dict[str, str]:
    words = shlex.split(args)
    if words and "=" not in words[0]:  # legacy form: ENV NAME value with spaces
        return {words[0]: " ".join(words[1:])}
    return dict(word.split("=", 1) for word in words if "=" in word)


def _substitute(value: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: args.get(m.group(1), m.group(0)), value)


def program_of(text: str, buildargs: dict[str, str]) -> str | None:
    """The SAGEMAKER_PROGRAM a Dockerfile sets (build args and ARG defaults substituted), or None."""
    defaults: dict[str, str] = {}
    program = None
    for ins in instructions(text):
        if ins.keyword == "ARG":
            name, _, default = ins.args.partition("=")
            defaults[name.strip()] = buildargs.get(name.strip(), default.strip())
        elif ins.keyword == "ENV":
            pairs = _env_pairs(ins.args)
            if "SAGEMAKER_PROGRAM" in pairs:
                program = _substitute(pairs["SAGEMAKER_PROGRAM"], defaults)
    return program


def copy_sources(text: str) -> list[tuple[list[str], str]]:
    """(sources, destination) of each COPY/ADD that reads the build context."""
    copies = []
    for ins in instructions(text):
        if ins.keyword not in ("COPY", "ADD"):
            continue
        words = [w for w in shlex.split(ins.args) if not w.startswith("--")]
        if ins.args.lstrip().startswith("[") or len(words) < 2 or "--from" in ins.args:
            continue
        copies.append((words[:-1], words[-1]))
    return copies


def _norm(path: str) -> str:
    return path.strip().lstrip("./").rstrip("/") if path not in (".", "./") else "."


def check_agrees(spec: ImageSpec, text: str, buildargs: dict[str, str]) -> None:
    """Refuse a hand-written Dockerfile that disagrees with the image's table in images.toml."""
    where = f"{spec.dockerfile} (the dockerfile of [images.{spec.name}])"
    program = program_of(text, buildargs)
    if program is None:
        raise ConfigError(
            f"{where} sets no SAGEMAKER_PROGRAM, so the toolkit would not know to run {spec.program}.",
            f"add `ENV SAGEMAKER_PROGRAM={spec.program}` before the scripts are copied, or remove `dockerfile` "
            "from images.toml to build from the template",
        )
    if program != spec.program:
        raise ConfigError(
            f"{where} sets SAGEMAKER_PROGRAM={program}, but images.toml says program = \"{spec.program}\".",
            f"make them the same (e.g. `ENV SAGEMAKER_PROGRAM={spec.program}`), or remove `dockerfile` from "
            "images.toml to build from the template",
        )
    copies = copy_sources(text)
    into_code = {_norm(s) for sources, dest in copies if dest.rstrip("/").startswith("/opt/ml/code") for s in sources}
    for scripts in spec.scripts:
        if _norm(scripts) not in into_code:
            raise ConfigError(
                f"{where} copies no {scripts} into /opt/ml/code, though images.toml lists it in `scripts`.",
                f"add `COPY {scripts.rstrip('/')}/ /opt/ml/code/` as its last layer, or remove `dockerfile` from "
                "images.toml to build from the template",
            )
    if spec.requirements and not any(_norm(spec.requirements) in {_norm(s) for s in sources} for sources, _ in copies):
        raise ConfigError(
            f"{where} never copies {spec.requirements}, so its dependencies would not be installed.",
            f"COPY it and pip-install it at build time (see containers/Dockerfile), or fix `requirements` in images.toml",
        )


def read(spec: ImageSpec) -> str:
    path = PROJECT / spec.dockerfile
    if not path.is_file():
        raise ConfigError(f"{spec.dockerfile}, the dockerfile of [images.{spec.name}], does not exist under {PROJECT}.",
                          "fix the path in images.toml, or remove `dockerfile` to build from the template")
    return path.read_text()


def template_text() -> str:
    return TEMPLATE.read_text()
