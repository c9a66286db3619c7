#!/usr/bin/env python3
"""Train an MLP classifier or regressor on tabular data, in a SageMaker PyTorch training container or as
plain Python.

    python train.py --train DIR [--validation DIR] [--test DIR] --model-dir DIR [--checkpoint-dir DIR]
                    [--epochs 20 --hidden_sizes 128,64 ...]        # `python train.py --help` lists all

Reads top to bottom like nanoGPT's train.py: configuration, processes (torchrun / DDP), data, model,
optimizer and schedule, checkpoint resume, the training loop, save. The modules beside it, baked into
/opt/ml/code with it, have one job each:
    processes.py    hardware decisions, torchrun, this process's place among the others (Dist)
    data.py         reading .npz / CSV / Parquet, labels, standardization, tensors
    model.py        the MLP, the Predictor for serving, load_model, TorchScript / torch.export
    loop.py         schedule, optimizer, one epoch, evaluation, early stopping, checkpoints
    sm_contract.py  the SageMaker contract shared with every script: paths, hyperparameters, failures

Your own model goes into model.py, your own loss or metrics into loop.py; this file wires them up.
docs/pytorch.md describes formats, outputs, distributed behaviour and checkpoints. Python 3.10+, torch
2.8 .. 2.13; needs only torch, numpy, pyarrow and sm_contract.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Sequence

# In the image this file, its modules and sm_contract sit together in /opt/ml/code (on sys.path already);
# in the repository sm_contract is in ../common, and runpy.run_path adds neither folder.
_HERE = Path(__file__).resolve().parent
sys.path += [str(d) for d in (_HERE, _HERE.parent / "common") if d.is_dir() and str(d) not in sys.path]

import sm_contract as sm  # noqa: E402

import torch
import torch.distributed as dist
import torch.nn as nn

import data as data_module
import loop
import model as model_module
import processes
from processes import Dist

# -----------------------------------------------------------------------------------------------
# Configuration: every hyperparameter, its default and its range. Values come from (lowest to highest)
# these defaults, SM_HPS (the SageMaker job's hyperparameters) and `--name value` on the command line.

CHANNELS = ("train", "validation", "test")
HYPERPARAMETERS: dict[str, sm.Hyperparameter] = {
    # the task and the data
    "task": sm.Hyperparameter(str, "classification", "classification (cross-entropy) or regression (mean squared error)",
              choices=("classification", "regression")),
    "label_column": sm.Hyperparameter(str, "", "CSV/Parquet label column, a name or a 0-based position (default: the column "
                               "named label, target or y; the first column of a CSV without header)"),
    "feature_columns": sm.Hyperparameter("strs", [], "CSV/Parquet feature columns (default: every column but the label)"),
    "csv_header": sm.Hyperparameter(str, "auto", "whether CSV files start with a header row", choices=("auto", "true", "false")),
    "num_classes": sm.Hyperparameter(int, 0, "expected number of classes; 0: the distinct training labels", min=0),
    "standardize": sm.Hyperparameter(bool, True, "scale features (and regression targets) with training mean and std"),
    "validation_fraction": sm.Hyperparameter(float, 0.0, "hold out this fraction of train when there is no validation channel",
                             min=0.0, max=0.5),
    # the model
    "hidden_sizes": sm.Hyperparameter("ints", [128, 64], "widths of the hidden layers ([] is a linear model)", min=1),
    "activation": sm.Hyperparameter(str, "relu", "hidden-layer activation", choices=("relu", "gelu", "silu", "tanh", "leaky_relu")),
    "dropout": sm.Hyperparameter(float, 0.1, "dropout after each hidden layer", min=0.0, max=0.9),
    # optimisation
    "epochs": sm.Hyperparameter(int, 20, "passes over the training data", min=1, max=100000),
    "batch_size": sm.Hyperparameter(int, 128, "global mini-batch: rows per optimizer step, summed over all processes", min=1),
    "learning_rate": sm.Hyperparameter(float, 1e-3, "peak AdamW learning rate", min=1e-9, max=10.0),
    "weight_decay": sm.Hyperparameter(float, 0.01, "AdamW weight decay (weights only, not biases)", min=0.0),
    "lr_schedule": sm.Hyperparameter(str, "cosine", "decay after warmup", choices=("cosine", "linear", "constant")),
    "warmup_epochs": sm.Hyperparameter(float, 1.0, "linear warmup from 0, in epochs (fractions allowed)", min=0.0),
    "min_lr_ratio": sm.Hyperparameter(float, 0.1, "final learning rate as a fraction of learning_rate", min=0.0, max=1.0),
    "grad_clip": sm.Hyperparameter(float, 1.0, "clip the gradient norm to this (0: off)", min=0.0),
    "label_smoothing": sm.Hyperparameter(float, 0.0, "cross-entropy label smoothing (classification)", min=0.0, max=0.5),
    "patience": sm.Hyperparameter(int, 5, "early stopping: epochs without validation-loss improvement (0: off)", min=0),
    "min_delta": sm.Hyperparameter(float, 0.0, "early stopping: smallest decrease of validation loss that counts", min=0.0),
    "restore_best": sm.Hyperparameter(bool, True, "save the weights of the best validation epoch, not the last"),
    "seed": sm.Hyperparameter(int, 42, "random seed (initialisation, dropout, shuffling)", min=0),
    "deterministic": sm.Hyperparameter(bool, True, "deterministic kernels (bit-identical reruns and resumes on CPU)"),
    # hardware
    "device": sm.Hyperparameter(str, "auto", "auto: the GPUs when there are any", choices=("auto", "cpu", "cuda")),
    "mixed_precision": sm.Hyperparameter(str, "auto", "autocast on GPU (auto: bf16 where supported, else fp16 with loss "
                                      "scaling); always off on CPU", choices=("auto", "bf16", "fp16", "no")),
    "processes_per_host": sm.Hyperparameter(int, 0, "training processes per host; 0: one per GPU, or one on CPU", min=0),
    "num_threads": sm.Hyperparameter(int, 0, "CPU threads per process; 0: the torch default", min=0),
    "eval_batch_size": sm.Hyperparameter(int, 4096, "rows per forward pass in evaluation", min=1),
    # checkpoints and outputs
    "checkpoint_every": sm.Hyperparameter(int, 1, "save a checkpoint every N epochs when a checkpoint dir is set (0: off)", min=0),
    "keep_checkpoints": sm.Hyperparameter(int, 2, "how many checkpoints to keep", min=1),
    "export_format": sm.Hyperparameter(str, "both", "serving artifacts: model.ts (TorchScript), model.pt2 (torch.export)",
                       choices=("both", "torchscript", "export", "none")),
}


def check_hyperparameters(hp: dict) -> None:
    """Combinations that sm_contract's per-value checks cannot see."""
    if hp['task'] == "regression" and hp['num_classes']:
        raise sm.UserError(f"Hyperparameter num_classes={hp['num_classes']} applies to task=classification only; "
                        "remove it or set task=classification.")
    if hp['task'] == "regression" and hp['label_smoothing']:
        raise sm.UserError("Hyperparameter label_smoothing applies to task=classification only; remove it.")
    if hp['num_classes'] == 1:
        raise sm.UserError("Hyperparameter num_classes=1 is invalid; a classifier needs at least 2 classes "
                        "(use 0 to infer it from the labels).")


# -----------------------------------------------------------------------------------------------
# The job


def main(argv: Sequence[str] | None = None) -> None:
    started = time.time()
    # -- configuration ---------------------------------------------------------------------------
    env = sm.load_environment(HYPERPARAMETERS, CHANNELS, argv)
    hp = env.hyperparameters
    check_hyperparameters(hp)

    # -- processes: torchrun (relaunching this script) when the job needs more than one ------------
    gpus = 0 if hp["device"] == "cpu" else processes.visible_gpus(env.num_gpus, torch.cuda.device_count())
    device_type = processes.choose_device(hp["device"], gpus, 0).type
    procs = processes.processes_per_host(hp["processes_per_host"], device_type, gpus)
    command = processes.launch_command(env.hosts, env.current_host, procs, str(Path(__file__).resolve()),
                                       list(sys.argv[1:] if argv is None else argv), dict(os.environ))
    if command is not None:
        return processes.launch(command, env.output_dir)
    me = processes.start_processes(env, hp, gpus)
    try:
        train(env, hp, me, started)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def train(env: sm.TrainingEnv, hp: dict, me: Dist, started: float) -> None:
    precision = processes.configure(hp, me, env.num_cpus)
    sm.log(f"torch {torch.__version__} on {me.device}, precision={precision.dtype or 'float32'}, "
           f"threads={torch.get_num_threads()}, hyperparameters: {json.dumps(env.hyperparameters)}")

    # -- data: this process's shard of each channel, checked before any training -----------------
    data = data_module.prepare(env, hp, me)

    # -- model ------------------------------------------------------------------------------------
    loop.seed_everything(hp["seed"])  # the same initial weights on every process (DDP also broadcasts rank 0's)
    model_spec = {"input_dim": data.num_features, "hidden_sizes": list(hp["hidden_sizes"]),
                  "output_dim": len(data.classes) or 1, "activation": hp["activation"], "dropout": hp["dropout"]}
    raw_model = model_module.build_model(model_spec).to(me.device)
    model = processes.parallel(raw_model, me)  # DistributedDataParallel with more than one process
    loop.seed_everything(hp["seed"] + 1_000_003 * me.rank)  # dropout differs between processes
    shuffle = torch.Generator().manual_seed(hp["seed"] + 7_919 * (me.rank + 1))

    # -- optimizer and schedule: the same number of steps on every process -----------------------
    optimizer = loop.make_optimizer(raw_model, hp, me.device)
    scaler = torch.amp.GradScaler(me.device.type) if precision.scaler else None
    schedule = loop.make_schedule(data.counts, hp)
    criterion = loop.criterion(hp)

    # -- resume from the newest checkpoint ---------------------------------------------------------
    checkpoints = sm.Checkpoints(env.checkpoint_dir if hp["checkpoint_every"] else None, suffix=".pt",
                                 keep=hp["keep_checkpoints"])
    progress = loop.Progress()
    state = me.broadcast(loop.load_checkpoint(checkpoints) if checkpoints.enabled and me.rank == 0 else None)
    if state is not None:
        loop.check_resumable(state, hp, data.preprocessing, env.checkpoint_dir)
        progress = loop.resume(state, raw_model, optimizer, scaler, shuffle, hp, me, env.checkpoint_dir)
    if data.validation is None and hp["patience"]:
        sm.log("note: no validation data, so no early stopping (add a validation channel or validation_fraction)")

    # -- training loop ----------------------------------------------------------------------------
    params = list(raw_model.parameters())
    lr = hp["learning_rate"]
    while progress.epoch < hp["epochs"] and not progress.stopped:
        order = loop.shuffled_rows(len(data.train[1]), schedule.steps_per_epoch, shuffle)
        metrics, progress.step = loop.train_epoch(model, params, optimizer, scaler, data.train, order, progress.step,
                                                  schedule, criterion, hp, me, precision)
        progress.epoch += 1
        lr = metrics["train:learning_rate"]
        check_finite_weights(params, metrics, progress.epoch, hp)
        if data.validation is not None:  # metrics, and early stopping on the validation loss
            metrics.update(validate(raw_model, data, progress, hp, me, precision))
        if me.rank == 0:
            sm.log_metrics("epoch", progress.epoch, metrics)
        progress.history.append({"epoch": progress.epoch, **metrics})

        # -- checkpoint: every process's random state, gathered; rank 0 writes -------------------
        last = progress.epoch == hp["epochs"] or progress.stopped
        if checkpoints.enabled and (progress.epoch % hp["checkpoint_every"] == 0 or last):
            rng = me.gather(loop.rng_state(shuffle, me.device))
            if me.rank == 0:
                loop.save_checkpoint(checkpoints, raw_model, optimizer, scaler, progress, rng, lr, schedule, hp,
                                     data.preprocessing, me.world)

    # -- final evaluation with the weights that are saved, and save ------------------------------
    final, confusion = final_evaluation(raw_model, data, progress, hp, me, precision)
    if me.rank == 0:
        save(env, hp, me, raw_model, model_spec, data, final, confusion, progress, started)
    # Every rank leaves only once rank 0 has saved: SageMaker local mode (docker compose
    # --abort-on-container-exit) stops all containers as soon as the first one exits.
    if dist.is_initialized():
        dist.barrier()


def validate(model: nn.Module, data: data_module.Prepared, progress: loop.Progress, hp: dict, me: Dist,
             precision: processes.Precision) -> dict[str, float]:
    metrics, _ = loop.evaluate(model, *data.validation, hp, me, precision, len(data.classes), data.target_std)
    progress.after_validation(metrics["loss"], progress.epoch, model, hp)
    return {f"validation:{k}": v for k, v in metrics.items()}


def check_finite_weights(params: list[torch.Tensor], metrics: dict, epoch: int, hp: dict) -> None:
    if not all(torch.isfinite(p).all() for p in params):
        raise sm.UserError(f"Training diverged at epoch {epoch}: the weights are no longer finite (train loss "
                           f"{metrics['train:loss']:g}); lower learning_rate (now {hp['learning_rate']:g}) and "
                           "check the features for extreme values.")


def final_evaluation(model: nn.Module, data: data_module.Prepared, progress: loop.Progress, hp: dict, me: Dist,
                     precision: processes.Precision) -> tuple[dict[str, float], dict[str, list]]:
    """Metrics of every channel with the weights that are saved (the best epoch's with restore_best), and
    the confusion matrix of each for classification."""
    restored = hp["restore_best"] and progress.best_state is not None
    if restored:
        model.load_state_dict(progress.best_state)
        sm.log(f"restored the weights of epoch {progress.best_epoch} (best validation loss {progress.best_loss:.6g})")
    final: dict[str, float] = {}
    confusion: dict[str, list] = {}
    for name, tensors in (("train", data.train), ("validation", data.validation), ("test", data.test)):
        if tensors is not None:
            metrics, matrix = loop.evaluate(model, *tensors, hp, me, precision, len(data.classes), data.target_std)
            final.update({f"{name}:{k}": v for k, v in metrics.items()})
            if matrix is not None:
                confusion[name] = matrix.tolist()
    if me.rank == 0:
        sm.log_metrics("final", progress.best_epoch if restored else len(progress.history), final)
    return final, confusion


def save(env: sm.TrainingEnv, hp: dict, me: Dist, trained: nn.Module, model_spec: dict, data: data_module.Prepared,
         final: dict[str, float], confusion: dict[str, list], progress: loop.Progress, started: float) -> None:
    """model.pt + model-config.json (+ model.ts / model.pt2) and the evaluation, all or nothing."""
    config = model_module.model_config(hp, model_spec, data.preprocessing, me.world, len(progress.history),
                                       progress.best_epoch)
    mlp = model_module.build_model(model_spec)
    mlp.load_state_dict({k: v.detach().cpu() for k, v in trained.state_dict().items()})
    mlp.eval()
    evaluation = {"task": hp["task"], "metrics": final, "best_epoch": progress.best_epoch,
                  "epochs_run": len(progress.history), "stopped_early": progress.stopped, "world_size": me.world,
                  "seconds": round(time.time() - started, 3), "history": progress.history}
    if data.classes:
        evaluation["labels"] = data.classes
        evaluation["confusion_matrix"] = confusion  # rows: true label, columns: predicted, per channel
    with sm.staged_outputs(env.model_dir, env.output_data_dir) as (model_stage, data_stage):
        torch.save(mlp.state_dict(), model_stage / "model.pt")
        config["exports"], problems = model_module.export_for_serving(
            model_module.Predictor(mlp, config).eval(), model_spec["input_dim"], model_stage, hp["export_format"])
        for problem in problems:
            sm.log(f"warning: {problem}")
        (model_stage / "model-config.json").write_text(json.dumps(config, indent=2) + "\n")
        (data_stage / "evaluation.json").write_text(json.dumps(evaluation, indent=2) + "\n")
        for channel, matrix in confusion.items():
            labels = [str(c) for c in data.classes]
            rows = ["true\\predicted," + ",".join(labels)]
            rows += [f"{label}," + ",".join(str(v) for v in row) for label, row in zip(labels, matrix)]
            (data_stage / f"confusion_matrix_{channel}.csv").write_text("\n".join(rows) + "\n")
    sm.log(f"saved {', '.join(['model.pt', 'model-config.json', *config['exports']])} to {env.model_dir} and "
           f"evaluation.json to {env.output_data_dir} ({time.time() - started:.1f}s)")


if __name__ == "__main__":
    sm.run(main)
