"""Keep the training script's own failure reason on bases whose toolkit overwrites it.

The prebuilt sagemaker-xgboost images run `train` with the legacy `sagemaker-containers` toolkit. When the
user script exits non-zero, that toolkit writes `ExecuteUserScriptError: Command "... -m train ..."` to
/opt/ml/output/failure with mode "w" (sagemaker_containers._trainer / _files.write_failure_file), replacing
the one precise sentence the script wrote there; SageMaker then shows the toolkit's text as FailureReason.
`sagemaker-training` (>= 4.0.1, the PyTorch and sklearn bases) writes the file only if it is absent.

A derived image installs this module into the site-packages of the Python that runs `train`, records the
base's own module in SMKIT_BASE_TRAINING_MODULE and points SAGEMAKER_TRAINING_MODULE here
(the template containers/Dockerfile, the block between the `smkit keep-failure` markers). main() runs the base's
module unchanged; only when the legacy toolkit reports that the user script failed AND the script wrote a
new reason to the failure file does it re-raise a toolkit ClientError whose text is that reason, so the
toolkit's own handler writes the script's sentence back (and still exits 1, still logs the failure).
Everything else passes through untouched: a script that wrote no reason keeps the toolkit's message, a
failed `pip install` or a framework error is reported as before, and on a sagemaker-training base
(whose errors are not sagemaker_containers' classes) the module changes nothing.

It also passes SageMaker's stop on. StopTrainingJob and a spot interruption send SIGTERM to the container's
PID 1 only, then SIGKILL 120 s later. Neither toolkit's `train` handles SIGTERM
(aws/sagemaker-training-toolkit#125): where it is PID 1 (the XGBoost and scikit-learn bases: no ENTRYPOINT),
the kernel drops the signal, and the script is killed without notice. main() therefore forwards SIGTERM to
this process's children (the user script, or torchrun/mpirun) before running the base's module: the script
ends as under `docker stop` of its own (default action: exit; or its handler saves and exits), and the
toolkit reports that exit as usual. Where `train` is a child of the base's ENTRYPOINT bash (the PyTorch
DLC), smkit_init.py becomes PID 1 and sends the signal here.

Python 3.8+ standard library only: it runs inside whatever Python the base image has.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys

BASE_MODULE_ENV = "SMKIT_BASE_TRAINING_MODULE"
THIS_MODULE = "smkit_keep_failure:main"


def base_entry_point():
    """The base image's own training entry point (`package.module:function`)."""
    target = os.environ.get(BASE_MODULE_ENV, "").strip()
    if not target or target.split(":")[0] == __name__:
        raise RuntimeError(
            f"{BASE_MODULE_ENV} does not name the base image's training module (it is {target!r}); "
            "set it to the base's SAGEMAKER_TRAINING_MODULE, as the smkit keep-failure Dockerfile lines do."
        )
    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function or "main")


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def children_of(parent: int) -> list[int]:
    """PIDs whose parent is `parent`, from /proc/<pid>/stat (field 4; the command name may hold spaces and
    parentheses, so fields are counted after its closing parenthesis)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", encoding="utf-8", errors="replace") as handle:
                fields = handle.read().rpartition(")")[2].split()
        except OSError:  # it ended meanwhile
            continue
        if len(fields) > 1 and fields[1] == str(parent):
            found.append(int(name))
    return found


def forward_sigterm_to_children() -> None:
    """Pass SIGTERM on to our children (the script, not its own children: a DataLoader worker is the
    script's to stop)."""
    me = os.getpid()

    def forward(signum, _frame):
        print("smkit: SIGTERM (the job is being stopped): passed on to the training process", file=sys.stderr, flush=True)
        for child in children_of(me):
            try:
                os.kill(child, signum)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)


def main():
    entry = base_entry_point()
    forward_sigterm_to_children()
    try:  # only the legacy toolkit overwrites the failure file
        from sagemaker_containers import _env, _errors
    except ImportError:
        return entry()
    failure = os.path.join(_env.output_dir, "failure")
    before = _read(failure)

    class ScriptFailure(_errors.ClientError):
        """The script's own reason, as the toolkit's error text (str() is what the toolkit writes)."""

    try:
        return entry()
    except _errors.ExecuteUserScriptError as error:
        reason = _read(failure)
        if not reason or reason == before:
            raise
        print(f"{str(error).strip()}\n(the script's own reason is kept in {failure})", file=sys.stderr, flush=True)
        raise ScriptFailure(reason) from error
