"""`check IMAGE`: does a training image, ours or anybody's, honour the SageMaker training contract?

The image is driven as SageMaker drives it, through the direct backend (local_mode/direct.py: the
/opt/ml layout, the config files, `train` as the command, no network), with tiny data, and judged only by
what can be seen from outside: exit codes, the files that land in model.tar.gz and output.tar.gz, the log,
how long it takes to stop. Nothing is installed into the image and nothing is assumed about its code.

The data: what --channel/--hp give, else a generated label-first CSV (40 rows, 4 numeric features, a
binary label) in channels `train` and `validation` and no hyperparameters (an argparse script would refuse
names it does not know). An image that needs other data or hyperparameters says so in the `completes`
check, and `check IMAGE --channel train=DIR --hp key=value` gives them.

What each check runs, shows and cannot show is in CHECKS below (and in docs/debugging.md).
"""

from __future__ import annotations

import csv
import json
import random
import re
import shutil
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import docker.errors

from local_mode.direct import DirectJob
from local_mode.job import Channel, JobSpec, create_run_dir, job_name_for, prepare_local
from local_mode.result import JobResult
from smkit import console, engine
from smkit.errors import ConfigError


@dataclass(frozen=True)
class Check:
    id: str
    title: str
    how: str  # what is run and observed
    limits: str  # what a pass does not prove


CHECKS = (
    Check("platform", "is a linux/amd64 image",
          "reads the image's OS and architecture from the engine (SageMaker training instances run linux/amd64; "
          "an arm64 image built on a Mac fails there with `exec format error`)",
          "a multi-platform image is judged by the variant this engine holds"),
    Check("train", "starts with `train`",
          "runs the image with the command `train`, as SageMaker does (the ENTRYPOINT kept): the container must start "
          "and the command be found",
          "says nothing about what `train` then does (the next checks do)"),
    Check("completes", "trains on the test data and exits 0",
          "the whole job with the test data, network disabled: exit code 0",
          "the test data are tiny; pass your own with --channel/--hp for a fuller run"),
    Check("offline", "runs with no network",
          "the same job has no network at all (SageMaker jobs often run in a VPC without a route out); a failure whose "
          "log shows a name lookup or connection error is blamed on the network",
          "a script that catches its network errors and carries on cannot be caught from outside"),
    Check("channel", "reads its data from the channel (SM_CHANNEL_*)",
          "the same job again with every file of every channel replaced by garbage (same names): the outcome must "
          "change, i.e. the job must fail. A job that completes either way never read the channel",
          "cannot tell SM_CHANNEL_TRAIN from the literal /opt/ml/input/data/train (they are the same directory on "
          "SageMaker)"),
    Check("model", "writes the model to SM_MODEL_DIR and it lands in model.tar.gz",
          "after the good run, model.tar.gz (what SageMaker uploads from /opt/ml/model) holds at least one file",
          "does not load the model; a model written only elsewhere is pointed out where it can be seen (output.tar.gz)"),
    Check("bad-input", "fails on bad input with a reason in /opt/ml/output/failure",
          "the garbage run must exit non-zero and leave /opt/ml/output/failure (SageMaker's FailureReason); a reason "
          "that is only the toolkit's generic ExecuteUserScriptError is pointed out, and so is a model left behind",
          "only one kind of bad input (unreadable files) is tried"),
    Check("sigterm", "stops within the grace period on SIGTERM (SageMaker's stop)",
          "once the job is under way, reads how its PID 1 treats SIGTERM (the kernel drops a signal sent to a "
          "container's PID 1 unless it has a handler), then sends SIGTERM (what `docker stop`, StopTrainingJob and a "
          "spot interruption send) and waits the grace period (SageMaker waits 120 s, then kills)",
          "that the script saves anything on SIGTERM; a job that ends before the signal leaves it undetermined"),
    Check("two-hosts", "runs with a two-host configuration (hosts, current host)",
          "two containers on a network of their own, each with resourceconfig.json listing both hosts under "
          "SDK-v2-style names (algo-1-xxxxx: never the literal algo-1) and its own current_host; the job must complete",
          "cannot prove the script divides the work between hosts, only that a two-host configuration does not break it"),
)
BY_ID = {check.id: check for check in CHECKS}
NETWORK_ERRORS = re.compile(
    r"Temporary failure in name resolution|Name or service not known|Network is unreachable|No route to host|"
    r"Could not resolve host|getaddrinfo failed|nodename nor servname|NewConnectionError|Failed to establish a new "
    r"connection|Max retries exceeded with url|Connection refused|Could not fetch URL|No matching distribution found",
    re.IGNORECASE)
GENERIC_FAILURE = re.compile(r"ExecuteUserScriptError|AlgorithmError: ExecuteUserScriptError")
SIGTERM_GRACE = 20.0


@dataclass
class Outcome:
    id: str
    status: str  # pass | fail | not-run
    detail: str
    fix: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def title(self) -> str:
        return BY_ID[self.id].title


@dataclass
class Report:
    image: str
    outcomes: list[Outcome]
    seconds: float

    @property
    def ok(self) -> bool:
        return all(o.status == "pass" for o in self.outcomes)

    def failed(self) -> list[str]:
        return [o.id for o in self.outcomes if o.status != "pass"]

    def to_json(self) -> str:
        return json.dumps({"image": self.image, "ok": self.ok, "seconds": round(self.seconds, 1),
                           "checks": [{**asdict(o), "title": o.title} for o in self.outcomes]}, indent=2)

    def to_markdown(self) -> str:
        lines = [f"# SageMaker training-contract check of `{self.image}`", "",
                 f"**{'PASS' if self.ok else 'FAIL'}** ({len(self.outcomes) - len(self.failed())}/{len(self.outcomes)} "
                 f"checks passed, {self.seconds:.0f} s)", "", "| check | result | what was seen | fix |", "|---|---|---|---|"]
        for o in self.outcomes:
            detail = " ".join([o.detail, *o.notes]).replace("|", "\\|").replace("\n", " ")
            fix = (o.fix or "").replace("|", "\\|") if o.status != "pass" else ""
            lines.append(f"| {o.id}: {o.title} | {o.status.upper()} | {detail} | {fix} |")
        return "\n".join(lines) + "\n"


# ---- test data ----------------------------------------------------------------------------------------

def generated_channels(root: Path, seed: int = 7) -> list[Channel]:
    """train/ and validation/: label-first CSV, no header, 4 numeric features, a learnable binary label."""
    rng = random.Random(seed)
    channels = []
    for name, rows in (("train", 40), ("validation", 20)):
        directory = root / name
        directory.mkdir(parents=True)
        with open(directory / f"{name}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            for _ in range(rows):
                x = [round(rng.uniform(-1, 1), 4) for _ in range(4)]
                writer.writerow([int(x[0] + 0.5 * x[1] > 0), *x])
        channels.append(Channel(name=name, source=str(directory), content_type="text/csv"))
    return channels


def garbage_channels(channels: list[Channel], root: Path) -> list[Channel]:
    """A copy of each channel with every file's content replaced by text no reader can parse as data."""
    copies = []
    for channel in channels:
        source = Path(channel.source)
        target = root / channel.name
        files = [source] if source.is_file() else [p for p in source.rglob("*") if p.is_file()]
        for path in files:
            relative = path.name if source.is_file() else path.relative_to(source)
            destination = target / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_bytes(b"smkit check: this is not data\x00\xff\x01 label,feature\nnot,a,number,!\n")
        if not files:
            target.mkdir(parents=True, exist_ok=True)
        copies.append(Channel(name=channel.name, source=str(target), content_type=channel.content_type))
    return copies


def _members(tarball: str | None) -> list[str]:
    if not tarball or not Path(tarball).exists():
        return []
    with tarfile.open(tarball) as archive:
        return sorted(m.name for m in archive.getmembers() if m.isfile())


def _tail(text: str, lines: int = 3) -> str:
    kept = [line.split(" | ", 1)[-1].strip() for line in text.strip().splitlines() if line.strip()]
    return " / ".join(kept[-lines:])[:400]


# ---- the runs -----------------------------------------------------------------------------------------

@dataclass
class Run:
    result: JobResult | None
    start_error: str | None = None  # the engine refused to start the container
    log: str = ""


class ImageCheck:
    def __init__(self, image: str, channels: list[Channel] | None = None, hyperparameters: dict | None = None,
                 workdir: Path | None = None, timeout: float = 300, grace: float = SIGTERM_GRACE,
                 only: list[str] | None = None, stream: bool = False):
        self.image = image
        self.hyperparameters = dict(hyperparameters or {})
        self.timeout = timeout
        self.grace = grace
        self.only = set(only or [c.id for c in CHECKS])
        unknown = self.only - set(BY_ID)
        if unknown:
            raise ConfigError(f"There is no check {', '.join(sorted(unknown))}.", f"choose from {', '.join(BY_ID)}")
        self.stream = stream
        self._scratch = Path(tempfile.mkdtemp(prefix="smkit-check-", dir=workdir))
        self.channels = channels or generated_channels(self._scratch / "data")

    # A job of its own for every run, in the scratch directory (never the checkout's local_mode/runs).
    def _spec(self, channels: list[Channel], count: int = 1, sdk: str = "v2") -> JobSpec:
        return JobSpec(image=self.image, channels=channels, hyperparameters=self.hyperparameters,
                       instance_count=count, sdk=sdk, job_name=job_name_for("check"))

    def _job(self, spec: JobSpec) -> DirectJob:
        prepare_local(spec)
        return DirectJob(spec, create_run_dir(self._scratch / "runs", spec), stream=self.stream)

    def _run(self, spec: JobSpec) -> Run:
        job = self._job(spec)
        try:
            job.start()
        except docker.errors.APIError as exc:
            job.cleanup()
            return Run(None, start_error=str(getattr(exc, "explanation", None) or exc))
        job.wait(self.timeout)
        result = job.finish()
        return Run(result, log=result.log())

    # ---- the checks ---------------------------------------------------------------------------------
    def run(self) -> Report:
        try:
            return self._run_all()
        finally:
            self.cleanup()

    def _run_all(self) -> Report:
        started = time.monotonic()
        outcomes: dict[str, Outcome] = {}
        outcomes["platform"] = self.check_platform()
        good = self._run(self._spec(self.channels))
        outcomes["train"] = self.check_train(good)
        started_ok = outcomes["train"].status == "pass"
        outcomes["completes"] = self.check_completes(good) if started_ok else self._skipped("completes", "train")
        outcomes["offline"] = self.check_offline(good) if started_ok else self._skipped("offline", "train")
        completed = outcomes["completes"].status == "pass"
        garbage = None
        if completed and self.only & {"channel", "bad-input"}:
            garbage = self._run(self._spec(garbage_channels(self.channels, self._scratch / "garbage")))
        outcomes["channel"] = self.check_channel(garbage) if garbage else self._skipped("channel", "completes")
        outcomes["model"] = self.check_model(good) if completed else self._skipped("model", "completes")
        outcomes["bad-input"] = self.check_bad_input(garbage) if garbage else self._skipped("bad-input", "completes")
        if "sigterm" in self.only:
            outcomes["sigterm"] = self.check_sigterm() if started_ok else self._skipped("sigterm", "train")
        if "two-hosts" in self.only:
            outcomes["two-hosts"] = self.check_two_hosts() if completed else self._skipped("two-hosts", "completes")
        chosen = [outcomes[c.id] for c in CHECKS if c.id in self.only and c.id in outcomes]
        return Report(self.image, chosen, time.monotonic() - started)

    def cleanup(self) -> None:
        try:
            shutil.rmtree(self._scratch)
        except PermissionError:
            from local_mode.cleanup import remove_tree

            remove_tree(self._scratch, self.image)

    @staticmethod
    def _skipped(check: str, because: str) -> Outcome:
        return Outcome(check, "not-run", f"not run: the `{because}` check failed first", f"fix `{because}` first")

    def check_platform(self) -> Outcome:
        attrs = engine.client().images.get(self.image).attrs
        platform = f"{attrs.get('Os')}/{attrs.get('Architecture')}"
        if platform == "linux/amd64":
            return Outcome("platform", "pass", "linux/amd64")
        return Outcome("platform", "fail", f"the image is {platform}",
                       "build it for SageMaker's instances: `docker build --platform linux/amd64 ...` "
                       "(`python build.py build` always does)")

    def check_train(self, good: Run) -> Outcome:
        if good.start_error:
            return Outcome("train", "fail", f"the container did not start: {good.start_error[:300]}",
                           "put a `train` executable on PATH (the SageMaker toolkit's console script, `pip install "
                           "sagemaker-training`, or your own program named train), and keep any ENTRYPOINT one that runs "
                           "its arguments (`exec \"$@\"`)")
        code = (good.result.extra or {}).get("exit_codes", {}) if good.result else {}
        exit_code = next(iter(code.values()), None)
        if exit_code in (126, 127) and re.search(r"train.*(not found|No such file|Permission denied)", good.log, re.I):
            return Outcome("train", "fail", f"`train` could not be run (exit {exit_code}): {_tail(good.log, 2)}",
                           "put an executable `train` on PATH; an ENTRYPOINT must pass its arguments on (`exec \"$@\"`)")
        return Outcome("train", "pass", f"`train` started (exit code {exit_code})")

    def check_completes(self, good: Run) -> Outcome:
        result = good.result
        if result and result.ok:
            return Outcome("completes", "pass", f"exit 0 in {result.wall_seconds:.1f} s")
        reason = (result.failure_reason if result else None) or _tail(good.log)
        status = result.status if result else "did not start"
        return Outcome("completes", "fail", f"{status}: {reason}",
                       "if the image needs other data or hyperparameters, give them: `check IMAGE --channel train=DIR "
                       "--hp key=value`; otherwise fix what the reason names")

    def check_offline(self, good: Run) -> Outcome:
        if good.result and good.result.ok:
            return Outcome("offline", "pass", "completed with the network disabled")
        match = NETWORK_ERRORS.search(good.log) or NETWORK_ERRORS.search((good.result.failure_reason or "") if good.result else "")
        if match:
            line = next((l for l in good.log.splitlines() if match.group(0) in l), match.group(0))
            return Outcome("offline", "fail", f"the job reached for the network and failed: {line.split(' | ', 1)[-1].strip()[:300]}",
                           "bake every dependency into the image at build time (no pip install or downloads at job "
                           "start, no requirements.txt left in /opt/ml/code); read data only from the channels")
        return Outcome("offline", "not-run", "undetermined: the job failed offline, but not with a network error "
                       "(see `completes`)", "fix `completes` first")

    def check_channel(self, garbage: Run) -> Outcome:
        result = garbage.result
        if result and result.ok:
            return Outcome("channel", "fail",
                           "the job completed just as well with garbage in every file of every channel: it does not read "
                           "its data from the channels",
                           "read the training data from os.environ['SM_CHANNEL_TRAIN'] (/opt/ml/input/data/<channel>), "
                           "not from a path baked into the image or a download")
        return Outcome("channel", "pass", "good data: exit 0; garbage in the same files: "
                       f"{result.status if result else 'no start'} (exit {_exit(result)})")

    def check_model(self, good: Run) -> Outcome:
        members = _members(good.result.model_artifact if good.result else None)
        if members:
            shown = ", ".join(members[:5]) + (" ..." if len(members) > 5 else "")
            return Outcome("model", "pass", f"model.tar.gz holds {shown}")
        elsewhere = [m for m in _members(good.result.output_artifact if good.result else None) if m != "success"]
        seen = f"; output.tar.gz holds {', '.join(elsewhere[:5])}" if elsewhere else ""
        return Outcome("model", "fail", f"model.tar.gz is empty: nothing was written to /opt/ml/model{seen}",
                       "save the model under os.environ['SM_MODEL_DIR'] (/opt/ml/model): SageMaker uploads only that "
                       "directory as model.tar.gz")

    def check_bad_input(self, garbage: Run) -> Outcome:
        result = garbage.result
        if result is None:
            return Outcome("bad-input", "not-run", f"the garbage run did not start: {garbage.start_error}", None)
        if result.ok:
            return Outcome("bad-input", "fail", "exit 0 on unreadable input",
                           "validate the input and exit non-zero with one sentence in /opt/ml/output/failure (what, "
                           "where, how to fix)")
        reason = result.failure_reason
        if not reason:
            return Outcome("bad-input", "fail", f"exit {_exit(result)} but no /opt/ml/output/failure",
                           "write the reason to /opt/ml/output/failure before exiting (SageMaker shows it as "
                           "FailureReason)")
        outcome = Outcome("bad-input", "pass", f"exit {_exit(result)}, failure: {' '.join(reason.split())[:200]}")
        if GENERIC_FAILURE.search(reason):
            outcome.notes.append("(the reason is the toolkit's generic ExecuteUserScriptError; a sentence of the "
                                 "script's own naming the file and the fix is more use)")
        if _members(result.model_artifact):
            outcome.notes.append("(the failed job left files in model.tar.gz: a half-written model)")
        return outcome

    def check_sigterm(self) -> Outcome:
        """SIGTERM once the job is under way. First the kernel's view: a container's PID 1 gets a signal sent
        from outside only if it has a handler for it (without one the signal is dropped, whatever the
        default action), so PID 1's caught/ignored masks (/proc/<pid>/status) decide whether SIGTERM can
        have any effect; when it can, the job must then exit within the grace period."""
        job = self._job(self._spec(self.channels))
        try:
            job.start()
            container = next(iter(job.containers.values()))
            # PID 1's disposition once the job is under way (its first log line), read for up to a second
            # more while it runs (a handler installed a moment late still counts); the last read decides.
            handling, first_line_at = None, None
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                lines = job.logs()  # also takes in the exit codes
                if job.exit_codes:
                    break
                if first_line_at is None and lines:
                    first_line_at = time.monotonic()
                read = sigterm_disposition(container) if first_line_at else None
                handling = read or handling
                if first_line_at and (time.monotonic() - first_line_at > 1.0 or (handling and handling.caught)):
                    break
                time.sleep(0.05)
            job.logs()  # takes in the exit, if the job is over already
            if handling is None or (handling.caught and job.exit_codes):
                job.stop(reason="check over")
                job.finish()
                return Outcome("sigterm", "not-run", "undetermined: the job ended before its handling of SIGTERM "
                               "could be seen", "give it data or hyperparameters that make it run for a few seconds "
                               "(--channel/--hp)")
            pid1 = handling.command
            code, took = None, 0.0
            if handling.caught:
                sent = time.monotonic()
                container.kill(signal="SIGTERM")
                code = job.wait(self.grace)
                took = time.monotonic() - sent
            else:
                job.stop(reason="check over")
            logs = job.logs()
            job.finish()
        finally:
            job.cleanup()
        if code is not None:
            return Outcome("sigterm", "pass", f"PID 1 ({pid1}) handles SIGTERM and the job exited {code} {took:.1f} s "
                           "after it")
        if not handling.caught:
            why = ("ignores SIGTERM (SIG_IGN)" if handling.ignored else
                   "has no SIGTERM handler, and the kernel drops a SIGTERM sent to a container's PID 1 without one")
            seen = f"PID 1 ({pid1}) {why}: on a stop SageMaker kills the job after 120 s, the script never told"
        else:
            seen = f"PID 1 ({pid1}) was still running {self.grace:.0f} s after SIGTERM (killed then)"
        if re.match(r"(ba|da)?sh\b.*start_with_right_hostname", pid1 or ""):
            fix = ("PID 1 is the PyTorch DLC's ENTRYPOINT bash (start_with_right_hostname.sh), which runs `train` as its "
                   "child and drops SIGTERM: put an init that forwards the signal in front of it in an own Dockerfile, "
                   "e.g. ENTRYPOINT [\"tini\", \"-g\", \"--\", \"bash\", \"-m\", \"start_with_right_hostname.sh\"] "
                   "(tini from apt), and let the script save and exit on SIGTERM")
        elif re.search(r"sagemaker[-_ ](training|containers)", logs, re.I):
            fix = ("PID 1 is the SageMaker toolkit's `train`, which neither handles SIGTERM nor passes it on to the "
                   "script (aws/sagemaker-training-toolkit#125): build the image from the template containers/Dockerfile "
                   "(or copy its `smkit keep-failure` block into yours: containers/smkit_keep_failure.py forwards SIGTERM "
                   "when `train` is PID 1), or run it under an init that forwards the signal, e.g. "
                   "ENTRYPOINT [\"tini\", \"-g\", \"--\"] in front of the base entrypoint")
        else:
            fix = ("handle SIGTERM in PID 1: save what must survive and exit (signal.signal(signal.SIGTERM, handler)); "
                   "a Python or shell PID 1 without a handler never sees SIGTERM. If PID 1 starts the script, forward it")
        return Outcome("sigterm", "fail", seen, fix)

    def check_two_hosts(self) -> Outcome:
        run = self._run(self._spec(self.channels, count=2))
        result = run.result
        if result and result.ok:
            hosts = (result.extra or {}).get("hosts", [])
            return Outcome("two-hosts", "pass", f"completed on {', '.join(hosts)}")
        reason = (result.failure_reason if result else None) or _tail(run.log)
        return Outcome("two-hosts", "fail", f"{result.status if result else 'did not start'} on two hosts: {reason}",
                       "read the hosts from /opt/ml/input/config/resourceconfig.json (or SM_HOSTS/SM_CURRENT_HOST), sort "
                       "them, never assume the name algo-1, and let every host finish (or the first to exit ends the job)")


@dataclass
class SignalHandling:
    command: str
    caught: bool  # a handler is installed
    ignored: bool  # SIG_IGN


def sigterm_disposition(container) -> SignalHandling | None:
    """How the container's PID 1 treats SIGTERM, from its /proc status (SigCgt, SigIgn: bit 14). Read on
    this machine through the container's host PID when the engine is local, else inside the container
    (which needs `cat`); None when neither works."""
    container.reload()
    pid = container.attrs.get("State", {}).get("Pid")
    status = command = None
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except (OSError, TypeError):
        try:
            status = container.exec_run(["cat", "/proc/1/status"]).output.decode(errors="replace")
            command = container.exec_run(["cat", "/proc/1/cmdline"]).output.replace(b"\0", b" ").decode(errors="replace").strip()
        except docker.errors.APIError:
            return None
    masks = dict(re.findall(r"^(SigCgt|SigIgn):\s*([0-9a-fA-F]+)", status or "", re.M))
    if len(masks) < 2:
        return None
    bit = 1 << (15 - 1)  # SIGTERM
    return SignalHandling(command=command or "?", caught=bool(int(masks["SigCgt"], 16) & bit),
                          ignored=bool(int(masks["SigIgn"], 16) & bit))


def _exit(result: JobResult | None):
    codes = (result.extra or {}).get("exit_codes", {}) if result else {}
    first = (result.extra or {}).get("hosts", [None])[0] if result else None
    return codes.get(first, next(iter(codes.values()), "?"))


# ---- the command --------------------------------------------------------------------------------------

def print_report(report: Report) -> None:
    for o in report.outcomes:
        colour = {"pass": "green", "fail": "red"}.get(o.status, "yellow")
        label = {"pass": "PASS", "fail": "FAIL"}.get(o.status, "----")
        console.out.print(f"[{colour}]{label}[/] {o.id:<10} {o.title}", highlight=False)
        console.out.print(f"     {' '.join([o.detail, *o.notes])}", markup=False, highlight=False)
        if o.status != "pass" and o.fix:
            console.out.print(f"     [bold]fix:[/] {o.fix}", highlight=False)
    verdict = "[green]passes[/]" if report.ok else f"[red]fails[/] ({', '.join(report.failed())})"
    console.out.print(f"{report.image} {verdict} the SageMaker training contract check ({report.seconds:.0f} s)")


def write_report(report: Report, path: Path) -> None:
    if path.suffix == ".json":
        path.write_text(report.to_json())
    elif path.suffix in (".md", ".markdown"):
        path.write_text(report.to_markdown())
    else:
        raise ConfigError(f"--report {path}: which format?", "name it report.md (markdown) or report.json")


def add_arguments(parser) -> None:
    parser.add_argument("image", metavar="IMAGE", help="any training image in the local engine: a name from "
                        "build/images.json (xgboost) or a reference (repo:tag, an ECR URI you pulled)")
    parser.add_argument("--channel", action="append", metavar="NAME=DIR",
                        help="test data (default: a generated label-first CSV in train/ and validation/); repeat")
    parser.add_argument("--content-type", action="append", metavar="NAME=TYPE")
    parser.add_argument("--hp", action="append", metavar="KEY=VALUE", help="a hyperparameter for every run; repeat")
    parser.add_argument("--only", action="append", choices=list(BY_ID), metavar="CHECK",
                        help=f"run only these checks ({', '.join(BY_ID)}); repeat")
    parser.add_argument("--grace", type=float, default=SIGTERM_GRACE, metavar="SECONDS",
                        help=f"how long the job may take to stop after SIGTERM (default {SIGTERM_GRACE:g}; SageMaker: 120)")
    parser.add_argument("--timeout", type=float, default=300, metavar="SECONDS", help="longest run of one job (default 300)")
    parser.add_argument("--report", metavar="FILE.md|FILE.json", help="also write the results for CI")
    parser.add_argument("--verbose", action="store_true", help="stream the containers' logs")


def cmd_check(args) -> int:
    """`check IMAGE`: 0 when every check passes, 1 otherwise (2: the check could not run)."""
    from local_mode.cli import parse_pairs, parse_value
    from local_mode.job import parse_channels, resolve_image

    image, _ = resolve_image(args.image)
    channels = parse_channels(args.channel, args.content_type) if args.channel else None
    hyperparameters = {k: parse_value(v) for k, v in parse_pairs(args.hp, "--hp").items()}
    console.step(f"checking {image} against the SageMaker training contract")
    report = ImageCheck(image, channels, hyperparameters, timeout=args.timeout, grace=args.grace, only=args.only,
                        stream=args.verbose).run()
    print_report(report)
    if args.report:
        write_report(report, Path(args.report))
        console.note(f"report written to {args.report}")
    return 0 if report.ok else 1
