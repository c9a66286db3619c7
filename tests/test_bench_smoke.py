"""The benchmark suite (bench/, `make bench`) at tiny sizes: `python -m bench --smoke` runs every
benchmark once and each must leave well-formed results: its JSON with the numbers its table is made of,
numbers that are physically possible, models that agree between ours and the references, and its
section in the markdown file. The full run is not part of the tests. Nothing here judges a duration or a
ratio of durations: on a shared machine those are what the benchmarks report, not what a test can hold."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import common
from bench.__main__ import BENCHMARKS

pytestmark = pytest.mark.docker
REPO = Path(__file__).resolve().parent.parent


# -------------------------------------------------------------------------------------------------
# The pieces every benchmark relies on (no Docker)


def test_interleaving_rotates_and_covers_every_variant():
    pairs = list(common.interleaved(3, ["a", "b", "c"]))
    assert [v for _, v in pairs] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert [r for r, _ in pairs] == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_statistics_are_medians_of_paired_ratios():
    assert common.stats([3.0, 1.0, 2.0])["median"] == 2.0
    assert common.stats([]) == {"n": 0, "median": None, "min": None, "max": None, "values": []}
    # Per-repeat ratios, not a ratio of medians: a slow repeat slows both sides of its pair.
    assert common.median_of_ratios([(2.0, 1.0), (9.0, 3.0), (40.0, 10.0)]) == 3.0
    assert common.median_of_ratios([(1.0, 0)]) is None


def test_measured_subprocess_reports_exit_code_peak_rss_and_line_times():
    run = common.run_measured([sys.executable, "-c",
                               "import time; b = bytearray(200 << 20); print('one', flush=True); time.sleep(0.3); "
                               "print('two'); raise SystemExit(3)"])
    assert run.returncode == 3
    assert run.max_rss >= 200 << 20  # the kernel's number for this child, not a poll
    (t1, _), (t2, _) = run.first("one"), run.first("two")
    assert t2 - t1 >= 0.25 and run.wall >= t2
    with pytest.raises(common.BenchError, match="exit 3"):
        run.check("the child")


def test_markdown_sections_are_replaced_in_place_and_other_text_kept(tmp_path):
    path = tmp_path / "B.md"
    order = ["intro", "a", "b", "summary"]
    common.replace_section(path, "b", "## B\nfirst", order, "# Title\n\n")
    common.replace_section(path, "a", "## A", order, "# Title\n\n")
    path.write_text(path.read_text() + "\nNotes written by hand.\n")
    common.replace_section(path, "b", "## B\nsecond", order, "# Title\n\n")
    text = path.read_text()
    assert text.startswith("# Title")
    assert text.index("## A") < text.index("## B") and "second" in text and "first" not in text
    assert text.count("<!-- bench:b:start -->") == 1 and "Notes written by hand." in text


# -------------------------------------------------------------------------------------------------
# One smoke run of the whole suite


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, standin_xgboost, docker_client):
    out = tmp_path_factory.mktemp("bench-smoke")
    # What an earlier, interrupted bench run may have left is not this run's doing.
    before = _bench_tags(docker_client)
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--results-dir", str(out / "results"), "--markdown", str(out / "B.md"),
         "--work-dir", str(out / "work")],
        cwd=REPO, capture_output=True, text=True, timeout=300, env=dict(os.environ, COLUMNS="200"),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    results = {name: json.loads((out / "results" / f"{name}.json").read_text()) for name in BENCHMARKS}
    return {"results": results, "markdown": (out / "B.md").read_text(), "work": out / "work",
            "log": proc.stderr, "tags_before": before}


def _bench_tags(docker_client) -> set[str]:
    return {tag for image in docker_client.images.list() for tag in image.tags
            if tag.startswith(("smkit-bench-floor:", "smkit-bench-tiny:")) or "/bench/smkit-" in tag}


def test_smoke_run_of_the_whole_suite_cleans_up(smoke, docker_client):
    # The scratch project, job directories and every image the run built or tagged are gone.
    assert list(smoke["work"].iterdir()) == []
    assert _bench_tags(docker_client) - smoke["tags_before"] == set()


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.mark.parametrize("name", BENCHMARKS)
def test_every_benchmark_wrote_json_and_its_markdown_section(smoke, name):
    result = smoke["results"][name]
    assert result["error"] is None, result["error"]
    assert result["benchmark"] == name and result["schema"] == common.SCHEMA and result["mode"] == "smoke"
    assert result["repeats"] == 1 and result["threads"] == 1
    assert {"cpu", "cores", "memory_gib", "docker", "date"} <= set(result["machine"])
    assert result["load"]["samples"], "the machine's load is sampled before the runs"
    section = smoke["markdown"].split(f"<!-- bench:{name}:start -->")[1].split(f"<!-- bench:{name}:end -->")[0]
    assert f"## {result['title']}" in section
    rows = [line for line in section.splitlines() if line.startswith("|")]
    assert len(rows) >= 3 and rows[1].startswith("|---"), section  # a table: header, rule, at least one row
    assert "n/a" not in rows[2], rows[2]  # its first row has every number


def test_startup_measures_the_sdk_and_the_same_container_by_hand(smoke):
    m = smoke["results"]["startup"]["measurements"]
    assert _positive(m["variants"]["docker_run"]["median"])
    # A ratio of durations, reported, not judged: both sides ran and the ratio is a real number.
    assert _positive(m["summary"]["sdk_v2"]["ratio_to_docker_run"])


def test_inner_loop_rebuilds_and_the_job_reproduces_plain_python(smoke):
    m = smoke["results"]["inner_loop"]["measurements"]
    assert _positive(m["rebuild"]["median"]) and _positive(m["plain_docker_build"]["median"])
    # The row measures the rebuild after a script-only edit: the previous pip freeze reused, no container.
    assert m["rebuilds_reusing_pip_freeze"] == m["rebuild"]["n"]
    assert _positive(m["bare"]["median"])
    assert _positive(m["summary"]["v3x1"]["ratio_job_to_bare"])
    assert m["same_validation_metrics"], m["final_metrics"]


def test_push_after_an_edit_uploads_only_the_script_layer(smoke):
    m = smoke["results"]["push_delta"]["measurements"]
    run = m["runs"][0]
    assert run["first"]["layers_pushed"] == run["first"]["layers_total"] == m["layers_total"]
    assert run["delta"]["layers_pushed"] == 1 and run["delta"]["layers_existing"] == m["layers_total"] - 1
    assert run["delta"]["blobs_added"] == 3  # script layer, image config, manifest
    assert 0 < run["delta"]["bytes_stored"] < run["first"]["bytes_stored"] / 10
    assert 0 < m["ratio_bytes_delta_to_first"] < 0.1


def test_pytorch_throughput_is_measured_for_ours_and_the_bare_loop(smoke):
    m = smoke["results"]["pytorch"]["measurements"]
    for variant in ("bare", "script"):
        assert _positive(m["variants"][variant]["samples_per_s"]["median"]), variant
    assert _positive(m["summary"]["script_to_bare"])


def test_external_memory_trains_the_same_model_as_in_memory(smoke):
    m = smoke["results"]["xgboost_extmem"]["measurements"]
    for variant in ("in_memory", "external"):
        assert _positive(m["variants"][variant]["seconds"]["median"])
    assert all(r["ok"] for r in m["runs"] if r["variant"] in ("in_memory", "external"))
    logloss = [m["variants"][v]["final_train_logloss"]["median"] for v in ("in_memory", "external")]
    assert abs(logloss[0] - logloss[1]) < 1e-3, logloss
    assert _positive(m["summary"]["ratio_seconds"])


def test_xgboost_e2e_compares_like_with_like(smoke):
    m = smoke["results"]["xgboost_e2e"]["measurements"]
    assert set(m["table"]) == {f"{n}-{f}" for n in m["sizes"] for f in m["formats"]}
    for key, entry in m["table"].items():
        losses = [entry[v]["train_logloss"]["median"] for v in ("ours", "tutorial", "limit")]
        assert max(losses) - min(losses) < 1e-3, (key, losses)  # the same model, three data paths
        for variant in ("ours", "tutorial", "limit"):
            assert _positive(entry[variant]["seconds"]["median"]) and _positive(entry[variant]["max_rss"]["median"])
        assert _positive(entry["ours_to_limit"]) and _positive(entry["tutorial_to_limit"])


def test_edit_to_result_runs_the_edit_mounted_without_a_build_and_reproduces_plain_python(smoke):
    m = smoke["results"]["edit_to_result"]["measurements"]
    assert _positive(m["bare"]["median"])
    mounted = m["summary"]["mount1"]
    assert _positive(mounted["edit_to_result"]["median"]) and _positive(mounted["ratio_to_bare"])
    assert 0 < mounted["containers"]["median"] < mounted["job"]["median"]  # the containers ran within the job's time
    assert m["rebuild"]["n"] == 0  # smoke size: the mounted row only, no build at all
    assert m["same_validation_metrics"] == {"mount1": True}, m["final_metrics"]
