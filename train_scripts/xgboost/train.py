"""Train an XGBoost model, inside a SageMaker training container or as plain Python.

    python train.py --train DIR [--validation DIR] --model-dir DIR [--num_round 200 --eta 0.1 ...]

Reads the `train` (required) and `validation` (optional) channels: CSV (label in the first column, or a
header and `target_column`), libsvm or Parquet, every file of the channel directory and its
subdirectories, streamed with pyarrow into XGBoost's QuantileDMatrix (ExtMemQuantileDMatrix with
external_memory=true). Every XGBoost training parameter is a hyperparameter. Writes `xgboost-model`
(XGBoost's UBJSON format, the file name of SageMaker's built-in algorithm) and `model-metadata.json`
to SM_MODEL_DIR, evaluation results to SM_OUTPUT_DATA_DIR, one metrics line per round:

    [round 12] train:rmse=0.3512 validation:rmse=0.4012

Saves checkpoints every `checkpoint_frequency` rounds when a checkpoint directory is set and resumes
from the newest one. With several hosts it trains with XGBoost's own collective (Rabit): the first
host runs the tracker, every host trains on its own part of the data, the first host saves the model.
A bad input fails before training with one sentence in output/failure (see sm_contract.run).

Python 3.10 (the prebuilt sagemaker-xgboost:3.0-5 image); numpy, pyarrow, xgboost and the standard
library only. docs/xgboost.md describes formats, hyperparameters, outputs and the multi-host rule.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import math
import os
import re
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import xgboost as xgb
from xgboost import collective

try:  # in the image both files sit in /opt/ml/code; in the repository sm_contract is in ../common
    import sm_contract as sm
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "common"))
    import sm_contract as sm

Hyperparameter = sm.Hyperparameter

# =================================================================================================
# Config: what the script itself understands (everything else must be an XGBoost parameter)

CHANNELS = ("train", "validation")
MODEL_FILE = "xgboost-model"  # the file name SageMaker's built-in XGBoost algorithm uses
METADATA_FILE = "model-metadata.json"
EVALUATION_FILE = "evaluation.json"
PREDICTIONS_FILE = "validation-predictions.csv"
AUTO_PREDICTION_ROWS = 1_000_000  # save_predictions=auto writes predictions up to this many rows

HYPERPARAMETERS = {
    "num_round": Hyperparameter(int, 100, "boosting rounds", min=1),
    "early_stopping_rounds": Hyperparameter(
        int, 0, "stop when the last eval_metric on validation has not improved for this many rounds (0: off)", min=0),
    "target_column": Hyperparameter(
        str, "", "label column: a header name or a 0-based index (default: the first column)"),
    "weight_column": Hyperparameter(str, "", "instance-weight column: a header name or a 0-based index"),
    "csv_weights": Hyperparameter(
        int, 0, "1: the column after the label holds instance weights (the built-in algorithm's rule)", choices=(0, 1)),
    "qid_column": Hyperparameter(str, "", "query-id column for rank:* objectives: a header name or a 0-based index"),
    "csv_header": Hyperparameter(str, "auto", "whether CSV files start with a header row: auto, true or false"),
    "csv_delimiter": Hyperparameter(str, "", "CSV field delimiter (default: comma; tab for .tsv files)"),
    "data_format": Hyperparameter(
        str, "auto", "input format where a channel has no ContentType: auto (by file extension, then content), csv, "
        "libsvm or parquet"),
    "enable_categorical": Hyperparameter(
        bool, True, "string columns are categorical features (XGBoost's native support); false: they are an error"),
    "missing": Hyperparameter(float, math.nan, "the feature value that means missing, besides empty fields and NaN"),
    "external_memory": Hyperparameter(
        bool, False, "train from disk-cached pages (ExtMemQuantileDMatrix) for data larger than memory"),
    "external_memory_dir": Hyperparameter(str, "", "directory for the external-memory cache (default: a temporary one)"),
    "batch_mb": Hyperparameter(float, 64.0, "MiB of data per batch fed to XGBoost (and per external-memory page)", min=0.001),
    "checkpoint_frequency": Hyperparameter(
        int, 10, "save a checkpoint every N rounds when a checkpoint directory is set (0: only at the end)", min=0),
    "exact_resume": Hyperparameter(
        bool, True, "with sampling (subsample, colsample_*, dart) and checkpoints, restart the booster from each "
        "checkpoint it saves, so that a resumed run ends with the identical model"),
    "save_predictions": Hyperparameter(
        str, "auto", f"write validation predictions: auto (up to {AUTO_PREDICTION_ROWS:,} rows, one host), true or false"),
    "tracker_port": Hyperparameter(int, 9099, "port of XGBoost's tracker on the first host (multi-host)", min=1, max=65535),
    "tracker_timeout": Hyperparameter(int, 900, "seconds the hosts may take to join the tracker (multi-host)", min=1),
    "_tuning_objective_metric": Hyperparameter(
        str, "", "set by SageMaker automatic model tuning (e.g. validation:auc); its metric joins eval_metric"),
}


# Word-valued options, case-insensitive (the SDK sends Python's True as "True").
CHOICES = {"csv_header": ("auto", "true", "false"), "save_predictions": ("auto", "true", "false"),
           "data_format": ("auto", "csv", "libsvm", "parquet")}


def _p(kind: Any, text: str) -> Hyperparameter:
    return Hyperparameter(kind, None, text)


# Every XGBoost 3.0 training parameter (https://xgboost.readthedocs.io/en/release_3.0.0/parameter.html), with
# the type its value is coerced to. XGBoost itself validates the values (check_parameters_with_xgboost).
XGBOOST_PARAMETERS = {
    # general
    "booster": _p(str, "gbtree, gblinear or dart"),
    "device": _p(str, "cpu, cuda or cuda:<ordinal> (default: cuda when the instance has GPUs)"),
    "verbosity": _p(int, "0 (silent) to 3 (debug)"),
    "validate_parameters": _p(bool, "warn about unused parameters"),
    "nthread": _p(int, "threads (default: all CPUs, SM_NUM_CPUS)"),
    "disable_default_eval_metric": _p(bool, "do not evaluate the objective's default metric"),
    # tree booster
    "eta": _p(float, "learning rate"),
    "gamma": _p(float, "minimum loss reduction to split"),
    "max_depth": _p(int, "maximum tree depth"),
    "min_child_weight": _p(float, "minimum hessian sum in a child"),
    "max_delta_step": _p(float, "maximum leaf output step"),
    "subsample": _p(float, "row subsample ratio per tree"),
    "sampling_method": _p(str, "uniform or gradient_based"),
    "colsample_bytree": _p(float, "column subsample ratio per tree"),
    "colsample_bylevel": _p(float, "column subsample ratio per level"),
    "colsample_bynode": _p(float, "column subsample ratio per node"),
    "lambda": _p(float, "L2 regularization"),
    "alpha": _p(float, "L1 regularization"),
    "tree_method": _p(str, "auto, exact, approx or hist"),
    "scale_pos_weight": _p(float, "weight of positive examples"),
    "updater": _p(str, "comma-separated updater sequence (advanced)"),
    "refresh_leaf": _p(int, "refresh updater: update leaf values too"),
    "process_type": _p(str, "default or update"),
    "grow_policy": _p(str, "depthwise or lossguide"),
    "max_leaves": _p(int, "maximum leaves per tree"),
    "max_bin": _p(int, "histogram bins per feature"),
    "num_parallel_tree": _p(int, "trees per round (boosted random forest)"),
    "monotone_constraints": _p(str, "e.g. (1,0,-1)"),
    "interaction_constraints": _p(str, "e.g. [[0, 1], [2, 3, 4]]"),
    "multi_strategy": _p(str, "one_output_per_tree or multi_output_tree"),
    "max_cached_hist_node": _p(int, "histogram cache size"),
    "max_cat_to_onehot": _p(int, "one-hot splits below this many categories"),
    "max_cat_threshold": _p(int, "maximum categories per split"),
    "sketch_ratio": _p(float, "approx: sketch size ratio"),
    # dart booster
    "sample_type": _p(str, "uniform or weighted"),
    "normalize_type": _p(str, "tree or forest"),
    "rate_drop": _p(float, "dropout rate"),
    "one_drop": _p(int, "always drop at least one tree"),
    "skip_drop": _p(float, "probability of skipping dropout"),
    # linear booster
    "feature_selector": _p(str, "cyclic, shuffle, random, greedy or thrifty"),
    "top_k": _p(int, "features for greedy/thrifty selectors"),
    # learning task
    "objective": _p(str, "e.g. reg:squarederror, binary:logistic, multi:softprob, rank:ndcg"),
    "base_score": _p(float, "initial prediction"),
    "eval_metric": _p("strs", "e.g. [auc, logloss]"),
    "seed": _p(int, "random seed"),
    "seed_per_iteration": _p(bool, "reseed every round from seed and the round number"),
    "num_class": _p(int, "classes for multi:* objectives (default: from the labels)"),
    "tweedie_variance_power": _p(float, "reg:tweedie variance power"),
    "huber_slope": _p(float, "reg:pseudohubererror slope"),
    "quantile_alpha": _p("floats", "reg:quantileerror quantiles, e.g. [0.1, 0.5, 0.9]"),
    "lambdarank_pair_method": _p(str, "mean or topk"),
    "lambdarank_num_pair_per_sample": _p(int, "pairs per sample"),
    "lambdarank_normalization": _p(bool, "normalize the gradient by the number of pairs"),
    "lambdarank_score_normalization": _p(bool, "normalize by the score difference"),
    "lambdarank_unbiased": _p(bool, "unbiased learning to rank"),
    "lambdarank_bias_norm": _p(float, "unbiased LTR regularization"),
    "ndcg_exp_gain": _p(bool, "exponential NDCG gain"),
}
XGBOOST_ALIASES = {"learning_rate": "eta", "min_split_loss": "gamma", "reg_lambda": "lambda",
                   "reg_alpha": "alpha", "random_state": "seed"}
RENAMED = {  # names users bring from elsewhere, and what to use instead
    "num_boost_round": "num_round", "n_estimators": "num_round", "early_stopping": "early_stopping_rounds",
    "gpu_id": "device (e.g. device=cuda:0)", "predictor": "nothing (removed in XGBoost 2.0)",
    "label_column": "target_column", "target": "target_column", "label": "target_column",
}
# Parameters whose validity depends on the data: not part of the tiny-data check.
DATA_DEPENDENT = {"monotone_constraints", "interaction_constraints", "nthread"}
PARAMETER_DOCS = "https://xgboost.readthedocs.io/en/release_3.0.0/parameter.html"

ENV: sm.TrainingEnv | None = None  # for the failure file's location


# =================================================================================================
# The job, top to bottom


def main() -> None:
    global ENV
    started = time.time()
    # --- Environment and hyperparameters: all validated before any data is read.
    try:
        env = ENV = sm.load_environment(HYPERPARAMETERS, CHANNELS, extra_hyperparameters=xgboost_parameter)
    except SystemExit:  # --help: add XGBoost's own parameters to the usage
        print("\nXGBoost parameters (" + PARAMETER_DOCS + "):")
        for name, spec in XGBOOST_PARAMETERS.items():
            alias = [a for a, target in XGBOOST_ALIASES.items() if target == name]
            print(f"  --{name:24} {spec.help}" + (f" (alias {alias[0]})" if alias else ""))
        raise
    hp = script_options(env)
    params = xgboost_params(env)
    check_parameters_with_xgboost(params)
    if hp["early_stopping_rounds"] and env.channels.get("validation") is None:
        raise sm.UserError("early_stopping_rounds needs a 'validation' channel to watch; add one or set "
                           "early_stopping_rounds=0.")
    checkpoints = sm.Checkpoints(env.checkpoint_dir, prefix="xgboost-checkpoint", suffix=".ubj")
    log(f"XGBoost {xgb.__version__} on host {env.current_host} ({env.host_rank + 1} of {len(env.hosts)}), "
        f"device={params['device']}, nthread={params['nthread']}")

    with Cluster(env, hp["tracker_port"], hp["tracker_timeout"]) as cluster, xgboost_errors(cluster):
        # --- Data: this host's files, one table layout and one category coding for all hosts and channels.
        sources = cluster.agree(plan_sources, env, hp, cluster)
        layout = cluster.agree(agree_layout, sources, hp, cluster)
        data = cluster.agree(load_data, sources, layout, hp, cluster)
        objective_from_labels(params, data)
        with external_memory_cache(hp) as cache:
            dtrain, dvalid = build_dmatrices(data, params, hp, cache)
            cluster.agree(check_labels, params, data, cluster)

            # --- Model: new, or resumed from the newest checkpoint.
            booster, start = new_or_resumed_booster(params, dtrain, dvalid, checkpoints, hp, cluster)
            evals = [(dtrain, "train")] + ([(dvalid, "validation")] if dvalid is not None else [])

            # --- Loop: XGBoost's rounds, metrics in the log, checkpoints, early stopping.
            callbacks: list[xgb.callback.TrainingCallback] = [LogMetrics()]
            if hp["early_stopping_rounds"]:
                callbacks.append(EarlyStoppingByRound(hp["early_stopping_rounds"]))
            saver = SaveCheckpoints(checkpoints, hp["checkpoint_frequency"], cluster.rank == 0)
            callbacks.append(saver)
            restart = checkpoints.enabled and hp["exact_resume"] and randomized(params)
            booster, history = train_loop(booster, dtrain, evals, start, hp["num_round"], callbacks, params, cluster,
                                          restart_every=hp["checkpoint_frequency"] if restart else 0)

            # --- Save: only the first host writes; the model, its metadata and the evaluation appear together.
            if cluster.rank == 0:
                predictions = validation_predictions(booster, dvalid, data, hp, cluster)
                save(env, booster, params, data, history, start, predictions, hp, started)
            # Every host leaves only once the model is saved: SageMaker local mode (docker compose
            # --abort-on-container-exit) stops all containers as soon as the first one exits.
            cluster.gather(None)
            del booster, dtrain, dvalid, evals  # XGBoost deletes its external-memory pages with them
    log(f"Done in {time.time() - started:.1f}s.")


# =================================================================================================
# Hyperparameters and XGBoost parameters


def script_options(env: sm.TrainingEnv) -> dict[str, Any]:
    """The script's own hyperparameters, word-valued ones lower-cased and checked."""
    hp = {name: env.hyperparameters[name] for name in HYPERPARAMETERS}
    for name, choices in CHOICES.items():
        hp[name] = str(hp[name]).strip().lower()
        if hp[name] not in choices:
            raise sm.UserError(f"Hyperparameter {name}={env.hyperparameters[name]!r} is invalid; use one of "
                               f"{', '.join(choices)}.")
    return hp


def xgboost_parameter(name: str, raw: Any) -> Any:
    """Coerce a hyperparameter the script does not declare: it must be an XGBoost parameter."""
    spec = XGBOOST_PARAMETERS.get(XGBOOST_ALIASES.get(name, name))
    if spec is None:
        if name in RENAMED:
            raise sm.UserError(f"Hyperparameter {name!r} is not known to this script; use {RENAMED[name]} instead.")
        message = sm.unknown_hyperparameter(name, list(HYPERPARAMETERS) + list(XGBOOST_PARAMETERS) + list(XGBOOST_ALIASES))
        raise sm.UserError(message if message.endswith("?") else message + " (docs/xgboost.md lists the accepted names).")
    if name in ("monotone_constraints", "interaction_constraints") and isinstance(raw, (list, tuple, dict)):
        raw = json.dumps(raw)
    return sm.coerce(name, raw, spec)


def xgboost_params(env: sm.TrainingEnv) -> dict[str, Any]:
    """The booster's parameters: what the user passed, aliases resolved, this script's defaults filled in."""
    params: dict[str, Any] = {}
    for name, value in env.hyperparameters.items():
        if name in HYPERPARAMETERS:
            continue
        canonical = XGBOOST_ALIASES.get(name, name)
        if canonical in params:
            raise sm.UserError(f"Hyperparameters {canonical} and {name} are the same XGBoost parameter; pass only one.")
        params[canonical] = value
    if isinstance(params.get("monotone_constraints"), str):  # the SDK sends a list as "[1, 0, -1]"
        params["monotone_constraints"] = params["monotone_constraints"].replace("[", "(").replace("]", ")")
    metric = env.hyperparameters.get("_tuning_objective_metric") or ""
    if metric:  # automatic model tuning watches <channel>:<metric>; make sure XGBoost computes it, last
        name = metric.split(":", 1)[-1]
        params["eval_metric"] = [m for m in params.get("eval_metric", []) if m != name] + [name]
    if "eval_metric" in params and not params["eval_metric"]:
        del params["eval_metric"]
    params.setdefault("nthread", env.num_cpus)
    params["device"] = choose_device(env.num_gpus, params.get("device"), bool(xgb.build_info().get("USE_CUDA")))
    params.setdefault("seed", 0)
    params.setdefault("max_bin", 256)  # the QuantileDMatrix and the booster must use the same value
    if str(params.get("objective", "")).startswith("survival:aft"):
        raise sm.UserError("Objective survival:aft needs lower and upper label bounds, which this script does not "
                           "read; use survival:cox or a reg:* objective.")
    return params


def choose_device(num_gpus: int, requested: str | None, cuda_built: bool) -> str:
    """XGBoost's `device`: an explicit value wins; else `cuda` when the instance has GPUs (SM_NUM_GPUS > 0)
    and XGBoost was built with CUDA, else `cpu`. One process trains on one GPU (cuda = cuda:0).

    The machines this is developed on have no GPU, so the GPU path is exercised only by the unit tests,
    which call this function with fake GPU counts."""
    if requested:
        return str(requested)
    return "cuda" if num_gpus > 0 and cuda_built else "cpu"


def synthetic_data(params: dict[str, Any]) -> xgb.DMatrix:
    """A tiny data set whose labels suit the objective, for XGBoost to validate the parameters on."""
    rng = np.random.default_rng(0)
    n = 48
    X = rng.normal(size=(n, 4)).astype(np.float32)
    objective = str(params.get("objective", "reg:squarederror"))
    i = np.arange(n)
    if objective.startswith("multi:"):
        y = i % max(2, int(params.get("num_class") or 3))
    elif objective.startswith(("binary:", "reg:logistic")):
        y = i % 2
    elif objective.startswith(("reg:gamma", "reg:tweedie", "count:", "survival:")):
        y = 1 + i % 3
    elif objective.startswith("rank:"):
        y = i % 3
    else:
        y = rng.normal(size=n)
    dmatrix = xgb.DMatrix(X, label=y.astype(np.float32))
    if objective.startswith("rank:"):
        dmatrix.set_group([12] * 4)
    return dmatrix


def check_parameters_with_xgboost(params: dict[str, Any]) -> None:
    """Let XGBoost train one round on tiny data with these parameters; name the parameter it rejects.

    Without an `objective` (text labels choose one later) the parameters pass if they suit any of the
    objectives the labels could lead to: `mlogloss` is fine for classes, not for regression."""
    check = {k: v for k, v in params.items() if k not in DATA_DEPENDENT}
    check["nthread"] = 1
    if str(check.get("objective", "")).startswith("multi:") and "num_class" not in check:
        check["num_class"] = 3  # taken from the labels later
    if "objective" in check:
        candidates = [check]
    else:
        candidates = [{**check, "objective": objective} for objective in
                      ("reg:squarederror", "binary:logistic", "multi:softprob")]
        candidates[2].setdefault("num_class", 3)
    errors = [_train_one_round(candidate) for candidate in candidates]
    if None in errors:
        return
    check, error = candidates[0], errors[0]
    # Find the culprit: the first parameter that fails on its own (with the objective it depends on).
    context = {k: check[k] for k in ("objective", "num_class", "nthread", "booster") if k in check}
    for name, value in check.items():
        if name in ("nthread",) or (name not in params and name in context):
            continue
        single_error = _train_one_round({**context, name: value})
        if single_error is not None:
            raise sm.UserError(f"Hyperparameter {name}={format_value(value)} is rejected by XGBoost "
                               f"{xgb.__version__} ({single_error}); see {PARAMETER_DOCS}.")
    raise sm.UserError(f"XGBoost {xgb.__version__} rejects this combination of hyperparameters ({error}); "
                       f"see {PARAMETER_DOCS}.")


def _train_one_round(params: dict[str, Any]) -> str | None:
    try:
        dmatrix = synthetic_data(params)
        xgb.train(params, dmatrix, num_boost_round=1, evals=[(dmatrix, "train")], verbose_eval=False)
    except xgb.core.XGBoostError as exc:
        return xgboost_message(exc)
    except (ValueError, TypeError) as exc:
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return None


def xgboost_message(exc: BaseException) -> str:
    """XGBoost's error without its timestamps, source locations and stack trace."""
    lines = []
    for line in str(exc).splitlines():
        if line.startswith("Stack trace") or line.lstrip().startswith("[bt]"):
            break
        line = re.sub(r"^\s*-?\s*\[[^\]]*\]\s*", "", line)  # [00:14:02] or [socket.h:79|00:14:15]:
        line = re.sub(r"^/\S+:\d+:\s*", "", line).strip()   # /workspace/src/...:49:
        line = re.sub(r"^Check failed:\s*", "", line)
        if line and not line.startswith(("/", ":")):
            lines.append(line.rstrip("."))
    text = "; ".join(lines) or type(exc).__name__
    return text if len(text) <= 400 else text[:397] + "..."


def format_value(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, bool)) else str(value)


# =================================================================================================
# Data: formats and layouts

CONTENT_TYPES = {
    "text/csv": "csv", "csv": "csv", "text/x-csv": "csv", "application/csv": "csv",
    "text/libsvm": "libsvm", "text/x-libsvm": "libsvm", "libsvm": "libsvm", "application/x-libsvm": "libsvm",
    "application/x-parquet": "parquet", "application/parquet": "parquet", "parquet": "parquet",
    "application/vnd.apache.parquet": "parquet",
}
UNSUPPORTED_CONTENT_TYPES = ("application/x-recordio-protobuf", "application/x-recordio", "application/x-protobuf")
EXTENSIONS = {".csv": "csv", ".tsv": "csv", ".libsvm": "libsvm", ".svm": "libsvm", ".svmlight": "libsvm",
              ".parquet": "parquet", ".pq": "parquet", ".parq": "parquet"}
COMPRESSIONS = (".gz", ".bz2", ".zst", ".lz4")
LIBSVM_LINE = re.compile(r"^\s*[-+]?[\d.]+(?:[eE][-+]?\d+)?(?::\S+)?(?:\s+(?:qid:\S+|\d+:\S+))+\s*(?:#.*)?$")


@dataclass
class Source:
    """One channel as this host reads it."""

    channel: str
    root: Path
    format: str = "csv"             # csv | libsvm | parquet
    files: list[Path] = field(default_factory=list)
    part: int = 0                   # this host's part of the rows of `files` (fewer files than hosts)
    parts: int = 1
    header: bool = False            # CSV: the files start with a header row
    delimiter: str = ","
    names: list[str] | None = None  # the header, or the Parquet columns, of this host's first file
    kinds: list[str] | None = None  # numeric | bool | string per column, from the first rows
    _total_rows: int | None = None

    def rel(self, path: Path) -> str:
        try:
            return f"{self.channel}/{path.relative_to(self.root)}" if path != self.root else f"{self.channel}/{path.name}"
        except ValueError:
            return str(path)


@dataclass
class Layout:
    """The columns of a table format (CSV, Parquet), the same on every host and channel."""

    names: list[str]          # every column, in file order
    kinds: list[str]          # numeric | bool | string
    header: bool              # names came from a header or Parquet schema (else c0, c1, ...)
    label: int
    weight: int | None
    qid: int | None
    features: list[int]

    def column(self, c: int) -> str:
        """How messages name a column: column 'age', or column 3 (0-based) without a header."""
        return f"column {self.names[c]!r}" if self.header else f"column {c}"

    @property
    def feature_names(self) -> list[str] | None:
        if not self.header:
            return None
        return safe_feature_names([self.names[c] for c in self.features])

    @property
    def feature_types(self) -> list[str]:
        return ["c" if self.kinds[c] == "string" else "q" for c in self.features]

    def arrow_type(self, column: int) -> pa.DataType:
        return {"numeric": pa.float32(), "bool": pa.bool_()}.get(self.kinds[column], pa.dictionary(pa.int32(), pa.string()))


def plan_sources(env: sm.TrainingEnv, hp: dict, cluster: Cluster) -> dict[str, Source]:
    """Which files of each channel this host reads, in which format (decided on every host alike)."""
    for extra in sorted(set(env.channels) - set(CHANNELS)):
        log(f"Channel '{extra}' is not used by this script (it reads train and validation).")
    sources = {}
    for channel in CHANNELS:
        sharded = env.distribution.get(channel) == "ShardedByS3Key"
        required = channel == "train" and not (sharded and cluster.world > 1)
        files = sm.channel_files(env, channel, required=required)
        if not files and env.channels.get(channel) is None:
            continue
        root = env.channels[channel]
        source = Source(channel, root if root.is_dir() else root.parent)
        source.format = channel_format(source, files, env.content_types.get(channel, ""), hp["data_format"])
        if source.format == "csv":
            source.delimiter = hp["csv_delimiter"] or ("\t" if any(strip_compression(f).suffix == ".tsv" for f in files) else ",")
        part = sm.shard(files, cluster.rank, cluster.world, already_sharded=sharded)
        source.files, source.part, source.parts = part.files, part.part, part.parts
        if source.files:
            describe_first_file(source, hp)
        sources[channel] = source
    return sources


def strip_compression(path: Path) -> Path:
    return path.with_suffix("") if path.suffix.lower() in COMPRESSIONS else path


def channel_format(source: Source, files: list[Path], content_type: str, data_format: str) -> str:
    """The channel's ContentType wins, then the data_format hyperparameter, then file extensions and content."""
    ctype = content_type.split(";")[0].strip().lower()
    if ctype in UNSUPPORTED_CONTENT_TYPES:
        raise sm.UserError(f"Channel '{source.channel}' has ContentType {content_type}, which this script does not "
                           "read; send CSV (text/csv), libsvm (text/libsvm) or Parquet (application/x-parquet).")
    if ctype:
        if ctype not in CONTENT_TYPES:
            raise sm.UserError(f"Channel '{source.channel}' has the unknown ContentType {content_type!r}; use "
                               "text/csv, text/libsvm or application/x-parquet.")
        fmt = CONTENT_TYPES[ctype]
    elif data_format != "auto":
        fmt = data_format
    else:
        found: dict[str, Path] = {}
        for path in files:
            found.setdefault(EXTENSIONS.get(strip_compression(path).suffix.lower()) or sniff_format(path), path)
        if len(found) > 1:
            (a, pa_), (b, pb) = list(found.items())[:2]
            raise sm.UserError(f"Channel '{source.channel}' mixes formats: {source.rel(pa_)} is {a} but "
                               f"{source.rel(pb)} is {b}; put one format per channel or set the channel's ContentType.")
        fmt = next(iter(found), "csv")
    for path in files[:1]:  # a Parquet file sent as text/csv would otherwise fail with a parse error
        if fmt != "parquet" and head_bytes(path, 4) == b"PAR1":
            raise sm.UserError(f"File {source.rel(path)} is Parquet but channel '{source.channel}' is read as {fmt}; "
                               "set the channel's ContentType to application/x-parquet.")
    return fmt


def head_bytes(path: Path, size: int) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read(size)
    except OSError as exc:
        raise sm.UserError(f"File {path} cannot be read ({exc.strerror}); check the channel's files.") from None


def open_text(path: Path) -> io.TextIOBase:
    """A text file, decompressed as pyarrow does it (by extension)."""
    suffix = path.suffix.lower()
    if suffix == ".gz":
        return gzip.open(path, "rt", errors="replace", newline="")
    if suffix == ".bz2":
        return bz2.open(path, "rt", errors="replace", newline="")
    if suffix in COMPRESSIONS:
        with pa.input_stream(str(path), compression="detect") as stream:
            return io.TextIOWrapper(io.BytesIO(stream.read()), errors="replace", newline="")
    return open(path, "rt", errors="replace", newline="")


def head_lines(path: Path, count: int = 20, limit: int = 1 << 16) -> list[str]:
    """The first non-empty lines of a (possibly compressed) text file."""
    try:
        with open_text(path) as handle:
            text = handle.read(limit)
    except (OSError, EOFError, pa.ArrowException) as exc:
        raise sm.UserError(f"File {path} cannot be read ({exc}); check that it is a text file or a valid archive.") from None
    lines = text.splitlines()
    if len(text) == limit and lines:
        lines = lines[:-1] or lines  # the last line may be cut
    return [line for line in lines if line.strip()][:count]


def sniff_format(path: Path) -> str:
    if head_bytes(path, 4) == b"PAR1":
        return "parquet"
    lines = head_lines(path, 5)
    if lines and all(LIBSVM_LINE.match(line) for line in lines):
        return "libsvm"
    return "csv"


def is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def describe_first_file(source: Source, hp: dict) -> None:
    """Header, column names and column kinds from this host's first non-empty file of the channel."""
    if source.format == "libsvm":
        return
    if source.format == "parquet":
        path = source.files[0]
        schema = parquet_file(source, path).schema_arrow
        source.names, source.header = list(schema.names), True
        source.kinds = [arrow_kind(source, path, name, t) for name, t in zip(schema.names, schema.types)]
        return
    first = next((f for f in source.files if head_lines(f, 1)), None)
    if first is None:
        return
    check_text(source, first)
    rows = list(csv.reader(head_lines(first), delimiter=source.delimiter))
    source.header = detect_header(rows, hp)
    width = len(rows[0])
    source.names = [name.strip() for name in rows[0]] if source.header else [f"c{i}" for i in range(width)]
    # Column kinds from the first block (1 MiB, or batch_mb if smaller): a column of numbers there is numeric.
    read = pacsv.ReadOptions(column_names=source.names, skip_rows=int(source.header),
                             block_size=min(1 << 20, block_bytes(hp)))
    convert = pacsv.ConvertOptions(strings_can_be_null=True)
    try:
        with pacsv.open_csv(str(first), read, pacsv.ParseOptions(delimiter=source.delimiter), convert) as reader:
            schema = reader.schema
    except pa.ArrowInvalid as exc:
        raise csv_error(source, first, exc, None, read.block_size) from None
    source.kinds = [arrow_kind(source, first, name, t) for name, t in zip(schema.names, schema.types)]


def detect_header(rows: list[list[str]], hp: dict) -> bool:
    """csv_header=auto: a first row of distinct non-numeric names above numbers, or naming target_column."""
    if hp["csv_header"] != "auto":
        return hp["csv_header"] == "true"
    first = [field.strip() for field in rows[0]]
    named = [hp[key] for key in ("target_column", "weight_column", "qid_column") if hp[key] and not hp[key].isdigit()]
    if any(name in first for name in named):
        return True
    if any(not f or is_number(f) for f in first) or len(set(first)) != len(first):
        return False
    below = rows[1:]
    if not below:
        return True
    return any(is_number(row[i].strip()) for row in below for i in range(min(len(row), len(first))))


def arrow_kind(source: Source, path: Path, name: str, dtype: pa.DataType) -> str:
    if pa.types.is_dictionary(dtype):
        dtype = dtype.value_type
    if pa.types.is_boolean(dtype):
        return "bool"
    if pa.types.is_integer(dtype) or pa.types.is_floating(dtype) or pa.types.is_decimal(dtype) or pa.types.is_null(dtype):
        return "numeric"
    if pa.types.is_string(dtype) or pa.types.is_large_string(dtype) or (
            source.format == "csv" and (pa.types.is_temporal(dtype) or pa.types.is_binary(dtype))):
        return "string"
    raise sm.UserError(f"Column {name!r} of {source.rel(path)} has type {dtype}, which cannot be a feature or label; "
                       "drop the column or store it as numbers or strings.")


def agree_layout(sources: dict[str, Source], hp: dict, cluster: Cluster) -> Layout | None:
    """One column layout from every host's first files: names, kinds (string wins) and the label's place."""
    described = [s for per_host in cluster.gather(sources) for s in per_host.values()]
    formats = {s.format for s in described}
    if "train" not in {s.channel for s in described} or not any(s.files for s in described if s.channel == "train"):
        raise sm.UserError("Channel 'train' has no data files on any host; put at least one data file under the "
                           "channel's S3 prefix or local directory.")
    if len(formats) > 1:
        raise sm.UserError(f"Channels train and validation have different formats ({', '.join(sorted(formats))}); "
                           "send both in the same format.")
    if formats == {"libsvm"}:
        for key in ("target_column", "weight_column", "qid_column"):
            if hp[key]:
                raise sm.UserError(f"Hyperparameter {key} does not apply to libsvm data (the label is the first "
                                   "token and query ids are qid:N tokens); remove it.")
        return None
    described = [s for s in described if s.names is not None]
    if not described:
        raise sm.UserError("Channel 'train' has only empty files; give it at least one row of data.")
    reference = next((s for s in described if s.header), described[0])
    names = list(reference.names or [])
    kinds = ["numeric"] * len(names)
    for s in described:
        if len(s.names or []) != len(names) or (s.header and reference.header and s.names != names):
            theirs = ", ".join(s.names or [])
            raise sm.UserError(f"Channel '{s.channel}' has the columns [{theirs[:200]}] but channel "
                               f"'{reference.channel}' has [{', '.join(names)[:200]}]; give every file the same columns.")
        for i, kind in enumerate(s.kinds or []):
            if kind == "string" or (kind == "bool" and kinds[i] == "numeric"):
                kinds[i] = kind
    header = reference.header
    if header and len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise sm.UserError(f"The header names the column(s) {', '.join(map(repr, dupes))} more than once; give every "
                           "column a distinct name.")

    def column(key: str, default: int | None) -> int | None:
        value = hp[key]
        if not value:
            return default
        if header and value in names:
            return names.index(value)
        if value.isdigit() and int(value) < len(names):
            return int(value)
        where = f"columns: {', '.join(names)[:300]}" if header else "the files have no header row; pass csv_header=true if they do"
        raise sm.UserError(f"{key} {value!r} is not a column of channel '{reference.channel}' ({where}).")

    label = column("target_column", 0)
    assert label is not None
    weight = column("weight_column", None)
    if hp["csv_weights"]:
        if weight is not None:
            raise sm.UserError("csv_weights=1 and weight_column both name a weight column; pass only one.")
        weight = label + 1
    qid = column("qid_column", None)
    roles = [c for c in (label, weight, qid) if c is not None]
    if len(set(roles)) != len(roles) or max(roles) >= len(names):
        raise sm.UserError("target_column, weight_column (or csv_weights) and qid_column must name different, "
                           f"existing columns; the data has {len(names)} columns.")
    features = [c for c in range(len(names)) if c not in roles]
    if not features:
        raise sm.UserError("The data has no feature columns besides the label; add at least one feature column.")
    layout = Layout(names, kinds, header, label, weight, qid, features)
    for role, c in (("weight", weight), ("query id", qid)):
        if c is not None and kinds[c] == "string":
            raise sm.UserError(f"The {role} {layout.column(c)} holds text; it must be numeric.")
    strings = [c for c in features if kinds[c] == "string"]
    if strings and not hp["enable_categorical"]:
        raise sm.UserError(f"The {layout.column(strings[0])} holds text but enable_categorical=false; encode it as "
                           "numbers or set enable_categorical=true to use it as a categorical feature.")
    log(f"Columns: {len(names)} ({'header' if header else 'no header'}); label {layout.column(label)}"
        + (f", weight {layout.column(weight)}" if weight is not None else "")
        + (f", qid {layout.column(qid)}" if qid is not None else "")
        + f"; {len(features)} features, {len(strings)} categorical")
    return layout


def safe_feature_names(names: list[str]) -> list[str]:
    """XGBoost's feature names may not contain [, ] or <, and must be distinct."""
    out: list[str] = []
    for name in names:
        clean = re.sub(r"[\[\]<]", "_", name) or "_"
        while clean in out:
            clean += "_"
        out.append(clean)
    return out


# =================================================================================================
# Data: reading batches


@dataclass
class Raw:
    """A batch as read from a file: an Arrow record batch, or a parsed libsvm block."""

    data: Any          # pa.RecordBatch | Svm
    file: str          # channel/relative/path, for messages
    row0: int          # 0-based data row of the file where it starts

    @property
    def num_rows(self) -> int:
        return self.data.num_rows

    def slice(self, start: int, stop: int) -> Raw:
        return Raw(self.data.slice(start, stop - start), self.file, self.row0 + start)


@dataclass
class Svm:
    """Rows of a libsvm file: labels, optional weights and query ids, and a CSR matrix's arrays."""

    labels: np.ndarray
    weights: np.ndarray | None
    qid: np.ndarray | None
    indptr: np.ndarray
    indices: np.ndarray
    values: np.ndarray

    @property
    def num_rows(self) -> int:
        return len(self.labels)

    def slice(self, start: int, length: int) -> Svm:
        stop = start + length
        a, b = self.indptr[start], self.indptr[stop]
        return Svm(self.labels[start:stop], None if self.weights is None else self.weights[start:stop],
                   None if self.qid is None else self.qid[start:stop], self.indptr[start:stop + 1] - a,
                   self.indices[a:b], self.values[a:b])


def block_bytes(hp: dict) -> int:
    return max(1 << 12, int(hp["batch_mb"] * (1 << 20)))


def parquet_file(source: Source, path: Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(str(path))
    except (OSError, pa.ArrowException) as exc:
        raise sm.UserError(f"File {source.rel(path)} is not a readable Parquet file ({str(exc)[:200]}); check the "
                           "channel's ContentType or the file.") from None


def read_file(source: Source, path: Path, layout: Layout | None, hp: dict,
              columns: list[int] | None = None) -> Iterator[Any]:
    """Batches of one file, streamed: CSV and libsvm in blocks of batch_mb, Parquet by row batches."""
    if source.format == "parquet":
        assert layout is not None
        handle = parquet_file(source, path)
        missing = [n for n in layout.names if n not in handle.schema_arrow.names]
        if missing:
            raise sm.UserError(f"File {source.rel(path)} lacks the column(s) {', '.join(map(repr, missing[:5]))} that "
                               "the channel's first file has; give every file the same columns.")
        names = [layout.names[c] for c in (columns if columns is not None else range(len(layout.names)))]
        rows = max(1024, block_bytes(hp) // (8 * max(1, len(layout.names))))
        try:
            for batch in handle.iter_batches(batch_size=rows, columns=names, use_threads=True):
                yield batch
        except (OSError, pa.ArrowException) as exc:
            raise sm.UserError(f"File {source.rel(path)} could not be read as Parquet ({str(exc)[:200]}).") from None
        return
    if source.format == "libsvm":
        read = pacsv.ReadOptions(column_names=["line"], block_size=block_bytes(hp))
        parse = pacsv.ParseOptions(delimiter="\x1f", quote_char=False, escape_char=False)
        convert = pacsv.ConvertOptions(column_types={"line": pa.string()})
        row0 = 0
        for batch in _stream_csv(source, path, read, parse, convert, None):
            block = parse_libsvm(batch.column(0), source, path, row0)
            row0 += block.num_rows
            yield block
        return
    assert layout is not None
    if source.header:
        check_header(source, path, layout)
    include = None if columns is None else [layout.names[c] for c in columns]
    read = pacsv.ReadOptions(column_names=layout.names, skip_rows=int(source.header), block_size=block_bytes(hp))
    parse = pacsv.ParseOptions(delimiter=source.delimiter)
    convert = pacsv.ConvertOptions(
        column_types={name: layout.arrow_type(i) for i, name in enumerate(layout.names)},
        include_columns=include, strings_can_be_null=True, quoted_strings_can_be_null=True)
    yield from _stream_csv(source, path, read, parse, convert, layout)


def _stream_csv(source: Source, path: Path, read: pacsv.ReadOptions, parse: pacsv.ParseOptions,
                convert: pacsv.ConvertOptions, layout: Layout | None) -> Iterator[pa.RecordBatch]:
    try:
        with pacsv.open_csv(str(path), read, parse, convert) as reader:
            for batch in reader:
                yield batch
    except pa.ArrowInvalid as exc:
        if "Empty CSV file" in str(exc):
            return  # an empty file has no rows
        raise csv_error(source, path, exc, layout, read.block_size) from None
    except OSError as exc:
        raise sm.UserError(f"File {source.rel(path)} cannot be read ({exc}); check that it is a valid text or "
                           "compressed file.") from None


def check_header(source: Source, path: Path, layout: Layout) -> None:
    first = head_lines(path, 1)
    if not first:
        return
    fields = [f.strip() for f in next(csv.reader(first, delimiter=source.delimiter))]
    if fields != layout.names:
        raise sm.UserError(f"File {source.rel(path)} does not start with the header of the channel's other files "
                           f"(it has [{', '.join(fields)[:150]}]); give every file the same header, or none with "
                           "csv_header=false.")


def check_text(source: Source, path: Path) -> None:
    """A file read as CSV or libsvm must be text: NUL bytes mean a binary file with a text name."""
    try:
        with open_text(path) as handle:
            head = handle.read(4096)
    except (OSError, EOFError, pa.ArrowException):
        return  # the reader reports it
    if "\x00" in head:
        raise sm.UserError(f"File {source.rel(path)} holds binary data, not {source.format.upper()} text; remove it from "
                           "the channel, or convert it to CSV, libsvm or Parquet.")


def csv_error(source: Source, path: Path, exc: Exception, layout: Layout | None,
              block: int | None = None) -> sm.UserError:
    """An Arrow CSV error as one sentence naming the file, the row and the column."""
    text = str(exc)
    check_text(source, path)
    if block and any(s in text for s in ("straddl", "larger than block size", "Empty CSV file or block")):
        try:
            with open_text(path) as handle:
                long = sm.first_long_line(handle, block)
        except (OSError, EOFError, pa.ArrowException):
            long = None
        if long:  # Arrow reads in blocks, and a line must fit in one
            row, length = long
            return sm.UserError(f"File {source.rel(path)} has a line of {length:,} characters (line {row}), more than "
                                f"fits in one CSV block ({block / (1 << 20):g} MiB); end every row with a line break "
                                "(\\n), or store rows that wide as Parquet or libsvm.")
    ragged = re.search(r"Expected (\d+) columns, got (\d+): (.*)", text, re.S)
    if ragged:
        expected, got, content = ragged.groups()
        row = locate_row(path, source, lambda fields: len(fields) != int(expected))
        where = f" at row {row}" if row else ""
        noun = "token" if source.format == "libsvm" else "field"
        return sm.UserError(f"File {source.rel(path)} has a row with {got} {noun}s{where} where the others have "
                            f"{expected} ({content.strip()[:80]!r}); give every row the same number of fields.")
    conversion = re.search(r"column #(\d+): (?:Row #\d+: )?CSV conversion error to (\w+): invalid value '(.*)'",
                           text, re.S)
    if conversion and layout is not None:
        index, _, value = conversion.groups()
        row = locate_row(path, source, lambda fields: len(fields) > int(index) and fields[int(index)] == value)
        where = f" at row {row}" if row else ""
        return sm.UserError(f"The {layout.column(int(index))} of {source.rel(path)} holds the non-numeric value "
                            f"{value[:40]!r}{where} but "
                            "is numeric in the channel's first rows; fix the value, or leave the field empty for a "
                            "missing value.")
    return sm.UserError(f"File {source.rel(path)} is not valid {source.format.upper()} ({text.splitlines()[0][:200]}); "
                        "fix the file or the channel's ContentType.")


def locate_row(path: Path, source: Source, bad: Callable[[list[str]], bool], limit: int = 10_000_000) -> int | None:
    """The 1-based data row (not counting a header) of the first row matching `bad` (error messages only)."""
    try:
        with open_text(path) as handle:
            lines = (line for line in handle if line.strip())
            if source.format == "libsvm":
                rows: Iterable[list[str]] = (line.split() for line in lines)
            else:
                rows = csv.reader(lines, delimiter=source.delimiter)
            for number, fields in enumerate(rows, start=1 - int(source.header)):
                if number > limit:
                    break
                if number >= 1 and bad(fields):
                    return number
    except (OSError, EOFError, pa.ArrowException, csv.Error):
        pass
    return None


def parse_libsvm(lines: pa.Array, source: Source, path: Path, row0: int) -> Svm:
    """libsvm lines (`label[:weight] [qid:N] index:value ...`) parsed with Arrow compute, without a Python loop."""
    def fail(what: str, index: int) -> sm.UserError:
        return sm.UserError(f"File {source.rel(path)} is not valid libsvm at row {row0 + index + 1} ({what}); write "
                            "rows as `label index:value index:value ...`.")

    if pc.any(pc.match_substring(lines, "#")).as_py():
        lines = pc.replace_substring_regex(lines, r"#.*$", "")
    tokens = pc.utf8_split_whitespace(pc.utf8_trim_whitespace(lines))
    counts = pc.list_value_length(tokens).to_numpy(zero_copy_only=False)
    if (counts == 0).any():
        raise fail("a row without a label", int(np.argmax(counts == 0)))
    offsets = tokens.offsets.to_numpy()
    flat = tokens.values.slice(offsets[0], offsets[-1] - offsets[0])
    offsets = offsets - offsets[0]
    starts = offsets[:-1]
    head = flat.take(pa.array(starts))
    weights = None
    if pc.any(pc.match_substring(head, ":")).as_py():  # label:weight
        pair = pc.split_pattern(head, ":", max_splits=1)
        head = pc.list_element(pair, 0)
        weights = _to_float(pc.list_element(pair, 1), lambda i: fail("a weight that is not a number", i))
    labels = _to_float(head, lambda i: fail(f"the label {head[i].as_py()!r} is not a number", i))
    is_feature = np.ones(len(flat), dtype=bool)
    is_feature[starts] = False
    qid = None
    is_qid = pc.starts_with(flat, "qid:").to_numpy(zero_copy_only=False) & is_feature
    if is_qid.any():
        rows_with_qid = np.add.reduceat(is_qid.astype(np.int64), starts)
        if not (rows_with_qid == 1).all():
            raise fail("a row without exactly one qid:N token", int(np.argmax(rows_with_qid != 1)))
        qid_text = pc.utf8_slice_codeunits(flat.filter(pa.array(is_qid)), 4)
        qid = _to_float(qid_text, lambda i: fail("a qid that is not a number", i)).astype(np.int64)
        is_feature &= ~is_qid
    feature_rows = np.add.reduceat(is_feature.astype(np.int64), starts) if len(starts) else np.zeros(0, np.int64)
    pairs = pc.split_pattern(flat.filter(pa.array(is_feature)), ":", max_splits=1)
    if len(pairs) and not pc.all(pc.equal(pc.list_value_length(pairs), 2)).as_py():
        bad = int(np.argmax(pc.list_value_length(pairs).to_numpy(zero_copy_only=False) != 2))
        raise fail(f"the token {pairs[bad].as_py()[0]!r} is not index:value", _row_of(bad, feature_rows))
    try:
        indices = pc.cast(pc.list_element(pairs, 0), pa.int64()).to_numpy(zero_copy_only=False) if len(pairs) else np.zeros(0, np.int64)
    except pa.ArrowInvalid:
        index_text = pc.list_element(pairs, 0)
        bad = int(np.argmax(~np.array([is_int(t) for t in index_text.to_pylist()])))
        raise fail(f"the feature index {index_text[bad].as_py()!r} is not an integer", _row_of(bad, feature_rows)) from None
    if len(indices) and indices.min() < 0:
        raise fail("a negative feature index", _row_of(int(np.argmax(indices < 0)), feature_rows))
    values = _to_float(pc.list_element(pairs, 1) if len(pairs) else pa.array([], pa.string()),
                       lambda i: fail("a feature value that is not a number", _row_of(i, feature_rows)))
    indptr = np.concatenate([[0], np.cumsum(feature_rows)]).astype(np.int64)
    return Svm(labels, weights, qid, indptr, indices, values)


def is_int(text: str) -> bool:
    return bool(re.fullmatch(r"\s*\d+\s*", text or ""))


def _row_of(token: int, feature_rows: np.ndarray) -> int:
    return int(np.searchsorted(np.cumsum(feature_rows), token, side="right"))


def _to_float(strings: pa.Array, fail: Callable[[int], sm.UserError]) -> np.ndarray:
    try:
        return pc.cast(strings, pa.float32()).to_numpy(zero_copy_only=False)
    except pa.ArrowInvalid:
        ok = np.array([is_number(s or "") for s in strings.to_pylist()])
        raise fail(int(np.argmax(~ok))) from None


def read_source(source: Source, layout: Layout | None, hp: dict, columns: list[int] | None = None) -> Iterator[Raw]:
    """This host's batches of a channel: its files, and of their rows its part (sm_contract.row_range)."""
    start, stop = 0, math.inf
    if source.parts > 1:
        start, stop = sm.row_range(total_rows(source, layout, hp), source.part, source.parts)
    offset = 0
    for path in source.files:
        row0 = 0
        for data in read_file(source, path, layout, hp, columns):
            raw = Raw(data, source.rel(path), row0)
            n = raw.num_rows
            row0 += n
            lo, hi = max(start - offset, 0), min(stop - offset, n)
            offset += n
            if hi > lo:
                yield raw if (lo, hi) == (0, n) else raw.slice(int(lo), int(hi))
            if offset >= stop:
                return


def total_rows(source: Source, layout: Layout | None, hp: dict) -> int:
    """Rows of all the channel's files (needed when hosts split the rows of fewer files than hosts)."""
    if source._total_rows is None:
        if source.format == "parquet":
            source._total_rows = sum(parquet_file(source, f).metadata.num_rows for f in source.files)
        else:
            columns = None if layout is None else [layout.label]
            source._total_rows = sum(d.num_rows for f in source.files for d in read_file(source, f, layout, hp, columns))
    return source._total_rows


# =================================================================================================
# Data: one coding of categories and classes, numeric batches, XGBoost's DMatrix


@dataclass
class Seen:
    """What one host found in its data: categories, string classes, libsvm width."""

    categories: dict[int, set] = field(default_factory=dict)
    classes: set = field(default_factory=set)
    num_features: int = 0
    has_qid: bool = False
    has_weights: bool = False


@dataclass
class Coding:
    """Category and class codes (positions in sorted lists), the same on every host and channel."""

    categories: dict[int, list[str]]
    classes: list[str] | None
    num_features: int
    has_qid: bool = False
    has_weights: bool = False
    _arrays: dict[int, pa.Array] = field(default_factory=dict)

    def array(self, column: int) -> pa.Array:
        if column not in self._arrays:
            values = self.classes if column == -1 else self.categories[column]
            self._arrays[column] = pa.array(values or [], pa.string())
        return self._arrays[column]


@dataclass
class LabelStats:
    rows: int = 0
    low: float = math.inf
    high: float = -math.inf
    integral: bool = True
    distinct: set = field(default_factory=set)

    def update(self, y: np.ndarray) -> None:
        if not len(y):
            return
        self.rows += len(y)
        self.low, self.high = min(self.low, float(y.min())), max(self.high, float(y.max()))
        self.integral = self.integral and bool(np.all(y == np.round(y)))
        if len(self.distinct) <= 1000:
            self.distinct.update(np.unique(y).tolist())

    def merge(self, other: LabelStats) -> None:
        self.rows += other.rows
        self.low, self.high = min(self.low, other.low), max(self.high, other.high)
        self.integral = self.integral and other.integral
        self.distinct |= other.distinct


@dataclass
class Batch:
    X: Any               # np.ndarray (n, features) float32, or a scipy CSR matrix for libsvm
    y: np.ndarray
    w: np.ndarray | None
    qid: np.ndarray | None

    @property
    def num_rows(self) -> int:
        return len(self.y)

    @staticmethod
    def concat(batches: list[Batch]) -> Batch:
        if len(batches) == 1:
            return batches[0]
        first = batches[0].X
        if isinstance(first, np.ndarray):
            X = np.concatenate([b.X for b in batches])
        else:
            import scipy.sparse  # an XGBoost dependency, only needed for libsvm
            X = scipy.sparse.vstack([b.X for b in batches], format="csr")

        def cat(name: str) -> np.ndarray | None:
            parts = [getattr(b, name) for b in batches]
            return None if parts[0] is None else np.concatenate(parts)

        return Batch(X, cat("y"), cat("w"), cat("qid"))  # type: ignore[arg-type]


@dataclass
class Data:
    sources: dict[str, Source]
    layout: Layout | None
    coding: Coding
    hp: dict
    memory: dict[str, list[Batch]] | None    # in-memory mode: the converted batches
    stats: dict[str, LabelStats]
    channels: list[str]                       # channels present on any host
    rows: dict[str, int] = field(default_factory=dict)      # rows per channel (all hosts, once known)
    passes: dict[str, int] = field(default_factory=dict)    # XGBoost's passes over each channel so far

    def batches(self, channel: str) -> Iterator[Batch]:
        """One pass of XGBoost over a channel: the cached batches, or read again from disk."""
        first_pass = self.passes.get(channel, 0) == 0
        if self.memory is not None:
            batches: Iterable[Batch] = self.memory.get(channel, [])
        elif channel in self.sources:
            # Label statistics from the first pass only: XGBoost reads the data several times.
            stats = self.stats.setdefault(channel, LabelStats()) if first_pass else LabelStats()
            raws = read_source(self.sources[channel], self.layout, self.hp)
            batches = coalesce((to_batch(r, self, stats) for r in raws), self.target_rows)
        else:
            batches = []
        empty = True
        for batch in batches:
            empty = False
            yield batch
        self.passes[channel] = self.passes.get(channel, 0) + 1
        if empty:  # a host without rows still takes part in every collective step
            yield self.empty_batch()

    @property
    def num_features(self) -> int:
        return len(self.layout.features) if self.layout else self.coding.num_features

    @property
    def target_rows(self) -> int:
        return max(1, block_bytes(self.hp) // (4 * max(1, self.num_features)))

    def empty_batch(self) -> Batch:
        if self.layout is None:
            import scipy.sparse
            X: Any = scipy.sparse.csr_matrix((0, self.num_features), dtype=np.float32)
        else:
            X = np.zeros((0, self.num_features), dtype=np.float32)
        qid = None
        if (self.layout is not None and self.layout.qid is not None):
            qid = np.zeros(0, dtype=np.int64)
        return Batch(X, np.zeros(0, dtype=np.float32), None, qid)

    @property
    def feature_names(self) -> list[str] | None:
        return self.layout.feature_names if self.layout else None

    @property
    def label_name(self) -> str:
        return f"label {self.layout.column(self.layout.label)}" if self.layout else "libsvm label"

    @property
    def feature_types(self) -> list[str] | None:
        return self.layout.feature_types if self.layout else None

    @property
    def categorical(self) -> bool:
        return bool(self.layout and "c" in self.layout.feature_types)


def load_data(sources: dict[str, Source], layout: Layout | None, hp: dict, cluster: Cluster) -> Data:
    """Read (in memory) or scan (external memory) every channel, agree on the codes, convert to numbers."""
    with_files = [ch for ch, s in sources.items() if s.files]
    channels = sorted({c for per_host in cluster.gather(with_files) for c in per_host}, key=CHANNELS.index)
    for channel in set(sources) - set(channels):
        log(f"Channel '{channel}' has no data files; training without it.")
    if hp["early_stopping_rounds"] and "validation" not in channels:
        raise sm.UserError("early_stopping_rounds needs a 'validation' channel with data; add one or set "
                           "early_stopping_rounds=0.")
    needs_scan = layout is None or layout.kinds[layout.label] == "string" or any(
        layout.kinds[c] == "string" for c in layout.features)
    seen = Seen()
    raws: dict[str, list[Raw]] | None = None
    if not hp["external_memory"]:
        raws = {ch: list(read_source(s, layout, hp)) for ch, s in sources.items()}
        for ch_raws in raws.values():
            for raw in ch_raws:
                scan(raw, layout, seen)
    elif needs_scan:
        columns = None if layout is None else sorted(
            {c for c in layout.features if layout.kinds[c] == "string"} | {layout.label})
        for source in sources.values():
            for raw in read_source(source, layout, hp, columns):
                scan(raw, layout, seen)
    coding = merge_seen(cluster.gather(seen), layout)
    data = Data(sources, layout, coding, hp, None, {}, channels)
    if raws is not None:  # convert once; XGBoost makes several passes over the batches
        data.memory = {}
        for ch, ch_raws in raws.items():
            stats = data.stats.setdefault(ch, LabelStats())
            data.memory[ch] = list(coalesce((to_batch(r, data, stats) for r in _drain(ch_raws)), data.target_rows))
    return data


def _drain(items: list) -> Iterator:
    """Yield and forget: the Arrow batches are freed as they are converted."""
    items.reverse()
    while items:
        yield items.pop()


def scan(raw: Raw, layout: Layout | None, seen: Seen) -> None:
    """Note the categories, string classes and libsvm width of a batch."""
    if layout is None:
        indices = raw.data.indices
        seen.num_features = max(seen.num_features, int(indices.max()) + 1 if len(indices) else 0)
        seen.has_qid = seen.has_qid or raw.data.qid is not None
        seen.has_weights = seen.has_weights or raw.data.weights is not None
        return
    batch: pa.RecordBatch = raw.data
    wanted = [c for c in layout.features if layout.kinds[c] == "string"]
    if layout.kinds[layout.label] == "string":
        wanted.append(layout.label)
    for c in wanted:
        array = batch.column(layout.names[c])  # by name: Parquet keeps its own column order
        values = set(distinct_strings(array))
        if c == layout.label:
            seen.classes |= values
        else:
            seen.categories.setdefault(c, set()).update(values)


def distinct_strings(array: pa.Array) -> list[str]:
    if pa.types.is_dictionary(array.type):
        used = pc.unique(array.indices.drop_null())
        return [v for v in array.dictionary.take(used).to_pylist() if v is not None]
    return [v for v in pc.unique(array.drop_null().cast(pa.string())).to_pylist() if v is not None]


def merge_seen(seens: list[Seen], layout: Layout | None) -> Coding:
    categories: dict[int, set] = {}
    classes: set = set()
    for seen in seens:
        for c, values in seen.categories.items():
            categories.setdefault(c, set()).update(values)
        classes |= seen.classes
    if layout is not None:
        for c in layout.features:
            if layout.kinds[c] == "string":
                categories.setdefault(c, set())
    coding = Coding({c: sorted(v) for c, v in categories.items()},
                    sorted(classes) if layout is not None and layout.kinds[layout.label] == "string" else None,
                    max(s.num_features for s in seens), any(s.has_qid for s in seens),
                    any(s.has_weights for s in seens))
    for c, values in coding.categories.items():
        if len(values) > 10_000:
            log(f"Note: the categorical {layout.column(c)} has {len(values):,} categories; an ID-like column "  # type: ignore[union-attr]
                "makes a poor feature.")
    return coding


def coalesce(batches: Iterable[Batch], target_rows: int) -> Iterator[Batch]:
    """Join small batches (from small files) into batches of about target_rows rows."""
    pending: list[Batch] = []
    rows = 0
    for batch in batches:
        if not batch.num_rows:
            continue
        pending.append(batch)
        rows += batch.num_rows
        if rows >= target_rows:
            yield Batch.concat(pending)
            pending, rows = [], 0
    if pending:
        yield Batch.concat(pending)


def to_batch(raw: Raw, data: Data, stats: LabelStats) -> Batch:
    """Numbers for XGBoost: float32 features (categories as codes, missing as NaN), labels, weights, query ids."""
    layout, coding = data.layout, data.coding
    if layout is None:
        import scipy.sparse  # an XGBoost dependency
        svm: Svm = raw.data
        if (svm.qid is None) == coding.has_qid and svm.num_rows:
            raise sm.UserError(f"File {raw.file} {'lacks' if coding.has_qid else 'has'} qid:N tokens that other files "
                               f"{'have' if coding.has_qid else 'lack'}; give every row a query id, or none.")
        X = scipy.sparse.csr_matrix((svm.values, svm.indices, svm.indptr), shape=(svm.num_rows, coding.num_features))
        check_numbers(svm.labels, "label", raw)
        stats.update(svm.labels)
        weights = svm.weights
        if weights is not None:
            check_numbers(weights, "weight", raw, negative=True)
        elif coding.has_weights:  # rows of files without label:weight weigh 1
            weights = np.ones(svm.num_rows, dtype=np.float32)
        return Batch(X, svm.labels, weights, svm.qid)
    batch: pa.RecordBatch = raw.data
    n = batch.num_rows
    X = np.empty((n, len(layout.features)), dtype=np.float32)
    for j, c in enumerate(layout.features):
        X[:, j] = column_numbers(batch.column(layout.names[c]), layout.kinds[c], coding, c)
    label_codes = column_numbers(batch.column(layout.names[layout.label]), layout.kinds[layout.label], coding, -1)
    check_numbers(label_codes, f"label ({layout.column(layout.label)})", raw)
    stats.update(label_codes)
    w = qid = None
    if layout.weight is not None:
        w = column_numbers(batch.column(layout.names[layout.weight]), layout.kinds[layout.weight], coding, layout.weight)
        check_numbers(w, f"weight ({layout.column(layout.weight)})", raw, negative=True)
    if layout.qid is not None:
        q = column_numbers(batch.column(layout.names[layout.qid]), layout.kinds[layout.qid], coding, layout.qid)
        check_numbers(q, f"query id ({layout.column(layout.qid)})", raw)
        qid = q.astype(np.int64)
    return Batch(X, label_codes, w, qid)


def column_numbers(array: pa.Array, kind: str, coding: Coding, column: int) -> np.ndarray:
    """One column as float32: numbers as they are, categories and classes as codes, nulls as NaN."""
    if kind != "string":
        if array.type != pa.float32():
            array = pc.cast(array, pa.float32())
        return array.to_numpy(zero_copy_only=False)
    if not pa.types.is_dictionary(array.type):
        array = pc.dictionary_encode(array.cast(pa.string()))
    lookup = pc.index_in(array.dictionary.cast(pa.string()), value_set=coding.array(column))
    lookup = lookup.to_numpy(zero_copy_only=False).astype(np.float32)  # unknown values (none) would be NaN
    indices = array.indices
    codes = lookup[pc.fill_null(indices, 0).to_numpy(zero_copy_only=False)] if len(lookup) else np.full(len(array), np.nan, np.float32)
    if indices.null_count:
        codes[~indices.is_valid().to_numpy(zero_copy_only=False)] = np.nan
    return codes.astype(np.float32, copy=False)


def check_numbers(values: np.ndarray, what: str, raw: Raw, negative: bool = False) -> None:
    bad = ~np.isfinite(values)
    if negative:
        bad |= values < 0
    if bad.any():
        first = int(np.argmax(bad))
        row, value = raw.row0 + first + 1, values[first]
        problem = f"has no {what}" if np.isnan(value) else f"has {value:g} as its {what}"
        need = "a non-negative number" if negative else "a finite number"
        raise sm.UserError(f"Data row {row} of {raw.file} {problem}; every row needs {need} there, so fill in or fix "
                           "the value, or drop the row.")


class Feeder(xgb.DataIter):
    """Hands XGBoost one batch at a time, for as many passes as it makes."""

    def __init__(self, data: Data, channel: str, cache_prefix: str | None = None):
        self.data, self.channel = data, channel
        self._batches: Iterator[Batch] | None = None
        super().__init__(cache_prefix=cache_prefix, release_data=True)

    def reset(self) -> None:
        self._batches = None

    def next(self, input_data: Callable) -> bool:
        if self._batches is None:
            self._batches = self.data.batches(self.channel)
        batch = next(self._batches, None)
        if batch is None:
            return False
        input_data(data=batch.X, label=batch.y, weight=batch.w, qid=batch.qid,
                    feature_names=self.data.feature_names, feature_types=self.data.feature_types)
        return True


class external_memory_cache:
    """A directory for ExtMemQuantileDMatrix's pages (external_memory=true), removed afterwards."""

    def __init__(self, hp: dict):
        self.enabled = hp["external_memory"]
        self.parent = hp["external_memory_dir"] or None
        self.directory: tempfile.TemporaryDirectory | None = None

    def __enter__(self) -> str | None:
        if not self.enabled:
            return None
        if self.parent:
            Path(self.parent).mkdir(parents=True, exist_ok=True)
        self.directory = tempfile.TemporaryDirectory(prefix="xgboost-cache-", dir=self.parent)
        return self.directory.name

    def __exit__(self, *exc: Any) -> None:
        if self.directory is not None:
            self.directory.cleanup()


def build_dmatrices(data: Data, params: dict, hp: dict, cache: str | None) -> tuple[xgb.DMatrix, xgb.DMatrix | None]:
    """QuantileDMatrix (hist), ExtMemQuantileDMatrix (external memory), or DMatrix (exact, approx, gblinear)."""
    hist = params.get("booster", "gbtree") != "gblinear" and params.get("tree_method", "auto") in ("auto", "hist")
    common = dict(missing=hp["missing"], nthread=params["nthread"], enable_categorical=data.categorical)
    t0 = time.time()
    matrices: list[xgb.DMatrix | None] = []
    for channel in ("train", "validation"):
        if channel not in data.channels:
            matrices.append(None)
            continue
        prefix = os.path.join(cache, channel) if cache else None
        feeder = Feeder(data, channel, prefix)
        ref = matrices[0] if channel == "validation" else None
        if hist and cache:
            matrix: xgb.DMatrix = xgb.ExtMemQuantileDMatrix(feeder, max_bin=params["max_bin"], ref=ref, **common)
        elif hist:
            matrix = xgb.QuantileDMatrix(feeder, max_bin=params["max_bin"], ref=ref, **common)
        else:
            matrix = xgb.DMatrix(feeder, **common)
        matrices.append(matrix)
        data.rows[channel] = matrix.num_row()
    if data.memory is not None:
        data.memory = None  # XGBoost holds its own compact copy now
    log(f"Data ready in {time.time() - t0:.1f}s: " + ", ".join(
        f"{ch} {data.rows[ch]:,} rows" for ch in data.rows) + f" x {data.num_features} features on this host")
    return matrices[0], matrices[1]  # type: ignore[return-value]


# =================================================================================================
# Labels and the objective


def objective_from_labels(params: dict, data: Data) -> None:
    """String labels are classes: pick a classification objective and num_class, or reject a regression one."""
    classes = data.coding.classes
    if classes is None:
        return
    label = data.label_name
    if len(classes) < 2:
        raise sm.UserError(f"The {label} has a single class ({classes[:1]}); classification needs "
                           "at least two.")
    objective = params.get("objective")
    if objective is None:
        params["objective"] = "binary:logistic" if len(classes) == 2 else "multi:softprob"
        log(f"The {label} holds {len(classes)} classes; objective={params['objective']}.")
    elif not str(objective).startswith(("binary:", "multi:")):
        raise sm.UserError(f"The {label} holds text ({', '.join(classes[:3])}, ...) but objective="
                           f"{objective} needs numbers; use binary:logistic or multi:softprob, or numeric labels.")
    if str(params["objective"]).startswith("binary:") and len(classes) != 2:
        raise sm.UserError(f"objective={params['objective']} needs two classes but the {label} has "
                           f"{len(classes)} ({', '.join(classes[:5])}); use multi:softprob.")
    if str(params["objective"]).startswith("multi:"):
        declared = params.get("num_class")
        if declared is not None and declared != len(classes):
            raise sm.UserError(f"num_class={declared} but the {label} has {len(classes)} classes "
                               f"({', '.join(classes[:5])}); set num_class={len(classes)} or leave it out.")
        params["num_class"] = len(classes)


def check_labels(params: dict, data: Data, cluster: Cluster) -> dict[str, LabelStats]:
    """The labels against the objective, over all hosts (after XGBoost has seen the data)."""
    merged: dict[str, LabelStats] = {}
    for per_host in cluster.gather(data.stats):
        for channel, stats in per_host.items():
            merged.setdefault(channel, LabelStats()).merge(stats)
    for channel in data.channels:
        data.rows[channel] = int(cluster.sum(data.rows.get(channel, 0)))
    train = merged.get("train", LabelStats())
    if data.rows.get("train", 0) == 0 or train.rows == 0:
        raise sm.UserError("Channel 'train' has no rows on any host; give it at least one row of data.")
    objective = str(params.get("objective", "reg:squarederror"))
    label = data.label_name
    everything = LabelStats()
    for stats in merged.values():
        everything.merge(stats)
    if data.coding.classes is None:
        if objective.startswith("multi:"):
            if not everything.integral or everything.low < 0:
                raise sm.UserError(f"objective={objective} needs class labels 0, 1, ..., num_class-1 but the {label} "
                                   f"has values from {everything.low:g} to {everything.high:g}; encode the classes as "
                                   "0..K-1 or as text.")
            present = int(everything.high) + 1
            declared = params.get("num_class")
            if declared is None:
                params["num_class"] = present
                log(f"num_class={present} (labels 0..{present - 1}).")
            elif everything.high >= declared:
                raise sm.UserError(f"num_class={declared} but the {label} has the class {int(everything.high)}; labels "
                                   f"must be 0..{declared - 1}, so set num_class={present}.")
            elif declared > present:
                raise sm.UserError(f"num_class={declared} but the {label} only has the classes 0..{present - 1}; set "
                                   f"num_class={present}, or add rows of the missing classes.")
        elif objective.startswith("binary:") and (everything.low < 0 or everything.high > 1):
            raise sm.UserError(f"objective={objective} needs labels between 0 and 1 but the {label} has values from "
                               f"{everything.low:g} to {everything.high:g}; use multi:softprob for more classes, or "
                               "encode the labels as 0 and 1.")
        elif objective.startswith("reg:gamma") and everything.low <= 0:
            raise sm.UserError(f"objective=reg:gamma needs positive labels but the {label} has {everything.low:g}; use "
                               "another objective or shift the labels.")
        elif objective.startswith(("reg:tweedie", "count:poisson")) and everything.low < 0:
            raise sm.UserError(f"objective={objective} needs non-negative labels but the {label} has "
                               f"{everything.low:g}; use another objective or shift the labels.")
    if objective.startswith("rank:") and not (data.coding.has_qid if data.layout is None else data.layout.qid is not None):
        raise sm.UserError(f"objective={objective} needs query ids; set qid_column (CSV, Parquet) or write qid:N "
                           "tokens (libsvm).")
    return merged


# =================================================================================================
# The model: new or resumed, and the training loop


def new_or_resumed_booster(params: dict, dtrain: xgb.DMatrix, dvalid: xgb.DMatrix | None,
                           checkpoints: sm.Checkpoints, hp: dict, cluster: Cluster) -> tuple[xgb.Booster, int]:
    """A fresh booster, or the newest checkpoint's (the first host's, sent to every host)."""
    found: tuple[int, bytes] | None = None
    if cluster.rank == 0 and checkpoints.enabled:
        found = newest_loadable_checkpoint(checkpoints)
    found = cluster.broadcast(found)
    cache = [dtrain] + ([dvalid] if dvalid is not None else [])
    if found is None:
        if checkpoints.enabled:
            log(f"No checkpoint in {checkpoints.directory}; starting at round 0.")
        return xgb.Booster(params, cache), 0
    step, raw = found
    try:  # the checkpoint's trees with this job's parameters (nthread, device, ...)
        booster = xgb.Booster(params, cache, model_file=bytearray(raw))
    except xgb.core.XGBoostError as exc:
        raise sm.UserError(f"Checkpoint {checkpoints.path(step)} cannot be loaded ({xgboost_message(exc)}); delete it "
                           "to start over.") from None
    if booster.num_features() != dtrain.num_col():
        raise sm.UserError(f"Checkpoint {checkpoints.path(step)} has {booster.num_features()} features but the data "
                           f"has {dtrain.num_col()}; delete the checkpoints of the other data set to start over.")
    saved = booster.attr("smkit_params")
    if saved:
        changed = sorted(k for k, v in json.loads(saved).items() if k not in RUNTIME_PARAMS and str(params.get(k)) != v)
        if changed:
            log(f"Warning: resuming with changed parameters: {', '.join(changed)}.")
    log(f"Resuming from checkpoint {checkpoints.path(step).name}: {step} rounds done.")
    return booster, step


def newest_loadable_checkpoint(checkpoints: sm.Checkpoints) -> tuple[int, bytes] | None:
    """The newest checkpoint that XGBoost loads, as (rounds, bytes). A damaged one (cut off while it was
    copied, a full disk) is skipped with a warning and the one before it is used, as a spot restart must
    not fail on it; with none that loads, training starts at round 0."""
    saved = checkpoints.saved()
    for step, path in reversed(saved):
        try:
            raw = path.read_bytes()
            xgb.Booster(model_file=bytearray(raw))  # UBJSON parsed by XGBoost: never unpickled
            return step, raw
        except (OSError, xgb.core.XGBoostError) as exc:
            reason = xgboost_message(exc) if isinstance(exc, xgb.core.XGBoostError) else str(exc)
            log(f"Warning: checkpoint {path.name} cannot be loaded ({reason}); trying an older one.")
    if saved:
        log(f"Warning: no checkpoint in {checkpoints.directory} can be loaded; starting at round 0.")
    return None


class LogMetrics(xgb.callback.TrainingCallback):
    """One line per round, `[round i] train:rmse=... validation:rmse=...`, for SageMaker's metric regexes."""

    def after_iteration(self, model: xgb.Booster, epoch: int, evals_log: dict) -> bool:
        sm.log_metrics("round", epoch, latest_metrics(evals_log))
        return False


def latest_metrics(evals_log: dict, at: int = -1) -> dict[str, float]:
    return {f"{data}:{metric}": float(values[at] if not isinstance(values[at], tuple) else values[at][0])
            for data, metrics in evals_log.items() for metric, values in metrics.items() if values}


class EarlyStoppingByRound(xgb.callback.EarlyStopping):
    """XGBoost's early stopping (last eval_metric on validation, the model cut at the best round), for a loop
    that numbers rounds globally and resumes from checkpoints with the best round so far."""

    def __init__(self, rounds: int):
        super().__init__(rounds=rounds, save_best=True)
        self._resumed: tuple[int, float] | None = None

    def before_training(self, model: xgb.Booster) -> xgb.Booster:
        model = super().before_training(model)
        self.starting_round = 0  # our epochs are already global round numbers
        best_iteration, best_score = model.attr("best_iteration"), model.attr("best_score")
        if best_iteration is not None and best_score is not None and model.num_boosted_rounds() > 0:
            self._resumed = (int(best_iteration), float(best_score))
        return model

    def after_iteration(self, model: xgb.Booster, epoch: int, evals_log: dict) -> bool:
        if self._resumed is not None and not self.stopping_history:
            name = self.data or list(evals_log)[-1]
            metric = self.metric_name or list(evals_log[name])[-1]
            best_iteration, best_score = self._resumed
            self.stopping_history = {name: {metric: [best_score]}}
            self.best_scores = {name: {metric: [best_score]}}
            self.current_rounds = epoch - 1 - best_iteration
        return super().after_iteration(model, epoch, evals_log)


class SaveCheckpoints(xgb.callback.TrainingCallback):
    """Every `every` rounds the whole booster goes to the checkpoint directory (atomically; first host only)."""

    def __init__(self, checkpoints: sm.Checkpoints, every: int, writer: bool):
        self.checkpoints, self.every, self.writer = checkpoints, every, writer
        self.last_saved = -1

    def after_iteration(self, model: xgb.Booster, epoch: int, evals_log: dict) -> bool:
        if self.every and (epoch + 1) % self.every == 0:
            self.save(model, epoch + 1)
        return False

    def save(self, model: xgb.Booster, rounds: int) -> None:
        if not (self.writer and self.checkpoints.enabled) or rounds == self.last_saved:
            return
        raw = model.save_raw("ubj")
        self.checkpoints.save(rounds, lambda path: path.write_bytes(raw))
        self.last_saved = rounds


def randomized(params: dict) -> bool:
    """Whether training draws random numbers (row or column sampling, dropped trees, shuffled features)."""
    sampled = any(float(params.get(k, 1)) < 1 for k in ("subsample", "colsample_bytree", "colsample_bylevel", "colsample_bynode"))
    return sampled or params.get("booster") == "dart" or params.get("feature_selector") in ("shuffle", "random")


def train_loop(booster: xgb.Booster, dtrain: xgb.DMatrix, evals: list, start: int, num_round: int, callbacks: list,
               params: dict, cluster: Cluster, restart_every: int = 0) -> tuple[xgb.Booster, dict]:
    """XGBoost's rounds, numbered globally (a resumed run goes on at the checkpoint's round).

    XGBoost's random draws depend on the booster's history in this process (its updaters draw when they
    are created), not only on `seed`: a booster loaded from a checkpoint samples differently from one that
    trained up to that round. With restart_every=N the booster is reloaded from every checkpoint it saves,
    so an uninterrupted run and one resumed from any checkpoint take exactly the same steps.

    The callbacks run in list order, every one every round (XGBoost's own CallbackContainer keeps them in a
    set: a checkpoint could be taken before early stopping has recorded the round)."""
    cache = [matrix for matrix, _ in evals]
    saver = next(c for c in callbacks if isinstance(c, SaveCheckpoints))
    history: dict[str, dict[str, list[float]]] = {}
    for callback in callbacks:
        booster = callback.before_training(booster)
    if booster.attr("smkit_stopped_early") == "1":
        log("The checkpoint is of a run that stopped early; not training further.")
        start = num_round
    t0, trained, stopped = time.time(), 0, False
    booster.set_attr(smkit_params=json.dumps({k: str(v) for k, v in params.items() if k not in RUNTIME_PARAMS}))
    try:
        for i in range(start, num_round):
            booster.update(dtrain, iteration=i)
            trained += 1
            for data_name, metric, value in parse_evaluation(booster.eval_set(evals, i)):
                history.setdefault(data_name, {}).setdefault(metric, []).append(value)
            stopped = any([callback.after_iteration(booster, i, history) for callback in callbacks])
            if stopped:
                break
            if restart_every and (i + 1) % restart_every == 0 and i + 1 < num_round:
                booster = xgb.Booster(params, cache, model_file=booster.save_raw("ubj"))
    except xgb.core.XGBoostError as exc:
        raise sm.UserError(training_failure(exc, cluster)) from None
    if stopped:
        booster.set_attr(smkit_stopped_early="1")
    saver.save(booster, booster.num_boosted_rounds())  # the end state, so that a restart does not train again
    for callback in callbacks:
        booster = callback.after_training(booster)
    log(f"Trained {trained} rounds in {time.time() - t0:.1f}s"
        + (f"; stopped early, best round {booster.attr('best_iteration')}" if stopped else "") + ".")
    return booster, history


def parse_evaluation(text: str) -> list[tuple[str, str, float]]:
    """XGBoost's `[3]\ttrain-auc:0.98\tvalidation-aft-nloglik:1.2` as (data, metric, value) triples."""
    triples = []
    for item in text.split("\t")[1:]:
        name, _, value = item.rpartition(":")
        data_name, _, metric = name.partition("-")
        triples.append((data_name, metric, float(value)))
    return triples


RUNTIME_PARAMS = ("nthread", "device", "verbosity", "validate_parameters")


class xgboost_errors:
    """An XGBoostError (from the data, the collective or training) as one sentence in output/failure."""

    def __init__(self, cluster: Cluster):
        self.cluster = cluster

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        if exc_type is not None and issubclass(exc_type, xgb.core.XGBoostError):
            raise sm.UserError(training_failure(exc, self.cluster)) from None
        return False


def training_failure(exc: BaseException, cluster: Cluster) -> str:
    text = xgboost_message(exc)
    if cluster.world > 1 and re.search(r"allreduce|allgather|broadcast|socket|EOF|tracker|connect", text, re.I):
        return ("Training lost contact with another host (it failed or was stopped; see its failure reason) "
                f"({text[:200]}).")
    return f"XGBoost failed ({text}); check the labels against the objective and the hyperparameters."


# =================================================================================================
# Save: model, metadata, evaluation, predictions


def validation_predictions(booster: xgb.Booster, dvalid: xgb.DMatrix | None, data: Data, hp: dict,
                           cluster: Cluster) -> pa.Table | None:
    if dvalid is None or hp["save_predictions"] == "false":
        return None
    rows = dvalid.num_row()
    if cluster.world > 1:
        log("Validation predictions not written: with several hosts each one holds only a part of the data.")
        return None
    if hp["save_predictions"] == "auto" and rows > AUTO_PREDICTION_ROWS:
        log(f"Validation predictions not written ({rows:,} rows); pass save_predictions=true to write them.")
        return None
    predictions = booster.predict(dvalid)
    labels = dvalid.get_label()
    classes = data.coding.classes
    columns: dict[str, Any] = {}
    if classes is not None:
        columns["label"] = pa.array(np.asarray(classes, dtype=object)[labels.astype(np.int64)])
    else:
        columns["label"] = labels
    objective = str(booster_objective(booster))
    if predictions.ndim == 2 and objective.startswith("multi:"):
        names = classes or [str(i) for i in range(predictions.shape[1])]
        for k, name in enumerate(names):
            columns[f"probability_{name}"] = predictions[:, k]
        predicted = predictions.argmax(axis=1)
    elif predictions.ndim == 2:
        for k in range(predictions.shape[1]):
            columns[f"prediction_{k}"] = predictions[:, k]
        predicted = None
    elif objective in ("binary:logistic", "reg:logistic"):
        columns["probability"] = predictions
        predicted = (predictions > 0.5).astype(np.int64) if objective == "binary:logistic" else None
    elif objective in ("multi:softmax", "binary:hinge"):
        predicted = predictions.astype(np.int64)
    elif objective == "binary:logitraw":
        columns["margin"] = predictions
        predicted = (predictions > 0).astype(np.int64)
    else:
        columns["prediction"] = predictions
        predicted = None
    if predicted is not None:
        columns["predicted_label"] = pa.array(np.asarray(classes, dtype=object)[predicted]) if classes else predicted
    return pa.table(columns)


def booster_objective(booster: xgb.Booster) -> str:
    try:
        return json.loads(booster.save_config())["learner"]["objective"]["name"]
    except (KeyError, ValueError):
        return ""


def save(env: sm.TrainingEnv, booster: xgb.Booster, params: dict, data: Data, history: dict, start: int,
         predictions: pa.Table | None, hp: dict, started: float) -> None:
    best = booster.attr("best_iteration")
    final = latest_metrics(history, at=int(best) - start if best is not None and int(best) >= start else -1)
    layout = data.layout
    features: list[dict[str, Any]] = []
    if layout is not None:
        for name, c, kind in zip(layout.feature_names or [f"f{i}" for i in range(len(layout.features))],
                                 layout.features, layout.feature_types):
            entry: dict[str, Any] = {"name": name, "column": layout.names[c] if layout.header else c, "type": kind}
            if kind == "c":
                entry["categories"] = data.coding.categories.get(c, [])
            features.append(entry)
    metadata = {
        "framework": "xgboost",
        "xgboost_version": xgb.__version__,
        "model_file": MODEL_FILE,
        "model_format": "ubj",
        "objective": booster_objective(booster),
        "num_class": params.get("num_class"),
        "params": {k: v for k, v in params.items() if k != "nthread"},
        "num_round": hp["num_round"],
        "rounds": booster.num_boosted_rounds(),
        "best_iteration": None if best is None else int(best),
        "best_score": None if booster.attr("best_score") is None else float(booster.attr("best_score")),
        "resumed_from_round": start or None,
        "metrics": final,
        "label": {
            "column": (layout.names[layout.label] if layout.header else layout.label) if layout else 0,
            "classes": data.coding.classes,
        },
        "weight_column": None if layout is None or layout.weight is None else layout.names[layout.weight],
        "qid_column": None if layout is None or layout.qid is None else layout.names[layout.qid],
        "num_features": data.num_features,
        "features": features,
        "data": {
            "format": {ch: s.format for ch, s in data.sources.items()},
            "csv_header": layout.header if layout and any(s.format == "csv" for s in data.sources.values()) else None,
            "rows": data.rows,
            "missing": None if math.isnan(hp["missing"]) else hp["missing"],
        },
        "hosts": len(env.hosts),
        "usage": ("xgboost.Booster(model_file='xgboost-model'); features in this order, categories as their position "
                  "in features[].categories (float, NaN for missing), enable_categorical=True; a class label is "
                  "label.classes[prediction] when classes is set."),
    }
    evaluation = {
        "metrics": final,
        "best_iteration": metadata["best_iteration"],
        "best_score": metadata["best_score"],
        "rounds": booster.num_boosted_rounds(),
        "history_from_round": start,
        "history": {f"{d}:{m}": [float(v if not isinstance(v, tuple) else v[0]) for v in values]
                    for d, metrics in history.items() for m, values in metrics.items()},
        "rows": data.rows,
        "seconds": round(time.time() - started, 3),
    }
    with sm.staged_outputs(env.model_dir, env.output_data_dir) as (model_stage, output_stage):
        (model_stage / MODEL_FILE).write_bytes(booster.save_raw("ubj"))
        (model_stage / METADATA_FILE).write_text(json.dumps(metadata, indent=2, default=str) + "\n")
        (output_stage / EVALUATION_FILE).write_text(json.dumps(evaluation, indent=2) + "\n")
        if predictions is not None:
            pacsv.write_csv(predictions, str(output_stage / PREDICTIONS_FILE))
    # Not in the `name=value` form of the per-round lines: SageMaker's metric regexes must not count it twice.
    log(f"Model written to {env.model_dir / MODEL_FILE} ({booster.num_boosted_rounds()} rounds); final "
        + ", ".join(f"{k} {v:.6g}" for k, v in final.items()) + ".")


# =================================================================================================
# Hosts: XGBoost's collective (Rabit) across the job's hosts


class Cluster:
    """This host among the job's hosts. With more than one, the first sorted host runs XGBoost's tracker and
    every host joins the collective; data-reading steps run through `agree` so that a bad input on one host
    fails every host with the same reason instead of leaving the others waiting."""

    def __init__(self, env: sm.TrainingEnv, port: int, timeout: int):
        self.hosts, self.host = env.hosts, env.current_host
        self.rank, self.world = env.host_rank, len(env.hosts)
        self.port, self.timeout = port, timeout
        self.tracker: Any = None
        self.context: Any = None
        self.active = False

    def __enter__(self) -> Cluster:
        if self.world == 1:
            return self
        master_ip = resolve(self.hosts[0], self.timeout)
        if self.rank == 0:
            from xgboost.tracker import RabitTracker
            try:
                self.tracker = RabitTracker(n_workers=self.world, host_ip=master_ip, port=self.port, sortby="task",
                                            timeout=self.timeout)
                self.tracker.start()
            except xgb.core.XGBoostError as exc:
                raise sm.UserError(f"XGBoost's tracker cannot listen on {master_ip}:{self.port} "
                                   f"({xgboost_message(exc)}); pick a free tracker_port.") from None
            log(f"Tracker listening on {master_ip}:{self.port} for {self.world} hosts.")
        args = {"dmlc_tracker_uri": master_ip, "dmlc_tracker_port": self.port, "dmlc_task_id": f"{self.rank:06d}",
                "dmlc_retry": 8}
        self.context = collective.CommunicatorContext(**args)  # also finds NCCL for GPU builds
        try:
            self.context.__enter__()
        except xgb.core.XGBoostError as exc:
            raise sm.UserError(f"Host {self.host} could not join XGBoost's tracker at {master_ip}:{self.port} "
                               f"({xgboost_message(exc)[:200]}); check that the hosts can reach each other.") from None
        self.active = True
        if collective.get_rank() != self.rank or collective.get_world_size() != self.world:
            raise sm.UserError(f"XGBoost's tracker gave host {self.host} rank {collective.get_rank()} of "
                               f"{collective.get_world_size()}, expected {self.rank} of {self.world}.")
        log(f"Joined the collective as rank {self.rank} of {self.world}.")
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        global HARD_EXIT
        if not self.active:
            return False
        if exc_type is None or issubclass(exc_type, HostsFailed):  # every host is here: leave together
            self.context.__exit__(None, None, None)
            if self.tracker is not None:
                self.tracker.wait_for(self.timeout)
        else:
            # This host alone failed. Its exit closes its sockets, so the others fail at their next collective
            # step ("lost contact"); XGBoost's teardown must not run (it waits for the tracker, or crashes).
            HARD_EXIT = True
        return False

    def gather(self, obj: Any) -> list:
        """Every host's `obj`, in host order (a list of one on a single host)."""
        if not self.active:
            return [obj]
        return [collective.broadcast((obj,) if r == self.rank else None, r)[0] for r in range(self.world)]

    def broadcast(self, obj: Any) -> Any:
        return collective.broadcast((obj,) if self.rank == 0 else None, 0)[0] if self.active else obj

    def sum(self, value: float) -> float:
        if not self.active:
            return value
        return float(collective.allreduce(np.array([value], dtype=np.float64), collective.Op.SUM)[0])

    def agree(self, step: Callable, *args: Any) -> Any:
        """Run a step here; if it fails with a UserError on any host, fail on every host with the first reason."""
        try:
            result, error = step(*args), None
        except sm.UserError as exc:
            result, error = None, str(exc)
        errors = self.gather(error)
        for host, message in zip(self.hosts, errors):
            if message:
                raise HostsFailed(message if self.world == 1 else f"Host {host}: {message}")
        return result


class HostsFailed(sm.UserError):
    """A bad input that every host reports (Cluster.agree)."""


HARD_EXIT = False  # set when this host failed alone in a multi-host job


def resolve(host: str, timeout: float) -> str:
    """The host's IPv4 address; retried while the job's DNS comes up."""
    deadline = time.time() + timeout
    while True:
        try:
            return socket.gethostbyname(host)
        except OSError:
            if time.time() > deadline:
                raise sm.UserError(f"Host {host!r} does not resolve to an address after {timeout}s; check the job's "
                                   "hosts (SM_HOSTS) and network.") from None
            time.sleep(1)


def log(message: str) -> None:
    print(message, flush=True)


def failure_dir() -> Path | None:
    """Where output/failure goes, also when the environment itself failed to load."""
    if ENV is not None:
        return ENV.output_dir
    argv = sys.argv[1:]
    for i, token in enumerate(argv):
        if token.startswith(("--output-dir", "--output_dir")):
            value = token.split("=", 1)[1] if "=" in token else (argv[i + 1] if i + 1 < len(argv) else "")
            return Path(value) if value else None
    return None


if __name__ == "__main__":
    try:
        sm.run(main, failure_dir)
    except SystemExit as stop:
        if HARD_EXIT:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(stop.code if isinstance(stop.code, int) else 1)
        raise
