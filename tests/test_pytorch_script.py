"""train_scripts/pytorch/train.py with real torch, real data sets shipped with scikit-learn and real
processes: no mocks. Most runs call the script's main() in this process (fast); the distributed run and
one failure run start real `python train.py` processes, as SageMaker does.

Runs in about 30-40 s on 2 CPU cores. The GPU paths (CUDA device, NCCL, autocast, GradScaler) cannot
run here: their decisions are pure functions, tested with fake inputs in test_hardware_decisions.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tests.scripts import script_module

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "train_scripts" / "pytorch" / "train.py"
ACCURACY = 0.93  # digits, 25% stratified hold-out: the MLP reaches about 0.96


tm = script_module("pytorch", "train")
sm = script_module("pytorch", "sm_contract")
processes = script_module("pytorch", "processes")
data_module = script_module("pytorch", "data")
model_module = script_module("pytorch", "model")
loop = script_module("pytorch", "loop")


@pytest.fixture(autouse=True)
def _restore_torch_globals():
    """main() sets thread count and deterministic mode for the process; give them back."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)


# -----------------------------------------------------------------------------------------------
# Data


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    return train_test_split(X.astype(np.float32), y, test_size=0.25, random_state=0, stratify=y)


@pytest.fixture(scope="module")
def digits_dirs(digits, tmp_path_factory):
    """Train as 3 .npz files of unequal size (two processes get 2 files and 1: uneven shards) in
    subdirectories, validation as one file with X_val/y_val keys."""
    X_train, X_val, y_train, y_val = digits
    root = tmp_path_factory.mktemp("digits")
    cuts = [0, 600, 1000, len(y_train)]
    for i in range(3):
        part = root / "train" / f"part{i}"
        part.mkdir(parents=True)
        np.savez(part / "data.npz", X=X_train[cuts[i]:cuts[i + 1]], y=y_train[cuts[i]:cuts[i + 1]])
    (root / "validation").mkdir()
    np.savez(root / "validation" / "val.npz", X_val=X_val, y_val=y_val)
    return root


DIGITS_ARGS = ["--epochs", "12", "--hidden_sizes", "[64]", "--batch_size", "64", "--learning_rate", "0.003",
               "--num_threads", "1", "--patience", "4"]


def run_main(args: list[str], capsys=None) -> str:
    tm.main(args)
    return capsys.readouterr().out if capsys else ""


@pytest.fixture(scope="module")
def digits_run(digits_dirs, tmp_path_factory):
    """One uninterrupted single-process run with a checkpoint after every epoch (all kept)."""
    out = tmp_path_factory.mktemp("run1")
    args = ["--train", str(digits_dirs / "train"), "--validation", str(digits_dirs / "validation"),
            *DIGITS_ARGS, "--checkpoint_every", "1", "--keep_checkpoints", "100"]
    paths = ["--model-dir", str(out / "model"), "--output-data-dir", str(out / "data"),
             "--output-dir", str(out / "output"), "--checkpoint-dir", str(out / "checkpoints")]
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        tm.main(args + paths)
    return {"dir": out, "args": args, "log": buffer.getvalue()}


def accuracy_of(model_dir: Path, X: np.ndarray, y: np.ndarray) -> float:
    predictor, config = model_module.load_model(model_dir)
    with torch.no_grad():
        probabilities = predictor(torch.from_numpy(X.astype(np.float32)))
    predicted = np.array(config["labels"]["classes"])[probabilities.argmax(1).numpy()]
    return float((predicted == y).mean())


# -----------------------------------------------------------------------------------------------
# End to end, one process


def test_digits_accuracy_outputs_and_metric_lines(digits_run, digits):
    _, X_val, _, y_val = digits
    out, log = digits_run["dir"], digits_run["log"]
    assert "distributed: world_size=1 rank=0 backend=none" in log

    # per-epoch metric lines, names <channel>:<metric>, matched by the SageMaker metric regex
    epochs = re.findall(r"^\[epoch (\d+)\] (.*)$", log, re.M)
    assert len(epochs) >= 5
    for name in ("train:loss", "train:accuracy", "validation:loss", "validation:accuracy"):
        values = re.findall(sm.METRIC_REGEX.format(name=re.escape(name)), log)
        assert len(values) >= len(epochs), name
    assert re.search(r"^\[final \d+\] .*validation:accuracy=", log, re.M)

    # held-out accuracy, computed here from the saved model, and the same as the job reports
    evaluation = json.loads((out / "data" / "evaluation.json").read_text())
    accuracy = accuracy_of(out / "model", X_val, y_val)
    assert accuracy >= ACCURACY
    # (the served model standardizes in float32, training in float64: at most one borderline row may differ)
    assert evaluation["metrics"]["validation:accuracy"] == pytest.approx(accuracy, abs=1.5 / len(y_val))
    matrix = np.array(evaluation["confusion_matrix"]["validation"])
    assert matrix.shape == (10, 10) and matrix.sum() == len(y_val)
    assert np.trace(matrix) / matrix.sum() == pytest.approx(evaluation["metrics"]["validation:accuracy"])
    csv_rows = (out / "data" / "confusion_matrix_validation.csv").read_text().splitlines()
    assert csv_rows[0].startswith("true\\predicted,0,1,2") and len(csv_rows) == 11
    assert len(evaluation["history"]) == evaluation["epochs_run"]
    # nothing but the model files in the model directory (no staging leftovers)
    assert sorted(p.name for p in (out / "model").iterdir()) == ["model-config.json", "model.pt", "model.pt2",
                                                                 "model.ts"]


def test_model_reloads_without_pickle_and_exports_predict_the_same(digits_run, digits):
    _, X_val, _, _ = digits
    model_dir = digits_run["dir"] / "model"
    state = torch.load(model_dir / "model.pt", weights_only=True)
    config = json.loads((model_dir / "model-config.json").read_text())
    assert config["task"] == "classification" and config["labels"]["classes"] == list(range(10))
    assert config["model"] == {"input_dim": 64, "hidden_sizes": [64], "output_dim": 10, "activation": "relu",
                               "dropout": 0.1}
    assert len(config["features"]["names"]) == len(config["features"]["mean"]) == len(config["features"]["std"]) == 64
    # standardization statistics are the training data's
    X_train = digits[0]
    assert np.allclose(config["features"]["mean"], X_train.astype(np.float64).mean(0), atol=1e-9)
    # rebuilt by hand from the config alone
    mlp = model_module.build_model(config)
    mlp.load_state_dict(state)
    mlp.eval()
    x = torch.from_numpy(X_val[:50])
    mean, std = torch.tensor(config["features"]["mean"]), torch.tensor(config["features"]["std"])
    with torch.no_grad():
        by_hand = torch.softmax(mlp(((x - mean) / std).float()), 1)
        predictor, _ = model_module.load_model(model_dir)
        expected = predictor(x)
        scripted = torch.jit.load(str(model_dir / "model.ts"))(x)
        exported = torch.export.load(str(model_dir / "model.pt2")).module()(x)
        single = torch.jit.load(str(model_dir / "model.ts"))(x[:1])  # any batch size
    assert torch.allclose(by_hand, expected, atol=1e-6)
    assert torch.allclose(scripted, expected, atol=1e-6)
    assert torch.allclose(exported, expected, atol=1e-6)
    assert torch.allclose(single, expected[:1], atol=1e-6)
    assert config["exports"] == ["model.ts", "model.pt2"]


def test_resume_gives_bit_identical_weights(digits_run, tmp_path, capsys):
    """A job restarted from the checkpoint of epoch 5 ends with exactly the weights of the run that
    never stopped. The newer checkpoint beside it is damaged and a temporary file of a killed save
    lies there too: both are passed over."""
    run = digits_run["dir"]
    saved = sorted((run / "checkpoints").glob("checkpoint-*.pt"))
    assert len(saved) >= 6 and not list((run / "checkpoints").glob(".*"))
    state = torch.load(saved[4], weights_only=True)  # no pickled objects: plain types and tensors only
    assert state["epoch"] == 5 and state["world_size"] == 1
    assert set(state) >= {"model", "optimizer", "scheduler", "grad_scaler", "rng", "early_stopping", "history"}
    assert all(isinstance(v, torch.Tensor) for v in state["rng"][0].values())
    assert state["scheduler"]["step"] == 5 * state["scheduler"]["total_steps"] // 12

    ckpt = tmp_path / "checkpoints"
    ckpt.mkdir()
    shutil.copy(saved[4], ckpt / saved[4].name)
    (ckpt / "checkpoint-00000006.pt").write_bytes(b"cut off by a spot interruption")
    (ckpt / ".checkpoint-00000007.pt.x1y2.tmp").write_bytes(saved[5].read_bytes()[:1000])
    out = run_main(digits_run["args"] + ["--model-dir", str(tmp_path / "model"), "--output-data-dir",
                                         str(tmp_path / "data"), "--checkpoint-dir", str(ckpt)], capsys)
    assert "cannot be loaded" in out and "resumed from the checkpoint of epoch 5" in out
    assert "[epoch 5]" not in out and "[epoch 6]" in out

    first = torch.load(run / "model" / "model.pt", weights_only=True)
    second = torch.load(tmp_path / "model" / "model.pt", weights_only=True)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    history1 = json.loads((run / "data" / "evaluation.json").read_text())["history"]
    history2 = json.loads((tmp_path / "data" / "evaluation.json").read_text())["history"]
    assert history1 == history2  # every epoch's metrics, before and after the restart


def test_resume_refuses_other_hyperparameters(digits_run, tmp_path):
    ckpt = tmp_path / "checkpoints"
    shutil.copytree(digits_run["dir"] / "checkpoints", ckpt)
    args = [a if a != "[64]" else "[32]" for a in digits_run["args"]]
    with pytest.raises(SystemExit):
        sm.run(tm.main, args + ["--model-dir", str(tmp_path / "model"), "--output-dir", str(tmp_path / "out"),
                       "--checkpoint-dir", str(ckpt)])
    reason = (tmp_path / "out" / "failure").read_text()
    assert "hidden_sizes=[64]" in reason and "hidden_sizes=[32]" in reason and "checkpoint" in reason
    assert not (tmp_path / "model" / "model.pt").exists()


# -----------------------------------------------------------------------------------------------
# Other formats and tasks


def test_string_labels_from_csv_train_and_parquet_validation(tmp_path, capsys):
    from sklearn.datasets import load_iris
    from sklearn.model_selection import train_test_split

    iris = load_iris()
    names = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    species = iris.target_names[iris.target]
    X_train, X_val, y_train, y_val = train_test_split(iris.data, species, test_size=0.3, random_state=1,
                                                      stratify=species)
    (tmp_path / "train" / "more").mkdir(parents=True)
    half = len(y_train) // 2
    header = "species," + ",".join(names)
    for path, X, y in ((tmp_path / "train" / "a.csv", X_train[:half], y_train[:half]),
                       (tmp_path / "train" / "more" / "b.csv", X_train[half:], y_train[half:])):
        path.write_text(header + "\n" + "\n".join(f"{label}," + ",".join(map(str, row)) for label, row in zip(y, X)))
    (tmp_path / "validation").mkdir()
    # Parquet with the columns in another order: aligned by name
    pq.write_table(pa.table({**{n: X_val[:, i] for i, n in reversed(list(enumerate(names)))}, "species": y_val}),
                   tmp_path / "validation" / "val.parquet")
    out = run_main(["--train", str(tmp_path / "train"), "--validation", str(tmp_path / "validation"),
                    "--model-dir", str(tmp_path / "model"), "--label_column", "species", "--epochs", "40",
                    "--hidden_sizes", "[16]", "--batch_size", "16", "--learning_rate", "0.01", "--num_threads", "1",
                    "--patience", "0", "--dropout", "0"], capsys)
    assert "data: 105 training rows" in out
    predictor, config = model_module.load_model(tmp_path / "model")
    assert config["labels"]["classes"] == ["setosa", "versicolor", "virginica"]
    assert config["features"]["names"] == names
    with torch.no_grad():
        best = predictor(torch.tensor(X_val, dtype=torch.float32)).argmax(1).numpy()
    predicted = np.array(config["labels"]["classes"])[best]
    assert (predicted == y_val).mean() >= 0.9


def test_regression_on_diabetes(tmp_path, capsys):
    from sklearn.datasets import load_diabetes
    from sklearn.model_selection import train_test_split

    X, y = load_diabetes(return_X_y=True)
    X_train, X_val, y_train, y_val = train_test_split(X, y, test_size=0.25, random_state=0)
    (tmp_path / "train").mkdir()
    (tmp_path / "validation").mkdir()
    np.savez(tmp_path / "train" / "d.npz", X_train=X_train, y_train=y_train)
    np.savez(tmp_path / "validation" / "d.npz", X_validation=X_val, y_validation=y_val)
    out = run_main(["--train", str(tmp_path / "train"), "--validation", str(tmp_path / "validation"),
                    "--model-dir", str(tmp_path / "model"), "--output-data-dir", str(tmp_path / "data"),
                    "--task", "regression", "--epochs", "60", "--hidden_sizes", "32", "--batch_size", "32",
                    "--learning_rate", "0.003", "--num_threads", "1", "--patience", "3"], capsys)
    for name in ("validation:rmse", "validation:mae", "validation:r2", "train:loss"):
        assert re.search(sm.METRIC_REGEX.format(name=re.escape(name)), out), name
    predictor, config = model_module.load_model(tmp_path / "model")
    assert config["target"]["mean"] == pytest.approx(y_train.mean())
    with torch.no_grad():
        predicted = predictor(torch.tensor(X_val, dtype=torch.float32)).numpy()  # in the target's units
    rmse = float(np.sqrt(((predicted - y_val) ** 2).mean()))
    evaluation = json.loads((tmp_path / "data" / "evaluation.json").read_text())
    metrics = evaluation["metrics"]
    assert metrics["validation:rmse"] == pytest.approx(rmse, rel=1e-4)
    # early stopping: 3 epochs without a better validation loss, then the best epoch's weights are saved
    assert evaluation["stopped_early"] and evaluation["epochs_run"] == evaluation["best_epoch"] + 3 < 60
    assert f"early stopping after epoch {evaluation['epochs_run']}" in out
    best = evaluation["history"][evaluation["best_epoch"] - 1]["validation:loss"]
    assert best == min(h["validation:loss"] for h in evaluation["history"])
    assert metrics["validation:loss"] == pytest.approx(best, rel=1e-6)
    assert rmse < 0.85 * y_val.std()  # clearly better than predicting the mean (linear regression: 0.80)
    assert metrics["validation:r2"] > 0.25


def test_validation_fraction_and_test_channel(tmp_path, capsys):
    from sklearn.datasets import load_iris

    X, y = load_iris(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    (tmp_path / "train").mkdir()
    (tmp_path / "test").mkdir()
    np.savez(tmp_path / "train" / "i.npz", X=X[order[:120]], y=y[order[:120]])
    np.savez(tmp_path / "test" / "i.npz", X_test=X[order[120:]], y_test=y[order[120:]])
    out = run_main(["--train", str(tmp_path / "train"), "--test", str(tmp_path / "test"), "--model-dir",
                    str(tmp_path / "model"), "--output-data-dir", str(tmp_path / "data"),
                    "--validation_fraction", "0.25",
                    "--epochs", "30", "--hidden_sizes", "[16]", "--batch_size", "16", "--learning_rate", "0.01",
                    "--num_threads", "1", "--mixed_precision", "bf16"], capsys)
    assert "data: 90 training rows ([90] per process), 30 validation rows" in out
    assert "mixed_precision=bf16 is ignored on CPU" in out
    evaluation = json.loads((tmp_path / "data" / "evaluation.json").read_text())
    assert set(evaluation["confusion_matrix"]) == {"train", "validation", "test"}
    assert np.array(evaluation["confusion_matrix"]["test"]).sum() == 30
    assert evaluation["metrics"]["test:accuracy"] >= 0.85
    assert re.search(r"^\[final \d+\] .*test:accuracy=", out, re.M)


# -----------------------------------------------------------------------------------------------
# Loaders


def channel_env(tmp_path: Path, files: dict[str, bytes | str], channel: str = "train", *options: str):
    for name, content in files.items():
        path = tmp_path / channel / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    argv = [f"--{channel}", str(tmp_path / channel), "--model-dir", str(tmp_path / "m"), *options]
    return sm.load_environment(tm.HYPERPARAMETERS, tm.CHANNELS, argv, env={})


def npz_bytes(tmp_path: Path, **arrays) -> bytes:
    path = tmp_path / "scratch.npz"
    np.savez(path, **arrays)
    return path.read_bytes()


def load(env, channel="train", me=None):
    return data_module.load_channel(env, channel, me or processes.Dist(), env.hyperparameters,
                                    required=channel == "train")


@pytest.mark.parametrize("channel,xkey,ykey", [
    ("train", "X", "y"), ("train", "X_train", "y_train"), ("validation", "X_val", "y_val"),
    ("validation", "X_validation", "y_validation"), ("test", "X_test", "y_test"),
    ("train", "X_val", "y_val"),  # the only pair in the file: taken whatever the channel
])
def test_npz_key_variants(tmp_path, channel, xkey, ykey):
    X = np.arange(12, dtype=np.float64).reshape(4, 3)
    env = channel_env(tmp_path, {"d.npz": npz_bytes(tmp_path, **{xkey: X, ykey: np.array([0, 1, 0, 1])})}, channel)
    table = load(env, channel)
    assert table.X.dtype == np.float32 and table.X.shape == (4, 3) and table.y.tolist() == [0, 1, 0, 1]
    assert table.feature_names == ["f0", "f1", "f2"]


def test_npz_prefers_the_channel_pair_and_flattens_images(tmp_path):
    arrays = dict(X_train=np.ones((2, 2, 2)), y_train=np.array([1, 0]), X_val=np.zeros((1, 2, 2)), y_val=np.array([1]),
                  feature_names=np.array(["a", "b", "c", "d"]))
    env = channel_env(tmp_path, {"both.npz": npz_bytes(tmp_path, **arrays)})
    table = load(env)
    assert table.X.shape == (2, 4) and table.feature_names == ["a", "b", "c", "d"] and table.named


def test_csv_variants_and_subdirectories(tmp_path):
    files = {
        "a.csv": "x1,x2,label\n1,2,cat\n3,4,dog\n",
        "sub/b.csv.gz": gzip.compress(b"x2,x1,label\n6,5,cat\n"),  # other column order: aligned by name
        "sub/deeper/c": "x1,x2,label\n7,8,bird\n",  # no extension: recognised by content
        "_SUCCESS": "", ".hidden.csv": "garbage",
        "empty.csv": "",
    }
    table = load(channel_env(tmp_path, files))
    assert table.feature_names == ["x1", "x2"]
    assert table.X.tolist() == [[1, 2], [3, 4], [5, 6], [7, 8]]
    assert table.y.tolist() == ["cat", "dog", "cat", "bird"]


def test_headerless_csv_label_first_and_label_by_position(tmp_path):
    env = channel_env(tmp_path, {"d.csv": "1,0.5,0.25\n0,0.75,2\n"})
    table = load(env)
    assert table.y.tolist() == [1, 0] and table.X.tolist() == [[0.5, 0.25], [0.75, 2]]
    assert table.feature_names == ["f0", "f1"] and not table.named
    env = channel_env(tmp_path / "p", {"d.csv": "0.5,0.25,1\n0.1,0.2,0\n"}, "train", "--label_column", "-1")
    assert load(env).y.tolist() == [1, 0]


def test_parquet_label_by_name_and_selected_features(tmp_path):
    buffer = pa.BufferOutputStream()
    pq.write_table(pa.table({"id": ["a", "b"], "f": [1.0, 2.0], "g": [True, False], "price": [10, 20]}), buffer)
    env = channel_env(tmp_path, {"p.parquet": buffer.getvalue().to_pybytes()}, "train",
                      "--label_column", "price", "--feature_columns", "f,g", "--task", "regression")
    table = load(env)
    assert table.feature_names == ["f", "g"] and table.X.tolist() == [[1, 1], [2, 0]] and table.y.tolist() == [10, 20]


def test_sharding_among_processes(tmp_path):
    files = {f"part{i}.npz": npz_bytes(tmp_path, X=np.full((i + 1, 2), i), y=np.full(i + 1, i)) for i in range(3)}
    env = channel_env(tmp_path, files)
    # 3 files, 2 processes: whole files, round robin by sorted path
    assert sorted(set(load(env, me=processes.Dist(rank=0, world=2)).y.tolist())) == [0, 2]
    assert load(env, me=processes.Dist(rank=1, world=2)).y.tolist() == [1, 1]
    # 3 files, 4 processes: every process reads all files and keeps a contiguous part of the rows (6 rows)
    parts = [load(env, me=processes.Dist(rank=r, world=4)).y.tolist() for r in range(4)]
    assert parts == [[0, 1], [1, 2], [2], [2]]
    # ShardedByS3Key: SageMaker split the files among hosts; the processes of one host split further
    env.distribution["train"] = "ShardedByS3Key"
    assert len(load(env, me=processes.Dist(rank=3, world=4, local_rank=0, local_world=1)).y) == 6


def test_label_encoding_mixed_and_unknown():
    assert data_module.class_labels(np.array([2.0, 0.0, 2.0]), "x") == [0, 2]
    with pytest.raises(sm.UserError, match="task=regression"):
        data_module.class_labels(np.array([0.5, 1.0]), "x")
    classes = ["1", "cat"]  # text and numbers mixed: all text
    assert data_module.encode_labels(np.array([1.0, 1.0]), classes, "validation").tolist() == [0, 0]
    assert data_module.encode_labels(np.array(["cat", "1"], dtype=object), classes, "validation").tolist() == [1, 0]
    with pytest.raises(sm.UserError, match="the label 'dog'"):
        data_module.encode_labels(np.array(["dog"], dtype=object), classes, "validation")


# -----------------------------------------------------------------------------------------------
# Model, schedule, hardware decisions


def test_model_construction_from_config():
    model = model_module.build_model({"model": {"input_dim": 5, "hidden_sizes": [8, 4], "output_dim": 3,
                                      "activation": "gelu", "dropout": 0.2}})
    layers = list(model.net)
    assert [type(m).__name__ for m in layers] == ["Linear", "GELU", "Dropout", "Linear", "GELU", "Dropout", "Linear"]
    assert layers[0].in_features == 5 and layers[3].out_features == 4 and layers[-1].out_features == 3
    assert layers[2].p == 0.2
    assert model(torch.zeros(7, 5)).shape == (7, 3)
    linear = model_module.build_model({"input_dim": 5, "hidden_sizes": [], "output_dim": 1, "activation": "relu", "dropout": 0})
    assert [type(m).__name__ for m in linear.net] == ["Linear"]
    assert set(linear.state_dict()) == {"net.0.weight", "net.0.bias"}


def test_learning_rate_schedule_and_step_sizes():
    lrs = [loop.learning_rate(s, 100, 10, 1.0, "cosine", 0.1) for s in range(100)]
    assert lrs[0] < lrs[5] < lrs[9] <= 1.0 and max(lrs) == pytest.approx(1.0, abs=1e-3)
    assert lrs[-1] == pytest.approx(0.1, abs=1e-3) and all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert loop.learning_rate(55, 100, 10, 1.0, "linear", 0.0) == pytest.approx(0.5)
    assert loop.learning_rate(80, 100, 0, 2.0, "constant", 0.0) == 2.0
    assert loop.chunk_sizes(10, 3) == [4, 3, 3] and sum(loop.chunk_sizes(1347, 22)) == 1347
    assert loop.chunk_sizes(2, 5) == [1] * 5  # fewer rows than steps: rows are repeated


def test_hardware_decisions():
    """The GPU paths, decided from fake inputs (no GPU on these machines)."""
    assert processes.visible_gpus(-1, 4) == 4 and processes.visible_gpus(2, 4) == 2 and processes.visible_gpus(8, 0) == 0
    assert processes.choose_device("auto", 0, 0) == torch.device("cpu")
    assert processes.choose_device("auto", 4, 5) == torch.device("cuda", 1)
    assert processes.choose_device("cpu", 4, 0) == torch.device("cpu")
    with pytest.raises(sm.UserError, match="device=cuda needs a GPU"):
        processes.choose_device("cuda", 0, 0)
    assert processes.processes_per_host(0, "cuda", 8) == 8 and processes.processes_per_host(0, "cpu", 0) == 1
    assert processes.processes_per_host(2, "cpu", 0) == 2
    with pytest.raises(sm.UserError, match="processes_per_host=4"):
        processes.processes_per_host(4, "cuda", 2)
    assert processes.choose_backend("cuda") == "nccl" and processes.choose_backend("cpu") == "gloo"
    assert processes.choose_precision("auto", "cuda", True) == processes.Precision(torch.bfloat16, False)
    assert processes.choose_precision("auto", "cuda", False) == processes.Precision(torch.float16, True)
    assert processes.choose_precision("fp16", "cuda", True) == processes.Precision(torch.float16, True)
    assert processes.choose_precision("bf16", "cuda", False).dtype == torch.float16
    assert processes.choose_precision("no", "cuda", True).dtype is None
    assert processes.choose_precision("auto", "cpu", False) == processes.Precision(None, False, "")
    assert "ignored on CPU" in processes.choose_precision("bf16", "cpu", True).note
    assert isinstance(processes.autocast(processes.Precision(None, False), torch.device("cpu")), type(contextlib.nullcontext()))


def test_torchrun_detection_and_launch_command():
    assert processes.torchrun_ranks({}) is None
    torchrun = {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4"}
    assert processes.torchrun_ranks(torchrun) == (3, 8, 1, 4)
    hosts = ["algo-2", "algo-1"]  # SageMaker's list; the master is the first sorted
    command = processes.launch_command(sorted(hosts), "algo-2", 1, "/opt/ml/code/train.py", ["--epochs", "3"], {})
    assert command[1:] == ["-m", "torch.distributed.run", "--nproc_per_node", "1", "--nnodes", "2", "--node_rank", "1",
                           "--master_addr", "algo-1", "--master_port", "7777", "/opt/ml/code/train.py", "--epochs", "3"]
    address = {"MASTER_ADDR": "10.0.0.5", "MASTER_PORT": "29999"}  # an address of the first sorted host
    command = processes.launch_command(["algo-1", "algo-2"], "algo-1", 1, "t.py", [], address)
    assert command[command.index("--node_rank") + 1] == "0" and command[-4:-1] == ["10.0.0.5", "--master_port", "29999"]
    # The toolkit's MASTER_ADDR is the first host of resourceconfig.json, sorted or not (SDK v2 local
    # mode: algo-10-x sorts before algo-2-y): that host must be node rank 0, or the nodes wait forever.
    toolkit = {"MASTER_ADDR": "algo-2", "MASTER_PORT": "7777"}
    assert processes.node_order(["algo-1", "algo-2", "algo-3"], toolkit) == ["algo-2", "algo-1", "algo-3"]
    for host, rank in (("algo-2", "0"), ("algo-1", "1")):
        command = processes.launch_command(["algo-1", "algo-2"], host, 1, "t.py", [], toolkit)
        assert command[command.index("--node_rank") + 1] == rank and "algo-2" in command
    one_host = processes.launch_command(["algo-1"], "algo-1", 4, "t.py", [], {})
    assert "--standalone" in one_host and one_host[one_host.index("--nproc_per_node") + 1] == "4"
    assert processes.launch_command(["algo-1"], "algo-1", 1, "t.py", [], {}) is None  # one process: no torchrun
    under_torchrun = {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}
    assert processes.launch_command(["algo-1", "algo-2"], "algo-1", 1, "t.py", [], under_torchrun) is None


# -----------------------------------------------------------------------------------------------
# Failures: one sentence in output/failure, exit code 1, no model


def _bad_inputs(tmp_path: Path, digits) -> dict:
    X_train, _, y_train, _ = digits
    X, y = X_train[:200], y_train[:200]
    return {
        "missing channel": ({}, ["--train", str(tmp_path / "nowhere")], "Required channel 'train' is missing"),
        "empty channel": ({"keep/": None}, [], "has no data files"),
        "binary file": ({"t/x.bin": b"\x00\x01\x02garbage"}, [], "neither CSV, Parquet nor .npz"),
        "broken npz": ({"t/x.npz": b"PK\x03\x04broken"}, [], "cannot be read as .npz"),
        "wrong npz keys": ({"t/x.npz": dict(features=X, labels=y)}, [], "np.savez(path, X=features, y=labels)"),
        "length mismatch": ({"t/x.npz": dict(X=X, y=y[:-1])}, [], "has 200 rows but y has 199"),
        "nan labels": ({"t/x.npz": dict(X=X, y=np.where(np.arange(200) == 7, np.nan, y))}, [],
                       "NaN or infinite labels"),
        "missing csv label": ({"t/x.csv": "a,label\n1,2\n3,\n"}, [], "missing values (first at data row 2)"),
        "text feature": ({"t/x.csv": "a,b,label\n1,red,0\n2,blue,1\n"}, [], "Feature column 'b'"),
        "nan feature": ({"t/x.csv": "a,label\n1,0\nnan,1\n"}, [], "missing or infinite feature values"),
        "no label column": ({"t/x.csv": "a,b\n1,2\n3,4\n"}, ["--label_column", "price"], "Label column 'price'"),
        "num classes": ({"t/x.npz": dict(X=X, y=y)}, ["--num_classes", "3"],
                        "num_classes=3, but the train channel has 10"),
        "one class": ({"t/x.npz": dict(X=X, y=np.zeros(200))}, [], "only one distinct label"),
        "unseen validation label": ({"t/x.npz": dict(X=X, y=y % 2), "v/x.npz": dict(X=X[:5], y=np.full(5, 7))},
                                    [], "The validation channel has the label 7"),
        "validation width": ({"t/x.npz": dict(X=X, y=y), "v/x.npz": dict(X=X[:5, :3], y=y[:5])}, [], "has 3 features"),
        "regression text": ({"t/x.npz": dict(X=X, y=np.array(["a"] * 200))}, ["--task", "regression"],
                            "task=regression"),
        "bad list": ({"t/x.npz": dict(X=X, y=y)}, ["--hidden_sizes", "[64, x]"], "Hyperparameter hidden_sizes"),
        "unknown hyperparameter": ({"t/x.npz": dict(X=X, y=y)}, ["--epoch", "3"], "did you mean epochs?"),
        "negative rate": ({"t/x.npz": dict(X=X, y=y)}, ["--learning_rate", "-1"], "learning_rate='-1' is out of range"),
        "no gpu": ({"t/x.npz": dict(X=X, y=y)}, ["--device", "cuda"], "device=cuda needs a GPU"),
        "regression num_classes": ({"t/x.npz": dict(X=X, y=y)}, ["--task", "regression", "--num_classes", "4"],
                                   "num_classes=4 applies to task=classification only"),
    }


BAD_CASES = ["missing channel", "empty channel", "binary file", "broken npz", "wrong npz keys", "length mismatch",
             "nan labels", "missing csv label", "text feature", "nan feature", "no label column", "num classes",
             "one class", "unseen validation label", "validation width", "regression text", "bad list",
             "unknown hyperparameter", "negative rate", "no gpu", "regression num_classes"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_fails_with_one_sentence_and_no_model(case, tmp_path, digits):
    files, extra, expected = _bad_inputs(tmp_path, digits)[case]
    for name, content in files.items():
        path = tmp_path / name
        if content is None:
            path.mkdir(parents=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, dict):
            np.savez(path, **content)
        else:
            path.write_bytes(content if isinstance(content, bytes) else content.encode())
    args = [] if "--train" in extra else ["--train", str(tmp_path / ("keep" if "keep/" in files else "t"))]
    if (tmp_path / "v").exists():
        args += ["--validation", str(tmp_path / "v")]
    args += extra + ["--model-dir", str(tmp_path / "model"), "--output-dir", str(tmp_path / "output"),
                     "--epochs", "1", "--num_threads", "1", "--checkpoint_every", "0"]
    with pytest.raises(SystemExit) as exit_info:
        sm.run(tm.main, args)
    assert exit_info.value.code == 1
    reason = (tmp_path / "output" / "failure").read_text()
    assert expected in reason, reason
    assert reason.count("\n") == 1 and "Traceback" not in reason and len(reason) <= sm.FAILURE_LIMIT + 1
    assert not (tmp_path / "model").exists() or not any((tmp_path / "model").iterdir())


def test_failure_as_a_real_process(tmp_path):
    """As SageMaker runs it: exit code 1, the reason on stderr and in output/failure, no traceback."""
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "x.csv").write_text("a,b,label\n1,2,0\n3,4\n")
    env = {**os.environ, "SM_OUTPUT_DIR": str(tmp_path / "output"), "SM_MODEL_DIR": str(tmp_path / "model"),
           "SM_CHANNEL_TRAIN": str(tmp_path / "train"), "SM_HPS": json.dumps({"epochs": 1, "checkpoint_every": 0})}
    result = subprocess.run([sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    reason = (tmp_path / "output" / "failure").read_text().strip()
    assert reason.startswith(f"File {tmp_path / 'train' / 'x.csv'} cannot be read as CSV") and "fix or remove" in reason
    assert f"ERROR: {reason}" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "model").exists() or not any((tmp_path / "model").iterdir())


# -----------------------------------------------------------------------------------------------
# Distributed: two hosts on this machine, each a real process that launches itself under torchrun


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_hosts(tmp_path: Path, args: list[str], checkpoint_dirs: dict[str, Path] | None = None,
              timeout: float = 180) -> dict[str, tuple[int, str]]:
    """Start algo-1 and algo-2 as SageMaker would start two instances (each `python train.py`, which
    launches itself under torchrun), on loopback; return each host's exit code and log."""
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "OMP_NUM_THREADS": "1"}
    procs = {}
    tmp_path.mkdir(parents=True, exist_ok=True)
    for host in ("algo-1", "algo-2"):
        out = tmp_path / host
        checkpoints = (checkpoint_dirs or {}).get(host, out / "checkpoints")
        command = [sys.executable, str(SCRIPT), *args, "--hosts", '["algo-2", "algo-1"]', "--current-host", host,
                   "--model-dir", str(out / "model"), "--output-data-dir", str(out / "data"),
                   "--output-dir", str(out / "output"), "--checkpoint-dir", str(checkpoints)]
        log = open(tmp_path / f"{host}.log", "w")
        procs[host] = (subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True), log)
    try:
        for proc, _ in procs.values():
            proc.wait(timeout=timeout)
    finally:
        for proc, log in procs.values():
            if proc.poll() is None:  # only the process groups this test started
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            log.close()
    return {host: (proc.returncode, (tmp_path / f"{host}.log").read_text()) for host, (proc, _) in procs.items()}


def test_two_hosts_train_like_one_and_resume_identically(digits_run, digits_dirs, digits, tmp_path):
    _, X_val, _, y_val = digits
    results = run_hosts(tmp_path / "run", digits_run["args"])
    logs = {host: log for host, (_, log) in results.items()}
    assert [code for code, _ in results.values()] == [0, 0], logs
    assert "distributed: world_size=2 rank=0 backend=gloo" in logs["algo-1"]
    assert "distributed: world_size=2 rank=1 backend=gloo" in logs["algo-2"]
    assert "--nnodes 2 --node_rank 1 --master_addr 127.0.0.1" in logs["algo-2"]
    assert "data: 1347 training rows ([947, 400] per process)" in logs["algo-1"]  # part0+part2 | part1
    assert "[epoch 1] train:loss=" in logs["algo-1"] and "[epoch" not in logs["algo-2"]

    # only rank 0 writes the model, the evaluation and the checkpoints
    run = tmp_path / "run"
    assert not (run / "algo-2" / "model").exists() and not (run / "algo-2" / "checkpoints").exists()
    one, two = digits_run["dir"] / "model", run / "algo-1" / "model"
    accuracy_one, accuracy_two = accuracy_of(one, X_val, y_val), accuracy_of(two, X_val, y_val)
    assert accuracy_two >= ACCURACY and abs(accuracy_two - accuracy_one) <= 0.03
    # standardization statistics over both shards are those of the whole training set
    config_one = json.loads((one / "model-config.json").read_text())
    config_two = json.loads((two / "model-config.json").read_text())
    assert np.allclose(config_one["features"]["mean"], config_two["features"]["mean"], rtol=1e-12, atol=1e-12)
    assert np.allclose(config_one["features"]["std"], config_two["features"]["std"], rtol=1e-12, atol=1e-12)
    evaluation = json.loads((run / "algo-1" / "data" / "evaluation.json").read_text())
    assert evaluation["world_size"] == 2
    assert evaluation["metrics"]["validation:accuracy"] == pytest.approx(accuracy_two, abs=1.5 / len(y_val))

    # Restart both hosts from the checkpoint of epoch 4 (only the master has it; the other host's
    # directory is empty): every rank gets it from rank 0, with its own random state.
    saved = run / "algo-1" / "checkpoints" / "checkpoint-00000004.pt"
    assert len(torch.load(saved, weights_only=True)["rng"]) == 2
    (tmp_path / "ckpt1").mkdir()
    (tmp_path / "ckpt2").mkdir()
    shutil.copy(saved, tmp_path / "ckpt1")
    results = run_hosts(tmp_path / "resumed", digits_run["args"],
                        {"algo-1": tmp_path / "ckpt1", "algo-2": tmp_path / "ckpt2"})
    assert [code for code, _ in results.values()] == [0, 0], results
    assert "resumed from the checkpoint of epoch 4" in results["algo-1"][1]
    first = torch.load(two / "model.pt", weights_only=True)
    second = torch.load(tmp_path / "resumed" / "algo-1" / "model" / "model.pt", weights_only=True)
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_bad_file_on_one_host_fails_both_without_hanging(digits, tmp_path):
    X_train, _, y_train, _ = digits
    (tmp_path / "train").mkdir()
    np.savez(tmp_path / "train" / "a.npz", X=X_train[:300], y=y_train[:300])
    (tmp_path / "train" / "b.csv").write_text("a,b,label\n1,2,0\n3,x,1\n")  # read by rank 1 only
    results = run_hosts(tmp_path, ["--train", str(tmp_path / "train"), "--epochs", "1", "--num_threads", "1"],
                        timeout=120)
    assert [code for code, _ in results.values()] == [1, 1]
    reason_master = (tmp_path / "algo-1" / "output" / "failure").read_text()
    reason_other = (tmp_path / "algo-2" / "output" / "failure").read_text()
    assert reason_other.startswith(f"Feature column 'b' in {tmp_path / 'train' / 'b.csv'} is not numeric")
    assert reason_master.startswith(reason_other.strip()) and "(reported by rank 1)" in reason_master
    assert not (tmp_path / "algo-1" / "model" / "model.pt").exists()


def test_under_torchrun_as_the_toolkit_starts_it(digits_dirs, digits, tmp_path):
    """sagemaker_torch_distributed_enabled: the toolkit runs `torchrun --nnodes 1 --nproc_per_node N
    train.py ...` with the hyperparameters in SM_HPS; the script must not launch itself again."""
    _, X_val, _, y_val = digits
    env = {**os.environ, "SM_HPS": json.dumps({"epochs": 8, "hidden_sizes": [64], "batch_size": 64,
                                               "learning_rate": 0.003, "num_threads": 1}),
           "SM_CHANNEL_TRAIN": str(digits_dirs / "train"), "SM_CHANNEL_VALIDATION": str(digits_dirs / "validation"),
           "SM_MODEL_DIR": str(tmp_path / "model"), "SM_OUTPUT_DATA_DIR": str(tmp_path / "data"),
           "SM_OUTPUT_DIR": str(tmp_path / "output"), "SM_HOSTS": '["algo-1"]', "SM_CURRENT_HOST": "algo-1",
           "SM_NUM_GPUS": "0"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node", "2",
               str(SCRIPT), "--checkpoint_every", "0"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "launching:" not in output
    assert "distributed: world_size=2 rank=0 backend=gloo local_rank=0 local_world_size=2" in output, output[-4000:]
    assert "distributed: world_size=2 rank=1 backend=gloo local_rank=1 local_world_size=2" in output, output[-4000:]
    assert "([947, 400] per process)" in output, output[-4000:]  # 3 files, 2 processes: whole files
    assert accuracy_of(tmp_path / "model", X_val, y_val) >= ACCURACY
