"""The training loop's parts: the learning-rate schedule, the optimizer, one epoch of steps, evaluation,
early stopping, and checkpoints that resume a run bit for bit (weights, optimizer, schedule, every
process's random state). train.py calls them in order; your own loss or metrics go into train_epoch
and evaluate.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import sm_contract as sm
import torch
import torch.nn as nn
import torch.nn.functional as F

from processes import Dist, Precision, autocast

# The hyperparameters that define a training run: a checkpoint resumes only a run with the same values.
RUN_DEFINING = ("task", "label_column", "feature_columns", "csv_header", "num_classes", "standardize",
                "validation_fraction", "hidden_sizes", "activation", "dropout", "epochs", "batch_size",
                "learning_rate", "weight_decay", "lr_schedule", "warmup_epochs", "min_lr_ratio", "grad_clip",
                "label_smoothing", "patience", "min_delta", "seed", "mixed_precision")


# -----------------------------------------------------------------------------------------------
# Schedule and optimizer: the same number of steps on every process


@dataclass
class Schedule:
    """Global batch semantics: steps per epoch from the total rows; each process contributes its share of
    every step, and the loss is summed over the step's rows on all processes, then divided by their
    number, so 2 hosts take the same steps with the same gradients (up to dropout) as 1."""

    steps_per_epoch: int
    loss_scales: list[float]   # per step of an epoch: processes / rows of the step on all processes
    total_steps: int
    warmup_steps: int


def make_schedule(counts: list[int], hp: dict) -> Schedule:
    steps = max(1, math.ceil(sum(counts) / hp["batch_size"]))
    step_rows = [sum(col) for col in zip(*(chunk_sizes(n, steps) for n in counts))]
    total = steps * hp["epochs"]
    return Schedule(steps, [len(counts) / rows for rows in step_rows], total,
                    min(total, int(round(hp["warmup_epochs"] * steps))))


def learning_rate(step: int, total: int, warmup: int, peak: float, schedule: str, min_ratio: float) -> float:
    if warmup and step < warmup:
        return peak * (step + 1) / (warmup + 1)
    if schedule == "constant" or total <= warmup:
        return peak
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    decay = 0.5 * (1.0 + math.cos(math.pi * progress)) if schedule == "cosine" else 1.0 - progress
    return peak * (min_ratio + (1.0 - min_ratio) * decay)


def chunk_sizes(rows: int, steps: int) -> list[int]:
    """Rows per step of a process with `rows` rows (torch.tensor_split of a permutation; rows < steps:
    the permutation is repeated so that every step has at least one row)."""
    base, extra = divmod(max(rows, steps), steps)
    return [base + 1] * extra + [base] * (steps - extra)


def make_optimizer(model: nn.Module, hp: dict, device: torch.device) -> torch.optim.Optimizer:
    """AdamW, weight decay on weights only, as one fused kernel where this torch has one for the device
    (else the foreach implementation): a step is a handful of kernels, not a few per parameter."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": hp["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}]
    try:
        return torch.optim.AdamW(groups, lr=hp["learning_rate"], fused=True)
    except (RuntimeError, TypeError, ValueError):  # no fused AdamW for this device or torch version
        return torch.optim.AdamW(groups, lr=hp["learning_rate"], foreach=True)


def criterion(hp: dict) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The loss summed over a step's rows: cross-entropy for classification, squared error for regression."""
    if hp["task"] == "classification":
        return lambda out, yb: F.cross_entropy(out, yb, reduction="sum", label_smoothing=hp["label_smoothing"])
    return lambda out, yb: F.mse_loss(out[:, 0], yb, reduction="sum")


# -----------------------------------------------------------------------------------------------
# One epoch


def train_epoch(model: nn.Module, params: list[torch.Tensor], optimizer: torch.optim.Optimizer, scaler: Any,
                data: tuple[torch.Tensor, torch.Tensor], order: torch.Tensor, step: int, schedule: Schedule,
                criterion: Callable, hp: dict, me: Dist, precision: Precision) -> tuple[dict[str, float], int]:
    """One pass over this process's rows in `order`; returns the epoch's metrics (over every process) and
    the global step count. Per step there is no host sync: loss and accuracy add up on the device and
    are read once at the end of the epoch."""
    model.train()
    X, Y = data
    device = me.device
    classification = hp["task"] == "classification"
    loss_total = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    rows, lr = 0, hp["learning_rate"]
    on_device = X.device == device
    for s, idx in enumerate(torch.tensor_split(order, schedule.steps_per_epoch)):
        lr = learning_rate(step, schedule.total_steps, schedule.warmup_steps, hp["learning_rate"], hp["lr_schedule"],
                           hp["min_lr_ratio"])
        for group in optimizer.param_groups:
            group["lr"] = lr
        if on_device:  # the data stays where it is (on CPU, or already on the GPU)
            xb, yb = X[idx.to(X.device)], Y[idx.to(X.device)]
        else:  # pinned host memory, copied per batch
            xb, yb = X[idx].to(device, non_blocking=True), Y[idx].to(device, non_blocking=True)
        if precision.dtype is None:
            out = model(xb)
        else:
            with autocast(precision, device):
                out = model(xb)
            out = out.float()
        loss_sum = criterion(out, yb)
        loss = loss_sum * schedule.loss_scales[s]  # DDP averages over processes: this makes it the step mean
        optimizer.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            if hp["grad_clip"]:
                nn.utils.clip_grad_norm_(params, hp["grad_clip"], foreach=True)
            optimizer.step()
        else:
            scale_and_step(scaler, loss, optimizer, params, hp["grad_clip"])
        step += 1
        loss_total += loss_sum.detach()
        if classification:
            correct += (out.detach().argmax(1) == yb).sum()
        rows += len(yb)
    totals = me.reduce(torch.stack([loss_total, torch.tensor(float(rows), dtype=torch.float64, device=device),
                                    correct.double()])).cpu()
    metrics = {"train:loss": float(totals[0] / totals[1])}
    if classification:
        metrics["train:accuracy"] = float(totals[2] / totals[1])
    metrics["train:learning_rate"] = lr
    return metrics, step


def scale_and_step(scaler: Any, loss: torch.Tensor, optimizer: torch.optim.Optimizer, params: list[torch.Tensor],
                   grad_clip: float) -> None:
    """fp16 on GPU: the loss is scaled against underflow, the gradients unscaled before clipping."""
    scaler.scale(loss).backward()
    if grad_clip:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(params, grad_clip, foreach=True)
    scaler.step(optimizer)
    scaler.update()


def shuffled_rows(rows: int, steps: int, shuffle: torch.Generator) -> torch.Tensor:
    """A permutation of this process's rows, repeated when it has fewer rows than steps."""
    order = torch.randperm(rows, generator=shuffle)
    if rows < steps:
        order = order.repeat(math.ceil(steps / rows))[:steps]
    return order


# -----------------------------------------------------------------------------------------------
# Early stopping and checkpoints


@dataclass
class Progress:
    """Where a run is: what a checkpoint stores besides weights, optimizer and random state."""

    epoch: int = 0
    step: int = 0
    history: list[dict] = field(default_factory=list)
    best_loss: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    stopped: bool = False
    best_state: dict | None = None  # the weights of the best validation epoch

    def after_validation(self, loss: float, epoch: int, model: nn.Module, hp: dict) -> None:
        if loss < self.best_loss - hp["min_delta"]:
            self.best_loss, self.best_epoch, self.bad_epochs = loss, epoch, 0
            self.best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        else:
            self.bad_epochs += 1
            self.stopped = bool(hp["patience"]) and self.bad_epochs >= hp["patience"]
            if self.stopped:
                sm.log(f"early stopping after epoch {epoch}: validation loss has not improved for "
                       f"{hp['patience']} epochs (best {self.best_loss:.6g} at epoch {self.best_epoch})")


def checkpoint_state(model: nn.Module, optimizer: torch.optim.Optimizer, scaler: Any, progress: Progress,
                     rng: list, lr: float, schedule: Schedule, hp: dict, preprocessing: dict, world: int) -> dict:
    """Plain types and tensors only, so that torch.load(weights_only=True) reads it."""
    return {
        "format": "smkit-mlp-checkpoint", "version": 1, "epoch": progress.epoch, "world_size": world,
        "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "scheduler": {"kind": hp["lr_schedule"], "step": progress.step, "total_steps": schedule.total_steps,
                      "warmup_steps": schedule.warmup_steps, "learning_rate": lr},
        "grad_scaler": scaler.state_dict() if scaler is not None else {}, "rng": rng, "history": progress.history,
        "early_stopping": {"best_loss": progress.best_loss, "best_epoch": progress.best_epoch,
                           "bad_epochs": progress.bad_epochs, "stopped": progress.stopped,
                           "best_model": progress.best_state},
        "hyperparameters": {k: hp[k] for k in RUN_DEFINING},
        "preprocessing": preprocessing, "torch_version": str(torch.__version__),
    }


def save_checkpoint(checkpoints: sm.Checkpoints, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: Any,
                    progress: Progress, rng: list, lr: float, schedule: Schedule, hp: dict, preprocessing: dict,
                    world: int) -> None:
    state = checkpoint_state(model, optimizer, scaler, progress, rng, lr, schedule, hp, preprocessing, world)
    path = checkpoints.save(progress.epoch, lambda tmp: torch.save(state, tmp))
    sm.log(f"checkpoint: epoch {progress.epoch} saved to {path}")


def resume(state: dict, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: Any, shuffle: torch.Generator,
           hp: dict, me: Dist, where: Path | None) -> Progress:
    """Load a checkpoint's weights, optimizer, schedule position and random state (see checkpoint_state)."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if state["grad_scaler"] and scaler is not None:
        scaler.load_state_dict(state["grad_scaler"])
    early = state["early_stopping"]
    progress = Progress(state["epoch"], state["scheduler"]["step"], list(state["history"]), early["best_loss"],
                        early["best_epoch"], early["bad_epochs"], early["stopped"], early["best_model"])
    if state["world_size"] == me.world:
        set_rng_state(state["rng"][me.rank], shuffle, me.device)
    else:  # the random streams cannot be split differently; training goes on, but not bit-identically
        sm.log(f"warning: the checkpoint was written by {state['world_size']} processes, this job has {me.world}; "
               "random streams are re-seeded")
        seed_everything(hp["seed"] + 1_000_003 * me.rank + progress.epoch)
        shuffle.manual_seed(hp["seed"] + 7_919 * (me.rank + 1) + progress.epoch)
    sm.log(f"resumed from the checkpoint of epoch {progress.epoch} in {where}")
    return progress


def rng_state(shuffle: torch.Generator, device: torch.device) -> dict[str, torch.Tensor]:
    version, internal, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "shuffle": shuffle.get_state(),
        "python": torch.tensor([version, *internal], dtype=torch.int64),
        "python_gauss": torch.tensor([math.nan if gauss is None else gauss], dtype=torch.float64),
        "numpy": torch.tensor(keys.astype(np.int64)),
        "numpy_meta": torch.tensor([pos, has_gauss, cached], dtype=torch.float64),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, torch.Tensor], shuffle: torch.Generator, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    shuffle.set_state(state["shuffle"])
    python = state["python"].tolist()
    gauss = float(state["python_gauss"][0])
    random.setstate((python[0], tuple(python[1:]), None if math.isnan(gauss) else gauss))
    pos, has_gauss, cached = state["numpy_meta"].tolist()
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), int(pos), int(has_gauss), cached))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def load_checkpoint(checkpoints: sm.Checkpoints) -> dict | None:
    """The newest checkpoint that loads; a damaged one (disk full, copied in half) is skipped."""
    for epoch, path in reversed(checkpoints.saved()):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if state.get("format") == "smkit-mlp-checkpoint":
                return state
            sm.log(f"warning: {path} is not a checkpoint of this script; skipped")
        except Exception as exc:  # noqa: BLE001 - any damage: fall back to the previous one
            reason = " ".join(str(exc).split())[:300]
            sm.log(f"warning: checkpoint {path} cannot be loaded ({type(exc).__name__}: {reason}); trying an older one")
    if checkpoints.saved():
        sm.log(f"warning: no checkpoint in {checkpoints.directory} could be loaded; training starts from scratch")
    return None


def check_resumable(state: dict, hp: dict, preprocessing: dict, where: Path | None) -> None:
    for name in RUN_DEFINING:
        if state["hyperparameters"].get(name) != hp[name]:
            raise sm.UserError(f"The checkpoint in {where} was written with {name}={state['hyperparameters'].get(name)!r} "
                            f"but this run has {name}={hp[name]!r}; use the same hyperparameters to resume, "
                            "or empty the checkpoint directory to start over.")
    saved = state["preprocessing"]
    same = saved["feature_names"] == preprocessing["feature_names"] and saved["classes"] == preprocessing["classes"] \
        and all(np.allclose(saved[k], preprocessing[k], rtol=1e-9, atol=1e-12)
                for k in ("feature_mean", "feature_std", "target"))
    if not same:
        raise sm.UserError(f"The checkpoint in {where} was trained on different data (features, labels or their "
                        "statistics differ); resume with the same input data, or empty the checkpoint directory.")


# -----------------------------------------------------------------------------------------------
# Evaluation: sums on every process, all-reduced, so metrics are exact over the whole channel.


@torch.no_grad()
def evaluate(model: nn.Module, X: torch.Tensor, y: torch.Tensor, hp: dict, me: Dist,
             precision: Precision, num_classes: int, target_std: float) -> tuple[dict[str, float], np.ndarray | None]:
    model.eval()
    classification = hp["task"] == "classification"
    sums = torch.zeros(6, dtype=torch.float64, device=me.device)  # loss, n, correct | loss, n, abs, sq, y, y2
    confusion = torch.zeros(num_classes * num_classes if classification else 1, dtype=torch.float64, device=me.device)
    for start in range(0, len(y), hp["eval_batch_size"]):
        xb = X[start:start + hp["eval_batch_size"]].to(me.device, non_blocking=True)
        yb = y[start:start + hp["eval_batch_size"]].to(me.device, non_blocking=True)
        with autocast(precision, me.device):
            out = model(xb)
        out = out.float()
        if classification:
            pred = out.argmax(1)
            sums += torch.stack([F.cross_entropy(out, yb, reduction="sum").double(),
                                 torch.tensor(float(len(yb)), device=me.device, dtype=torch.float64),
                                 (pred == yb).sum().double(), *torch.zeros(3, device=me.device, dtype=torch.float64)])
            confusion += torch.bincount(yb * num_classes + pred, minlength=num_classes * num_classes).double()
        else:
            out = out[:, 0]
            err = (out - yb).double() * target_std
            yd = yb.double() * target_std
            sums += torch.stack([F.mse_loss(out, yb, reduction="sum").double(),
                                 torch.tensor(float(len(yb)), device=me.device, dtype=torch.float64),
                                 err.abs().sum(), (err ** 2).sum(), yd.sum(), (yd ** 2).sum()])
    totals = me.reduce(torch.cat([sums, confusion])).cpu()
    n = max(float(totals[1]), 1.0)
    if classification:
        metrics = {"loss": float(totals[0]) / n, "accuracy": float(totals[2]) / n}
        matrix = totals[6:].round().long().reshape(num_classes, num_classes).numpy()
        return metrics, matrix
    # y was standardized: rmse, mae and r2 are in the target's units (the mean shift cancels in r2)
    ss_tot = float(totals[5]) - float(totals[4]) ** 2 / n
    metrics = {"loss": float(totals[0]) / n, "rmse": math.sqrt(float(totals[3]) / n), "mae": float(totals[2]) / n,
               "r2": 1.0 - float(totals[3]) / ss_tot if ss_tot > 0 else 0.0}
    return metrics, None
