"""The labels against the objective: text labels are classes (they choose a classification objective and
num_class), numeric labels must suit the objective (0..K-1 for multi:*, 0..1 for binary:*, ...)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import sm_contract as sm

from dmatrix import LabelStats

if TYPE_CHECKING:
    from hosts import Cluster
    from dmatrix import Data


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
        sm.log(f"The {label} holds {len(classes)} classes; objective={params['objective']}.")
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
                sm.log(f"num_class={present} (labels 0..{present - 1}).")
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
