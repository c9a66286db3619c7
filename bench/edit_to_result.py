"""Edit -> result: from saving a one-line edit of the training script to the job's metrics, every way the
toolkit offers, side by side in one run, against the same script as plain Python on the same data:

- `make dev` / `run --watch`: the save is noticed (debounced polling), the job re-runs with the code
  mounted; timed from the write to the watch's "run N Completed" line;
- `python -m local_mode run --backend direct --mount-code` (1 and 2 instances), the command a person types:
  no build, the working tree's code copied over /opt/ml/code; timed from the edit to the summary's status
  line (the learning curves are drawn after it);
- the same command with a script that does nothing (`SAGEMAKER_PROGRAM` pointed at a one-line file): the
  image's own job start (container, the base's toolkit, our CLI), the floor under every mounted row;
- `run --backend direct` after a rebuild, and SDK v3 / v2 local mode after a rebuild: rebuild + job;
- the PyTorch image (sagemaker-training toolkit) the same way for the mounted rows and its floor.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import (HOST_PYTHON, ROOT, SDK3_PYTHON, BenchError, Config, fmt_s, fmt_x, log, machine_note,
                          median_of_ratios, remove_path, repeats_phrase, run_measured, spread, stats, table)
from bench.context import Context
from bench.project import EDIT_MARK

NAME = "edit_to_result"
TITLE = "Edit to result: code mounted (no build) versus rebuild + job"
GOAL = 1.3  # edit -> result with the code mounted, as a multiple of the bare script
VARIANTS = ["bare", "noop", "watch", "mount1", "mount2", "direct1", "sdk_v3", "sdk_v2", "pt_bare", "pt_noop", "pt_mount1"]
REBUILT = ("direct1", "sdk_v3", "sdk_v2")  # the rows that need the rebuilt image
BARE = {"xgboost": "bare", "pytorch": "pt_bare"}  # each image's limit
LABELS = {
    "bare": "XGBoost: plain Python (the limit)",
    "noop": "XGBoost: `--mount-code` with a script that does nothing (the image's job start)",
    "watch": "XGBoost: `make dev` (`run --watch`): save → metrics printed",
    "mount1": "XGBoost: `run --backend direct --mount-code`, 1 instance",
    "mount2": "XGBoost: `run --backend direct --mount-code`, 2 instances",
    "direct1": "XGBoost: `run --backend direct` after a rebuild, 1 instance",
    "sdk_v3": "XGBoost: SDK v3 local mode after a rebuild, 1 instance",
    "sdk_v2": "XGBoost: SDK v2 local mode after a rebuild, 1 instance",
    "pt_bare": "PyTorch: plain Python (the limit)",
    "pt_noop": "PyTorch: `--mount-code` with a script that does nothing (the image's job start)",
    "pt_mount1": "PyTorch: `run --backend direct --mount-code`, 1 instance",
}
NOOP = "bench_noop.py"  # written into each image's scripts: `print()` and nothing else
SUMMARY_KEYS = {"job", "status", "image", "instances", "wall time", "model", "output", "failure", "error", "code", "log",
                "curves", "curves data"}
RETRY_LINE = re.compile(r"Connection refused|connect failed")


def _value(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _flags(hps: dict) -> list[str]:
    return [item for key, value in hps.items() for item in (f"--{key}", _value(value))]


def _edit(script: Path, stamp: str) -> None:
    """A one-line edit (the script's last line, a comment: see bench/project.py)."""
    lines = script.read_text().splitlines()
    assert lines[-1].startswith(EDIT_MARK), lines[-1]
    lines[-1] = f"{EDIT_MARK}{stamp}"
    script.write_text("\n".join(lines) + "\n")


class Watch:
    """`python -m local_mode run --watch` on its own copy of the scratch project (so the other rows' edits
    do not trigger it), its output lines timestamped as they arrive."""

    def __init__(self, project: Path, channels: list, hps: dict, runs: Path):
        self.project = project
        command = [HOST_PYTHON, "-m", "local_mode", "run", "--watch", "--quiet", "--image", "xgboost",
                   "--runs-dir", str(runs)]
        for channel in channels:
            command += ["--channel", f"{channel.name}={channel.source}", "--content-type", f"{channel.name}={channel.content_type}"]
        command += [item for key, value in hps.items() for item in ("--hp", f"{key}={value}")]
        self.proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=dict(os.environ, SMKIT_PROJECT=str(project), COLUMNS="200"))
        self.lines: queue.Queue = queue.Queue()
        self.tail: list[str] = []
        self.runs = 0
        threading.Thread(target=self._read, daemon=True).start()
        self.wait_for_run(timeout=300)  # its first run, on start

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put((time.monotonic(), line.rstrip("\n")))
        self.lines.put((time.monotonic(), None))

    def wait_for_run(self, timeout: float = 600) -> tuple[float, str, dict]:
        """(arrival time, status) of the next "watch: run N <status>" line, and the metric lines after it."""
        self.runs += 1
        deadline = time.monotonic() + timeout
        pattern = re.compile(rf"^watch: run {self.runs} (Completed|Failed)$")
        found = None
        metrics: dict[str, float] = {}
        while time.monotonic() < deadline:
            try:
                arrived, line = self.lines.get(timeout=1)
            except queue.Empty:
                continue
            if line is None:
                break
            self.tail = (self.tail + [line])[-40:]
            if found is None:
                match = pattern.match(line)
                if match:
                    found = (arrived, match.group(1))
            elif line.startswith("watch: waiting"):
                return found[0], found[1], metrics
            else:
                metric = re.match(r"^  (\S+)  (?:\S+ -> )?([-+0-9.eE]+)", line)
                if metric:
                    metrics[metric.group(1)] = float(metric.group(2))
        raise BenchError(f"the watch did not report run {self.runs}:\n" + "\n".join(self.tail))

    def edit_to_result(self, stamp: str) -> tuple[float, dict]:
        script = self.project / "train_scripts" / "xgboost" / "train.py"
        started = time.monotonic()
        _edit(script, stamp)
        arrived, status, metrics = self.wait_for_run()
        if status != "Completed":
            raise BenchError("a watch run failed:\n" + "\n".join(self.tail))
        return arrived - started, metrics

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class Job:
    """What a `run --backend direct` CLI run showed: when its status line arrived, its metrics, its containers'
    wall time and its run directory."""

    def __init__(self, seconds: float, rows: dict[str, str]):
        self.seconds = seconds
        self.metrics = {k: float(v) for k, v in rows.items() if k not in SUMMARY_KEYS and _is_number(v)}
        self.run_dir = Path(rows["log"]).parent
        self.containers = json.loads((self.run_dir / "summary.json").read_text())["wall_seconds"]  # not rounded
        self.log = Path(rows["log"]).read_text(errors="replace")


def direct_cli(project: Path, image: str, channels: list, hps: dict, runs: Path, count: int = 1,
               program: str | None = None, mount: bool = True) -> Job:
    """`python -m local_mode run --backend direct [--mount-code]`, timed to the summary's status line."""
    command = [HOST_PYTHON, "-m", "local_mode", "run", "--backend", "direct", *(["--mount-code"] if mount else []),
               "--quiet", "--image", image, "--runs-dir", str(runs), "--instance-count", str(count)]
    for channel in channels:
        command += ["--channel", f"{channel.name}={channel.source}", "--content-type", f"{channel.name}={channel.content_type}"]
    command += [item for key, value in hps.items() for item in ("--hp", f"{key}={_value(value)}")]
    if program:
        command += ["--env", f"SAGEMAKER_PROGRAM={program}"]
    run_ = run_measured(command, env={"SMKIT_PROJECT": str(project), "COLUMNS": "200"}, cwd=ROOT, timeout=600)
    rows = {}
    seconds = None
    for arrived, line in run_.lines:
        match = re.match(r"^(\S+(?: \S+)?)\s{2,}(.*)$", line)
        if match:
            rows[match.group(1)] = match.group(2).strip()
            if match.group(1) == "status" and seconds is None:
                seconds = arrived
    if run_.returncode != 0 or seconds is None or not rows.get("status", "").startswith("Completed"):
        raise BenchError(f"{' '.join(command[2:])}: exit {run_.returncode}\n" + "\n".join(l for _, l in run_.lines[-30:]))
    return Job(seconds, rows)


def run(cfg: Config, ctx: Context) -> dict[str, Any]:
    from local_mode import Channel, JobSpec
    from local_mode import run as run_job
    from local_mode.artifacts import parse_metrics
    from local_mode.job import SAMPLE_DATA

    sample = SAMPLE_DATA / "xgboost"
    hps = {"objective": "binary:logistic", "eval_metric": "auc", "num_round": 60, "max_depth": 4, "eta": 0.2,
           "nthread": cfg.threads}
    channels = [Channel("train", str(sample / "train"), "text/csv"), Channel("validation", str(sample / "validation"), "text/csv")]
    pt_sample = SAMPLE_DATA / "pytorch"
    pt_job = json.loads((pt_sample / "job.json").read_text())
    pt_hps = dict(pt_job["hyperparameters"])
    pt_channels = [Channel(c, str(pt_sample / c), pt_job["content_types"][c]) for c in ("train", "validation")]
    jobs = {"xgboost": (sample, channels, hps), "pytorch": (pt_sample, pt_channels, pt_hps)}  # data, channels, hps

    def image_of(variant: str) -> str:
        return "pytorch" if variant.startswith("pt") else "xgboost"
    variants = cfg.pick(VARIANTS, VARIANTS, ["bare", "noop", "mount1"])
    project = ctx.project
    image = ctx.image("xgboost")  # built once per suite (not timed)
    if "pt_mount1" in variants:
        ctx.image("pytorch")
    for name in ("xgboost", "pytorch"):  # the floor rows' script (in the scratch project only)
        (project.root / "train_scripts" / name / NOOP).write_text("print('a script that does nothing')\n")
    runs = ctx.work("edit-runs")
    out = ctx.work("edit-bare")
    watch = None
    if "watch" in variants:
        copy = ctx.work("edit-watch") / "project"
        shutil.copytree(project.root, copy)
        watch = Watch(copy, channels, hps, ctx.work("edit-watch-runs"))
    times: dict[str, list[float]] = {v: [] for v in variants}
    containers: dict[str, list[float]] = {}  # the part of a job from its containers' start to their exit
    rebuilds: list[float] = []
    metrics: dict[str, dict] = {}
    retries: dict[str, int] = {}
    edits = 0

    def spec_for(ref: str, count: int = 1, sdk: str = "auto") -> JobSpec:
        return JobSpec(image=ref, image_name="xgboost", channels=list(channels), hyperparameters=dict(hps),
                       instance_count=count, sdk=sdk, region="us-east-1")

    def bare(name: str) -> tuple[float, dict]:
        data, _, flags = jobs[name]
        run_ = run_measured([HOST_PYTHON, project.script(name), "--train", data / "train", "--validation", data / "validation",
                             "--model-dir", out / "model", "--output-data-dir", out / "data", *_flags(flags)], timeout=600)
        run_.check(f"the {name} script as plain Python")
        shutil.rmtree(out / "model", ignore_errors=True)
        # The final metrics as a job's summary reads them from its log (one definition of a metric line).
        return run_.wall, parse_metrics("\n".join(line for _, line in run_.lines))[0]

    torch_versions = {}
    if "pt_mount1" in variants:  # the plain-Python row runs the host's torch, the job the image's
        torch_versions["host"] = run_measured([HOST_PYTHON, "-c", "import torch; print(torch.__version__)"]).lines[-1][1]
        torch_versions["image"] = docker_python(ctx.image("pytorch"), "import torch; print(torch.__version__)")
    try:
        for repeat in range(cfg.repeats):
            if any(v in REBUILT for v in variants):
                project.edit("xgboost")
                build = ctx.rebuild("xgboost")
                image = build.ref
                rebuilds.append(build.seconds)
                log(f"edit to result #{repeat}: rebuild {build.seconds:.2f}s -> {image}")
            shift = repeat % len(variants)
            for variant in variants[shift:] + variants[:shift]:  # interleaved, the order rotating
                ctx.probe.sample()
                result = job = None
                if variant in BARE.values():
                    seconds, metrics[variant] = bare(image_of(variant))
                elif variant == "watch":
                    edits += 1
                    seconds, metrics[variant] = watch.edit_to_result(f"{project.run_id}-watch-{edits}")
                elif variant in ("noop", "pt_noop"):
                    name = image_of(variant)
                    job = direct_cli(project.root, name, *jobs[name][1:], runs, program=NOOP)
                    seconds = job.seconds
                elif variant.startswith("mount") or variant == "pt_mount1":
                    name = image_of(variant)
                    edits += 1
                    started = time.monotonic()
                    _edit(project.script(name), f"{project.run_id}-mount-{edits}")
                    editing = time.monotonic() - started
                    job = direct_cli(project.root, name, *jobs[name][1:], runs, count=int(variant[-1]))
                    seconds = editing + job.seconds
                elif variant == "direct1":  # the rebuilt image (build/images.json of the scratch project)
                    job = direct_cli(project.root, "xgboost", channels, hps, runs, mount=False)
                    seconds = job.seconds
                else:  # the SDK rows in this process (each job's SDK runs in a driver process of its own)
                    spec = spec_for(image, sdk=variant[-2:])
                    python = str(SDK3_PYTHON) if variant == "sdk_v3" else HOST_PYTHON
                    started = time.monotonic()
                    result = run_job(spec, "sdk", runs_dir=runs, stream=False, timeout=600, python=python)
                    seconds = time.monotonic() - started
                if result is not None:
                    if not result.ok:
                        raise BenchError(f"{variant} job {result.status}: {result.error} {result.failure_reason or ''}\n"
                                         + "\n".join(result.log().splitlines()[-30:]))
                    job_log, run_dir = result.log(), Path(result.run_dir)
                    metrics[variant] = dict(result.metrics)
                    containers.setdefault(variant, []).append(result.wall_seconds)
                elif job is not None:
                    job_log, run_dir = job.log, job.run_dir
                    metrics[variant] = job.metrics
                    containers.setdefault(variant, []).append(job.containers)
                if result is not None or job is not None:
                    if RETRY_LINE.search(job_log):
                        retries[variant] = retries.get(variant, 0) + 1
                    remove_path(run_dir)
                times[variant].append(seconds)
                log(f"edit to result #{repeat} {variant}: {seconds:.2f}s")
    finally:
        if watch is not None:
            watch.stop()

    def loop(variant: str) -> list[float]:
        return [r + j for r, j in zip(rebuilds, times[variant])] if variant in REBUILT else times[variant]

    summary = {}
    for variant in variants:
        if variant in BARE.values():
            continue
        limit = times[BARE[image_of(variant)]]
        loops = loop(variant)
        summary[variant] = {
            "job": stats(times[variant]),
            "edit_to_result": stats(loops),
            "ratio_to_bare": median_of_ratios(list(zip(loops, limit))),
            "containers": stats(containers.get(variant, [])),
        }

    def validation(m: dict) -> dict:
        # To 6 significant digits: what the watch prints (and more than the script's own lines carry).
        return {k: float(f"{float(v):.6g}") for k, v in m.items() if k.startswith("validation")}

    same = {}
    for variant, m in metrics.items():
        if variant in BARE.values() or variant in ("mount2", "noop", "pt_noop"):
            continue
        same[variant] = validation(m) == validation(metrics[BARE[image_of(variant)]])
    return {
        "image_repository": "smkit-xgboost",
        "data": "local_mode/sample_data/xgboost (455 train / 114 validation rows)",
        "pytorch_data": "local_mode/sample_data/pytorch (its job.json hyperparameters)",
        "hyperparameters": hps, "pytorch_hyperparameters": pt_hps, "variants": variants, "goal_ratio": GOAL,
        "rebuild": stats(rebuilds), "bare": stats(times["bare"]),
        "pt_bare": stats(times["pt_bare"]) if "pt_bare" in times else None, "summary": summary, "times": times,
        "final_metrics": metrics, "same_validation_metrics": same, "tracker_retries": retries,
        "torch_versions": torch_versions,
    }


def docker_python(image: str, code: str) -> str:
    """What `python3 -c code` prints in `image` (its ENTRYPOINT bypassed)."""
    from smkit import engine

    return engine.client().containers.run(image, ["-c", code], entrypoint=["python3"], remove=True,
                                          network_disabled=True).decode().strip()


def render(result: dict[str, Any]) -> str:
    m = result["measurements"]
    s = m["summary"]
    rows = []
    for variant in m["variants"]:
        if variant in BARE.values():
            limit = m[variant]
            rows.append([LABELS[variant], "—", spread(limit), spread(limit), "1.00x"])
            continue
        v = s[variant]
        rows.append([LABELS[variant], spread(m["rebuild"]) if variant in REBUILT else "none",
                     spread(v["job"]) if variant != "watch" else "—", spread(v["edit_to_result"]), fmt_x(v["ratio_to_bare"])])
    hps = m["hyperparameters"]
    goal = m["goal_ratio"]
    verdict = []
    for label, variant in (("XGBoost `--mount-code`, 1 instance", "mount1"), ("XGBoost `make dev`", "watch"),
                           ("PyTorch `--mount-code`, 1 instance", "pt_mount1")):
        value = s.get(variant, {}).get("ratio_to_bare")
        if value is not None:
            verdict.append(f"{label}: {fmt_x(value)} the bare script, "
                           + ("within" if value <= goal else "**over**") + f" the goal of {goal:.1f}x")
    differing = [v for v, same in m["same_validation_metrics"].items() if not same]
    torch_note = ""
    versions = m.get("torch_versions") or {}
    if "pt_mount1" in differing and versions.get("host") != versions.get("image"):
        differing.remove("pt_mount1")
        torch_note = (f" The PyTorch job's metrics are not the plain-Python run's: the host runs torch {versions.get('host')}, "
                      f"the image torch {versions.get('image')}.")
    text = [
        f"A one-line edit of the training script (scratch copy), then the job. XGBoost: {m['data']}, "
        f"`num_round={hps['num_round']}`, `max_depth={hps['max_depth']}`, nthread={hps['nthread']} for every row; "
        f"PyTorch: {m.get('pytorch_data', 'its sample data')}. Edit → result is what a person waits for after saving: "
        "for the rows after a rebuild, `python build.py build --image xgboost --base local` plus the job; with the code "
        "mounted, `python -m local_mode run --backend direct --mount-code` from the edit to the summary's status line "
        "(the learning curves are drawn after it; `run --backend direct` after a rebuild is timed the same way, the SDK "
        "rows as `local_mode.run` calls, without the CLI's ~0.2 s start); for `make dev`, from the write of the file to the watch printing the "
        f"run's metrics (its debounce included). {repeats_phrase(result['repeats']).capitalize()}; one rebuild per "
        "repeat, the runs interleaved, the order rotating. Ratios are to the same image's plain-Python row.",
        "",
        table(["how the edit reaches a result", "rebuild", "job", "edit → result", "edit → result / bare"], rows),
        "",
        ("; ".join(verdict) + "." if verdict else ""),
        "",
        (f"Every {'other ' if torch_note else ''}one-instance job ended with exactly the validation metrics of its "
         "plain-Python run (the final ones, as the job's summary reads them from the log)."
         if not differing else f"**Validation metrics differed from the plain-Python run in: {', '.join(differing)}.**")
        + torch_note,
        "",
        floors(m),
        "",
        where_the_time_goes(m) + (" " + two_instances(m) if two_instances(m) else ""),
        "",
        machine_note(result),
        "",
        "**What is left between the mounted run and the bare script.** Mostly what the base image does at every job "
        "start, in the cloud as here; the rows with a script that does nothing measure it. The XGBoost base's legacy "
        "`sagemaker-containers` imports itself (~0.45 s: it pulls in scipy and boto3), writes a setup.py into "
        "/opt/ml/code and runs `pip install .` there (~0.75 s: pip plus two setuptools processes) before `python -m "
        "train`; the PyTorch DLC's toolkit imports torch in its own process to record the version "
        "(`_set_torch_version_environment`, ~1.2 s) before it starts the script, which imports torch again. smkit's part "
        "is the CLI's start, creating and removing the container, copying the scripts and packaging "
        "model.tar.gz/output.tar.gz. None of it grows with the data: on real training runs every row tends to the "
        "bare script's time.",
    ]
    return "\n".join(text)


def floors(m: dict[str, Any]) -> str:
    """The image's own job start: what every job pays before the script's first line."""
    parts = []
    for name, noop, limit in (("XGBoost", "noop", "bare"), ("PyTorch", "pt_noop", "pt_bare")):
        s = m["summary"].get(noop)
        if s and m.get(limit):
            floor, inside = s["job"]["median"], s["containers"]["median"]
            parts.append(f"{name} {fmt_s(floor)} ({fmt_x(floor / m[limit]['median'])} its whole bare script; "
                         f"{fmt_s(inside)} of it inside the container)")
    if not parts:
        return ""
    return ("A script that does nothing, through the same command: " + "; ".join(parts) + ". That is the job start "
            "every job of these images pays before the script's first line, in the cloud as here (there behind "
            "the instance's own start).")


def where_the_time_goes(m: dict[str, Any]) -> str:
    """The bound: the containers' own start-to-exit time (the base's toolkit and the script) against the goal."""
    out = []
    for name, mount, limit in (("XGBoost", "mount1", "bare"), ("PyTorch", "pt_mount1", "pt_bare")):
        s = m["summary"].get(mount)
        if not s or not s["containers"]["n"] or not m.get(limit):
            continue
        job, inside, bare_s = s["job"]["median"], s["containers"]["median"], m[limit]["median"]
        out.append(f"{name}: of the mounted one-instance job's {fmt_s(job)}, {fmt_s(inside)} pass between the container's "
                   f"start and its exit, the base's toolkit and the script ({fmt_x(inside / bare_s)} the bare script, "
                   f"against a goal of {m['goal_ratio']:.1f}x for the whole job); the other {fmt_s(job - inside)} are the "
                   "CLI's start, creating the container, copying the code, packaging the artifacts and removing the container.")
    return " ".join(out)


def two_instances(m: dict[str, Any]) -> str:
    s = m["summary"].get("mount2")
    if not s:
        return ""
    job = s["job"]
    hit = m["tracker_retries"].get("mount2", 0)
    return (f"Two instances (direct, code mounted): {spread(job)} across {job['n']} repeats; in {hit} of "
            f"{job['n']} the log shows a worker refused by the tracker and retrying.")


def headline(result: dict[str, Any]) -> list[tuple[str, str]]:
    s = result["measurements"]["summary"]
    out = []
    for variant in ("watch", "mount1", "pt_mount1", "direct1", "sdk_v3"):
        if variant in s:
            out.append((f"edit → result: {LABELS[variant]} / plain Python", fmt_x(s[variant]["ratio_to_bare"])))
    return out
