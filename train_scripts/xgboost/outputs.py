"""What the first host writes besides the booster: model-metadata.json (features, categories, classes,
parameters), evaluation.json (metrics of every round) and validation-predictions.csv."""

from __future__ import annotations

import json
import math
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import sm_contract as sm
import xgboost as xgb

if TYPE_CHECKING:
    from hosts import Cluster
    from dmatrix import Data

MODEL_FILE = "xgboost-model"  # the file name SageMaker's built-in XGBoost algorithm uses
AUTO_PREDICTION_ROWS = 1_000_000  # save_predictions=auto writes predictions up to this many rows


def validation_predictions(booster: xgb.Booster, dvalid: xgb.DMatrix | None, data: Data, hp: dict,
                           cluster: Cluster) -> pa.Table | None:
    if dvalid is None or hp["save_predictions"] == "false":
        return None
    rows = dvalid.num_row()
    if cluster.world > 1:
        sm.log("Validation predictions not written: with several hosts each one holds only a part of the data.")
        return None
    if hp["save_predictions"] == "auto" and rows > AUTO_PREDICTION_ROWS:
        sm.log(f"Validation predictions not written ({rows:,} rows); pass save_predictions=true to write them.")
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


def final_metrics(booster: xgb.Booster, history: dict, start: int) -> dict[str, float]:
    """The metrics of the round the model ends at: the best round after early stopping, else the last."""
    best = booster.attr("best_iteration")
    return latest_metrics(history, at=int(best) - start if best is not None and int(best) >= start else -1)


def latest_metrics(evals_log: dict, at: int = -1) -> dict[str, float]:
    return {f"{data}:{metric}": float(values[at] if not isinstance(values[at], tuple) else values[at][0])
            for data, metrics in evals_log.items() for metric, values in metrics.items() if values}


def model_metadata(booster: xgb.Booster, params: dict, data: Data, hp: dict, hosts: int, start: int,
                   final: dict[str, float]) -> dict[str, Any]:
    """model-metadata.json: what a user needs to predict with the model (docs/xgboost.md "Outputs")."""
    best = booster.attr("best_iteration")
    layout = data.layout
    features: list[dict[str, Any]] = []
    if layout is not None:
        for name, c, kind in zip(layout.feature_names or [f"f{i}" for i in range(len(layout.features))],
                                 layout.features, layout.feature_types):
            entry: dict[str, Any] = {"name": name, "column": layout.names[c] if layout.header else c, "type": kind}
            if kind == "c":
                entry["categories"] = data.coding.categories.get(c, [])
            features.append(entry)
    return {
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
        "hosts": hosts,
        "usage": ("xgboost.Booster(model_file='xgboost-model'); features in this order, categories as their position "
                  "in features[].categories (float, NaN for missing), enable_categorical=True; a class label is "
                  "label.classes[prediction] when classes is set."),
    }


def evaluation(booster: xgb.Booster, metadata: dict, history: dict, start: int, data: Data,
               started: float) -> dict[str, Any]:
    """evaluation.json: the final metrics and every round's metrics of this run."""
    return {
        "metrics": metadata["metrics"],
        "best_iteration": metadata["best_iteration"],
        "best_score": metadata["best_score"],
        "rounds": booster.num_boosted_rounds(),
        "history_from_round": start,
        "history": {f"{d}:{m}": [float(v if not isinstance(v, tuple) else v[0]) for v in values]
                    for d, metrics in history.items() for m, values in metrics.items()},
        "rows": data.rows,
        "seconds": round(time.time() - started, 3),
    }
