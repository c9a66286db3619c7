"""`run --watch` (`make dev IMAGE=...`): re-run the job on every save of the image's training code.

Each run is a direct run with the working tree's code mounted (local_mode/mounted.py), so a save costs
a container start and the script, never a build. The loop:
- run the job in a worker thread while the main thread polls the code (local_mode/changes.py);
- a save while a run is still going stops that run (its containers, within seconds) and starts again;
- after each run: its summary, then each metric against the last completed run (old -> new, delta),
  then its learning curves (drawn after the numbers are on screen);
- a failed run (a syntax error, an exception) shows its failure and the watch waits for the next save;
- Ctrl-C (or SIGTERM/SIGHUP) stops the running job's containers and ends the watch.
"""

from __future__ import annotations

import copy
import threading
import time
from pathlib import Path
from typing import Callable

from local_mode import compare, curves, interrupt, summary
from local_mode.changes import POLL_SECONDS, CodeChanges
from local_mode.job import RUNS_DIR, JobSpec
from local_mode.mounted import MountedRun
from local_mode.result import JobResult
from smkit import console
from smkit.images_toml import ImageSpec
from smkit.errors import ToolkitError

RESTART_REASON = "code changed"


class Attempt:
    """One MountedRun in a worker thread (signals only reach the main thread, which must stay free to
    watch the code and to stop the run)."""

    def __init__(self, start: Callable[[], MountedRun], timeout: float | None):
        self._start, self._timeout = start, timeout
        self.run: MountedRun | None = None
        self.result: JobResult | None = None
        self.error: BaseException | None = None
        self._stop_reason: str | None = None
        self._lock = threading.Lock()
        # An Event, not Thread.join: a signal handler raising inside join() can leave the thread looking
        # finished while it still runs (CPython), and the watch would end with the containers running.
        self._done = threading.Event()
        self.thread = threading.Thread(target=self._main, daemon=True, name="watch-run")
        self.thread.start()

    def _main(self) -> None:
        try:
            run = self._start()
            with self._lock:
                self.run = run
                pending = self._stop_reason
            if pending:
                run.stop(pending)
            self.result = run.run(self._timeout)
        except BaseException as exc:  # noqa: BLE001 - reported by the loop, which goes on watching
            self.error = exc
        finally:
            self._done.set()

    def alive(self) -> bool:
        return not self._done.is_set()

    def wait(self, seconds: float) -> bool:
        """Whether the run has ended, waiting at most `seconds`."""
        return self._done.wait(seconds)

    def stop(self, reason: str) -> None:
        with self._lock:
            self._stop_reason = self._stop_reason or reason
            run = self.run
        if run is not None:
            run.stop(reason)

    def join(self) -> None:
        while not self._done.wait(0.2):
            pass


def report(number: int, attempt: Attempt, previous: dict[str, float] | None, previous_number: int | None) -> None:
    if attempt.error is not None:
        error = attempt.error
        text = f"{error.what} ({error.fix})" if isinstance(error, ToolkitError) else f"{type(error).__name__}: {error}"
        console.err.print(f"watch: run {number} failed to run: {text}", highlight=False, markup=False)
        return
    result = attempt.result
    if result is None:
        return
    if result.status == "Stopped" and result.stop_reason == RESTART_REASON:
        console.out.print(f"watch: run {number} Stopped ({RESTART_REASON}): starting again", highlight=False)
        return
    summary.show(result)
    console.out.print(f"watch: run {number} {result.status}", highlight=False)
    if result.ok and result.metrics:
        if previous is not None:
            console.out.print(f"watch: metrics of run {number} against run {previous_number}:", highlight=False)
        for line in compare.lines(previous, result.metrics):
            console.out.print(f"  {line}", highlight=False, markup=False)


def watch(spec: JobSpec, image_spec: ImageSpec, runs_dir: Path = RUNS_DIR, timeout: float | None = None,
          stream: bool = True, keep_work: bool = False, changes: CodeChanges | None = None, **options) -> int:
    """Run `spec` now and again after every change of the code; returns the exit code once interrupted
    (0 for Ctrl-C, the usual way out; 128+N for SIGTERM/SIGHUP)."""
    changes = changes or CodeChanges(image_spec)
    number = 0
    previous: tuple[int, dict[str, float]] | None = None
    attempt: Attempt | None = None
    console.out.print(f"watch: {', '.join(image_spec.scripts)}: every save re-runs the job (direct backend, code "
                      "mounted, no build); Ctrl-C ends", highlight=False, markup=False)

    def new_run() -> MountedRun:
        fresh = copy.deepcopy(spec)
        fresh.job_name = f"{spec.job_name}-{number}" if spec.job_name else ""
        return MountedRun(fresh, image_spec, runs_dir, stream=stream, keep_work=keep_work, **options)

    with interrupt.signals_interrupt(), curves.drawing_deferred():
        try:
            while True:
                number += 1
                console.out.print(f"watch: run {number} starting", highlight=False)
                attempt = Attempt(new_run, timeout)
                restart = False
                while attempt.alive():
                    if changes.poll():
                        console.out.print(f"watch: the code changed during run {number}: stopping it", highlight=False)
                        attempt.stop(RESTART_REASON)
                        restart = True
                        break
                    attempt.wait(POLL_SECONDS)
                attempt.join()
                done, attempt = attempt, None
                report(number, done, previous[1] if previous else None, previous[0] if previous else None)
                if done.result is not None and done.result.ok:
                    previous = (number, dict(done.result.metrics))
                if not restart:
                    curves.draw_pending()  # after the metrics are on screen; a restart does not wait for it
                    console.out.print("watch: waiting for the next save (Ctrl-C ends)", highlight=False)
                    while not changes.poll():
                        time.sleep(POLL_SECONDS)
                    console.out.print("watch: the code changed", highlight=False)
        except (interrupt.Interrupted, KeyboardInterrupt) as exc:
            why = interrupt.reason(exc)
            if attempt is not None:
                attempt.stop(why)
                attempt.join()
            try:
                if attempt is not None and attempt.result is not None:
                    summary.show(attempt.result)
                elif attempt is not None and attempt.error is not None:
                    report(number, attempt, None, None)
                console.out.print(f"watch: ended ({why}) after {number} run(s)", highlight=False)
            except OSError:
                pass  # SIGHUP: the terminal is gone; each run's summary.json has it all
            if isinstance(exc, interrupt.Interrupted) and exc.signame != "SIGINT":
                return exc.exit_code
            return 0
