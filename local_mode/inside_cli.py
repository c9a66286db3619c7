"""The `run` options for getting inside a job (--shell, --exec, --debug) and for the docker run options
passed through to its containers (--shm-size, --gpus, --network host, --publish, --memory, --cpus,
--instance-type ml.*). local_mode/cli.py adds them to `run` and hands over here."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from local_mode import inside, runtime
from local_mode.job import JobSpec
from local_mode.runtime import RuntimeOptions
from smkit import console
from smkit.errors import ConfigError


def add_options(run: argparse.ArgumentParser) -> None:
    group = run.add_argument_group("inside the job (direct backend): a shell, a command, a debugger")
    way_in = group.add_mutually_exclusive_group()
    way_in.add_argument("--shell", action="store_true",
                        help="an interactive shell in the job's container: /opt/ml laid out as for the job, the SM_* "
                             "environment and hyperparameters; prints the command the toolkit would run")
    way_in.add_argument("--exec", metavar="COMMAND", dest="exec_command",
                        help="run COMMAND (through sh -c) in the job's container instead of `train`; exits with its code")
    way_in.add_argument("--debug", action="store_true",
                        help="start the script under debugpy, waiting for a debugger on a published port; prints the "
                             "VS Code / PyCharm attach configuration, then runs the job to its end")
    group.add_argument("--debug-port", type=int, metavar="PORT",
                       help="the port on 127.0.0.1 a debugger attaches to (default: a free one)")
    group.add_argument("--code-dir", action="append", metavar="DIR",
                       help="--debug: the local directory baked into /opt/ml/code, for the debugger's path mappings "
                            "(default: the image's scripts in images.toml); repeat for several")
    docker = run.add_argument_group(
        "docker run options: direct backend; SDK v2 takes --shm-size/--memory/--cpus/--publish (one host), "
        "SDK v3 none of them")
    docker.add_argument("--shm-size", metavar="SIZE", help="size of /dev/shm, e.g. 2g (PyTorch DataLoader workers need it)")
    docker.add_argument("--gpus", metavar="all|IDS", help="GPUs for the containers: all, or device ids such as 0,1")
    docker.add_argument("--publish", action="append", metavar="[HOST:]CONTAINER",
                        help="publish a container port, e.g. 6006:6006 (TensorBoard); repeat")
    docker.add_argument("--memory", metavar="LIMIT", help="memory limit per container, e.g. 8g (docker --memory)")
    docker.add_argument("--cpus", type=float, metavar="N", help="CPU limit per container, e.g. 2 or 0.5 (docker --cpus)")


def mode(args) -> str | None:
    if getattr(args, "shell", False):
        return "--shell"
    if getattr(args, "exec_command", None) is not None:
        return "--exec"
    if getattr(args, "debug", False):
        return "--debug"
    return None


def apply_runtime(args, spec: JobSpec) -> RuntimeOptions:
    """The docker run options of this run, checked against its backend; `--instance-type ml.*` and
    `--gpus` also set the job's local instance type (local_gpu when GPUs are asked for)."""
    options = runtime.from_args(args)
    if args.backend == "cloud":
        if len(options.describe()) > (1 if options.instance_type else 0):
            raise ConfigError("Docker run options (--shm-size, --gpus, --publish, --memory, --cpus, --network host) "
                              "do not reach a SageMaker instance.",
                              "drop them; in the cloud the --instance-type sets memory, CPUs and GPUs")
        options.instance_type = None  # the cloud runs the real type
        return options
    if options.instance_type or options.gpus:
        spec.instance_type = "local_gpu" if options.gpus else "local"
    if options.network_host and spec.instance_count > 1:
        raise ConfigError("--network host runs one host only (two hosts on the host's network would share its ports).",
                          "use --instance-count 1, or drop --network host (hosts of a job get a network of their own)")
    if args.backend == "sdk":
        from local_mode.sdk import sdk_major

        major = {"v2": 2, "v3": 3}.get(args.sdk) or sdk_major()
        spec.container_config = options.sdk_container_config(major, spec.instance_count)
    for line in options.describe():
        console.note(line)
    return options


def _mounts_for_code(args, spec: JobSpec, scratch: Path) -> list:
    """--mount-code (when this checkout has it): the working tree's scripts over /opt/ml/code, as a
    --mount-code run mounts them."""
    if not getattr(args, "mount_code", False):
        return []
    from local_mode import mounted  # noqa: WPS433 - present with --mount-code only
    from local_mode.direct import Mount
    from smkit import code

    copy = code.assemble(mounted.image_spec_for(spec), scratch / "code")
    return [Mount(str(copy.path), code.CODE_DIR, read_only=False)]


def run_inside(args, spec: JobSpec, options: RuntimeOptions) -> int:
    from local_mode.cli import run_and_report  # the one way a job's result is reported

    which = mode(args)
    network = args.network == "bridge"
    if which in ("--shell", "--exec"):
        with tempfile.TemporaryDirectory(prefix="smkit-code-") as scratch:
            mounts = _mounts_for_code(args, spec, Path(scratch))
            return inside.enter(spec, Path(args.runs_dir), None if which == "--shell" else args.exec_command,
                                interactive=which == "--shell", network=network, mounts=mounts,
                                docker_options=options.docker_options())
    # --debug: a whole job, its script waiting for a debugger
    if spec.instance_count > 1:
        raise ConfigError("--debug debugs one host.", "use --instance-count 1")
    port = args.debug_port or inside.free_port()
    mounts, debug_options = inside.debug_setup(spec, port)
    if options.network_host:
        raise ConfigError("--debug publishes its port; --network host has no ports to publish.",
                          "drop --network host (the debugger connects through 127.0.0.1:PORT)")
    docker_options = options.docker_options()
    docker_options["ports"] = {**docker_options.get("ports", {}), **debug_options["ports"]}
    console.out.print(inside.attach_instructions(port, inside.path_mappings(inside.local_code_dirs(spec, args.code_dir))),
                      markup=False, highlight=False)
    from local_mode import backends

    with tempfile.TemporaryDirectory(prefix="smkit-code-") as scratch:
        mounts += _mounts_for_code(args, spec, Path(scratch))
        # A published port needs a network: the job's own bridge network (internal networks publish nothing).
        return run_and_report(lambda: backends.run(
            spec, "direct", runs_dir=Path(args.runs_dir), timeout=args.timeout, stream=not args.quiet,
            keep_work=args.keep, network=True, mounts=mounts, docker_options=docker_options))
