"""`run --debug`: start the user's training program under debugpy and wait for a debugger to attach.

Python imports `sitecustomize` at start-up from the first sys.path entry that has one; smkit puts this
directory first on PYTHONPATH (and the host's debugpy package, mounted read-only, after it), so nothing
is installed into the image. Every Python process of the job imports this file (the toolkit's `train`,
pip, the script); only the one running the user's program listens: the program is SAGEMAKER_PROGRAM (or
the sagemaker_program hyperparameter), run as `python train.py ...` (sagemaker-training) or
`python -m train ...` (the legacy sagemaker-containers). The image's own sitecustomize (Debian's python
has one) is run afterwards, as if this file were not here.
"""

import json
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))


def _program():
    program = os.environ.get("SMKIT_DEBUG_PROGRAM") or os.environ.get("SAGEMAKER_PROGRAM")
    if not program:
        try:
            with open("/opt/ml/input/config/hyperparameters.json") as f:
                program = json.loads(json.load(f).get("sagemaker_program", '""')) or None
        except (OSError, ValueError, AttributeError):
            program = None
    return program


def _is_user_program(program):
    argv = list(getattr(sys, "orig_argv", None) or [sys.executable] + sys.argv)[1:]
    # skip the interpreter's own options (-u, -X dev, -W ignore ...) up to the script or -m
    i = 0
    while i < len(argv) and argv[i].startswith("-") and argv[i] != "-m":
        i += 2 if argv[i] in ("-X", "-W") else 1
    if i >= len(argv):
        return False
    module = program[:-3] if program.endswith(".py") else program
    if argv[i] == "-m":
        return i + 1 < len(argv) and argv[i + 1] in (module, module.replace("/", "."))
    return os.path.basename(argv[i]) == os.path.basename(program)


def _listen():
    program = _program()
    if not program or not _is_user_program(program) or os.environ.get("SMKIT_DEBUG_STARTED"):
        return
    os.environ["SMKIT_DEBUG_STARTED"] = "1"  # children of the program (DataLoader workers) do not listen again
    port = int(os.environ.get("SMKIT_DEBUG_PORT", "5678"))
    try:
        import debugpy

        debugpy.listen(("0.0.0.0", port))
    except Exception as exc:  # never stop the job because the debugger could not start
        sys.stderr.write("smkit debug: debugpy could not listen on port %d: %s\n" % (port, exc))
        return
    sys.stderr.write("smkit debug: %s waits for a debugger on port %d (pid %d)\n" % (program, port, os.getpid()))
    sys.stderr.flush()
    if os.environ.get("SMKIT_DEBUG_WAIT", "1") == "1":
        debugpy.wait_for_client()
        sys.stderr.write("smkit debug: debugger attached\n")
        sys.stderr.flush()


def _chain():
    """Run the next sitecustomize on sys.path (the image's own), as Python would have without us."""
    import importlib.machinery
    import importlib.util

    path = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", path)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # what Python itself does with a failing sitecustomize: report, go on
        sys.stderr.write("Error in sitecustomize; set PYTHONVERBOSE for traceback:\n%s: %s\n" % (type(exc).__name__, exc))


_chain()
_listen()
