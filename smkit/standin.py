"""Offline stand-ins for the prebuilt SageMaker XGBoost, PyTorch and scikit-learn training images.

The prebuilt images live in AWS-owned private ECR registries; machines without AWS credentials (the
offline demo, CI, air-gapped users) cannot pull them. The stand-ins run what the real images run where it
decides whether a job works (the XGBoost image's legacy sagemaker-containers toolkit and its script-mode
dispatch, the PyTorch image's sagemaker-training + sagemaker-pytorch-training, the pins, entry point and
workdir), so a derived image behaves the same on either base; containers/standin/real_bases.toml records
the real facts and docs/build.md the differences. Each stand-in is labelled with the hash of its inputs and
rebuilt only when they change.

Their Python base is `python:3.11-slim` where a registry can be pulled; where none can, the same role
is played by a Debian 12 root (Python 3.11) made with debootstrap and `docker import`.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import docker.errors

from smkit import builder, console, engine
from smkit.context import BuildContext, build_ca_bundle
from smkit.errors import ToolkitError
from smkit.paths import STANDIN_DIR

INPUTS_LABEL = "io.smkit.inputs-sha256"
PYTHON_BASE = "python:3.11-slim"
DEBIAN_PYTHON = "smkit/python-debian:3.11-bookworm"
DEBIAN_SUITE = "bookworm"
DEBIAN_PACKAGES = "python3,python3-pip,python3-venv,python-is-python3,ca-certificates"
DEBIAN_MIRROR = os.environ.get("SMKIT_DEBIAN_MIRROR", "http://deb.debian.org/debian")
TORCH_VERSION = "2.13.0"

# Tagged like the real images they stand in for (containers/standin/real_bases.toml says which).
STANDINS = {
    "xgboost": "smkit/standin-xgboost:3.0-5",
    "pytorch": "smkit/standin-pytorch:2.8.0-cpu-py312",
    "sklearn": "smkit/standin-sklearn:1.4-2",
}


def standin_dir(framework: str) -> Path:
    """The build files of a stand-in (containers/standin/<framework>/ of the toolkit)."""
    return STANDIN_DIR / framework


def _label(image: str) -> str | None:
    try:
        return (engine.client().images.get(image).labels or {}).get(INPUTS_LABEL)
    except docker.errors.ImageNotFound:
        return None


def python_base(choice: str = "auto") -> str:
    """The image the stand-ins start FROM.

    auto: python:3.11-slim if present or pullable, else a Debian root made here;
    debootstrap: always the Debian root; anything else: that image, as given.
    """
    if choice == "debootstrap":
        return debian_python_image()
    if choice != "auto":
        return choice
    if engine.image_exists(PYTHON_BASE):
        return PYTHON_BASE
    if _label(DEBIAN_PYTHON) == _debian_inputs():  # made here before: do not ask a registry every time
        return DEBIAN_PYTHON
    try:
        engine.client().images.pull(PYTHON_BASE)
        return PYTHON_BASE
    except docker.errors.APIError as exc:
        reason = str(exc.explanation or exc).split("\n")[0]
        console.note(f"{PYTHON_BASE} cannot be pulled here ({reason}); using a Debian 12 root instead")
    return debian_python_image()


def _debian_inputs() -> str:
    return hashlib.sha256(f"{DEBIAN_SUITE}\0{DEBIAN_PACKAGES}\0minbase".encode()).hexdigest()


def debian_python_image() -> str:
    """A Debian 12 root with Python 3.11 as an image: the python:3.11-slim stand-in for offline hosts."""
    inputs = _debian_inputs()
    if _label(DEBIAN_PYTHON) == inputs:
        return DEBIAN_PYTHON
    debootstrap = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
    if not os.path.exists(debootstrap):
        raise ToolkitError(
            "No Python base image can be pulled and debootstrap is not installed to make one.",
            "install it (`sudo apt-get install debootstrap`), or load python:3.11-slim into the engine "
            "(`docker load`), or pass --python-base IMAGE",
        )
    if os.geteuid() != 0:
        raise ToolkitError(
            "Making the Debian Python base needs root (debootstrap creates device nodes and chroots).",
            "run `sudo make bases` once; later runs reuse the image",
        )
    console.step(f"creating {DEBIAN_PYTHON} from a Debian {DEBIAN_SUITE} root (debootstrap, about a minute)")
    with tempfile.TemporaryDirectory(prefix="smkit-rootfs-") as work:
        rootfs = Path(work) / "rootfs"
        with console.err.status("debootstrap: downloading and unpacking Debian packages"):
            proc = subprocess.run(
                [debootstrap, "--variant=minbase", f"--include={DEBIAN_PACKAGES}", DEBIAN_SUITE, str(rootfs), DEBIAN_MIRROR],
                capture_output=True,
                text=True,
            )
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
            raise ToolkitError(
                f"debootstrap failed (exit {proc.returncode}):\n{tail}",
                f"check that {DEBIAN_MIRROR} is reachable, or set SMKIT_DEBIAN_MIRROR to a mirror that is",
            )
        # Nothing of the host's apt cache belongs in the image.
        shutil.rmtree(rootfs / "var/cache/apt/archives", ignore_errors=True)
        (rootfs / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)
        archive = Path(work) / "rootfs.tar"
        subprocess.run(["tar", "-C", str(rootfs), "-cf", str(archive), "."], check=True)
        with console.err.status(f"docker import {DEBIAN_PYTHON}"):
            repository, tag = DEBIAN_PYTHON.rsplit(":", 1)
            engine.client().api.import_image_from_file(
                str(archive),
                repository=repository,
                tag=tag,
                changes=[
                    f"LABEL {INPUTS_LABEL}={inputs}",
                    "ENV LANG=C.UTF-8",
                    'CMD ["python3"]',
                ],
            )
    return DEBIAN_PYTHON


def _torch_wheels() -> list[Path]:
    """CPU torch wheels already on this host (pip's find-links), so the build need not download one."""
    places = [os.environ.get("PIP_FIND_LINKS", "")]
    try:
        places.append(
            subprocess.run(["pip", "config", "get", "global.find-links"], capture_output=True, text=True).stdout
        )
    except OSError:
        pass
    wheels: list[Path] = []
    for place in " ".join(places).split():
        wheels += [Path(p) for p in glob.glob(os.path.join(place, f"torch-{TORCH_VERSION}*.whl"))]
    return sorted(set(wheels))


def standin_context(framework: str) -> BuildContext:
    ctx = BuildContext(standin_dir(framework))
    ctx.add(".")
    ctx.add_bytes("build-ca.crt", build_ca_bundle())
    if framework == "pytorch":
        ctx.add_bytes("wheels/README", b"torch wheels found on the build host; may be empty\n")
        for wheel in _torch_wheels():
            ctx.add_file_as(wheel, f"wheels/{wheel.name}")
    return ctx


def ensure_standin(framework: str, python: str = "auto", verbose: bool = False, force: bool = False) -> str:
    """Build the stand-in base for `framework` unless an image with the same inputs exists; return its name."""
    if framework not in STANDINS:
        raise ToolkitError(f"There is no stand-in base for framework {framework!r}.", f"use one of {sorted(STANDINS)}")
    name = STANDINS[framework]
    ctx = standin_context(framework)
    base = python_base(python)
    base_id = engine.client().images.get(base).id
    inputs = ctx.digest(f"PYTHON_BASE={base_id}", f"TORCH_VERSION={TORCH_VERSION}")
    if not force and _label(name) == inputs:
        console.note(f"{name} is up to date (inputs {inputs[:12]})")
        return name
    console.step(f"building the stand-in base {name} FROM {base}")
    outcome = builder.build(
        ctx,
        dockerfile="Dockerfile",
        tag=name,
        buildargs={"PYTHON_BASE": base, "TORCH_VERSION": TORCH_VERSION},
        labels={INPUTS_LABEL: inputs},
        title=name,
        verbose=verbose,
    )
    console.note(f"built {name} ({outcome.image_id[7:19]}) in {outcome.seconds:.0f}s")
    return name
