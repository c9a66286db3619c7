"""A scratch copy of the project that the benchmarks edit and build (SMKIT_PROJECT=<dir>), so the real
train_scripts/ and build/images.json are never touched.

Builds go through `python build.py build` (what `make build` runs), in a subprocess: that is the
rebuild a user waits for. Every image a benchmark builds is removed at the end.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.common import HOST_PYTHON, ROOT, BenchError, log, run_measured

EDIT_MARK = "# bench edit: "
TINY_BASE = "smkit-bench/tiny-base:1"
TINY_TOML = """
# Added by the benchmarks (smoke size only): the XGBoost scripts on a tiny base, for a fast push.
[images.tiny]
framework = "xgboost"
version = "3.0-5"
dockerfile = "containers/tiny/Dockerfile"
scripts = ["train_scripts/common", "train_scripts/xgboost"]
requirements = "containers/tiny/requirements.txt"
program = "train.py"
repository = "smkit-bench-tiny"
"""
TINY_DOCKERFILE = """ARG BASE_IMAGE
FROM ${BASE_IMAGE}
COPY containers/tiny/requirements.txt /tmp/requirements.txt
ENV SAGEMAKER_PROGRAM=train.py
COPY train_scripts/common/ train_scripts/xgboost/ /opt/ml/code/
CMD ["train"]
"""


@dataclass
class Build:
    name: str
    ref: str
    seconds: float  # wall time of `python build.py build --image NAME`
    entry: dict  # its build/images.json entry


class Project:
    def __init__(self, work_dir: Path):
        self.root = Path(tempfile.mkdtemp(prefix="smkit-bench-project-", dir=work_dir))
        self.run_id = uuid.uuid4().hex[:8]
        self.edits = 0
        self.refs: set[str] = set()
        for name in ("images.toml", ".dockerignore"):
            shutil.copy(ROOT / name, self.root / name)
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        for framework in ("xgboost", "pytorch"):
            shutil.copytree(ROOT / "containers" / framework, self.root / "containers" / framework, ignore=ignore)
        for scripts in ("common", "xgboost", "pytorch"):
            shutil.copytree(ROOT / "train_scripts" / scripts, self.root / "train_scripts" / scripts, ignore=ignore)
        # A last line that each edit changes: a one-line edit, unique to this run (so no build is ever
        # "unchanged" because an earlier run built the same inputs).
        for framework in ("xgboost", "pytorch"):
            script = self.script(framework)
            script.write_text(script.read_text().rstrip("\n") + f"\n{EDIT_MARK}{self.run_id}-0\n")
        tiny = self.root / "containers" / "tiny"
        tiny.mkdir(parents=True)
        (tiny / "Dockerfile").write_text(TINY_DOCKERFILE)
        (tiny / "requirements.txt").write_text("# nothing: the tiny image only carries the scripts\n")
        with open(self.root / "images.toml", "a") as handle:
            handle.write(TINY_TOML)

    def script(self, framework: str) -> Path:
        """train_scripts/<name>/train.py: a reference image's script, or an `init` image's."""
        return self.root / "train_scripts" / framework / "train.py"

    def init(self, name: str, framework: str) -> None:
        """A new image as a user starts one (`build.py init NAME --framework F`), with an editable last line."""
        run = run_measured([HOST_PYTHON, ROOT / "build.py", "init", name, "--framework", framework],
                           env={"SMKIT_PROJECT": str(self.root), "COLUMNS": "200"}, timeout=300)
        run.check(f"build.py init {name}")
        script = self.script(name)
        script.write_text(script.read_text().rstrip("\n") + f"\n{EDIT_MARK}{self.run_id}-0\n")

    def edit(self, framework: str) -> None:
        """Change one line of the training script (its last line, a comment)."""
        self.edits += 1
        script = self.script(framework)
        lines = script.read_text().splitlines()
        assert lines[-1].startswith(EDIT_MARK), lines[-1]
        lines[-1] = f"{EDIT_MARK}{self.run_id}-{self.edits}"
        script.write_text("\n".join(lines) + "\n")

    def build(self, name: str, base: str = "local") -> Build:
        run = run_measured([HOST_PYTHON, ROOT / "build.py", "build", "--image", name, "--base", base],
                           env={"SMKIT_PROJECT": str(self.root), "COLUMNS": "200"}, timeout=1800)
        run.check(f"build.py build --image {name}")
        entry = json.loads((self.root / "build" / "images.json").read_text())["images"][name]
        self.refs.add(entry["local_ref"])
        return Build(name=name, ref=entry["local_ref"], seconds=run.wall, entry=entry)

    def cleanup(self, extra_refs: set[str] = frozenset()) -> None:
        from smkit import engine

        client = engine.client()
        for ref in sorted(self.refs | set(extra_refs)):
            try:
                client.images.remove(ref, noprune=False)
            except Exception as exc:  # noqa: BLE001 - in use or gone: leave it
                log(f"could not remove {ref}: {exc}")
        shutil.rmtree(self.root, ignore_errors=True)


def ensure_tiny_base(payload_mb: int = 4) -> str:
    """A tiny importable base (one file of incompressible, seeded bytes): the smoke-size push image."""
    import docker.errors

    from smkit import engine

    client = engine.client()
    try:
        client.images.get(TINY_BASE)
        return TINY_BASE
    except docker.errors.ImageNotFound:
        pass
    payload = np.random.default_rng(7).integers(0, 256, payload_mb << 20, dtype=np.uint8).tobytes()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("opt/payload.bin")
        info.size, info.mtime = len(payload), 0
        tar.addfile(info, io.BytesIO(payload))
    repository, tag = TINY_BASE.split(":")
    client.api.import_image_from_data(buffer.getvalue(), repository=repository, tag=tag)
    return TINY_BASE


def wait_for_engine(timeout: float = 30) -> None:
    from smkit import engine

    deadline = time.monotonic() + timeout
    while True:
        try:
            engine.client().ping()
            return
        except Exception as exc:  # noqa: BLE001
            if time.monotonic() > deadline:
                raise BenchError(f"no Docker engine answers ({exc}); run `make engine` first") from None
            time.sleep(1)
