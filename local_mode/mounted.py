"""A direct run with the working tree's training code over /opt/ml/code: a script edit needs no build.

    run = MountedRun(spec, catalog_spec, runs_dir)   # job named, run directory and code copies made
    result = run.run(timeout)                         # or run.stop(reason) from another thread (watch)

What is mounted, and why not the working tree itself: each host gets a fresh copy of the image's script
directories (images.toml `scripts`), laid out as the image's Dockerfile lays them out in /opt/ml/code
(smkit.code.assemble: flattened, in order, the build's filters applied), mounted read-write over
/opt/ml/code. Read-write because the legacy toolkit of the real SageMaker XGBoost base writes a setup.py
into /opt/ml/code and pip-installs it at job start; a copy because what a job writes there (setup.py,
build/, *.egg-info, __pycache__, as root) must never land in the checkout, and because two hosts of one job
must not race on one directory (on SageMaker each has its own disk). Copying a few script files is
cheap next to starting a container. The copies live in the run's scratch directory and go with it.

The mount hides whatever else the image has in /opt/ml/code; that is only the scripts, since the image
puts nothing else there (containers/*/Dockerfile). The summary says when the image on disk does not hold
the mounted code yet, and `build.py push` refuses such an image until it is rebuilt.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import docker.errors

from local_mode import interrupt
from local_mode.direct import DirectJob, Mount
from local_mode.job import RUNS_DIR, JobSpec, create_run_dir, prepare_local
from local_mode.result import JobResult
from smkit import code, console, images_toml
from smkit.images_toml import ImageSpec
from smkit.errors import ConfigError, ToolkitError
from smkit.paths import PROJECT


def image_spec_for(spec: JobSpec) -> ImageSpec:
    """The images.toml entry whose scripts a --mount-code run mounts."""
    if not spec.image_name:
        raise ConfigError(
            f"--mount-code needs an image of images.toml, not the reference {spec.image}: it mounts that image's scripts.",
            "pass its name, e.g. --image xgboost (see `python build.py list`)",
        )
    return images_toml.select(images_toml.load(), [spec.image_name])[0]


def code_note(image: str, image_spec: ImageSpec, current: bool | None) -> str:
    """The summary's line about the mounted code (current None: not compared)."""
    dirs = ", ".join(image_spec.scripts)
    if current is None:
        return f"mounted from another project's working tree ({dirs}); not compared with the image"
    if current:
        return f"mounted from the working tree ({dirs}); the image holds the same code"
    return (f"mounted from the working tree ({dirs}); the image {image} does not hold this code yet: "
            f"rebuild (`make build IMAGE={image_spec.name}`) before pushing it")


class MountedRun:
    """One direct job with the code mounted; run() in one thread, stop() from any other."""

    def __init__(self, spec: JobSpec, image_spec: ImageSpec, runs_dir: Path = RUNS_DIR, stream: bool = True,
                 keep_work: bool = False, root: Path = PROJECT, **options):
        """`root`: the project whose working tree holds the scripts (default: SMKIT_PROJECT / the checkout)."""
        self.spec, self.image_spec = spec, image_spec
        prepare_local(spec)
        self.baked = code.image_digest(spec.image)
        self.run_dir = create_run_dir(runs_dir, spec)
        self.job = DirectJob(spec, self.run_dir, stream=stream, keep_work=keep_work, **options)
        first = self.job.hosts[0]
        self.copy = code.assemble(image_spec, self.job.work / "code" / first, root=root)
        # The label's hash is the build's, over PROJECT: comparable only when the scripts come from there.
        self.tree = code.working_tree_digest(image_spec) if Path(root).resolve() == PROJECT else None
        for host in self.job.hosts:
            if host != first:
                shutil.copytree(self.copy.path, self.job.work / "code" / host)
            self.job.mounts.append(Mount(str(self.job.work / "code" / host), code.CODE_DIR, read_only=False, host=host))
        self.result: JobResult | None = None
        self._lock = threading.Lock()
        self._started = False
        self._stop_reason: str | None = None

    @property
    def current(self) -> bool | None:
        """Whether the image on disk holds the code this run mounts (None: not comparable)."""
        return None if self.tree is None else self.baked == self.tree

    def run(self, timeout: float | None = None) -> JobResult:
        """Start, wait, package. On SIGINT/SIGTERM/SIGHUP (main thread) the job is stopped and the
        exception re-raised with `.result` set, as run_direct does."""
        console.step(f"direct run {self.spec.job_name}: {self.spec.image} x{self.spec.instance_count}, code mounted "
                     f"from {', '.join(self.image_spec.scripts)} ({len(self.copy.files)} files)")
        try:
            try:
                self.job.start()
            except docker.errors.APIError as exc:  # as run_direct reports it
                raise ToolkitError(f"Docker refused to start the job's containers: {exc.explanation or exc}",
                                   "check `docker info` and the image; `python -m local_mode clean` removes leftovers") from None
            with self._lock:
                self._started = True
                pending = self._stop_reason
            if pending:  # stop() came while the containers were being created
                self.job.stop(reason=pending)
            self.job.wait(timeout)
        except (interrupt.Interrupted, KeyboardInterrupt) as exc:
            self.job.stop(reason=interrupt.reason(exc))
            exc.result = self._finish()
            raise
        except BaseException:
            self.job.cleanup()
            raise
        return self._finish()

    def stop(self, reason: str) -> None:
        """Stop the job (it ends as Stopped with `reason`); safe before, during and after start."""
        with self._lock:
            self._stop_reason = self._stop_reason or reason
            started = self._started
        if started:
            self.job.stop(reason=reason)

    def _finish(self) -> JobResult:
        result = self.job.finish()
        result.extra["code"] = {"scripts": list(self.image_spec.scripts), "files": list(self.copy.files),
                                "working_tree_scripts_sha256": self.tree, "image_scripts_sha256": self.baked,
                                "image_holds_it": self.current}
        result.extra["code_note"] = code_note(self.spec.image, self.image_spec, self.current)
        result.save()
        self.result = result
        return result


def run_mounted(spec: JobSpec, runs_dir: Path = RUNS_DIR, timeout: float | None = None, stream: bool = True,
                keep_work: bool = False, **options) -> JobResult:
    """`run --backend direct --mount-code`: one job with the working tree's code."""
    return MountedRun(spec, image_spec_for(spec), runs_dir, stream=stream, keep_work=keep_work, **options).run(timeout)
