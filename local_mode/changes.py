"""When the working tree's training code changed: the trigger of `run --watch`.

Polling, not inotify: no new dependency, and it works the same on bind mounts, network file systems and
macOS. Each poll compares (mtime, size) of the files under the image's script directories, which is
cheap; a difference only starts the debounce. Once nothing has moved for `quiet` seconds (an editor's
save is often several writes: a temporary file, a rename, a chmod) the code's hash decides: a save that
leaves the content as it was (touch, an undo back to the last run's text) runs nothing.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from smkit import code
from smkit.images_toml import ImageSpec
from smkit.errors import ToolkitError
from smkit.paths import PROJECT

POLL_SECONDS = 0.2
QUIET_SECONDS = 0.3


class CodeChanges:
    """Poll with poll(); it returns the new code hash once a change has settled, else None."""

    def __init__(self, spec: ImageSpec, root: Path = PROJECT, quiet: float = QUIET_SECONDS,
                 clock: Callable[[], float] = time.monotonic):
        self.spec, self.root, self.quiet, self.clock = spec, Path(root), quiet, clock
        self._seen = code.watched_files(spec, self.root)
        self._moved_at: float | None = None
        self.digest = code.layout_digest(spec, self.root)

    def poll(self) -> str | None:
        now = self.clock()
        state = code.watched_files(self.spec, self.root)
        if state != self._seen:
            self._seen, self._moved_at = state, now
            return None
        if self._moved_at is None or now - self._moved_at < self.quiet:
            return None
        self._moved_at = None
        try:
            digest = code.layout_digest(self.spec, self.root)
        except (ToolkitError, OSError):  # a script directory removed or renamed mid-save: wait for the next change
            return None
        if digest == self.digest:
            return None
        self.digest = digest
        return digest

    def wait(self, should_stop: Callable[[], bool] = lambda: False, interval: float = POLL_SECONDS) -> str | None:
        """Block until the code changes (its new hash) or should_stop() says so (None)."""
        while not should_stop():
            digest = self.poll()
            if digest:
                return digest
            time.sleep(interval)
        return None
