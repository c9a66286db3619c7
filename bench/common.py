"""What every benchmark shares: the run configuration, measured subprocesses, repeats, machine facts,
and the writing of results (bench/results/<name>.json and a section of BENCHMARKS.md).

Rules every benchmark follows:
- ours and the reference run side by side in one process run, interleaved (the order rotates every
  repeat), and a figure is the median of the repeats;
- the same thread count for ours and the reference (`--threads`, default 1: on the 2-core CI box a
  second OpenMP thread collides with any other busy process), except the XGBoost end-to-end runs,
  which use every core unless --threads is given: that is how users run them, and at one thread the
  4M-row runs alone would not fit the 30-minute budget;
- before every repeat the machine is sampled for half a second while the suite itself is idle, so a
  table can say whether another workload shared the machine.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

ROOT = Path(__file__).resolve().parent.parent  # the checkout
BENCH = ROOT / "bench"
HOST_PYTHON = sys.executable  # .venv/bin/python under `make bench`: SDK v2, xgboost, torch, pandas
SDK3_PYTHON = ROOT / ".venv-sdk3" / "bin" / "python"
SCHEMA = 1
MODES = ("full", "quick", "smoke")


@dataclass
class Config:
    mode: str = "full"  # full | quick | smoke
    repeats: int = 3
    threads: int = 1
    results_dir: Path = BENCH / "results"
    markdown: Path = ROOT / "BENCHMARKS.md"
    data_dir: Path = BENCH / "data"
    work_dir: Path = Path("/tmp")  # scratch project, job directories (removed afterwards)
    verbose: bool = False
    max_rows: int | None = None  # xgboost_e2e: leave out larger data sets
    repeats_explicit: bool = False  # --repeats given: every size gets that many repeats
    threads_explicit: bool = False  # --threads given: the XGBoost end-to-end runs use it too

    def pick(self, full: Any, quick: Any, smoke: Any) -> Any:
        """The size (or list of sizes) for the current mode."""
        return {"full": full, "quick": quick, "smoke": smoke}[self.mode]


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -------------------------------------------------------------------------------------------------
# Measured subprocesses


@dataclass
class Run:
    command: list[str]
    returncode: int
    wall: float  # seconds, from just before the start to the exit
    max_rss: int  # bytes: peak resident set of the process (the largest of it and its waited-for children)
    lines: list[tuple[float, str]]  # (seconds since start, line) of stdout+stderr, as they arrived
    timed_out: bool = False

    @property
    def output(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def check(self, what: str) -> "Run":
        if self.returncode != 0:
            tail = "\n".join(line for _, line in self.lines[-25:])
            raise BenchError(f"{what} failed (exit {self.returncode}"
                             + (", timed out" if self.timed_out else "") + f"): {' '.join(self.command)}\n{tail}")
        return self

    def first(self, pattern: str) -> tuple[float, re.Match] | None:
        """The first output line matching `pattern`, with its arrival time."""
        regex = re.compile(pattern)
        for t, line in self.lines:
            match = regex.search(line)
            if match:
                return t, match
        return None

    def all(self, pattern: str) -> list[tuple[float, re.Match]]:
        regex = re.compile(pattern)
        return [(t, m) for t, line in self.lines for m in [regex.search(line)] if m]


class BenchError(RuntimeError):
    pass


def run_measured(command: list[str], env: dict[str, str] | None = None, cwd: Path | None = None,
                 timeout: float | None = None, echo: bool = False) -> Run:
    """Run `command`, timestamp each output line as it arrives, and read the process's own peak RSS
    from the kernel (wait4's rusage: exact, no polling)."""
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    started = time.monotonic()
    process = subprocess.Popen([str(c) for c in command], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               env=full_env, cwd=cwd, text=True, bufsize=1, errors="replace",
                               start_new_session=True)
    expired = threading.Event()

    def kill() -> None:
        expired.set()
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    timer = threading.Timer(timeout, kill) if timeout else None
    if timer:
        timer.daemon = True
        timer.start()
    lines = []
    assert process.stdout is not None
    for line in process.stdout:
        lines.append((time.monotonic() - started, line.rstrip("\n")))
        if echo:
            print(f"    | {line.rstrip()}", file=sys.stderr, flush=True)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.monotonic() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if timer:
        timer.cancel()
    return Run(command=[str(c) for c in command], returncode=process.returncode, wall=wall,
               max_rss=usage.ru_maxrss * 1024, lines=lines, timed_out=expired.is_set())


# -------------------------------------------------------------------------------------------------
# Repeats, interleaving and statistics


def interleaved(repeats: int, variants: list[str]) -> Iterable[tuple[int, str]]:
    """(repeat, variant) pairs: every repeat runs every variant once; the order rotates each repeat,
    so no variant always runs first (cold caches) or right after the same neighbour."""
    for r in range(repeats):
        shift = r % len(variants)
        for variant in variants[shift:] + variants[:shift]:
            yield r, variant


def stats(values: list[float]) -> dict[str, Any]:
    values = [float(v) for v in values if v is not None]
    if not values:
        return {"n": 0, "median": None, "min": None, "max": None, "values": []}
    return {"n": len(values), "median": statistics.median(values), "min": min(values), "max": max(values),
            "values": [round(v, 4) for v in values]}


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b in (None, 0) else a / b


def median_of_ratios(pairs: list[tuple[float, float]]) -> float | None:
    """The median of per-repeat ratios a/b (each pair measured back to back)."""
    values = [a / b for a, b in pairs if a is not None and b]
    return statistics.median(values) if values else None


# -------------------------------------------------------------------------------------------------
# The machine: what it is, and whether something else was using it


def _proc_stat() -> tuple[float, float]:
    with open("/proc/stat") as handle:
        fields = [float(x) for x in handle.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


class LoadProbe:
    """Samples how many cores were busy while the suite itself was idle (between runs)."""

    def __init__(self, seconds: float = 0.5) -> None:
        self.samples: list[float] = []
        self.seconds = seconds

    def sample(self, seconds: float | None = None) -> float:
        seconds = seconds or self.seconds
        busy0, total0 = _proc_stat()
        time.sleep(seconds)
        busy1, total1 = _proc_stat()
        cores = os.cpu_count() or 1
        busy = (busy1 - busy0) / max(total1 - total0, 1e-9) * cores
        self.samples.append(round(busy, 2))
        return busy

    def summary(self) -> dict[str, Any]:
        s = self.samples
        return {
            "idle_busy_cores_median": statistics.median(s) if s else None,
            "idle_busy_cores_max": max(s) if s else None,
            "samples": s,
            "loadavg_end": os.getloadavg()[0],
            "shared": bool(s) and statistics.median(s) >= 0.25,
        }


def describe_load(load: dict[str, Any]) -> str:
    if not load or load.get("idle_busy_cores_median") is None:
        return ""
    cores = os.cpu_count() or 1
    text = (f"while the suite was idle between runs, {load['idle_busy_cores_median']:.2f} of {cores} cores were busy "
            f"(median of {len(load['samples'])} samples; max {load['idle_busy_cores_max']:.2f})")
    if load.get("shared"):
        return "**Shared machine**: " + text + "; another workload ran during these measurements"
    return text[0].upper() + text[1:]


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    except OSError:
        pass
    docker_version = "unknown"
    try:
        docker_version = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"], capture_output=True,
                                        text=True, timeout=20).stdout.strip() or "unknown"
    except (OSError, subprocess.TimeoutExpired):
        pass
    versions = {}
    for module in ("xgboost", "torch", "pandas", "pyarrow", "numpy", "sagemaker"):
        try:
            from importlib.metadata import version
            versions[module] = version(module)
        except Exception:  # noqa: BLE001 - an optional package
            versions[module] = None
    try:
        sdk3 = subprocess.run([str(SDK3_PYTHON), "-c", "from importlib.metadata import version; print(version('sagemaker'))"],
                              capture_output=True, text=True, timeout=60).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        sdk3 = ""
    versions["sagemaker_v3"] = sdk3 or None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem / 2**30, 1),
        "docker": docker_version,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "versions": versions,
    }


def machine_note(result: dict[str, Any]) -> str:
    """The sentence under every table: which machine, when, and whether something else was using it."""
    load = describe_load(result.get("load") or {})
    return f"Machine: {machine_line(result['machine'])}." + (f" {load}." if load else "")


def machine_line(machine: dict[str, Any]) -> str:
    return (f"{machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB RAM, Docker {machine['docker']}, "
            f"{machine['date']}")


# -------------------------------------------------------------------------------------------------
# Results: JSON and a markdown section


def write_result(cfg: Config, name: str, result: dict[str, Any]) -> Path:
    cfg.results_dir.mkdir(parents=True, exist_ok=True)
    path = cfg.results_dir / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)
    return path


def replace_section(path: Path, key: str, body: str, order: list[str], header: str) -> None:
    """Put `body` between the markers of `key` in the markdown file (created from `header` if absent);
    sections of other benchmarks and any text outside the markers are kept."""
    start, end = f"<!-- bench:{key}:start -->", f"<!-- bench:{key}:end -->"
    text = path.read_text() if path.exists() else header
    block = f"{start}\n{body.rstrip()}\n{end}"
    if start in text and end in text:
        text = re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        # Insert before the first section that comes later in `order`, else at the end.
        later = [k for k in order[order.index(key) + 1:]] if key in order else []
        position = len(text)
        for k in later:
            marker = f"<!-- bench:{k}:start -->"
            if marker in text:
                position = text.index(marker)
                break
        text = text[:position].rstrip() + "\n\n" + block + "\n\n" + text[position:].lstrip()
    path.write_text(text.rstrip() + "\n")


# -------------------------------------------------------------------------------------------------
# Formatting


def fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    return f"{seconds:.2f} s" if seconds < 10 else f"{seconds:.1f} s"


def fmt_x(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2f}x" if value >= 0.095 else f"{value:.2g}x"


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "n/a"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def spread(s: dict[str, Any], unit: Callable[[float], str] = fmt_s) -> str:
    """`median (min-max)` of a stats() dict."""
    if not s or s.get("median") is None:
        return "n/a"
    if s["n"] == 1:
        return unit(s["median"])
    return f"{unit(s['median'])} ({unit(s['min'])}–{unit(s['max'])})"


def repeats_phrase(n: int) -> str:
    return f"median of {n} repeats (min–max)" if n > 1 else "a single run"


def table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def remove_path(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
