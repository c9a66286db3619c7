"""The direct backend: the job's containers started through the Docker API exactly as SageMaker (and SDK
local mode) start them, without the SDK, docker compose or a driver process: the inner loop.

    job = DirectJob(spec, run_dir, network=False).start()   # config written, containers running
    code = job.wait(timeout=600)                              # logs streamed into run_dir/log.txt
    result = job.finish()                                     # model.tar.gz/output.tar.gz, summary, clean-up

What each container gets (local_mode/contract.py writes it; tests/test_parity.py proves it equal to SDK
local mode): /opt/ml/input/config/*.json per host; each channel mounted read-only at
/opt/ml/input/data/<channel>; one model directory shared by all hosts at /opt/ml/model and one output
directory per host at /opt/ml/output, as the SDKs mount them (never a mount over /opt/ml, which would hide
the code baked into /opt/ml/code); the checkpoint directory when the job has one; TRAINING_JOB_NAME and
AWS_REGION; the command `train`.

Networking: one host runs with its network disabled (`--network none`, with `--hostname` and
`--add-host <host>:127.0.0.1`, because sagemaker-training resolves every host name before it starts the
script and retries for 15 minutes otherwise). Several hosts, or `network=True`, get a network of the job's
own (internal, i.e. no route out, unless `network=True`) on which each host is reachable by its SageMaker
host name. Like `docker compose up --abort-on-container-exit` in SDK local mode, the first container to
exit stops the others, and its exit code is the job's.

Every container and the network carry the labels smkit.job=<job name> and smkit.run-dir=<run dir>, so
whatever a crash leaves behind can be found and removed (`python -m local_mode clean`).
"""

from __future__ import annotations

import queue
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import docker.errors

from local_mode import artifacts, cleanup, contract, curves, interrupt
from local_mode.job import RUNS_DIR, JobSpec, create_run_dir, prepare_local
from local_mode.result import JobResult
from smkit import console, engine
from smkit.errors import ToolkitError

STOP_GRACE = 10  # seconds between SIGTERM and SIGKILL when the first host's exit stops the others (compose's default)


@dataclass(frozen=True)
class Mount:
    """An extra bind mount (e.g. code mounted over /opt/ml/code/<dir>)."""

    source: str
    target: str
    read_only: bool = True
    host: str | None = None  # only this host's container (None: every host), e.g. a per-host code copy


class DirectJob:
    """One job's containers, from start to clean-up. Use it as a context manager (or call cleanup()) so
    that an exception never leaves containers or the network behind.

    Options beyond the job description:
      network        give the job a route out (default: none; several hosts still reach each other)
      mem_limit      Docker memory limit per container, e.g. "512m"
      mounts         extra bind mounts (Mount), e.g. code over /opt/ml/code
      command        instead of ["train"] (the image's ENTRYPOINT is kept)
      docker_options more keyword arguments for docker's containers.create (passthrough: shm_size,
                     cpu_count, ports, tty, stdin_open, ...); they win over the defaults
      stream         echo the log lines on stderr while the job runs
      dialect        v2 | v3: which SDK's contract to reproduce (default: spec.sdk, resolved)
      keep_work      keep the scratch directory (config, model, per-host output) after finish()
    """

    def __init__(self, spec: JobSpec, run_dir: Path, *, network: bool = False, mem_limit: str | None = None,
                 mounts: Sequence[Mount] = (), command: list[str] | None = None,
                 docker_options: dict[str, Any] | None = None, stream: bool = True, dialect: str | None = None,
                 keep_work: bool = False):
        self.spec = spec
        self.run_dir = Path(run_dir)
        self.network = network
        self.mem_limit = mem_limit
        self.mounts = list(mounts)
        self.command = list(command) if command else ["train"]
        self.docker_options = dict(docker_options or {})
        self.stream = stream
        self.dialect = dialect or contract.resolve_dialect(spec.sdk)
        self.keep_work = keep_work
        self.hosts = contract.host_names(spec.instance_count, self.dialect)
        self.token = secrets.token_hex(3)  # container and network names stay unique even if job names repeat
        self.work = self.run_dir / "work"
        self.log_path = self.run_dir / "log.txt"
        self.containers: dict[str, Any] = {}  # host -> docker Container
        self.network_name: str | None = None
        self.exit_codes: dict[str, int] = {}
        self.first_exit: str | None = None  # the host whose exit ended the job
        self.stop_reason: str | None = None
        self.started_at: float | None = None
        self.wall_seconds: float | None = None
        self.oom_killed: dict[str, bool] = {}
        self._events: queue.Queue = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._log_file = None
        self._lines: list[str] = []
        self._open_streams = 0
        self._followed = 0
        self._stopper: threading.Thread | None = None
        self._cleaned = False

    # ---- where things are -------------------------------------------------------------------------
    @property
    def model_dir(self) -> Path:
        return self.work / "model"

    def output_dir(self, host: str | None = None) -> Path:
        return self.work / (host or self.hosts[0]) / "output"

    def config_dir(self, host: str | None = None) -> Path:
        return self.work / (host or self.hosts[0]) / "input" / "config"

    @property
    def checkpoint_dir(self) -> Path | None:
        return Path(self.spec.checkpoint_dir).resolve() if self.spec.checkpoint_dir else None

    @property
    def labels(self) -> dict[str, str]:
        return {cleanup.JOB_LABEL: self.spec.job_name, cleanup.RUN_DIR_LABEL: str(self.run_dir.resolve())}

    # ---- life cycle -------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Write each host's /opt/ml/input/config and create the directories that are mounted."""
        checkpoints = None
        if self.checkpoint_dir:
            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            checkpoints = contract.checkpoint_config(self.spec.checkpoint_local_path or contract.CHECKPOINT_PATH,
                                                     self.spec.checkpoint_s3_uri)
        self.model_dir.mkdir(parents=True, exist_ok=True)
        for host in self.hosts:
            contract.write_config(self.config_dir(host), host=host, hosts=self.hosts, spec=self.spec,
                                  dialect=self.dialect, checkpoints=checkpoints)
            for channel in self.spec.channels:
                (self.work / host / "input" / "data" / channel.name).mkdir(parents=True, exist_ok=True)
            # sagemaker-containers 2 expects output/data to exist (the SDKs create it too).
            (self.output_dir(host) / "data").mkdir(parents=True, exist_ok=True)

    def _volumes(self, host: str) -> dict[str, dict[str, str]]:
        volumes: dict[str, dict[str, str]] = {}

        def bind(source: Path | str, target: str, mode: str) -> None:
            volumes[str(Path(source).resolve())] = {"bind": target, "mode": mode}

        bind(self.work / host / "input", f"{contract.OPT_ML}/input", "rw")
        bind(self.model_dir, f"{contract.OPT_ML}/model", "rw")
        bind(self.output_dir(host), f"{contract.OPT_ML}/output", "rw")
        # Both SDKs also mount output/data on its own (the same directory): the same mount table.
        bind(self.output_dir(host) / "data", f"{contract.OPT_ML}/output/data", "rw")
        for channel in self.spec.channels:
            source = Path(channel.source).resolve()
            target = f"{contract.OPT_ML}/input/data/{channel.name}"
            # A file channel appears as that one file in the channel directory, as an S3 object would.
            bind(source, f"{target}/{source.name}" if source.is_file() else target, "ro")
        if self.checkpoint_dir:
            bind(self.checkpoint_dir, self.spec.checkpoint_local_path or contract.CHECKPOINT_PATH, "rw")
        for mount in self.mounts:
            if mount.host in (None, host):
                bind(mount.source, mount.target, "ro" if mount.read_only else "rw")
        return volumes

    def start(self) -> "DirectJob":
        """Create the network (if any) and every host's container, then start them together."""
        client = engine.client()
        self.prepare()
        self._log_file = open(self.log_path, "a", buffering=1)
        try:
            if len(self.hosts) > 1 or self.network:
                self.network_name = f"smkit-{self.spec.job_name}-{self.token}"
                client.networks.create(self.network_name, driver="bridge", internal=not self.network, labels=self.labels)
            environment = contract.environment(self.spec, self.spec.region or "us-east-1", self.dialect)
            for host in self.hosts:
                options: dict[str, Any] = dict(
                    image=self.spec.image, command=self.command, name=f"smkit-{self.spec.job_name}-{self.token}-{host}",
                    hostname=host, labels={**self.labels, "smkit.host": host}, environment=environment,
                    volumes=self._volumes(host), mem_limit=self.mem_limit, detach=True,
                )
                if self.network_name:
                    options.update(network=self.network_name, networking_config={
                        self.network_name: client.api.create_endpoint_config(aliases=[host])})
                    if not self.network:
                        # On an internal network the engine's DNS (20.10) never answers for an outside name: the
                        # resolver gives up after 4 x 5 s. Nothing outside can be reached anyway; fail it in 2 s.
                        options["dns_opt"] = ["timeout:1", "attempts:1"]
                else:
                    options.update(network_mode="none", extra_hosts={host: "127.0.0.1"})
                if self.spec.instance_type == "local_gpu":
                    options["device_requests"] = [docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])]
                options.update(self.docker_options)
                self.containers[host] = client.containers.create(**options)
            self.started_at = time.monotonic()
            # Started together, as compose starts them: hosts of one job should come up at the same time.
            failures: list[BaseException] = []
            starters = [threading.Thread(target=self._start_one, args=(container, failures), daemon=True)
                        for container in self.containers.values()]
            for thread in starters:
                thread.start()
            for thread in starters:
                thread.join()
            if failures:
                raise failures[0]
            for host, container in self.containers.items():
                self._follow(host, container)
        except BaseException:
            self.cleanup()
            raise
        return self

    @staticmethod
    def _start_one(container, failures: list) -> None:
        try:
            container.start()
        except docker.errors.APIError as exc:
            failures.append(exc)

    def _follow(self, host: str, container) -> None:
        """Two threads per container: one reads its log line by line, one waits for its exit."""

        def logs() -> None:
            pending = b""
            try:
                for chunk in container.logs(stream=True, follow=True):
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        self._events.put(("line", host, line.decode(errors="replace").rstrip("\r")))
            except docker.errors.APIError:
                pass  # removed while streaming
            finally:
                if pending:
                    self._events.put(("line", host, pending.decode(errors="replace").rstrip("\r")))
                self._events.put(("eof", host, None))

        def exit_code() -> None:
            try:
                code = container.wait()["StatusCode"]
            except (docker.errors.APIError, Exception):  # noqa: BLE001 - removed while waiting
                code = -1
            self._events.put(("exit", host, code))

        self._open_streams += 1
        self._followed += 1
        for target in (logs, exit_code):
            thread = threading.Thread(target=target, daemon=True, name=f"direct-{target.__name__}-{host}")
            thread.start()
            self._threads.append(thread)

    def _handle(self, event) -> None:
        kind, host, value = event
        if kind == "line":
            line = f"{host} | {value}"
            self._lines.append(line)
            if self._log_file:
                self._log_file.write(artifacts.strip_ansi(line) + "\n")
            if self.stream:
                console.err.out(line, highlight=False)
        elif kind == "eof":
            self._open_streams -= 1
        elif kind == "exit":
            self.exit_codes[host] = value
            if self.first_exit is None:
                self.first_exit = host
                others = [h for h in self.hosts if h != host]
                if others and self.stop_reason is None:
                    # compose --abort-on-container-exit: the first exit stops the other hosts.
                    self._stop_in_background(others, STOP_GRACE)

    def _done(self) -> bool:
        return len(self.exit_codes) >= self._followed and self._open_streams == 0

    def wait(self, timeout: float | None = None) -> int | None:
        """Stream the log until every container has exited; the exit code of the first one to exit (the
        job's), or None when `timeout` passed first (the job is then stopped). An Interrupted or
        KeyboardInterrupt raised meanwhile propagates: call stop() (run_direct does)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._done():
            if deadline is not None and time.monotonic() > deadline and self.stop_reason is None:
                self.stop(reason=f"timeout after {timeout:.0f}s")
            self._next_event()
        self._caught_up()
        if self.stop_reason is not None:
            return None
        return self.exit_codes.get(self.first_exit) if self.first_exit else None

    def _drain(self) -> None:
        while True:
            try:
                self._handle(self._events.get_nowait())
            except queue.Empty:
                return

    def _stop_in_background(self, hosts: list[str], grace: float) -> None:
        def stop() -> None:
            for host in hosts:
                try:
                    self.containers[host].stop(timeout=grace)
                except docker.errors.APIError:
                    pass

        self._stopper = threading.Thread(target=stop, daemon=True, name="direct-stop")
        self._stopper.start()

    def stop(self, grace: float = 2, reason: str = "stopped") -> None:
        """SIGTERM to every container, SIGKILL after `grace` seconds (what `docker stop` and a spot
        interruption do); the job's status becomes Stopped with `reason`. Returns once all have exited."""
        self.stop_reason = self.stop_reason or reason
        if self._log_file:
            self._log_file.write(f"[local_mode] stopping: {reason}\n")
        threads = []
        for container in self.containers.values():
            thread = threading.Thread(target=self._stop_one, args=(container, grace), daemon=True)
            thread.start()
            threads.append(thread)
        for thread in threads:
            thread.join()

    @staticmethod
    def _stop_one(container, grace: float) -> None:
        try:
            container.stop(timeout=grace)
        except docker.errors.APIError:
            pass

    def kill(self, reason: str = "killed") -> None:
        self.stop(grace=0, reason=reason)

    def settle(self, timeout: float = 30) -> None:
        """After stop(): collect the remaining log lines and exit codes (bounded, signals ignored)."""
        deadline = time.monotonic() + timeout
        while not self._done() and time.monotonic() < deadline:
            self._next_event()
        self._caught_up()

    def _next_event(self) -> None:
        """Handle the next exit or log event of a container, if one comes within 0.2 s."""
        try:
            self._handle(self._events.get(timeout=0.2))
        except queue.Empty:
            pass

    def _caught_up(self) -> None:
        """Every log line written down, and the wall time fixed at the first time the job is seen done."""
        self._drain()
        if self.wall_seconds is None and self.started_at is not None:
            self.wall_seconds = time.monotonic() - self.started_at

    def logs(self) -> str:
        """Every log line so far (`<host> | <line>`), as in log.txt."""
        self._drain()
        return "\n".join(self._lines)

    def status(self) -> str:
        if self.stop_reason is not None:
            return "Stopped"
        code = self.exit_codes.get(self.first_exit) if self.first_exit else None
        return "Completed" if code == 0 else "Failed"

    def finish(self) -> JobResult:
        """Package the artifacts as SDK local mode does, write summary.json, and clean up."""
        self.settle()
        for host, container in self.containers.items():
            try:
                container.reload()
                self.oom_killed[host] = bool(container.attrs.get("State", {}).get("OOMKilled"))
            except docker.errors.APIError:
                pass
        status = self.status()
        model, output = contract.package(self.model_dir, [self.output_dir(h) for h in self.hosts],
                                         self.run_dir / "output", self.work / "artifacts")
        if self._log_file:
            self._log_file.close()
            self._log_file = None
        metrics, history = artifacts.parse_metrics(self.log_path.read_text(errors="replace"))
        curve_files = curves.record(history, self.run_dir)
        error = None
        if status == "Failed":
            code = self.exit_codes.get(self.first_exit) if self.first_exit else None
            error = f"{self.first_exit} exited {code}" + (" (out of memory)" if self.oom_killed.get(self.first_exit) else "")
        result = JobResult(
            job_name=self.spec.job_name, mode="local", backend="direct", status=status,
            wall_seconds=round(self.wall_seconds or 0.0, 2), image=self.spec.image, instance_count=len(self.hosts),
            failure_reason=artifacts.failure_reason(output) if status != "Completed" else None, error=error,
            stop_reason=self.stop_reason, metrics=metrics, model_artifact=str(model), output_artifact=str(output),
            run_dir=str(self.run_dir), log_path=str(self.log_path),
            extra={"contract": self.dialect, "hosts": self.hosts, "exit_codes": self.exit_codes,
                   "oom_killed": any(self.oom_killed.values()), "network": "own" if self.network else (
                       "internal" if self.network_name else "none"), "metric_lines": len(history), **curve_files},
        )
        result.save()
        self.cleanup()
        return result

    def cleanup(self) -> None:
        """Remove the containers, the network and (unless keep_work) the scratch directory. Idempotent."""
        if self._cleaned:
            return
        self._cleaned = True
        if self._log_file:
            self._log_file.close()
            self._log_file = None
        run_dir = str(self.run_dir.resolve())
        cleanup.remove_containers(cleanup.RUN_DIR_LABEL, run_dir)
        cleanup.remove_networks(cleanup.RUN_DIR_LABEL, run_dir)
        if not self.keep_work:
            try:
                cleanup.remove_tree(self.work, self.spec.image)
            except docker.errors.DockerException as exc:
                console.warn(f"could not remove {self.work}: {exc}")

    def __enter__(self) -> "DirectJob":
        return self

    def __exit__(self, *exc) -> None:
        self.cleanup()


def start_direct(spec: JobSpec, runs_dir: Path = RUNS_DIR, **options) -> DirectJob:
    """Prepare the job (name, region, checks), create its run directory and start it; the caller waits,
    stops and finishes it (tests, benchmarks, watch mode). Options: see DirectJob."""
    prepare_local(spec)
    return DirectJob(spec, create_run_dir(runs_dir, spec), **options).start()


def run_direct(spec: JobSpec, runs_dir: Path = RUNS_DIR, timeout: float | None = None, stream: bool = True,
               keep_work: bool = False, **options) -> JobResult:
    """Run `spec` with the direct backend and wait for it (options: see DirectJob). On SIGINT/SIGTERM/
    SIGHUP (interrupt.Interrupted) or Ctrl-C the containers are stopped, what the job wrote so far is
    packaged, and the exception is re-raised with `.result` set."""
    prepare_local(spec)
    run_dir = create_run_dir(runs_dir, spec)
    job = DirectJob(spec, run_dir, stream=stream, keep_work=keep_work, **options)
    console.step(f"direct run {spec.job_name}: {spec.image} x{spec.instance_count} (contract {job.dialect}, "
                 f"network {'on' if job.network else 'off'})")
    try:
        try:
            job.start()
        except docker.errors.APIError as exc:
            raise ToolkitError(f"Docker refused to start the job's containers: {exc.explanation or exc}",
                               "check `docker info` and the image; `python -m local_mode clean` removes leftovers") from None
        job.wait(timeout)
    except (interrupt.Interrupted, KeyboardInterrupt) as exc:
        job.stop(reason=interrupt.reason(exc))
        exc.result = job.finish()
        raise
    except BaseException:
        job.cleanup()
        raise
    return job.finish()
