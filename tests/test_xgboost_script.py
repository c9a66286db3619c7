"""The XGBoost training script (train_scripts/xgboost/train.py), run for real: no mocks of XGBoost.

Loaders and hyperparameter handling are tested by calling the script's own functions; whole jobs run as
`python train.py ...` subprocesses (or, for the many bad-input cases, through the same sm_contract.run
wrapper in-process, which is what `python train.py` executes). Data: scikit-learn's bundled data sets
(breast cancer, iris, diabetes), no network. nthread is 1 (`--num-cpus 1`): on a shared 2-core machine
OpenMP with 2 threads is many times slower than 1.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import xgboost as xgb
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris
from sklearn.metrics import roc_auc_score

from tests.scripts import script_module

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "train_scripts" / "xgboost" / "train.py"


train = script_module("xgboost", "train")
sm = script_module("xgboost", "sm_contract")
params_module = script_module("xgboost", "params")
data_utils = script_module("xgboost", "data_utils")
dmatrix = script_module("xgboost", "dmatrix")
labels = script_module("xgboost", "labels")
memory = script_module("xgboost", "memory")
hosts_module = script_module("xgboost", "hosts")


# ---------------------------------------------------------------------------------------------------
# Helpers


def clean_env() -> dict[str, str]:
    """The test process's environment without SageMaker variables (the script would read them)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("SM_")}


def write_csv(path: Path, rows, header: list[str] | None = None, fmt: str = "%.6g") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [",".join(header)] if header else []
    for row in rows:
        lines.append(",".join(v if isinstance(v, str) else ("" if v != v else fmt % v) for v in row))
    path.write_text("\n".join(lines) + "\n")
    return path


def breast_cancer_split(seed: int = 0):
    X, y = load_breast_cancer(return_X_y=True)
    idx = np.random.default_rng(seed).permutation(len(y))
    return (X[idx[:400]], y[idx[:400]]), (X[idx[400:]], y[idx[400:]])


def breast_cancer_csv(root: Path, train_files: int = 2) -> tuple[Path, Path]:
    """Label-first CSV without header, the built-in algorithm's convention; train split over files."""
    (Xt, yt), (Xv, yv) = breast_cancer_split()
    for i, part in enumerate(np.array_split(np.arange(len(yt)), train_files)):
        sub = root / "train" / ("" if i == 0 else f"part{i}")
        write_csv(sub / f"data-{i}.csv", np.column_stack([yt[part], Xt[part]]))
    write_csv(root / "validation" / "v.csv", np.column_stack([yv, Xv]))
    return root / "train", root / "validation"


def job_args(tmp: Path, *args: str) -> list[str]:
    return ["--model-dir", str(tmp / "model"), "--output-data-dir", str(tmp / "out"),
            "--output-dir", str(tmp / "output"), "--num-cpus", "1", *args]


def run_script(tmp: Path, *args: str, env: dict | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    tmp.mkdir(parents=True, exist_ok=True)
    return subprocess.run([sys.executable, str(SCRIPT), *job_args(tmp, *args)], capture_output=True, text=True,
                          env=env or clean_env(), timeout=timeout, cwd=tmp)


def run_in_process(tmp: Path, *args: str, monkeypatch, env: dict | None = None) -> int:
    """What `python train.py ARGS` runs (sm_contract.run around main), without a new interpreter."""
    for name in [k for k in os.environ if k.startswith("SM_")]:
        monkeypatch.delenv(name)
    for name, value in (env or {}).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), *job_args(tmp, *args)])
    try:
        sm.run(train.main)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def failure(tmp: Path) -> str:
    return (tmp / "output" / "failure").read_text()


def evaluation(tmp: Path) -> dict:
    return json.loads((tmp / "out" / "evaluation.json").read_text())


def load(tmp: Path, *args: str):
    """The script's data pipeline on one host, up to the converted batches: (data, params, hp)."""
    env = sm.load_environment(train.HYPERPARAMETERS, train.CHANNELS, argv=job_args(tmp, *args),
                              extra_hyperparameters=train.xgboost_parameter, env={})
    hp = train.script_options(env)
    params = params_module.xgboost_params(env)
    cluster = hosts_module.Cluster(env, 9099, 10)  # not entered: one host, or this host's view of several
    sources = cluster.agree(data_utils.plan_sources, env, hp, cluster)
    layout = cluster.agree(data_utils.agree_layout, sources, hp, cluster)
    cluster.agree(memory.plan, hp, sources, layout, cluster)
    data = cluster.agree(dmatrix.load_data, sources, layout, hp, cluster)
    return data, params, hp


def matrix(data, channel: str = "train"):
    batches = data.memory[channel]
    X = dmatrix.Batch.concat(batches).X
    return X.toarray() if hasattr(X, "toarray") else X, np.concatenate([b.y for b in batches])


# ---------------------------------------------------------------------------------------------------
# Loaders


def test_csv_without_header_label_first_over_files_and_subdirectories(tmp_path):
    train_dir, valid_dir = breast_cancer_csv(tmp_path, train_files=3)
    (train_dir / "_SUCCESS").write_text("")
    (train_dir / ".hidden.csv").write_text("not,data\n")
    data, _, _ = load(tmp_path, "--train", str(train_dir), "--validation", str(valid_dir), "--batch_mb", "0.01")
    (Xt, yt), (Xv, yv) = breast_cancer_split()
    X, y = matrix(data)
    assert not data.layout.header and data.layout.feature_names is None
    assert len(data.memory["train"]) > 1  # small batches, several of them
    np.testing.assert_allclose(X, Xt, rtol=1e-5)  # sorted files: data-0, part1/data-1, part2/data-2
    np.testing.assert_array_equal(y, yt)
    np.testing.assert_allclose(matrix(data, "validation")[0], Xv, rtol=1e-5)


def test_csv_header_detected_target_column_by_name_and_missing_values(tmp_path):
    rows = [[1.5, "", 0], [float("nan"), 2.0, 1], [3.0, 4.0, 0], [5.0, 6.0, 1]]
    path = write_csv(tmp_path / "train" / "t.csv", rows, header=["a", "b", "y"])
    path.write_text(path.read_text().replace("nan", "NaN"))
    data, _, _ = load(tmp_path, "--train", str(tmp_path / "train"), "--target_column", "y")
    X, y = matrix(data)
    assert data.layout.header and data.layout.feature_names == ["a", "b"]
    np.testing.assert_array_equal(y, [0, 1, 0, 1])
    assert np.isnan(X[0, 1]) and np.isnan(X[1, 0]) and X[3, 1] == 6.0


def test_csv_header_auto_detection_without_target_column(tmp_path):
    write_csv(tmp_path / "train" / "t.csv", [[0, 1.0, 2.0], [1, 3.0, 4.0]], header=["label", "x1", "x 2[mm]"])
    data, _, _ = load(tmp_path, "--train", str(tmp_path / "train"))
    assert data.layout.header and data.layout.names[data.layout.label] == "label"
    assert data.layout.feature_names == ["x1", "x 2_mm_"]  # XGBoost forbids [ ] < in feature names
    write_csv(tmp_path / "t2" / "t.csv", [[0, 1.0, 2.0], [1, 3.0, 4.0]])
    data, _, _ = load(tmp_path, "--train", str(tmp_path / "t2"), "--csv_header", "False")  # str(False) from the SDK
    assert not data.layout.header and matrix(data)[0].shape == (2, 2)


def test_categorical_columns_share_codes_between_train_and_validation(tmp_path):
    write_csv(tmp_path / "train" / "t.csv", [[0, "red", 1.0], [1, "green", 2.0], [0, "", 3.0], [1, "red", 4.0]],
              header=["y", "color", "x"])
    write_csv(tmp_path / "validation" / "v.csv", [[1, "blue", 1.0], [0, "red", 2.0]], header=["y", "color", "x"])
    data, _, _ = load(tmp_path, "--train", str(tmp_path / "train"), "--validation", str(tmp_path / "validation"))
    color = data.layout.names.index("color")
    assert data.coding.categories[color] == ["blue", "green", "red"]
    assert data.layout.feature_types == ["c", "q"]
    X, _ = matrix(data)
    Xv, _ = matrix(data, "validation")
    assert X[0, 0] == 2 and X[1, 0] == 1 and np.isnan(X[2, 0]) and Xv[0, 0] == 0 and Xv[1, 0] == X[0, 0]


def test_string_labels_become_sorted_classes(tmp_path):
    write_csv(tmp_path / "train" / "t.csv", [["dog", 1.0], ["cat", 2.0], ["bird", 3.0], ["cat", 4.0]],
              header=["animal", "x"])
    data, params, hp = load(tmp_path, "--train", str(tmp_path / "train"))
    assert data.coding.classes == ["bird", "cat", "dog"]
    np.testing.assert_array_equal(matrix(data)[1], [2, 1, 0, 1])
    labels.objective_from_labels(params, data)
    assert params["objective"] == "multi:softprob" and params["num_class"] == 3


def test_parquet_numeric_string_dictionary_and_nulls_over_row_groups(tmp_path):
    n = 3000
    rng = np.random.default_rng(0)
    table = pa.table({
        "x": pa.array(rng.normal(size=n).astype(np.float64)),
        "count": pa.array(rng.integers(0, 9, size=n)),
        "city": pa.array(rng.choice(["berlin", "lima", None], size=n).tolist()),
        "kind": pa.array(rng.choice(["a", "b"], size=n).tolist()).dictionary_encode(),
        "target": pa.array(rng.integers(0, 2, size=n).astype(np.int64)),
        "flag": pa.array(rng.integers(0, 2, size=n).astype(bool)),
    })
    (tmp_path / "train").mkdir()
    pq.write_table(table, tmp_path / "train" / "part-0.parquet", row_group_size=500)
    data, _, _ = load(tmp_path, "--train", str(tmp_path / "train"), "--target_column", "target", "--batch_mb", "0.05")
    assert [s.format for s in data.sources.values()] == ["parquet"]
    assert data.layout.feature_types == ["q", "q", "c", "c", "q"]
    X, y = matrix(data)
    np.testing.assert_allclose(X[:, 0], table["x"].to_numpy(), rtol=1e-6)
    city = np.array(table["city"].to_pylist(), dtype=object)
    assert np.isnan(X[city == None, 2]).all()  # noqa: E711
    assert (X[city == "lima", 2] == 1).all()
    np.testing.assert_array_equal(X[:, 4], table["flag"].to_numpy(zero_copy_only=False).astype(np.float32))
    np.testing.assert_array_equal(y, table["target"].to_numpy())


def test_libsvm_sparse_files_of_different_widths_compressed_weights_and_qid(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "a.libsvm").write_text("1 0:1.5 3:2\n0 1:-1 # a comment\n\n")
    with gzip.open(tmp_path / "train" / "b.libsvm.gz", "wt") as handle:
        handle.write("1:0.5 5:7\n")  # label 1 with weight 0.5
    (tmp_path / "validation").mkdir()
    (tmp_path / "validation" / "v.txt").write_text("0 qid:1 2:1\n")
    with pytest.raises(sm.UserError, match="qid"):  # qid in one file only
        data, _, _ = load(tmp_path, "--train", str(tmp_path / "train"), "--validation", str(tmp_path / "validation"))
        matrix(data, "validation")
    shutil.rmtree(tmp_path / "validation")
    data, _, _ = load(tmp_path, "--train", str(tmp_path / "train"))
    X, y = matrix(data)
    assert X.shape == (3, 6)
    np.testing.assert_array_equal(y, [1, 0, 1])
    np.testing.assert_array_equal(dmatrix.Batch.concat(data.memory["train"]).w, [1, 1, 0.5])  # no weight: 1
    assert X[0, 0] == 1.5 and X[0, 3] == 2 and X[1, 1] == -1 and X[2, 5] == 7


@pytest.mark.parametrize("content_type, name, body, expected", [
    ("text/libsvm", "data.txt", "1 1:2\n", "libsvm"),
    ("text/csv; label_size=1", "data", "1,2\n", "csv"),
    ("", "part-00000", "1 3:1 4:2\n0 1:1\n", "libsvm"),  # sniffed
    ("", "data.tsv", "1\t2\n", "csv"),
])
def test_format_from_content_type_then_extension_then_content(tmp_path, content_type, name, body, expected):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / name).write_text(body)
    config = tmp_path / "config"
    config.mkdir()
    (config / "inputdataconfig.json").write_text(json.dumps({"train": {"ContentType": content_type}}))
    env = sm.load_environment(train.HYPERPARAMETERS, train.CHANNELS, argv=job_args(tmp_path, "--train", str(tmp_path / "train")),
                              extra_hyperparameters=train.xgboost_parameter, env={"SM_INPUT_CONFIG_DIR": str(config)})
    hp = train.script_options(env)
    sources = data_utils.plan_sources(env, hp, hosts_module.Cluster(env, 9099, 10))
    assert sources["train"].format == expected
    if name.endswith(".tsv"):
        assert sources["train"].delimiter == "\t"


def test_parquet_sniffed_and_unsupported_or_mixed_formats_rejected(tmp_path):
    (tmp_path / "train").mkdir()
    pq.write_table(pa.table({"y": [0.0, 1.0], "x": [1.0, 2.0]}), tmp_path / "train" / "blob")
    data, _, _ = load(tmp_path, "--train", str(tmp_path / "train"))
    assert data.sources["train"].format == "parquet"
    source = data_utils.Source("train", tmp_path / "train")
    with pytest.raises(sm.UserError, match="recordio-protobuf.*CSV"):
        data_utils.channel_format(source, [], "application/x-recordio-protobuf", "auto")
    with pytest.raises(sm.UserError, match="Parquet but channel 'train' is read as csv"):
        data_utils.channel_format(source, [tmp_path / "train" / "blob"], "text/csv", "auto")
    write_csv(tmp_path / "train" / "b.csv", [[1, 2]])
    with pytest.raises(sm.UserError, match="mixes formats"):
        data_utils.channel_format(source, sorted((tmp_path / "train").iterdir()), "", "auto")


def test_hosts_split_rows_when_files_are_fewer_than_hosts(tmp_path):
    write_csv(tmp_path / "train" / "t.csv", [[i % 2, float(i)] for i in range(11)])
    seen = []
    for host in ("algo-1", "algo-2"):
        data, _, _ = load(tmp_path, "--train", str(tmp_path / "train"), "--hosts", "algo-1,algo-2", "--current-host", host)
        seen.append(matrix(data)[0][:, 0].tolist())
    assert seen == [[float(i) for i in range(6)], [float(i) for i in range(6, 11)]]  # sm_contract.row_range


# ---------------------------------------------------------------------------------------------------
# Hyperparameters


def test_hyperparameters_from_cli_and_sm_hps_in_every_form(tmp_path):
    hps = {"eval_metric": "['auc', 'logloss']", "objective": '"binary:logistic"', "max_depth": 4,
           "num_round": "7", "sagemaker_program": "train.py", "seed_per_iteration": "False"}
    env = sm.load_environment(train.HYPERPARAMETERS, train.CHANNELS,
                              argv=["--model-dir", str(tmp_path), "--learning_rate", "0.2", "--subsample", "1",
                                    "--validate_parameters", "True"],
                              extra_hyperparameters=train.xgboost_parameter, env={"SM_HPS": json.dumps(hps), "SM_NUM_CPUS": "3"})
    params = params_module.xgboost_params(env)
    assert env.hyperparameters["num_round"] == 7
    assert params["eval_metric"] == ["auc", "logloss"] and params["objective"] == "binary:logistic"
    assert params["max_depth"] == 4 and params["subsample"] == 1.0 and params["seed_per_iteration"] is False
    assert params["nthread"] == 3 and params["device"] == "cpu" and params["validate_parameters"] is True
    assert params["eta"] == 0.2  # learning_rate is XGBoost's alias of eta
    env = sm.load_environment(train.HYPERPARAMETERS, train.CHANNELS, argv=job_args(tmp_path, "--learning_rate", "0.2"),
                              extra_hyperparameters=train.xgboost_parameter, env={"SM_HPS": '{"eta": "0.3"}'})
    with pytest.raises(sm.UserError, match="eta and learning_rate are the same XGBoost parameter"):
        params_module.xgboost_params(env)
    for value, expected in (("[auc, logloss]", ["auc", "logloss"]), ("auc,logloss", ["auc", "logloss"]),
                            ('["auc"]', ["auc"]), ("error@0.7", ["error@0.7"])):
        assert train.xgboost_parameter("eval_metric", value) == expected


def test_tuning_objective_metric_joins_eval_metric_last(tmp_path):
    env = sm.load_environment(train.HYPERPARAMETERS, train.CHANNELS, argv=job_args(
        tmp_path, "--eval_metric", "auc,logloss", "--_tuning_objective_metric", "validation:auc"),
        extra_hyperparameters=train.xgboost_parameter, env={})
    assert params_module.xgboost_params(env)["eval_metric"] == ["logloss", "auc"]


@pytest.mark.parametrize("name, value, message", [
    ("max_dept", "3", "'max_dept' is not known to this script; did you mean max_depth?"),
    ("n_estimators", "3", "use num_round instead"),
    ("max_depth", "deep", "max_depth='deep' is invalid"),
    ("eval_metric", "[auc", "eval_metric='[auc' is invalid"),
])

def test_unknown_or_malformed_hyperparameters_are_rejected(name, value, message):
    with pytest.raises(sm.UserError, match=re.escape(message)):
        train.xgboost_parameter(name, value)


def test_sm_contract_lists_accept_bare_names_in_brackets():
    # sm_contract.parse_list (changed for this script): bare names in brackets, as users type them.
    assert sm.parse_list("[auc, logloss]", str) == ["auc", "logloss"]
    assert sm.parse_list("(auc logloss)", str) == ["auc", "logloss"]
    assert sm.parse_list("['auc', 'logloss']", str) == ["auc", "logloss"]  # str() of a list, as before
    assert sm.parse_list('["auc"]', str) == ["auc"] and sm.parse_list("[64, 32]", int) == [64, 32]
    with pytest.raises(ValueError):
        sm.parse_list("[auc", str)
    with pytest.raises(ValueError):
        sm.parse_list("[1, x]", int)  # bare names are still not numbers


def test_word_valued_options_are_case_insensitive_and_checked(tmp_path):
    def options(*args):
        env = sm.load_environment(train.HYPERPARAMETERS, train.CHANNELS, argv=job_args(tmp_path, *args),
                                  extra_hyperparameters=train.xgboost_parameter, env={})
        return train.script_options(env)

    hp = options("--csv_header", "True", "--save_predictions", '"FALSE"', "--data_format", "Parquet")
    assert (hp["csv_header"], hp["save_predictions"], hp["data_format"]) == ("true", "false", "parquet")
    with pytest.raises(sm.UserError, match="Hyperparameter csv_header='maybe' is invalid; use one of auto, true, false."):
        options("--csv_header", "maybe")


@pytest.mark.parametrize("params, culprit", [
    ({"tree_method": "hist2"}, "tree_method=hist2"),
    ({"subsample": 2.0, "max_depth": 3}, "subsample=2.0"),
    ({"objective": "binary:logistic", "eval_metric": ["auc", "nosuchmetric"]}, 'eval_metric=["auc", "nosuchmetric"]'),
    ({"objective": "reg:nonsense"}, "objective=reg:nonsense"),
    ({"booster": "gbtree", "max_bin": 1}, "max_bin=1"),
])
def test_invalid_values_are_named_by_xgboost_on_tiny_data(params, culprit):
    with pytest.raises(sm.UserError, match=re.escape(f"Hyperparameter {culprit} is rejected by XGBoost")) as info:
        params_module.check_parameters_with_xgboost({"nthread": 1, **params})
    assert "Stack trace" not in str(info.value) and "[bt]" not in str(info.value)


def test_valid_parameters_pass_the_check():
    params_module.check_parameters_with_xgboost({"objective": "multi:softprob", "eval_metric": ["mlogloss", "merror"],
                                         "max_depth": 3, "eta": 0.1, "nthread": 1, "monotone_constraints": "(1,0)"})
    params_module.check_parameters_with_xgboost({"objective": "rank:ndcg", "eval_metric": ["ndcg@3"], "nthread": 1})
    # No objective yet (text labels pick one later): class metrics are fine...
    params_module.check_parameters_with_xgboost({"eval_metric": ["mlogloss", "merror"], "nthread": 1})
    # ... but not with an explicit regression objective.
    with pytest.raises(sm.UserError, match="rejected by XGBoost"):
        params_module.check_parameters_with_xgboost({"objective": "reg:squarederror", "eval_metric": ["mlogloss"], "nthread": 1})


def test_gpu_device_decision_with_fake_gpu_counts():
    # No GPU on these machines: the decision is a function of the count SageMaker reports (SM_NUM_GPUS).
    assert params_module.choose_device(num_gpus=4, requested=None, cuda_built=True) == "cuda"
    assert params_module.choose_device(num_gpus=1, requested=None, cuda_built=True) == "cuda"
    assert params_module.choose_device(num_gpus=0, requested=None, cuda_built=True) == "cpu"
    assert params_module.choose_device(num_gpus=-1, requested=None, cuda_built=True) == "cpu"  # unknown: outside SageMaker
    assert params_module.choose_device(num_gpus=2, requested=None, cuda_built=False) == "cpu"
    assert params_module.choose_device(num_gpus=0, requested="cuda:1", cuda_built=True) == "cuda:1"


def test_num_gpus_from_the_environment_picks_cuda(tmp_path):
    env = sm.load_environment(train.HYPERPARAMETERS, train.CHANNELS, argv=job_args(tmp_path),
                              extra_hyperparameters=train.xgboost_parameter, env={"SM_NUM_GPUS": "1"})
    expected = "cuda" if xgb.build_info().get("USE_CUDA") else "cpu"
    assert params_module.xgboost_params(env)["device"] == expected


# ---------------------------------------------------------------------------------------------------
# Whole jobs


def test_breast_cancer_end_to_end_quality_outputs_and_metric_lines(tmp_path):
    train_dir, valid_dir = breast_cancer_csv(tmp_path)
    done = run_script(tmp_path, "--train", str(train_dir), "--validation", str(valid_dir),
                      "--objective", "binary:logistic", "--eval_metric", "[auc, logloss]", "--num_round", "30",
                      "--max_depth", "3", "--eta", "0.2")
    assert done.returncode == 0, done.stderr[-2000:]
    model_dir = tmp_path / "model"
    assert sorted(p.name for p in model_dir.iterdir()) == ["model-metadata.json", "xgboost-model"]
    booster = xgb.Booster(model_file=str(model_dir / "xgboost-model"))
    assert (model_dir / "xgboost-model").read_bytes()[:1] == b"{"  # UBJSON, not pickle
    (_, _), (Xv, yv) = breast_cancer_split()
    auc = roc_auc_score(yv, booster.predict(xgb.DMatrix(Xv)))
    assert auc > 0.95
    result = evaluation(tmp_path)
    assert result["metrics"]["validation:auc"] == pytest.approx(auc, abs=1e-6)
    assert len(result["history"]["train:logloss"]) == 30
    metadata = json.loads((model_dir / "model-metadata.json").read_text())
    assert metadata["objective"] == "binary:logistic" and metadata["rounds"] == 30
    assert metadata["num_features"] == 30 and metadata["data"]["format"] == {"train": "csv", "validation": "csv"}
    predictions = (tmp_path / "out" / "validation-predictions.csv").read_text().splitlines()
    assert predictions[0] == '"label","probability","predicted_label"' and len(predictions) == len(yv) + 1
    # One metrics line per round; SageMaker's metric_definitions regexes find every value.
    lines = [line for line in done.stdout.splitlines() if line.startswith("[round ")]
    assert len(lines) == 30 and lines[0].startswith("[round 0] train:auc=")
    regex = sm.METRIC_REGEX.format(name=re.escape("validation:auc"))
    values = [float(m) for m in re.findall(regex, done.stdout)]
    assert len(values) == 30 and values[-1] == pytest.approx(auc, abs=1e-5)
    assert not (tmp_path / "output" / "failure").exists()


def test_iris_string_labels_categorical_feature_header_csv_and_external_memory(tmp_path):
    iris = load_iris()
    names = np.array(iris.target_names)[iris.target]
    size = np.where(iris.data[:, 2] < 2.5, "small", np.where(iris.data[:, 2] < 5, "medium", "large"))
    idx = np.random.default_rng(1).permutation(150)
    header = ["sepal_length", "sepal_width", "size", "petal_width", "species"]

    def rows(part):
        return [[*iris.data[i, :2], size[i], iris.data[i, 3], names[i]] for i in part]

    write_csv(tmp_path / "train" / "iris.csv", rows(idx[:100]), header=header)
    write_csv(tmp_path / "validation" / "iris.csv", rows(idx[100:]), header=header)
    results = {}
    for mode in ("memory", "external"):
        out = tmp_path / mode
        extra = ["--external_memory", "true", "--batch_mb", "0.001"] if mode == "external" else []
        done = run_script(out, "--train", str(tmp_path / "train"), "--validation", str(tmp_path / "validation"),
                          "--target_column", "species", "--num_round", "15", "--max_depth", "2", *extra)
        assert done.returncode == 0, done.stderr[-2000:]
        assert "objective=multi:softprob" in done.stdout
        metadata = json.loads((out / "model" / "model-metadata.json").read_text())
        assert metadata["label"] == {"column": "species", "classes": ["setosa", "versicolor", "virginica"]}
        size_feature = next(f for f in metadata["features"] if f["name"] == "size")
        assert size_feature["type"] == "c" and size_feature["categories"] == ["large", "medium", "small"]
        predictions = (out / "out" / "validation-predictions.csv").read_text().splitlines()
        assert predictions[0].split(",")[-1] == '"predicted_label"'
        correct = [line.split(",")[0] == line.split(",")[-1] for line in predictions[1:]]
        results[mode] = evaluation(out)["metrics"]
        assert sum(correct) / len(correct) > 0.9
    assert results["external"]["validation:mlogloss"] == pytest.approx(results["memory"]["validation:mlogloss"], rel=0.05)


def test_diabetes_parquet_regression_with_early_stopping(tmp_path):
    X, y = load_diabetes(return_X_y=True)
    columns = {f"x{i}": X[:, i] for i in range(X.shape[1])}
    (tmp_path / "train").mkdir()
    (tmp_path / "validation").mkdir()
    pq.write_table(pa.table({"target": y[:350], **{k: v[:350] for k, v in columns.items()}}), tmp_path / "train" / "d.parquet")
    pq.write_table(pa.table({"target": y[350:], **{k: v[350:] for k, v in columns.items()}}), tmp_path / "validation" / "d.parquet")
    done = run_script(tmp_path, "--train", str(tmp_path / "train"), "--validation", str(tmp_path / "validation"),
                      "--num_round", "300", "--early_stopping_rounds", "10", "--eta", "0.1", "--max_depth", "2")
    assert done.returncode == 0, done.stderr[-2000:]
    result = evaluation(tmp_path)
    assert result["best_iteration"] is not None and result["rounds"] == result["best_iteration"] + 1 < 300
    assert result["metrics"]["validation:rmse"] < 0.8 * float(np.std(y[350:]))  # clearly better than the mean
    booster = xgb.Booster(model_file=str(tmp_path / "model" / "xgboost-model"))
    assert booster.num_boosted_rounds() == result["rounds"]


# ---------------------------------------------------------------------------------------------------
# Bad input: one sentence in output/failure, exit 1, no model


def _bad_inputs(tmp: Path) -> dict:
    good = [[0, 1.0, "a"], [1, 2.0, "b"], [0, 3.0, "a"], [1, 4.0, "b"]]
    cases = {}

    def case(name, files, args, *expect):
        cases[name] = (files, args, expect)

    case("missing train channel", {}, ["--train", str(tmp / "nowhere")], "Required channel 'train' is missing")
    case("only empty files", {"train/a.csv": ""}, [], "only empty files")
    case("unparsable file", {"train/a.csv": "1,2,3\n4,5\n"}, [], "train/a.csv", "row 2", "same number of fields")
    case("missing target column", {"train/a.csv": "y,x\n1,2\n"}, ["--target_column", "label"],
         "target_column 'label' is not a column", "columns: y, x")
    case("unknown hyperparameter", {"train/a.csv": "1,2\n"}, ["--max_dept", "3"], "did you mean max_depth?")
    case("invalid hyperparameter value", {}, ["--train", str(tmp / "nowhere"), "--tree_method", "fast"],
         "Hyperparameter tree_method=fast is rejected by XGBoost")
    case("non-numeric value after the first rows", {"train/a.csv": "1,2\n" * 3000 + "1,abc\n"}, ["--batch_mb", "0.001"],
         "The column 1 of train/a.csv holds the non-numeric value 'abc' at row 3001")
    case("text column without categorical support", {"train/a.csv": "\n".join(",".join(map(str, r)) for r in good)},
         ["--enable_categorical", "false"], "The column 2 holds text but enable_categorical=false")
    case("NaN label", {"train/a.csv": "y,x\n1,2\nNaN,3\n"}, [], "Data row 2 of train/a.csv has no label (column 'y')")
    case("num_class beyond the labels", {"train/a.csv": "0,1\n1,2\n2,3\n"},
         ["--objective", "multi:softmax", "--num_class", "5"], "num_class=5", "only has the classes 0..2")
    case("label beyond num_class", {"train/a.csv": "0,1\n1,2\n3,3\n"},
         ["--objective", "multi:softmax", "--num_class", "3"], "has the class 3", "set num_class=4")
    case("binary labels out of range", {"train/a.csv": "0,1\n2,2\n"}, ["--objective", "binary:logistic"],
         "needs labels between 0 and 1")
    case("string labels with a regression objective", {"train/a.csv": "y,x\ncat,1\ndog,2\n"},
         ["--objective", "reg:squarederror"], "holds text", "binary:logistic")
    case("different columns in validation", {"train/a.csv": "1,2,3\n", "validation/v.csv": "1,2\n"}, [],
         "give every file the same columns")
    case("recordio content type", {"train/a.rec": "x", "config/inputdataconfig.json":
                                   json.dumps({"train": {"ContentType": "application/x-recordio-protobuf"}})},
         [], "application/x-recordio-protobuf", "send CSV")
    case("early stopping without validation", {"train/a.csv": "1,2\n"}, ["--early_stopping_rounds", "5"],
         "needs a 'validation' channel")
    case("negative weight", {"train/a.csv": "1,-1,2\n0,1,3\n"}, ["--csv_weights", "1"],
         "Data row 1 of train/a.csv has -1 as its weight (column 1); every row needs a non-negative number")
    return cases


BAD_INPUTS = sorted(_bad_inputs(Path("/tmp")))


@pytest.mark.parametrize("name", BAD_INPUTS)
def test_bad_input_fails_with_one_sentence_and_no_model(tmp_path, monkeypatch, name):
    files, args, expect = _bad_inputs(tmp_path)[name]
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    env = {"SM_INPUT_CONFIG_DIR": str(tmp_path / "config")} if "config/inputdataconfig.json" in files else {}
    if not any(a == "--train" for a in args):
        args = ["--train", str(tmp_path / "train"), *(["--validation", str(tmp_path / "validation")]
                                                         if (tmp_path / "validation").exists() else []), *args]
    (tmp_path / "model").mkdir()
    code = run_in_process(tmp_path, *args, monkeypatch=monkeypatch, env=env)
    reason = failure(tmp_path)
    assert code == 1
    for text in expect:
        assert text in reason, reason
    assert reason.count("\n") == 1 and len(reason) < 1024 and "Traceback" not in reason
    assert list((tmp_path / "model").iterdir()) == []  # no model, not even a partial one


def test_bad_input_as_a_subprocess_exits_1_with_the_reason(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "a.csv").write_text("1,2\nNaN,3\n")
    done = run_script(tmp_path, "--train", str(tmp_path / "train"))
    assert done.returncode == 1
    assert failure(tmp_path).startswith("Data row 2 of train/a.csv has no label (column 0)")
    assert "Traceback" not in done.stderr and not (tmp_path / "model" / "xgboost-model").exists()


# ---------------------------------------------------------------------------------------------------
# Checkpoints


def test_resumed_run_ends_with_the_identical_model(tmp_path):
    train_dir, valid_dir = breast_cancer_csv(tmp_path / "data")
    common = ["--train", str(train_dir), "--validation", str(valid_dir), "--objective", "binary:logistic",
              "--subsample", "0.7", "--colsample_bynode", "0.6", "--max_depth", "3", "--seed", "7",
              "--checkpoint_frequency", "2", "--early_stopping_rounds", "50"]
    whole = run_script(tmp_path / "whole", *common, "--num_round", "12", "--checkpoint-dir", str(tmp_path / "ck-whole"))
    assert whole.returncode == 0, whole.stderr[-2000:]
    # The interrupted run: killed during round 8, with the checkpoint of round 6 on disk (the newest two are
    # kept: 6 and the end-of-run 7, removed here as if the kill came first) and a half-written temporary file.
    checkpoints = tmp_path / "ck"
    first = run_script(tmp_path / "first", *common, "--num_round", "7", "--checkpoint-dir", str(checkpoints))
    assert first.returncode == 0, first.stderr[-2000:]
    assert sorted(p.name for p in checkpoints.iterdir()) == ["xgboost-checkpoint-00000006.ubj",
                                                            "xgboost-checkpoint-00000007.ubj"]
    (checkpoints / "xgboost-checkpoint-00000007.ubj").unlink()
    (checkpoints / ".xgboost-checkpoint-00000008.ubj.x1y2.tmp").write_bytes(b"{partial")
    resumed = run_script(tmp_path / "resumed", *common, "--num_round", "12", "--checkpoint-dir", str(checkpoints))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "Resuming from checkpoint xgboost-checkpoint-00000006.ubj: 6 rounds done." in resumed.stdout
    assert "[round 6] " in resumed.stdout and "[round 5] " not in resumed.stdout
    a = xgb.Booster(model_file=str(tmp_path / "whole" / "model" / "xgboost-model"))
    b = xgb.Booster(model_file=str(tmp_path / "resumed" / "model" / "xgboost-model"))
    assert a.num_boosted_rounds() == b.num_boosted_rounds() == 12
    assert a.get_dump(dump_format="json") == b.get_dump(dump_format="json")
    assert a.attributes() == b.attributes()  # early stopping's best round and score carried over too
    for rounds in (10, 12):  # and every checkpoint saved after the restart equals the uninterrupted run's
        ours = xgb.Booster(model_file=str(checkpoints / f"xgboost-checkpoint-{rounds:08d}.ubj"))
        theirs = xgb.Booster(model_file=str(tmp_path / "ck-whole" / f"xgboost-checkpoint-{rounds:08d}.ubj"))
        assert ours.save_raw("json") == theirs.save_raw("json")
    (_, _), (Xv, _) = breast_cancer_split()
    np.testing.assert_array_equal(a.predict(xgb.DMatrix(Xv)), b.predict(xgb.DMatrix(Xv)))
    assert sorted(p.name for p in checkpoints.iterdir() if not p.name.startswith("."))[-1] == "xgboost-checkpoint-00000012.ubj"
    # A restart after the job finished trains nothing more and writes the same model again.
    again = run_script(tmp_path / "again", *common, "--num_round", "12", "--checkpoint-dir", str(checkpoints))
    assert again.returncode == 0 and "Trained 0 rounds" in again.stdout
    c = xgb.Booster(model_file=str(tmp_path / "again" / "model" / "xgboost-model"))
    assert c.get_dump(dump_format="json") == a.get_dump(dump_format="json")


# ---------------------------------------------------------------------------------------------------
# Several hosts: XGBoost's collective, two processes on this machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_hosts(tmp: Path, hosts: list[str], *args: str, timeout: int = 90, per_host: dict | None = None,
              env: dict | None = None) -> list[subprocess.CompletedProcess]:
    """One `python train.py` per host, each with its own /opt/ml-like directories under tmp/<host>.

    The first host starts before the others join, as soon as its tracker listens: XGBoost's workers retry
    a refused connection only after 2, 4, 6... seconds, which would only make the test slower."""
    port = str(free_port())
    procs, early = [], []
    deadline = time.time() + timeout
    for i, host in enumerate(hosts):
        out = tmp / host
        out.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, str(SCRIPT), *job_args(out, *args, *(per_host or {}).get(host, [])),
               "--hosts", ",".join(hosts), "--current-host", host, "--tracker_port", port, "--tracker_timeout", "60"]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      env={**clean_env(), **(env or {})}, cwd=out))
        if i == 0:
            while time.time() < deadline:
                line = procs[0].stdout.readline()
                early.append(line)
                if not line or line.startswith("Tracker listening"):
                    break
    results = []
    for i, proc in enumerate(procs):
        try:
            stdout, stderr = proc.communicate(timeout=max(1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, ("".join(early) if i == 0 else "") + stdout, stderr))
    return results


def test_two_hosts_train_one_model_as_good_as_one_host(tmp_path):
    train_dir, valid_dir = breast_cancer_csv(tmp_path / "data", train_files=2)  # 2 files: one per host
    args = ["--train", str(train_dir), "--validation", str(valid_dir), "--objective", "binary:logistic",
            "--eval_metric", "auc", "--num_round", "20", "--max_depth", "3", "--save_predictions", "false"]
    single = run_script(tmp_path / "single", *args)
    assert single.returncode == 0, single.stderr[-2000:]
    hosts = ["127.0.0.1", "127.0.0.2"]  # two names of this machine; the first sorted one is the master
    results = run_hosts(tmp_path, hosts, *args)
    for host, done in zip(hosts, results):
        assert done.returncode == 0, f"{host}: {done.stdout[-1500:]} {done.stderr[-1500:]}"
    assert "Tracker listening on 127.0.0.1" in results[0].stdout
    assert "Joined the collective as rank 1 of 2" in results[1].stdout
    assert (tmp_path / hosts[0] / "model" / "xgboost-model").exists()
    assert not (tmp_path / hosts[1] / "model").exists() or not any((tmp_path / hosts[1] / "model").iterdir())
    metadata = json.loads((tmp_path / hosts[0] / "model" / "model-metadata.json").read_text())
    assert metadata["hosts"] == 2 and metadata["data"]["rows"] == {"train": 400, "validation": 169}
    booster = xgb.Booster(model_file=str(tmp_path / hosts[0] / "model" / "xgboost-model"))
    (_, _), (Xv, yv) = breast_cancer_split()
    auc_two = roc_auc_score(yv, booster.predict(xgb.DMatrix(Xv)))
    auc_one = evaluation(tmp_path / "single")["metrics"]["validation:auc"]
    assert auc_two > 0.95 and abs(auc_two - auc_one) < 0.02
    # Both hosts log the same (global) validation metric every round.
    regex = sm.METRIC_REGEX.format(name=re.escape("validation:auc"))
    assert re.findall(regex, results[0].stdout) == re.findall(regex, results[1].stdout)


def test_a_host_without_data_takes_part_without_hanging(tmp_path):
    # ShardedByS3Key: SageMaker gave the one train file to the first host and nothing to the second. The
    # second also learns the categories and classes of the first (text columns, external memory).
    iris = load_iris()
    species = np.array(iris.target_names)[iris.target]
    size = np.where(iris.data[:, 2] < 2.5, "small", np.where(iris.data[:, 2] < 5, "medium", "large"))
    rows = [[*iris.data[i, :2], size[i], iris.data[i, 3], species[i]] for i in range(150)]
    header = ["sepal_length", "sepal_width", "size", "petal_width", "species"]
    write_csv(tmp_path / "host-1" / "train" / "iris.csv", rows[::2], header=header)
    (tmp_path / "host-2" / "train").mkdir(parents=True)
    write_csv(tmp_path / "validation" / "iris.csv", rows[1::2], header=header)  # FullyReplicated: rows split
    config = tmp_path / "config"
    config.mkdir()
    (config / "inputdataconfig.json").write_text(json.dumps({
        "train": {"ContentType": "text/csv", "S3DistributionType": "ShardedByS3Key"},
        "validation": {"ContentType": "text/csv", "S3DistributionType": "FullyReplicated"}}))
    hosts = ["127.0.0.1", "127.0.0.2"]
    results = run_hosts(tmp_path, hosts, "--validation", str(tmp_path / "validation"), "--target_column", "species",
                        "--num_round", "10", "--external_memory", "true", env={"SM_INPUT_CONFIG_DIR": str(config)},
                        per_host={"127.0.0.1": ["--train", str(tmp_path / "host-1" / "train")],
                                  "127.0.0.2": ["--train", str(tmp_path / "host-2" / "train")]})
    for host, done in zip(hosts, results):
        assert done.returncode == 0, f"{host}: {done.stdout[-1500:]} {done.stderr[-1500:]}"
    assert "train 0 rows, validation 37 rows" in results[1].stdout
    metadata = json.loads((tmp_path / hosts[0] / "model" / "model-metadata.json").read_text())
    assert metadata["data"]["rows"] == {"train": 75, "validation": 75}
    assert metadata["label"]["classes"] == ["setosa", "versicolor", "virginica"]
    assert evaluation(tmp_path / hosts[0])["metrics"]["validation:mlogloss"] < 0.3


def test_two_hosts_fail_together_with_the_bad_hosts_reason(tmp_path):
    (tmp_path / "data" / "train").mkdir(parents=True)
    (tmp_path / "data" / "train" / "a.csv").write_text("1,2\n0,3\n")
    (tmp_path / "data" / "train" / "b.csv").write_text("1,2\nNaN,3\n")  # host 2's file
    hosts = ["127.0.0.1", "127.0.0.2"]
    results = run_hosts(tmp_path, hosts, "--train", str(tmp_path / "data" / "train"), timeout=60)
    assert [r.returncode for r in results] == [1, 1]
    for host in hosts:
        assert failure(tmp_path / host) == "Host 127.0.0.2: Data row 2 of train/b.csv has no label (column 0); every " \
                                           "row needs a finite number there, so fill in or fix the value, or drop the row.\n"


def test_workers_wait_for_the_tracker_port_then_join(tmp_path):
    """A worker that starts before the first host's tracker listens polls the port and goes on as soon
    as it accepts (instead of XGBoost's connect back-off); a tracker that never comes fails with one
    sentence naming the address and tracker_timeout."""
    import threading

    port = free_port()
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    opened = threading.Event()

    def open_later():
        time.sleep(0.5)
        listener.bind(("127.0.0.1", port))
        listener.listen()
        opened.set()

    thread = threading.Thread(target=open_later)
    thread.start()
    try:
        hosts_module.wait_for_tracker("127.0.0.1", port, timeout=30)
        assert opened.is_set()  # it returned because the port opened, not before
    finally:
        thread.join()
        listener.close()
    closed = free_port()
    with pytest.raises(sm.UserError, match=re.escape(f"XGBoost's tracker on the first host (127.0.0.1:{closed}) did not "
                                                     "accept connections within tracker_timeout=1s")):
        hosts_module.wait_for_tracker("127.0.0.1", closed, timeout=1)


def test_memory_limit_from_cgroup_v2_and_v1_else_the_machine(tmp_path):
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    v2, v1 = tmp_path / "memory.max", tmp_path / "memory.limit_in_bytes"
    v2.write_text("max\n")
    v1.write_text(f"{2**63 - 4096}\n")  # cgroup v1 without a limit
    assert memory.memory_limit((str(v2), str(v1))) == physical
    v2.write_text("536870912\n")  # docker run --memory 512m, cgroup v2
    assert memory.memory_limit((str(v2), str(v1))) == 512 * 2**20
    v1.write_text("402653184\n")  # cgroup v1
    assert memory.memory_limit((str(tmp_path / "absent"), str(v1))) == 384 * 2**20


def test_data_larger_than_the_memory_limit_goes_to_external_memory_by_itself(tmp_path):
    write_csv(tmp_path / "train" / "t.csv", [[i % 2, float(i), float(i % 7)] for i in range(3000)])

    def planned(limit, *args):
        env = sm.load_environment(train.HYPERPARAMETERS, train.CHANNELS, argv=job_args(tmp_path, "--train",
                                  str(tmp_path / "train"), *args), extra_hyperparameters=train.xgboost_parameter, env={})
        hp = train.script_options(env)
        cluster = hosts_module.Cluster(env, 9099, 10)
        sources = data_utils.plan_sources(env, hp, cluster)
        layout = data_utils.agree_layout(sources, hp, cluster)
        memory.plan(hp, sources, layout, cluster, limit=limit)
        return hp["external_memory"], hp["batch_mb"]

    roomy = memory.resident_bytes() + 2**30
    assert planned(roomy) == (False, 64.0)
    tight = memory.resident_bytes() + 100_000  # less than 2.5x the data's ~90 KB as float32
    external, batch_mb = planned(tight)
    assert external is True and batch_mb == memory.MIN_BATCH_MB
    assert planned(tight, "--external_memory", "false", "--batch_mb", "8") == (False, 8.0)  # the hyperparameters win
    assert planned(roomy, "--external_memory", "True")[0] is True
