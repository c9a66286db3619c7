"""Edit -> result: from saving a one-line edit of the training script to the job's metrics, every way the
toolkit offers, side by side in one run, against the same script as plain Python on the same data:

- `make dev` / `run --watch`: the save is noticed (debounced polling), the job re-runs with the code
  mounted; timed from the write to the watch's "run N Completed" line;
- `run --backend direct --mount-code` (1 and 2 instances): no build, the working tree's code copied over
  /opt/ml/code; timed from the call to the result (the copy included);
- `run --backend direct` after a rebuild, and SDK v3 / v2 local mode after a rebuild: rebuild + job.
"""

from __future__ import annotations

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
VARIANTS = ["bare", "watch", "mount1", "mount2", "direct1", "sdk_v3", "sdk_v2"]
REBUILT = ("direct1", "sdk_v3", "sdk_v2")  # the rows that need the rebuilt image
LABELS = {
    "bare": "plain Python (the limit)",
    "watch": "`make dev` (`run --watch`): save → metrics printed",
    "mount1": "`run --backend direct --mount-code`, 1 instance",
    "mount2": "`run --backend direct --mount-code`, 2 instances",
    "direct1": "`run --backend direct` after a rebuild, 1 instance",
    "sdk_v3": "SDK v3 local mode after a rebuild, 1 instance",
    "sdk_v2": "SDK v2 local mode after a rebuild, 1 instance",
}
RETRY_LINE = re.compile(r"Connection refused|connect failed")


def _flags(hps: dict) -> list[str]:
    return [item for key, value in hps.items() for item in (f"--{key}", str(value))]


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


def run(cfg: Config, ctx: Context) -> dict[str, Any]:
    from local_mode import Channel, JobSpec
    from local_mode import run as run_job
    from local_mode.job import SAMPLE_DATA
    from local_mode.mounted import MountedRun
    from smkit import images_toml

    sample = SAMPLE_DATA / "xgboost"
    hps = {"objective": "binary:logistic", "eval_metric": "auc", "num_round": 60, "max_depth": 4, "eta": 0.2,
           "nthread": cfg.threads}
    channels = [Channel("train", str(sample / "train"), "text/csv"), Channel("validation", str(sample / "validation"), "text/csv")]
    variants = cfg.pick(VARIANTS, VARIANTS, ["bare", "mount1"])
    image = ctx.image("xgboost")  # built once per suite (not timed)
    project = ctx.project
    image_spec = images_toml.load(project.root / "images.toml")["xgboost"]
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
                result = None
                if variant == "bare":
                    run_ = run_measured([HOST_PYTHON, project.script("xgboost"), "--train", sample / "train",
                                         "--validation", sample / "validation", "--model-dir", out / "model",
                                         "--output-data-dir", out / "data", *_flags(hps)], timeout=600)
                    run_.check("the script as plain Python")
                    seconds = run_.wall
                    found = run_.all(r"\[round \d+\] (.*)")
                    metrics[variant] = ({k: float(v) for k, v in (kv.split("=") for kv in found[-1][1].group(1).split())}
                                        if found else {})
                    shutil.rmtree(out / "model", ignore_errors=True)
                elif variant == "watch":
                    edits += 1
                    seconds, metrics[variant] = watch.edit_to_result(f"{project.run_id}-watch-{edits}")
                elif variant.startswith("mount"):
                    edits += 1
                    started = time.monotonic()
                    _edit(project.script("xgboost"), f"{project.run_id}-mount-{edits}")
                    result = MountedRun(spec_for(image, count=int(variant[-1])), image_spec, runs, stream=False,
                                        root=project.root).run(timeout=600)
                    seconds = time.monotonic() - started
                else:
                    spec = spec_for(image, sdk=variant[-2:] if variant.startswith("sdk") else "auto")
                    python = str(SDK3_PYTHON) if variant == "sdk_v3" else HOST_PYTHON
                    started = time.monotonic()
                    result = run_job(spec, "sdk" if variant.startswith("sdk") else "direct", runs_dir=runs, stream=False,
                                     timeout=600, **({"python": python} if variant.startswith("sdk") else {}))
                    seconds = time.monotonic() - started
                if result is not None:
                    if not result.ok:
                        raise BenchError(f"{variant} job {result.status}: {result.error} {result.failure_reason or ''}\n"
                                         + "\n".join(result.log().splitlines()[-30:]))
                    metrics[variant] = dict(result.metrics)
                    containers.setdefault(variant, []).append(result.wall_seconds)
                    if RETRY_LINE.search(result.log()):
                        retries[variant] = retries.get(variant, 0) + 1
                    remove_path(Path(result.run_dir))
                times[variant].append(seconds)
                log(f"edit to result #{repeat} {variant}: {seconds:.2f}s")
    finally:
        if watch is not None:
            watch.stop()

    def loop(variant: str) -> list[float]:
        return [r + j for r, j in zip(rebuilds, times[variant])] if variant in REBUILT else times[variant]

    summary = {}
    for variant in variants[1:]:
        loops = loop(variant)
        summary[variant] = {
            "job": stats(times[variant]),
            "edit_to_result": stats(loops),
            "ratio_to_bare": median_of_ratios(list(zip(loops, times["bare"]))),
            "containers": stats(containers.get(variant, [])),
        }

    def validation(m: dict) -> dict:
        # To 6 significant digits: what the watch prints (and more than the script's own lines carry).
        return {k: float(f"{float(v):.6g}") for k, v in m.items() if k.startswith("validation")}

    bare_metrics = validation(metrics["bare"])
    same = {v: validation(m) == bare_metrics for v, m in metrics.items() if v != "bare" and v != "mount2"}
    return {
        "image_repository": "smkit-xgboost",
        "data": "local_mode/sample_data/xgboost (455 train / 114 validation rows)",
        "hyperparameters": hps, "variants": variants, "goal_ratio": GOAL,
        "rebuild": stats(rebuilds), "bare": stats(times["bare"]), "summary": summary, "times": times,
        "final_metrics": metrics, "same_validation_metrics": same, "tracker_retries": retries,
    }


def render(result: dict[str, Any]) -> str:
    m = result["measurements"]
    rows = [[LABELS["bare"], "—", spread(m["bare"]), spread(m["bare"]), "1.00x"]]
    for variant, s in m["summary"].items():
        rows.append([LABELS[variant], spread(m["rebuild"]) if variant in REBUILT else "none",
                     spread(s["job"]) if variant != "watch" else "—", spread(s["edit_to_result"]), fmt_x(s["ratio_to_bare"])])
    hps = m["hyperparameters"]
    mounted = m["summary"].get("mount1", {}).get("ratio_to_bare")
    watched = m["summary"].get("watch", {}).get("ratio_to_bare")
    goal = m["goal_ratio"]
    verdict = []
    for label, value in (("`--mount-code`, 1 instance", mounted), ("`make dev`", watched)):
        if value is not None:
            verdict.append(f"{label}: {fmt_x(value)} the bare script, "
                           + ("within" if value <= goal else "**over**") + f" the goal of {goal:.1f}x")
    differing = [v for v, same in m["same_validation_metrics"].items() if not same]
    text = [
        f"A one-line edit of `train_scripts/xgboost/train.py` (scratch copy), then the job on {m['data']}: "
        f"`num_round={hps['num_round']}`, `max_depth={hps['max_depth']}`, nthread={hps['nthread']} for every row. "
        "Edit → result is what a person waits for after saving: for the rows after a rebuild, `python build.py "
        "build --image xgboost --base local` plus the job; with the code mounted, the job alone (the copy of the "
        "scripts included); for `make dev`, from the write of the file to the watch printing the run's metrics "
        f"(its debounce included). {repeats_phrase(result['repeats']).capitalize()}; one rebuild per repeat, the "
        "runs interleaved, the order rotating.",
        "",
        table(["how the edit reaches a result", "rebuild", "job", "edit → result", "edit → result / bare"], rows),
        "",
        ("; ".join(verdict) + "." if verdict else ""),
        "",
        ("Every one-instance job ended with exactly the validation metrics of the plain-Python run."
         if not differing else f"**Validation metrics differed from the plain-Python run in: {', '.join(differing)}.**"),
        "",
        where_the_time_goes(m) + (" " + two_instances(m) if two_instances(m) else ""),
        "",
        machine_note(result),
        "",
        "**What is left between the mounted run and the bare script.** The same container work as any direct "
        "run: creating and starting the container, the `sagemaker-training` toolkit reading the contract and "
        "starting the script, removing the container and packaging model.tar.gz/output.tar.gz; copying the "
        "scripts is a few milliseconds. A rebuild adds `build.py build`; the SDK rows add the SDK and compose "
        "(the start-up benchmark splits them). The constant does not grow with the data: on real training "
        "runs every row tends to the bare script's time.",
    ]
    return "\n".join(text)


def where_the_time_goes(m: dict[str, Any]) -> str:
    s = m["summary"].get("mount1")
    if not s or not s["containers"]["n"]:
        return ""
    job, inside = s["job"]["median"], s["containers"]["median"]
    return (f"Of the mounted one-instance job's {fmt_s(job)}, {fmt_s(inside)} pass between the container's start and its "
            f"exit (the toolkit and the script, {fmt_s(inside - m['bare']['median'])} more than the bare script); the "
            f"other {fmt_s(job - inside)} are creating the container, copying the code, packaging the artifacts and "
            "removing the container.")


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
    for variant in ("watch", "mount1", "direct1", "sdk_v3"):
        if variant in s:
            out.append((f"edit → result: {LABELS[variant]} / plain Python", fmt_x(s[variant]["ratio_to_bare"])))
    return out
