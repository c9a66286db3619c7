"""A PID 1 that passes SageMaker's stop on to the training script, for bases whose ENTRYPOINT is a shell.

StopTrainingJob, a spot interruption and `docker stop` send SIGTERM to the container's PID 1 only, then
SIGKILL 120 s later, and the kernel drops a signal sent to a PID 1 that has no handler for it. The PyTorch
DLC's ENTRYPOINT, `bash -m start_with_right_hostname.sh`, stays PID 1 and runs `train` as its child
(aws/deep-learning-containers pytorch/training/docker/build_artifacts/start_with_right_hostname.sh): that
bash has no SIGTERM handler, so the script is killed without notice. (Where the toolkit's `train` is PID 1
itself, smkit_keep_failure.main forwards the signal; nothing here is needed.)

The image keeps the base's ENTRYPOINT. The `smkit keep-failure` Dockerfile lines run `python -m smkit_init
--bash-env FILE` at build time, which writes FILE, and point BASH_ENV at it (unless the base sets a
BASH_ENV of its own). Every non-interactive bash reads FILE first; it does something only in a bash that
is the container's PID 1 and was asked to run `train`: it re-runs that very command line (read from
/proc/1/cmdline) under `python -m smkit_init`, which becomes PID 1 and

- starts the command as its child (with SMKIT_INIT set, so that bash runs the base's script as usual),
- on SIGTERM (or SIGINT), sends it to the toolkit's `train` process, whose smkit_keep_failure.main passes
  it on to the script (or torchrun/mpirun); the toolkit then reports the script's exit as usual. With no
  `train` process (yet), every process of the container gets it,
- reaps orphans (it is PID 1), and exits with the child's exit code (128 + N after signal N) when the
  child ends, as the bash would have.

Python 3.8+ standard library only: it runs inside whatever Python the base image has.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

FORWARDED = (signal.SIGTERM, signal.SIGINT)
GUARD = "SMKIT_INIT"  # set in the child: its bash is not to re-run itself under this init

BASH_ENV_TEXT = """\
# Written by `python -m smkit_init --bash-env` at image build (containers/smkit_init.py, the `smkit keep-failure`
# Dockerfile lines) and read by every non-interactive bash (BASH_ENV). It acts only in a bash that is the
# container's PID 1 asked to run `train` (the PyTorch DLC's ENTRYPOINT): the same command line is re-run
# under smkit_init, a PID 1 that passes SageMaker's stop (SIGTERM) on to the training script.
if [ "$$" = 1 ] && [ "${{1:-}}" = train ] && [ -z "${{{guard}:-}}" ] && [ -r /proc/1/cmdline ] && [ -x {python} ]; then
    _smkit_argv=()
    while IFS= read -r -d '' _smkit_arg; do _smkit_argv+=("$_smkit_arg"); done < /proc/1/cmdline
    export {guard}=1
    exec {python} -m smkit_init "${{_smkit_argv[@]}}"
fi
"""


def _cmdline(pid: str) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return [part.decode(errors="replace") for part in handle.read().split(b"\0") if part]
    except OSError:
        return []


def train_processes() -> list[int]:
    """PIDs of the toolkit's `train` (an interpreter running the `train` console script)."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != os.getpid():
            argv = _cmdline(name)
            if len(argv) > 1 and os.path.basename(argv[1]) == "train":
                found.append(int(name))
    return found


def forward(signum, _frame):
    targets = train_processes()
    print(f"smkit: {signal.Signals(signum).name} (the job is being stopped): passed on to "
          + ("the toolkit's train" if targets else "every process"), file=sys.stderr, flush=True)
    if not targets:
        os.kill(-1, signum)  # from PID 1: every process but itself
        return
    for pid in targets:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def exit_code(status: int) -> int:
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def run(argv: list[str]) -> int:
    for signum in FORWARDED:
        signal.signal(signum, forward)
    child = subprocess.Popen(argv, env={**os.environ, GUARD: "1"})
    while True:
        try:
            pid, status = os.waitpid(-1, 0)  # every orphan is ours to reap too
        except ChildProcessError:
            return 0
        if pid == child.pid:
            return exit_code(status)


def write_bash_env(path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(BASH_ENV_TEXT.format(guard=GUARD, python=sys.executable))


def main(argv: list[str]) -> int:
    if argv[:1] == ["--bash-env"] and len(argv) == 2:
        write_bash_env(argv[1])
        return 0
    if not argv or os.getpid() != 1:
        print("usage: python -m smkit_init COMMAND... (as a container's PID 1) | --bash-env FILE", file=sys.stderr)
        return 2
    return run(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
