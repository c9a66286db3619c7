"""`init`: a new image in images.toml, ready to build and run locally with no other edit.

`init NAME --framework F` writes train_scripts/NAME/ (a short example script honouring the SageMaker
contract, with no dependency on this toolkit, or the user's own script with --from), its
requirements.txt, a small sample data set under sample_data/NAME/ (where `local_mode run --image NAME`
finds it) and the [images.NAME] table appended to images.toml (its comments kept). Nothing that
exists is overwritten: every target is checked before the first file is written.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from smkit import console
from smkit.images_toml import FRAMEWORKS, default_repository
from smkit.errors import ConfigError
from smkit.paths import REAL_BASES, REPO

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

EXAMPLES = Path(__file__).resolve().parent / "examples"
BUNDLED_SAMPLES = REPO / "local_mode" / "sample_data"
NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
# Import names whose pip package is called something else.
PIP_NAMES = {
    "sklearn": "scikit-learn", "cv2": "opencv-python-headless", "PIL": "Pillow", "yaml": "PyYAML",
    "skimage": "scikit-image", "bs4": "beautifulsoup4", "attr": "attrs", "dateutil": "python-dateutil",
    "Crypto": "pycryptodome", "sagemaker_training": "sagemaker-training", "jwt": "PyJWT", "dotenv": "python-dotenv",
}


@dataclass(frozen=True)
class Base:
    """What `init` writes for a framework: the base version and the example's sample data and settings."""
    version: str
    py_version: str | None
    samples: str  # bundled sample data set the example trains on
    content_type: str
    hyperparameters: dict


def newest_sklearn_version() -> str:
    """The newest scikit-learn training image the installed SageMaker SDK knows (e.g. 1.4-2)."""
    try:
        from smkit.bases import _image_uris

        config = _image_uris().config_for_framework("sklearn")
        versions = list((config.get("training") or config)["versions"])
        return max(versions, key=lambda v: [int(p) for p in re.split(r"[.-]", v) if p.isdigit()])
    except Exception:  # an SDK without the table: the version the stand-in plays
        return "1.4-2"


def bases() -> dict[str, Base]:
    return {
        "xgboost": Base("3.0-5", None, "xgboost", "text/csv", {"num_round": 50, "max_depth": 4, "eta": 0.2}),
        "pytorch": Base("2.8.0", "py312", "pytorch", "application/x-npz", {"epochs": 10, "learning_rate": 0.003}),
        "sklearn": Base(newest_sklearn_version(), "py3", "xgboost", "text/csv", {"C": 1.0, "max_iter": 500}),
    }


def shipped_packages(framework: str) -> dict[str, str]:
    """[<framework>.packages] of containers/standin/real_bases.toml: what the prebuilt base already has."""
    if not REAL_BASES.is_file():
        return {}
    table = tomllib.loads(REAL_BASES.read_text()).get(framework, {})
    return {normalize(name): version for name, version in table.get("packages", {}).items()}


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def third_party_imports(source: str, filename: str) -> list[str]:
    """Top-level modules a script imports that are neither the standard library nor relative."""
    try:
        tree = ast.parse(source, filename=filename)
    except SyntaxError as exc:
        raise ConfigError(f"{filename} is not valid Python ({exc.msg}, line {exc.lineno}).", "fix the script, then run init again") from None
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module.split(".")[0])
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    return sorted({n for n in names if n not in stdlib}, key=str.lower)


def local_modules(source: Path) -> set[str]:
    """The modules that sit next to a script (its own helpers), by import name."""
    return {p.stem for p in source.parent.glob("*.py")} | {p.name for p in source.parent.iterdir()
                                                          if p.is_dir() and (p / "__init__.py").exists()}


def requirements_text(framework: str, image: str, script: Path | None, local: set[str] = frozenset()) -> str:
    base = bases()[framework]
    where = f"the prebuilt {framework} {base.version} base"
    if script is None:
        return (f"# Extra pip dependencies of train_scripts/{image}/, baked into the image at build time (never\n"
                f"# installed at job start). The example needs nothing beyond {where}; add one package a line,\n"
                "# pinned to the version you tested with (e.g. scikit-learn==1.4.2).\n")
    shipped = shipped_packages(framework)
    lines = [f"# Extra pip dependencies of {script.name}, baked into the image at build time (never at job start).",
             f"# Found from its imports; those {where} already ships are commented out",
             "# (containers/standin/real_bases.toml). Pin each to the version you tested with."]
    for module in third_party_imports(script.read_text(), str(script)):
        if module in local:
            continue  # a module of the user's own, next to the script: not a pip package
        package = PIP_NAMES.get(module, module)
        if normalize(package) in shipped:
            version = shipped[normalize(package)]
            lines.append(f"# {package}  (the base ships it{' ' + version if version else ''})")
        else:
            lines.append(package)
    return "\n".join(lines) + "\n"


def toml_entry(name: str, framework: str, program: str, source: Path | None) -> str:
    base = bases()[framework]
    origin = f" --from {source.name}" if source else ""
    lines = [
        "",
        f"# Written by `init {name} --framework {framework}{origin}`: build it with `make build IMAGE={name} BASE=local`,",
        f"# run it on sample_data/{name}/ with `make local IMAGE={name}`.",
        f"[images.{name}]",
        f'framework = "{framework}"',
        f'version = "{base.version}"',
    ]
    if base.py_version:
        lines.append(f'py_version = "{base.py_version}"')
    lines += [
        f'scripts = "train_scripts/{name}"',
        f'program = "{program}"',
        f'requirements = "train_scripts/{name}/requirements.txt"',
    ]
    if default_repository(name) != name:
        lines.append(f'repository = "{default_repository(name)}"')
    return "\n".join(lines) + "\n"


def init(project: Path, name: str, framework: str, source: Path | None = None, dry_run: bool = False) -> list[Path]:
    """Write the new image's files under `project`; returns what was written (dry_run: prints it, writes nothing)."""
    if not NAME.match(name):
        raise ConfigError(f"{name!r} is not a valid image name.",
                          "use lowercase letters, digits, - and _ (at most 63), starting with a letter or digit")
    if framework not in FRAMEWORKS:
        raise ConfigError(f"Framework {framework!r} is not supported.", f"use one of {', '.join(FRAMEWORKS)}")
    if source is not None:
        source = Path(source)
        if not source.is_file() or source.suffix != ".py":
            raise ConfigError(f"--from {source}: no such Python script.", "pass the path of your training script (a .py file)")
    base = bases()[framework]
    program = source.name if source else "train.py"
    scripts = project / "train_scripts" / name
    samples = project / "sample_data" / name
    images = project / "images.toml"
    text = images.read_text() if images.exists() else ""
    taken = [p for p in (scripts, samples) if p.exists()]
    if text and tomllib.loads(text).get("images", {}).get(name) is not None:
        taken.append(Path(f"{images} [images.{name}]"))
    if taken:
        raise ConfigError(f"init would overwrite what exists: {', '.join(str(p) for p in taken)}.",
                          "choose another image name, or remove those first (init never overwrites)")

    if dry_run:
        console.out.print(f"would write {scripts}/{program} ({'copied from ' + str(source) if source else 'the ' + framework + ' example'}), "
                          f"{scripts}/requirements.txt, the sample data under {samples}/ and this table in {images}:", markup=False)
        console.out.print(toml_entry(name, framework, program, source), markup=False)
        return []
    written = []
    scripts.mkdir(parents=True)
    if source:
        shutil.copyfile(source, scripts / program)
    else:
        shutil.copyfile(EXAMPLES / f"{framework}.py", scripts / program)
    helpers = set()
    if source:
        imported = set(third_party_imports(source.read_text(), str(source)))
        helpers = (local_modules(source) - {source.stem}) & imported
        for helper in sorted(helpers):
            console.warn(f"{source.name} imports {helper}, which sits next to it: copy it into train_scripts/{name}/ "
                         "too (init copies the script alone)")
    (scripts / "requirements.txt").write_text(
        requirements_text(framework, name, scripts / program if source else None, helpers))
    written += [scripts / program, scripts / "requirements.txt"]

    bundled = BUNDLED_SAMPLES / base.samples
    channels = sorted(p.name for p in bundled.iterdir() if p.is_dir())
    for channel in channels:
        shutil.copytree(bundled / channel, samples / channel)
    job = {
        "hyperparameters": {} if source else base.hyperparameters,
        "content_types": {channel: base.content_type for channel in channels},
    }
    (samples / "job.json").write_text(json.dumps(job, indent=2) + "\n")
    (samples / "README.md").write_text(
        f"Sample data of the image {name}: {', '.join(channels)} channels, cut from smkit's bundled "
        f"`{base.samples}` sample ({'label-first CSV, no header' if base.content_type == 'text/csv' else '.npz with X and y'}).\n"
        f"`local_mode run --image {name}` (`make local IMAGE={name}`) trains on it with the hyperparameters of job.json.\n")
    written += [samples / channel for channel in channels] + [samples / "job.json"]

    header = "" if text else ("# The images this project builds: one [images.<name>] table each (see `smkit --help` and\n"
                              "# docs/build.md of smkit for every key).\n")
    separator = "" if not text or text.endswith("\n") else "\n"
    with open(images, "a") as handle:
        handle.write(header + separator + toml_entry(name, framework, program, source))
    written.append(images)
    for path in written:
        console.note(f"wrote {path.relative_to(project) if path.is_relative_to(project) else path}")
    return written
