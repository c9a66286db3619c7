"""XGBoost's training parameters: every name the script passes through to XGBoost, its type, the
script's defaults (device, nthread, seed, max_bin), and XGBoost's own check of the values on tiny data
before any real data is read. The script's own options are in train.py."""

from __future__ import annotations

import json
import re
from typing import Any, Iterable

import numpy as np
import sm_contract as sm
import xgboost as xgb


def _p(kind: Any, text: str) -> sm.Hyperparameter:
    return sm.Hyperparameter(kind, None, text)


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


def xgboost_parameter(name: str, raw: Any, script_options: Iterable[str] = ()) -> Any:
    """Coerce a hyperparameter the script does not declare: it must be an XGBoost parameter.
    `script_options`: the script's own names, offered too when a name looks misspelt."""
    spec = XGBOOST_PARAMETERS.get(XGBOOST_ALIASES.get(name, name))
    if spec is None:
        if name in RENAMED:
            raise sm.UserError(f"Hyperparameter {name!r} is not known to this script; use {RENAMED[name]} instead.")
        message = sm.unknown_hyperparameter(name, list(script_options) + list(XGBOOST_PARAMETERS) + list(XGBOOST_ALIASES))
        raise sm.UserError(message if message.endswith("?") else message + " (docs/xgboost.md lists the accepted names).")
    if name in ("monotone_constraints", "interaction_constraints") and isinstance(raw, (list, tuple, dict)):
        raw = json.dumps(raw)
    return sm.coerce(name, raw, spec)


def xgboost_params(env: sm.TrainingEnv) -> dict[str, Any]:
    """The booster's parameters: what the user passed, aliases resolved, this script's defaults filled in."""
    params: dict[str, Any] = {}
    for name, value in env.hyperparameters.items():
        canonical = XGBOOST_ALIASES.get(name, name)
        if canonical not in XGBOOST_PARAMETERS:  # one of the script's own options
            continue
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


def print_help() -> None:
    """The XGBoost parameters, after the script's own options in `python train.py --help`."""
    print("\nXGBoost parameters (" + PARAMETER_DOCS + "):")
    for name, spec in XGBOOST_PARAMETERS.items():
        alias = [a for a, target in XGBOOST_ALIASES.items() if target == name]
        print(f"  --{name:24} {spec.help}" + (f" (alias {alias[0]})" if alias else ""))
