"""Inside the job: a shell (`run --shell`), one command (`run --exec CMD`) or the script under a debugger
(`run --debug`) in the job's exact container: the image, /opt/ml as the direct backend lays it out
(config JSON, channels, model/output/checkpoint directories), the SM_* environment the image's own
toolkit computes, the same host name and (no) network.

Shell and exec create the job's containers through the direct backend and start the first host with the
docker CLI attached (`docker start -a[i]`): only the CLI puts a terminal in raw mode and forwards its
size, and it exits with the container's exit code. The helpers the container runs (local_mode/incontainer,
mounted read-only at /opt/smkit) use only the image's Python; nothing is installed into the image.

The debugger: the host's own debugpy package (this Python's) is mounted read-only at /opt/smkit-pylib and
a sitecustomize.py put first on PYTHONPATH starts `debugpy.listen` + `wait_for_client` in the process
that runs the user's program only (see incontainer/debug/sitecustomize.py). No network is needed inside
the container and nothing is installed; the port is published on 127.0.0.1 only.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

from local_mode import interrupt
from local_mode.direct import DirectJob, Mount
from local_mode.job import JobSpec, create_run_dir, prepare_local
from smkit import console, engine, images_toml
from smkit.errors import ConfigError, ToolkitError
from smkit.paths import REPO

INCONTAINER = Path(__file__).resolve().parent / "incontainer"
TOOLS = "/opt/smkit"  # where incontainer/ is mounted
PYLIB = "/opt/smkit-pylib"  # where the host's debugpy is mounted (outside TOOLS: a mount point inside a
                            # read-only mount could not be created)
CODE_DIR = "/opt/ml/code"
DEFAULT_DEBUG_PORT = 5678


def tools_mount() -> Mount:
    return Mount(str(INCONTAINER), TOOLS, read_only=True)


class _CreatedOnly(DirectJob):
    """The job's containers created with everything the direct backend gives them, but not started:
    the docker CLI starts the first host attached to this terminal."""

    @staticmethod
    def _start_one(container, failures) -> None:
        pass

    def _follow(self, host, container) -> None:
        pass


def _docker_cli() -> str:
    path = shutil.which("docker")
    if not path:
        raise ToolkitError("The docker command-line client is not installed; a shell needs it to attach a terminal.",
                           "install it (Debian/Ubuntu: `apt-get install docker.io`, or docker-ce-cli)")
    return path


def enter(spec: JobSpec, runs_dir: Path, command: str | None = None, *, interactive: bool = True,
          network: bool = False, mounts: list[Mount] | None = None, docker_options: dict[str, Any] | None = None,
          dialect: str | None = None) -> int:
    """Open a shell (command None) or run `command` through `sh -c` in host 1 of the job; its exit code.
    Every host's container is created (so the config shows all hosts) but only the first is started.
    Nothing is left behind: the containers, the network and the run directory are removed afterwards."""
    docker = _docker_cli()
    prepare_local(spec)
    run_dir = create_run_dir(runs_dir, spec)
    options = {**(docker_options or {}), "tty": interactive, "stdin_open": interactive}
    if command:
        # Handed over in the environment, not as an argument: the PyTorch DLC's ENTRYPOINT `eval`s any
        # command but `train`, which would re-split a quoted one. Two plain words survive that eval.
        spec.environment["SMKIT_EXEC"] = command
    job = _CreatedOnly(spec, run_dir, network=network, mounts=[tools_mount(), *(mounts or [])],
                       command=["sh", f"{TOOLS}/enter.sh"],
                       docker_options=options, stream=False, dialect=dialect)
    try:
        job.start()
        first = job.containers[job.hosts[0]]
        if interactive:
            console.step(f"shell in {spec.image} as {job.hosts[0]} of {len(job.hosts)} (contract {job.dialect}); "
                         "`exit` ends it")
        argv = [docker, "start", "--attach", *(["--interactive"] if interactive else []), first.name]
        # SIGTERM/SIGHUP (a CI timeout, a closed terminal) must not leave the container behind: they raise
        # Interrupted here, subprocess.call kills the client, and the finally below removes the container.
        with interrupt.signals_interrupt():
            return subprocess.call(argv)
    except interrupt.Interrupted as exc:
        console.err.print(f"[red]{interrupt.reason(exc)}[/]: the container is removed")
        return exc.exit_code
    finally:
        job.cleanup()
        from local_mode.cleanup import remove_tree

        remove_tree(run_dir, spec.image)


# ---- the debugger -------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _image_env(image: str, name: str) -> str | None:
    for item in engine.client().images.get(image).attrs.get("Config", {}).get("Env") or []:
        key, _, value = item.partition("=")
        if key == name:
            return value
    return None


def debug_setup(spec: JobSpec, port: int, wait: bool = True) -> tuple[list[Mount], dict[str, Any]]:
    """Mounts and docker options for a debug run; adds the debugger's variables to spec.environment."""
    try:
        import debugpy
    except ImportError:
        raise ToolkitError("debugpy is not installed in this Python; --debug mounts it into the container.",
                           "install it here (`.venv/bin/pip install debugpy`; `make venv` has it)") from None
    package = Path(debugpy.__file__).resolve().parent
    pythonpath = [f"{TOOLS}/debug", PYLIB]
    existing = spec.environment.get("PYTHONPATH") or _image_env(spec.image, "PYTHONPATH")
    if existing:
        pythonpath.append(existing)
    spec.environment.update({
        "PYTHONPATH": ":".join(pythonpath),
        "SMKIT_DEBUG_PORT": str(DEFAULT_DEBUG_PORT),
        "SMKIT_DEBUG_WAIT": "1" if wait else "0",
        # pydevd's warning about frozen modules is noise here; the image's Python decides the rest.
        "PYDEVD_DISABLE_FILE_VALIDATION": "1",
    })
    mounts = [tools_mount(), Mount(str(package), f"{PYLIB}/debugpy", read_only=True)]
    return mounts, {"ports": {f"{DEFAULT_DEBUG_PORT}/tcp": ("127.0.0.1", port)}}


def local_code_dirs(spec: JobSpec, code_dirs: list[str] | None = None) -> list[Path]:
    """The local directories whose files are /opt/ml/code/* in the image: --code-dir, else the image's
    `scripts` in images.toml (program's directory first)."""
    if code_dirs:
        return [Path(d).resolve() for d in code_dirs]
    if not spec.image_name:
        return []
    try:
        image = images_toml.load()[spec.image_name]
    except (ConfigError, KeyError):
        return []
    dirs = [REPO / d for d in image.scripts]
    dirs.sort(key=lambda d: not (d / image.program).exists())
    return dirs


def path_mappings(dirs: list[Path]) -> list[dict[str, str]]:
    """/opt/ml/code <-> the local directories. Several directories are baked into the one /opt/ml/code:
    the program's directory maps as a whole; each file of the others gets its own mapping first, so a
    frame in /opt/ml/code/sm_contract.py opens the right local file."""
    if not dirs:
        return [{"localRoot": "<the local directory baked into /opt/ml/code>", "remoteRoot": CODE_DIR}]
    mappings = []
    for extra in dirs[1:]:
        for path in sorted(extra.rglob("*.py")):
            mappings.append({"localRoot": str(path), "remoteRoot": f"{CODE_DIR}/{path.relative_to(extra)}"})
    mappings.append({"localRoot": str(dirs[0]), "remoteRoot": CODE_DIR})
    return mappings


def attach_instructions(port: int, mappings: list[dict[str, str]]) -> str:
    vscode = {
        "name": "smkit: attach to the training job",
        "type": "debugpy",
        "request": "attach",
        "connect": {"host": "127.0.0.1", "port": port},
        "pathMappings": mappings,
        "justMyCode": True,
    }
    pycharm = "\n".join(f"      {m['localRoot']}  =  {m['remoteRoot']}" for m in mappings)
    return (
        f"The script waits for a debugger on 127.0.0.1:{port} (debugpy, Debug Adapter Protocol).\n"
        "VS Code: add to .vscode/launch.json \"configurations\" and start it (Run and Debug):\n"
        + json.dumps(vscode, indent=2) + "\n"
        f"PyCharm: attach to host 127.0.0.1, port {port} with these path mappings (local = remote):\n{pycharm}\n"
        "  (the server is debugpy; PyCharm's own \"Python Debug Server\" works the other way round, the script\n"
        "  connecting to the IDE through pydevd-pycharm, which --debug does not put into the image)\n"
        "Any Debug Adapter Protocol client: attach to that host and port with the same pathMappings."
    )
