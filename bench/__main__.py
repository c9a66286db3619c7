"""python -m bench: measure the toolkit against its physical limits (see BENCHMARKS.md).

    python -m bench                       # every benchmark, full sizes (`make bench`)
    python -m bench --only xgboost_e2e    # one benchmark (repeat --only for more)
    python -m bench --quick               # small sizes: a few minutes
    python -m bench --repeats 5           # more repeats (default 3; the median is reported)
    python -m bench --render              # rewrite BENCHMARKS.md from bench/results/*.json, measure nothing

Each benchmark writes bench/results/<name>.json and its section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

from bench import data as bench_data
from bench.common import BENCH, MODES, ROOT, SCHEMA, BenchError, Config, log, machine_info, machine_line, \
    replace_section, table, write_result

# In the order they run: the short ones first, the XGBoost end-to-end runs (the longest) last.
BENCHMARKS = ["startup", "inner_loop", "edit_to_result", "push_delta", "pytorch", "xgboost_extmem", "xgboost_e2e"]
DEFAULT_REPEATS = {"full": 3, "quick": 3, "smoke": 1}
BUDGET_MINUTES = 30

HEADER = """# Benchmarks

The toolkit measured against its physical limits, as ratios taken side by side in one run: ours and
the reference are interleaved (the order rotates every repeat) and each figure is the median of the
repeats. Regenerate with `make bench` (`python -m bench`; `--only NAME`, `--quick`, `--repeats N`,
`--threads N`). Raw numbers: `bench/results/<name>.json`. A smoke run of every benchmark at tiny sizes
is part of `make test` (`tests/test_bench_smoke.py`); the full run is not.

"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", choices=BENCHMARKS, metavar="NAME",
                        help=f"run only this benchmark (repeatable): {', '.join(BENCHMARKS)}")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small sizes (a few minutes)")
    size.add_argument("--smoke", action="store_true", help="tiny sizes, one repeat, reduced matrices (the test suite's run)")
    parser.add_argument("--repeats", type=int, help="repeats per measurement (default: 3; smoke: 1)")
    parser.add_argument("--threads", type=int,
                        help="threads for ours and every reference alike (XGBoost nthread, torch threads, "
                             "OMP_NUM_THREADS; default 1, and every core for the XGBoost end-to-end runs)")
    parser.add_argument("--max-rows", type=int, help="xgboost_e2e: leave out data sets with more rows than this")
    parser.add_argument("--results-dir", type=Path, default=BENCH / "results", help="where the JSON goes (default bench/results)")
    parser.add_argument("--markdown", type=Path, default=ROOT / "BENCHMARKS.md", help="the markdown file to update")
    parser.add_argument("--data-dir", type=Path, default=BENCH / "data", help="cache of the generated data (default bench/data)")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp"), help="scratch project and job directories (removed afterwards)")
    parser.add_argument("--verbose", action="store_true", help="echo every job's log and the toolkit's progress")
    parser.add_argument("--render", action="store_true",
                        help="measure nothing: rewrite the markdown from the JSON already in --results-dir")
    args = parser.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        return render_only(args)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    assert mode in MODES
    cfg = Config(mode=mode, repeats=args.repeats or DEFAULT_REPEATS[mode], threads=args.threads or 1, threads_explicit=args.threads is not None,
                 results_dir=args.results_dir, markdown=args.markdown, data_dir=args.data_dir, work_dir=args.work_dir,
                 verbose=args.verbose, max_rows=args.max_rows, repeats_explicit=args.repeats is not None)
    # Every process the suite starts (ours and the references alike) gets the same thread count:
    # OpenMP (XGBoost, torch) and Arrow's CPU pool read OMP_NUM_THREADS.
    os.environ["OMP_NUM_THREADS"] = str(cfg.threads)
    names = [n for n in BENCHMARKS if not args.only or n in args.only]

    from bench.context import Context, silence_console
    from bench.project import wait_for_engine

    if not cfg.verbose:
        silence_console()
    wait_for_engine()
    machine = machine_info()
    log(f"{mode} run of {', '.join(names)}: {cfg.repeats} repeat(s), {cfg.threads} thread(s); {machine_line(machine)}")
    suite_started = time.monotonic()
    ctx = Context(cfg)
    results: dict[str, dict] = {}
    failed: list[str] = []
    try:
        for name in names:
            module = importlib.import_module(f"bench.{name}")
            log(f"=== {name}: {module.TITLE}")
            ctx.probe.samples = []
            generated_before = len(bench_data.GENERATED)
            started = time.monotonic()
            started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
            try:
                measurements = module.run(cfg, ctx)
                error = None
            except Exception as exc:  # noqa: BLE001 - recorded, and the suite goes on
                measurements, error = None, f"{type(exc).__name__}: {exc}"
                traceback.print_exc()
                failed.append(name)
            result = {
                "schema": SCHEMA, "benchmark": name, "title": module.TITLE, "mode": mode, "repeats": cfg.repeats,
                "threads": (measurements or {}).get("threads", cfg.threads), "started_at": started_at, "seconds": round(time.monotonic() - started, 2),
                "machine": machine, "load": ctx.probe.summary(), "measurements": measurements, "error": error,
                "data_generated": bench_data.GENERATED[generated_before:],
            }
            results[name] = result
            write_result(cfg, name, result)
            try:
                body = section(name, module, result)
            except Exception as exc:  # noqa: BLE001 - the JSON is written; say the table could not be made
                traceback.print_exc()
                error = result["error"] = f"rendering the table failed: {type(exc).__name__}: {exc}"
                write_result(cfg, name, result)
                failed.append(name)
                body = section(name, module, result)
            replace_section(cfg.markdown, name, body, ["intro", *BENCHMARKS, "summary"], HEADER)
            log(f"=== {name} done in {result['seconds']:.0f}s" + (f" (FAILED: {error})" if error else ""))
    finally:
        ctx.cleanup()
    total = time.monotonic() - suite_started
    write_intro(cfg, machine)
    if not args.only:
        write_summary(cfg, machine, results, total, failed)
    log(f"suite finished in {total / 60:.1f} min" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def section(name: str, module, result: dict) -> str:
    body = f"## {module.TITLE}\n\n" + (module.render(result) if result["error"] is None else
                                        f"**This benchmark failed in its last run** ({result['started_at']}): "
                                        f"`{result['error']}`")
    if result["mode"] != "full":
        body += f"\n\n_{result['mode']} run (small sizes): not the reference numbers._"
    return body


def render_only(args: argparse.Namespace) -> int:
    """The markdown from stored results: after changing how a table is written, without measuring again."""
    cfg = Config(results_dir=args.results_dir, markdown=args.markdown)
    results = {}
    for name in BENCHMARKS:
        path = cfg.results_dir / f"{name}.json"
        if (args.only and name not in args.only) or not path.exists():
            continue
        result = json.loads(path.read_text())
        results[name] = result
        replace_section(cfg.markdown, name, section(name, importlib.import_module(f"bench.{name}"), result),
                        ["intro", *BENCHMARKS, "summary"], HEADER)
    if not results:
        log(f"no results in {cfg.results_dir}; run the benchmarks first")
        return 1
    machine = next(iter(results.values()))["machine"]
    write_intro(cfg, machine)
    suite = cfg.results_dir / "suite.json"
    if suite.exists() and not args.only:
        stored = json.loads(suite.read_text())
        if set(stored["benchmarks"]) == set(results):
            cfg.mode, cfg.repeats, cfg.threads = stored["mode"], stored["repeats"], stored["threads"]
            write_summary(cfg, stored["machine"], results, stored["seconds"], stored["failed"])
    log(f"rewrote {cfg.markdown} from {len(results)} result file(s) in {cfg.results_dir}")
    return 0


def write_intro(cfg: Config, machine: dict) -> None:
    versions = machine["versions"]
    body = table(["machine", ""], [
        ["CPU", machine["cpu"]], ["cores", machine["cores"]], ["memory", f"{machine['memory_gib']} GiB"],
        ["Docker", machine["docker"]], ["kernel", machine["kernel"]],
        ["Python / xgboost / torch", f"{machine['python']} / {versions.get('xgboost')} / {versions.get('torch')}"],
        ["pandas / pyarrow / numpy", f"{versions.get('pandas')} / {versions.get('pyarrow')} / {versions.get('numpy')}"],
        ["SageMaker SDK v2 / v3", f"{versions.get('sagemaker')} / {versions.get('sagemaker_v3')}"],
        ["last run", machine["date"]],
    ])
    replace_section(cfg.markdown, "intro", "## Machine\n\n" + body, ["intro", *BENCHMARKS, "summary"], HEADER)


def write_summary(cfg: Config, machine: dict, results: dict[str, dict], total: float, failed: list[str]) -> None:
    rows = []
    shared = False
    for name, result in results.items():
        module = importlib.import_module(f"bench.{name}")
        load = result.get("load") or {}
        shared = shared or bool(load.get("shared"))
        if result["error"] is None and hasattr(module, "headline"):
            for label, value in module.headline(result):
                rows.append([label, value])
        generated = sum(g["seconds"] for g in result.get("data_generated", []))
        rows_time = f"{result['seconds'] / 60:.1f} min" + (f" (of which {generated / 60:.1f} min generating data "
                                                            "not yet cached)" if generated >= 1 else "")
        rows.append([f"_{name}: wall time_", rows_time])
    within = total <= BUDGET_MINUTES * 60
    e2e = results.get("xgboost_e2e", {}).get("measurements") or {}
    single = sum(sec for n, sec in (e2e.get("seconds_by_size") or {}).items()
                 if (e2e.get("repeats_by_size") or {}).get(n) == 1 and cfg.repeats > 1)
    text = [
        "## Summary",
        "",
        f"{cfg.mode.capitalize()} run of the whole suite on {machine_line(machine)}: **{total / 60:.1f} min** of wall time "
        f"({'within' if within else 'over'} the {BUDGET_MINUTES}-minute budget"
        + (f"; {generated / 60:.1f} min of it generating data that later runs find cached" if generated >= 1 else "")
        + f"), {cfg.repeats} repeats, "
        f"{cfg.threads} thread{'s' if cfg.threads > 1 else ''} for ours and every reference"
        + (" (the XGBoost end-to-end runs: every core, see that section)." if not cfg.threads_explicit else ".")
        + (" The machine was shared with another workload during the run (see each section's load line)." if shared else
           " Nothing else was using the machine during the run (see each section's load line).")
        + (f" The single-repeat runs on the largest XGBoost data sets took {single / 60:.1f} min of it; without them "
           f"(`--max-rows`) the suite takes about {(total - single) / 60:.0f} min." if single and not within else ""),
        "",
        table(["headline", "value"], rows),
    ]
    if failed:
        text += ["", f"Failed in this run: {', '.join(failed)}."]
    replace_section(cfg.markdown, "summary", "\n".join(text), ["intro", *BENCHMARKS, "summary"], HEADER)
    generated = sum(g["seconds"] for r in results.values() for g in r.get("data_generated", []))
    summary = {"schema": SCHEMA, "mode": cfg.mode, "repeats": cfg.repeats, "threads": cfg.threads, "machine": machine,
               "data_generation_seconds": round(generated, 1),
               "seconds": round(total, 1), "within_budget": within, "budget_minutes": BUDGET_MINUTES,
               "failed": failed, "benchmarks": {n: r["seconds"] for n, r in results.items()}}
    cfg.results_dir.mkdir(parents=True, exist_ok=True)
    (cfg.results_dir / "suite.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        log(f"error: {exc}")
        sys.exit(2)
    except KeyboardInterrupt:
        log("interrupted")
        sys.exit(130)
