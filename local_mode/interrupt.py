"""Stopping a run from outside: SIGINT (Ctrl-C, `kill -INT`), SIGTERM (`kill`, `timeout(1)`, a CI
timeout) and SIGHUP (the terminal closed) all become one exception in the main thread, so every
backend stops its containers the same way, keeps what the job wrote so far, and reports "interrupted".

Why handlers are installed explicitly: Python turns only SIGINT into KeyboardInterrupt, and not even that
when the process started with SIGINT ignored (a background job of a non-interactive shell), while the
default SIGTERM/SIGHUP action ends the process at once and leaves the containers running. A SIGHUP that
was ignored at start (`nohup`) stays ignored: that is what the user asked for.
"""

from __future__ import annotations

import contextlib
import signal
import threading


class Interrupted(BaseException):
    """Raised in the main thread by the first SIGINT/SIGTERM/SIGHUP. A BaseException, like
    KeyboardInterrupt, so `except Exception` clean-up paths do not swallow it. A backend that stopped
    its job re-raises it with `result` set to the stopped job's JobResult."""

    def __init__(self, signum: int = signal.SIGINT):
        self.signum = signum
        self.signame = signal.Signals(signum).name
        self.result = None
        super().__init__(f"interrupted ({self.signame})")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def reason(exc: BaseException) -> str:
    """The summary's words for an interruption (KeyboardInterrupt is SIGINT)."""
    return f"interrupted ({exc.signame})" if isinstance(exc, Interrupted) else "interrupted (SIGINT)"


@contextlib.contextmanager
def signals_interrupt():
    """While active (main thread only), the first of SIGINT/SIGTERM/SIGHUP raises Interrupted; later ones
    are ignored so they cannot cut the clean-up short. The previous handlers come back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired = []

    def handler(signum, frame):
        if fired:
            return
        fired.append(signum)
        raise Interrupted(signum)

    wanted = [signal.SIGINT, signal.SIGTERM]
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        wanted.append(signal.SIGHUP)
    previous = {signum: signal.signal(signum, handler) for signum in wanted}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
