"""What the benchmarks of one suite run share: the scratch project, the images built from it (once),
and the clean-up at the end."""

from __future__ import annotations

import contextlib
import io
import sys
import time
from pathlib import Path

from bench.common import Config, LoadProbe, log
from bench.project import Build, Project

INIT_IMAGE = "smkit-bench-init"  # an image made by `build.py init`, as a new user's is


class Context:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self._project: Project | None = None
        self._builds: dict[str, Build] = {}
        self.extra_refs: set[str] = set()  # images made outside the project's builds (registry tags)
        self.probe = LoadProbe(seconds=cfg.pick(0.5, 0.5, 0.1))

    @property
    def project(self) -> Project:
        if self._project is None:
            self.cfg.work_dir.mkdir(parents=True, exist_ok=True)
            self._project = Project(self.cfg.work_dir)
            log(f"scratch project {self._project.root}")
        return self._project

    def image(self, name: str) -> str:
        """The image `name` of the scratch project, built once per suite run (not timed)."""
        if name not in self._builds:
            log(f"building {name} (scratch project)")
            self._builds[name] = self.project.build(name, base=self.base_for(name))
        return self._builds[name].ref

    def rebuild(self, name: str) -> Build:
        """Rebuild `name` after an edit (timed by the caller through Build.seconds)."""
        build = self.project.build(name, base=self.base_for(name))
        self._builds[name] = build
        return build

    def base_for(self, name: str) -> str:
        if name == "tiny":
            from bench.project import ensure_tiny_base

            return ensure_tiny_base()
        if name == INIT_IMAGE:
            # The Python image the stand-ins start from: a real base with a shell and pip, small enough
            # for a first push in the smoke run (what is measured is the push after the edit).
            from smkit import standin

            return standin.python_base()
        return "local"

    def init_image(self) -> str:
        """The `init` image of the scratch project (the XGBoost example), made and built once."""
        if INIT_IMAGE not in self._builds:
            self.project.init(INIT_IMAGE, "xgboost")
        return self.image(INIT_IMAGE)

    def work(self, name: str) -> Path:
        path = self.project.root.parent / f"{self.project.root.name}-{name}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def cleanup(self) -> None:
        if self._project is not None:
            self._project.cleanup(self.extra_refs)
            for path in self._project.root.parent.glob(f"{self._project.root.name}-*"):
                import shutil

                shutil.rmtree(path, ignore_errors=True)


class StampedConsole:
    """While active, the lines local_mode streams (the job's log) are recorded with their arrival time:
    local_mode writes them through smkit.console.err, which is swapped for a console into this buffer."""

    def __init__(self, echo: bool = False):
        self.lines: list[tuple[float, str]] = []
        self.echo = echo
        self._partial = ""
        self.started = time.monotonic()

    def write(self, text: str) -> int:
        now = time.monotonic() - self.started
        text = self._partial + text
        *complete, self._partial = text.split("\n")
        for line in complete:
            self.lines.append((now, line))
            if self.echo:
                print(f"    | {line}", file=sys.stderr, flush=True)
        return len(text)

    def flush(self) -> None:
        pass

    @contextlib.contextmanager
    def active(self):
        from rich.console import Console

        from smkit import console

        saved = console.err
        console.err = Console(file=self, highlight=False, soft_wrap=True, color_system=None, width=100000)
        self.started = time.monotonic()
        try:
            yield self
        finally:
            console.err = saved


def silence_console():
    """Keep smkit's progress lines (on stderr) out of the benchmark output unless --verbose."""
    from rich.console import Console

    from smkit import console

    class Null(io.TextIOBase):
        def write(self, text: str) -> int:
            return len(text)

    console.err = Console(file=Null(), highlight=False, soft_wrap=True, color_system=None)
