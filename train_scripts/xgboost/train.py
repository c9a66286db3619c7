"""Train an XGBoost model, inside a SageMaker training container or as plain Python.

    python train.py --train DIR [--validation DIR] --model-dir DIR [--num_round 200 --eta 0.1 ...]

Reads top to bottom: the configuration (the script's own options; every XGBoost training parameter is a
hyperparameter too, see params.py), then main(): join the other hosts, read the data, build the model
(new or resumed from a checkpoint), run the boosting loop, save. One metrics line per round:

    [round 12] train:rmse=0.3512 validation:rmse=0.4012

The modules beside it, baked into /opt/ml/code with it, have one job each:
    params.py         XGBoost's parameters, their types and XGBoost's own check of the values
    data_utils.py     which files each channel has, their format (CSV, libsvm, Parquet), the column layout
    memory.py         in memory or external memory, and the batch size, from the container's memory
    readers.py        batches from files (pyarrow), bad files as one sentence naming file, row and column
    dmatrix.py        categories and classes coded alike on every host, batches into XGBoost's DMatrix
    labels.py         the labels against the objective
    checkpointing.py  save and resume the booster (spot training), early stopping across a resume
    hosts.py          the hosts in XGBoost's collective: tracker, agree, gather (not "distributed":
                      Dask's package of that name ships in the real XGBoost image)
    outputs.py        model-metadata.json, evaluation.json, validation predictions
    sm_contract.py    the SageMaker contract shared with every script: paths, hyperparameters, failures

Your own preprocessing goes into dmatrix.to_batch (per batch of rows) or between "Data" and "Model" in
main(); your own outputs into save(). Python 3.10 (the prebuilt sagemaker-xgboost:3.0-5 image); numpy,
pyarrow, xgboost and the standard library only. docs/xgboost.md describes formats, hyperparameters,
outputs and the multi-host rule.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Sequence

# In the image this file, its modules and sm_contract sit together in /opt/ml/code (on sys.path already);
# in the repository sm_contract is in ../common, and runpy.run_path adds neither folder.
_HERE = Path(__file__).resolve().parent
sys.path += [str(d) for d in (_HERE, _HERE.parent / "common") if d.is_dir() and str(d) not in sys.path]

import sm_contract as sm  # noqa: E402

import pyarrow as pa
import pyarrow.csv as pacsv
import xgboost as xgb

import checkpointing
import data_utils
import dmatrix
import hosts
import labels
import memory
import outputs
import params as xgb_params
from data_utils import CHANNELS

# =================================================================================================
# Config: what the script itself understands (everything else must be an XGBoost parameter)

HYPERPARAMETERS = {
    "num_round": sm.Hyperparameter(int, 100, "boosting rounds", min=1),
    "early_stopping_rounds": sm.Hyperparameter(
        int, 0, "stop when the last eval_metric on validation has not improved for this many rounds (0: off)", min=0),
    "target_column": sm.Hyperparameter(
        str, "", "label column: a header name or a 0-based index (default: the first column)"),
    "weight_column": sm.Hyperparameter(str, "", "instance-weight column: a header name or a 0-based index"),
    "csv_weights": sm.Hyperparameter(
        int, 0, "1: the column after the label holds instance weights (the built-in algorithm's rule)", choices=(0, 1)),
    "qid_column": sm.Hyperparameter(str, "", "query-id column for rank:* objectives: a header name or a 0-based index"),
    "csv_header": sm.Hyperparameter(str, "auto", "whether CSV files start with a header row: auto, true or false"),
    "csv_delimiter": sm.Hyperparameter(str, "", "CSV field delimiter (default: comma; tab for .tsv files)"),
    "data_format": sm.Hyperparameter(
        str, "auto", "input format where a channel has no ContentType: auto (by file extension, then content), csv, "
        "libsvm or parquet"),
    "enable_categorical": sm.Hyperparameter(
        bool, True, "string columns are categorical features (XGBoost's native support); false: they are an error"),
    "missing": sm.Hyperparameter(float, math.nan, "the feature value that means missing, besides empty fields and NaN"),
    "external_memory": sm.Hyperparameter(
        str, "auto", "train from disk-cached pages (ExtMemQuantileDMatrix): auto (when the data does not fit the "
        "container's memory), true or false"),
    "external_memory_dir": sm.Hyperparameter(str, "", "directory for the external-memory cache (default: a temporary one)"),
    "batch_mb": sm.Hyperparameter(
        float, 0.0, "MiB of data per batch fed to XGBoost (and per external-memory page); 0: from the container's "
        "memory", min=0),
    "checkpoint_frequency": sm.Hyperparameter(
        int, 10, "save a checkpoint every N rounds when a checkpoint directory is set (0: only at the end)", min=0),
    "exact_resume": sm.Hyperparameter(
        bool, True, "with sampling (subsample, colsample_*, dart) and checkpoints, restart the booster from each "
        "checkpoint it saves, so that a resumed run ends with the identical model"),
    "save_predictions": sm.Hyperparameter(
        str, "auto", f"write validation predictions: auto (up to {outputs.AUTO_PREDICTION_ROWS:,} rows, one host), true or false"),
    "tracker_port": sm.Hyperparameter(int, 9099, "port of XGBoost's tracker on the first host (multi-host)", min=1, max=65535),
    "tracker_timeout": sm.Hyperparameter(int, 900, "seconds the hosts may take to join the tracker (multi-host)", min=1),
    "_tuning_objective_metric": sm.Hyperparameter(
        str, "", "set by SageMaker automatic model tuning (e.g. validation:auc); its metric joins eval_metric"),
}


# Word-valued options, case-insensitive (the SDK sends Python's True as "True").
CHOICES = {"csv_header": ("auto", "true", "false"), "save_predictions": ("auto", "true", "false"),
           "external_memory": ("auto", "true", "false"),
           "data_format": ("auto", "csv", "libsvm", "parquet")}



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
    """A hyperparameter the table above does not declare: it must be an XGBoost parameter."""
    return xgb_params.xgboost_parameter(name, raw, script_options=HYPERPARAMETERS)


# =================================================================================================
# The job, top to bottom


def main(argv: Sequence[str] | None = None) -> None:
    started = time.time()
    # --- Config: environment and hyperparameters, all validated before any data is read.
    try:
        env = sm.load_environment(HYPERPARAMETERS, CHANNELS, argv, extra_hyperparameters=xgboost_parameter)
    except SystemExit:  # --help: add XGBoost's own parameters to the usage
        xgb_params.print_help()
        raise
    hp = script_options(env)
    params = xgb_params.xgboost_params(env)
    xgb_params.check_parameters_with_xgboost(params)
    pa.set_cpu_count(params["nthread"])  # the CSV reader's threads: as many as XGBoost's
    if hp["early_stopping_rounds"] and env.channels.get("validation") is None:
        raise sm.UserError("early_stopping_rounds needs a 'validation' channel to watch; add one or set "
                           "early_stopping_rounds=0.")
    checkpoints = sm.Checkpoints(env.checkpoint_dir, prefix="xgboost-checkpoint", suffix=".ubj")
    sm.log(f"XGBoost {xgb.__version__} on host {env.current_host} ({env.host_rank + 1} of {len(env.hosts)}), "
           f"device={params['device']}, nthread={params['nthread']}")

    with hosts.Cluster(env, hp["tracker_port"], hp["tracker_timeout"]) as cluster, \
            hosts.xgboost_errors(cluster):
        # --- Data: this host's files, one table layout and one category coding for all hosts and channels.
        sources = cluster.agree(data_utils.plan_sources, env, hp, cluster)
        layout = cluster.agree(data_utils.agree_layout, sources, hp, cluster)
        cluster.agree(memory.plan, hp, sources, layout, cluster)  # in memory or external; batch_mb
        data = cluster.agree(dmatrix.load_data, sources, layout, hp, cluster)
        labels.objective_from_labels(params, data)
        with dmatrix.external_memory_cache(hp) as cache:
            dtrain, dvalid = dmatrix.build_dmatrices(data, params, hp, cache)
            cluster.agree(labels.check_labels, params, data, cluster)

            # --- Model: new, or resumed from the newest checkpoint.
            booster, start = checkpointing.new_or_resumed_booster(params, dtrain, dvalid, checkpoints, hp, cluster)
            evals = [(dtrain, "train")] + ([(dvalid, "validation")] if dvalid is not None else [])

            # --- Loop: XGBoost's rounds, metrics in the log, checkpoints, early stopping.
            callbacks: list[xgb.callback.TrainingCallback] = [LogMetrics()]
            if hp["early_stopping_rounds"]:
                callbacks.append(checkpointing.EarlyStoppingByRound(hp["early_stopping_rounds"]))
            callbacks.append(checkpointing.SaveCheckpoints(checkpoints, hp["checkpoint_frequency"], cluster.rank == 0))
            restart = checkpoints.enabled and hp["exact_resume"] and checkpointing.randomized(params)
            booster, history = train_loop(booster, dtrain, evals, start, hp["num_round"], callbacks, params, cluster,
                                          restart_every=hp["checkpoint_frequency"] if restart else 0)

            # --- Save: only the first host writes; the model, its metadata and the evaluation appear together.
            if cluster.rank == 0:
                predictions = outputs.validation_predictions(booster, dvalid, data, hp, cluster)
                save(env, booster, params, data, history, start, predictions, hp, started)
            # Every host leaves only once the model is saved: SageMaker local mode (docker compose
            # --abort-on-container-exit) stops all containers as soon as the first one exits.
            cluster.gather(None)
            del booster, dtrain, dvalid, evals  # XGBoost deletes its external-memory pages with them
    sm.log(f"Done in {time.time() - started:.1f}s.")


# =================================================================================================
# The loop


class LogMetrics(xgb.callback.TrainingCallback):
    """One line per round, `[round i] train:rmse=... validation:rmse=...`, for SageMaker's metric regexes."""

    def after_iteration(self, model: xgb.Booster, epoch: int, evals_log: dict) -> bool:
        sm.log_metrics("round", epoch, outputs.latest_metrics(evals_log))
        return False


def train_loop(booster: xgb.Booster, dtrain: xgb.DMatrix, evals: list, start: int, num_round: int, callbacks: list,
               params: dict, cluster: hosts.Cluster, restart_every: int = 0) -> tuple[xgb.Booster, dict]:
    """XGBoost's rounds, numbered globally (a resumed run goes on at the checkpoint's round).

    XGBoost's random draws depend on the booster's history in this process (its updaters draw when they
    are created), not only on `seed`: a booster loaded from a checkpoint samples differently from one that
    trained up to that round. With restart_every=N the booster is reloaded from every checkpoint it saves,
    so an uninterrupted run and one resumed from any checkpoint take exactly the same steps.

    The callbacks run in list order, every one every round (XGBoost's own CallbackContainer keeps them in a
    set: a checkpoint could be taken before early stopping has recorded the round)."""
    cache = [matrix for matrix, _ in evals]
    saver = next(c for c in callbacks if isinstance(c, checkpointing.SaveCheckpoints))
    history: dict[str, dict[str, list[float]]] = {}
    for callback in callbacks:
        booster = callback.before_training(booster)
    if booster.attr("smkit_stopped_early") == "1":
        sm.log("The checkpoint is of a run that stopped early; not training further.")
        start = num_round
    t0, trained, stopped = time.time(), 0, False
    booster.set_attr(smkit_params=json.dumps({k: str(v) for k, v in params.items() if k not in checkpointing.RUNTIME_PARAMS}))
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
        raise sm.UserError(hosts.training_failure(exc, cluster)) from None
    if stopped:
        booster.set_attr(smkit_stopped_early="1")
    saver.save(booster, booster.num_boosted_rounds())  # the end state, so that a restart does not train again
    for callback in callbacks:
        booster = callback.after_training(booster)
    sm.log(f"Trained {trained} rounds in {time.time() - t0:.1f}s"
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


# =================================================================================================
# Save


def save(env: sm.TrainingEnv, booster: xgb.Booster, params: dict, data: dmatrix.Data, history: dict, start: int,
         predictions: Any, hp: dict, started: float) -> None:
    """xgboost-model (UBJSON, never pickle), model-metadata.json and evaluation.json, all or nothing."""
    final = outputs.final_metrics(booster, history, start)
    metadata = outputs.model_metadata(booster, params, data, hp, len(env.hosts), start, final)
    evaluation = outputs.evaluation(booster, metadata, history, start, data, started)
    with sm.staged_outputs(env.model_dir, env.output_data_dir) as (model_stage, output_stage):
        (model_stage / outputs.MODEL_FILE).write_bytes(booster.save_raw("ubj"))
        (model_stage / "model-metadata.json").write_text(json.dumps(metadata, indent=2, default=str) + "\n")
        (output_stage / "evaluation.json").write_text(json.dumps(evaluation, indent=2) + "\n")
        if predictions is not None:
            pacsv.write_csv(predictions, str(output_stage / "validation-predictions.csv"))
    # Not in the `name=value` form of the per-round lines: SageMaker's metric regexes must not count it twice.
    sm.log(f"Model written to {env.model_dir / outputs.MODEL_FILE} ({booster.num_boosted_rounds()} rounds); final "
           + ", ".join(f"{k} {v:.6g}" for k, v in final.items()) + ".")


if __name__ == "__main__":
    sm.run(main)
