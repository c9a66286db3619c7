"""Checkpoints of the booster: saved every `checkpoint_frequency` rounds (atomically, first host only),
resumed from the newest one that XGBoost loads, with early stopping that remembers its best round
across a resume. SageMaker syncs the checkpoint directory to S3 and restores it for a spot restart."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import TYPE_CHECKING

import sm_contract as sm
import xgboost as xgb

from params import xgboost_message

if TYPE_CHECKING:
    from hosts import Cluster

LOAD_PROBE = ("import sys, xgboost\ntry:\n    xgboost.Booster(model_file=bytearray(sys.stdin.buffer.read()))\n"
              "except xgboost.core.XGBoostError as exc:\n    sys.exit(str(exc))")
# Parameters of the machine, not of the model: a resume with other values is not "changed parameters".
RUNTIME_PARAMS = ("nthread", "device", "verbosity", "validate_parameters")


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
            sm.log(f"No checkpoint in {checkpoints.directory}; starting at round 0.")
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
            sm.log(f"Warning: resuming with changed parameters: {', '.join(changed)}.")
    sm.log(f"Resuming from checkpoint {checkpoints.path(step).name}: {step} rounds done.")
    return booster, step


def load_problem(raw: bytes) -> str | None:
    """None when XGBoost loads these checkpoint bytes, else why not. Tried in a child process: XGBoost 3.0's UBJSON
    reader crashes the process (SIGSEGV) on some cut-off files instead of raising, and a spot restart must
    survive a damaged checkpoint. UBJSON parsed by XGBoost: never unpickled."""
    probe = subprocess.run([sys.executable, "-c", LOAD_PROBE], input=raw, capture_output=True)
    if probe.returncode == 0:
        return None
    if probe.returncode < 0:
        return f"XGBoost's reader crashed on it, signal {-probe.returncode}"
    error = probe.stderr.decode(errors="replace")
    return xgboost_message(error) if error.strip() else f"exit {probe.returncode}"


def newest_loadable_checkpoint(checkpoints: sm.Checkpoints) -> tuple[int, bytes] | None:
    """The newest checkpoint that XGBoost loads, as (rounds, bytes). A damaged one (cut off while it was
    copied, a full disk) is skipped with a warning and the one before it is used, as a spot restart must
    not fail on it; with none that loads, training starts at round 0."""
    saved = checkpoints.saved()
    for step, path in reversed(saved):
        try:
            raw = path.read_bytes()
            reason = load_problem(raw)  # the very bytes returned, read once
        except OSError as exc:
            reason = str(exc)
        if reason is None:
            return step, raw
        sm.log(f"Warning: checkpoint {path.name} cannot be loaded ({reason}); trying an older one.")
    if saved:
        sm.log(f"Warning: no checkpoint in {checkpoints.directory} can be loaded; starting at round 0.")
    return None


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
