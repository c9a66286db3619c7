"""The metric-line format (smkit/metrics.py): every separator style is a metric for the job summary's
parser and for the cloud regex of its name alike, and nothing else is."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import sys
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from local_mode.artifacts import parse_metrics
from smkit import metrics

REPO = Path(__file__).resolve().parent.parent


def cloud_values(name: str, log: str) -> list[float]:
    """What SageMaker would record for `name`: its definition's first group on every line that matches."""
    regex = re.compile(metrics.definitions([name])[0]["Regex"])
    values = []
    for line in log.splitlines():
        match = regex.search(line)
        if match:
            values.append(float(match.group(1)))
    return values


@pytest.mark.parametrize("line,expected", [
    ("validation:accuracy=0.7039", {"validation:accuracy": 0.7039}),
    ("validation:accuracy = 0.7039", {"validation:accuracy": 0.7039}),
    ("validation:accuracy: 0.7039", {"validation:accuracy": 0.7039}),
    ("validation:accuracy:0.7039", {"validation:accuracy": 0.7039}),
    ("accuracy: 0.91", {"accuracy": 0.91}),
    ("loss=1e-3", {"loss": 0.001}),
    ("test_accuracy:\t-2.5E+2", {"test_accuracy": -250.0}),
    ("[round 12] train:rmse=0.35 validation:rmse=0.41", {"train:rmse": 0.35, "validation:rmse": 0.41}),
    ("Epoch 3: loss=0.52, accuracy: 0.91; val/loss = .4", {"loss": 0.52, "accuracy": 0.91, "val/loss": 0.4}),
    ("step 7 | train-rmse:0.25 | eta=0.1", {"train-rmse": 0.25, "eta": 0.1}),
    ("(lr = 0.01)", {"lr": 0.01}),
])
def test_each_style_is_a_metric_locally_and_in_the_cloud(line, expected):
    final, history = parse_metrics(f"algo-1-abcde  | {line}\n")
    assert final == expected and history[0]["host"] == "algo-1-abcde"
    for name, value in expected.items():
        assert cloud_values(name, line) == [value], (name, line)


@pytest.mark.parametrize("line", [
    'SM_HPS={"eta":0.2,"num_round":50}',         # the toolkit's environment dump: settings, not metrics
    "SM_NUM_CPUS=2",
    '"eta": 0.2,',                               # JSON: the name is quoted
    "accuracy=0.5abc",                           # not a number
    "version: 3.11.2",                           # not one number
    "x-accuracy=0.5",                            # a different name ends in accuracy
    "2026-11-29 13:00:00,123 INFO accuracy:",    # no value
    "accuracy=",
])
def test_other_lines_are_no_metric_anywhere(line):
    final, _ = parse_metrics(line)
    assert "accuracy" not in final and "eta" not in final and "version" not in final
    assert not any(name.startswith("SM_") for name in final)  # (so no cloud definition is made for them)
    for name in ("accuracy", "eta", "version"):
        if name not in final:
            assert cloud_values(name, line) == [], (name, line)


def test_steps_and_ansi_colours():
    log = "\x1b[36malgo-2_1  |\x1b[0m [epoch 2] validation:accuracy = 0.97\nplain: 0.5\n"
    final, history = parse_metrics(log)
    assert final == {"validation:accuracy": 0.97, "plain": 0.5}
    assert [(h["kind"], h["step"], h["host"]) for h in history] == [("epoch", "2", "algo-2_1"), (None, None, None)]


def test_names_only_ever_whole_numbers_off_step_lines_are_settings_not_metrics():
    log = ("distributed: world_size=1 rank=0 backend=none threads=2\n"
           "[round 1] train:error=0\n"           # a step line: a metric, whole or not
           "errors: 3\nerrors: 0.5\nerrors: 2\n"  # once fractional: a metric, every line of it counts
           "accuracy: 1.0\n")
    final, history = parse_metrics(log)
    assert final == {"train:error": 0.0, "errors": 2.0, "accuracy": 1.0}
    assert [h["metrics"] for h in history if "errors" in h["metrics"]] == [{"errors": 3.0}, {"errors": 0.5}, {"errors": 2.0}]
    assert cloud_values("errors", log) == [3.0, 0.5, 2.0]  # the same lines the cloud regex records


def test_sm_contract_lines_match_the_cloud_definition():
    spec = importlib.util.spec_from_file_location("sm_contract", REPO / "train_scripts" / "common" / "sm_contract.py")
    sm_contract = importlib.util.module_from_spec(spec)
    sys.modules["sm_contract"] = sm_contract  # its dataclasses look their module up
    spec.loader.exec_module(sm_contract)
    out = io.StringIO()
    with redirect_stdout(out):
        sm_contract.log_metrics("round", 12, {"train:rmse": 0.35, "validation:auc": 0.987654321})
    final, _ = parse_metrics(out.getvalue())
    assert final == {"train:rmse": 0.35, "validation:auc": 0.987654}
    for name, value in final.items():
        assert cloud_values(name, out.getvalue()) == [value]


def test_definitions_are_unique_and_capped():
    names = [f"m{i}" for i in range(45)] + ["m1"]
    defs = metrics.definitions(names)
    assert len(defs) == metrics.MAX_DEFINITIONS and len({d["Name"] for d in defs}) == metrics.MAX_DEFINITIONS
    assert all(re.compile(d["Regex"]).groups == 1 for d in defs)


def test_cloud_definitions_add_the_names_of_the_last_local_run(tmp_path):
    from local_mode import cloud
    from smkit import images_toml

    for job, image, names, mtime in [("old", "xgboost", ["old:metric"], 1), ("new", "xgboost", ["validation:auc", "extra"], 2),
                                     ("other", "pytorch", ["theirs"], 3)]:
        run = tmp_path / job
        run.mkdir()
        (run / "spec.json").write_text(json.dumps({"image_name": image}))
        (run / "summary.json").write_text(json.dumps({"metrics": {n: 1.0 for n in names}}))
        os.utime(run / "summary.json", (mtime, mtime))
    assert cloud.last_run_metric_names("xgboost", tmp_path) == ["extra", "validation:auc"]
    assert cloud.last_run_metric_names("nobody", tmp_path) == []
    # Declared in images.toml first, then the names the last local run printed, each once.
    declared = list(images_toml.load()["xgboost"].metrics)
    defs = cloud.metric_definitions("xgboost", tmp_path)
    assert [d["Name"] for d in defs] == declared + ["extra"]
    assert defs[-1]["Regex"] == metrics.regex_for("extra")
