#!/usr/bin/env python3
"""Train an MLP classifier or regressor on tabular data, in a SageMaker PyTorch training container or as
plain Python.

    python train.py --train DIR [--validation DIR] [--test DIR] --model-dir DIR [--checkpoint-dir DIR]
                    [--epochs 20 --hidden_sizes 128,64 ...]        # `python train.py --help` lists all

It reads top to bottom like nanoGPT's train.py: configuration, processes (torchrun / DDP), data, model,
optimizer and schedule, checkpoint resume, the training loop, save. Everything the SageMaker contract
defines (paths, hyperparameters, failure file, atomic writes) comes from sm_contract; see
docs/pytorch.md for formats, outputs, distributed behaviour and checkpoints.

Compatible with torch 2.8 .. 2.13 and Python 3.10+; needs only torch, numpy, pyarrow and sm_contract.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import random
import re
import shlex
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

try:  # in the image both files sit in /opt/ml/code; in the repository the helper is in ../common
    import sm_contract as smc
except ImportError:
    sys.path.append(str(Path(__file__).resolve().parent.parent / "common"))
    import sm_contract as smc

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

UserError = smc.UserError
H = smc.Hyperparameter

# -----------------------------------------------------------------------------------------------
# Configuration: every hyperparameter, its default and its range. Values come from (lowest to highest)
# these defaults, SM_HPS (the SageMaker job's hyperparameters) and `--name value` on the command line.

CHANNELS = ("train", "validation", "test")
HYPERPARAMETERS: dict[str, smc.Hyperparameter] = {
    # the task and the data
    "task": H(str, "classification", "classification (cross-entropy) or regression (mean squared error)",
              choices=("classification", "regression")),
    "label_column": H(str, "", "CSV/Parquet label column, a name or a 0-based position (default: the column "
                               "named label, target or y; the first column of a CSV without header)"),
    "feature_columns": H("strs", [], "CSV/Parquet feature columns (default: every column but the label)"),
    "csv_header": H(str, "auto", "whether CSV files start with a header row", choices=("auto", "true", "false")),
    "num_classes": H(int, 0, "expected number of classes; 0: the distinct training labels", min=0),
    "standardize": H(bool, True, "scale features (and regression targets) with training mean and std"),
    "validation_fraction": H(float, 0.0, "hold out this fraction of train when there is no validation channel",
                             min=0.0, max=0.5),
    # the model
    "hidden_sizes": H("ints", [128, 64], "widths of the hidden layers ([] is a linear model)", min=1),
    "activation": H(str, "relu", "hidden-layer activation", choices=("relu", "gelu", "silu", "tanh", "leaky_relu")),
    "dropout": H(float, 0.1, "dropout after each hidden layer", min=0.0, max=0.9),
    # optimisation
    "epochs": H(int, 20, "passes over the training data", min=1, max=100000),
    "batch_size": H(int, 128, "global mini-batch: rows per optimizer step, summed over all processes", min=1),
    "learning_rate": H(float, 1e-3, "peak AdamW learning rate", min=1e-9, max=10.0),
    "weight_decay": H(float, 0.01, "AdamW weight decay (weights only, not biases)", min=0.0),
    "lr_schedule": H(str, "cosine", "decay after warmup", choices=("cosine", "linear", "constant")),
    "warmup_epochs": H(float, 1.0, "linear warmup from 0, in epochs (fractions allowed)", min=0.0),
    "min_lr_ratio": H(float, 0.1, "final learning rate as a fraction of learning_rate", min=0.0, max=1.0),
    "grad_clip": H(float, 1.0, "clip the gradient norm to this (0: off)", min=0.0),
    "label_smoothing": H(float, 0.0, "cross-entropy label smoothing (classification)", min=0.0, max=0.5),
    "patience": H(int, 5, "early stopping: epochs without validation-loss improvement (0: off)", min=0),
    "min_delta": H(float, 0.0, "early stopping: smallest decrease of validation loss that counts", min=0.0),
    "restore_best": H(bool, True, "save the weights of the best validation epoch, not the last"),
    "seed": H(int, 42, "random seed (initialisation, dropout, shuffling)", min=0),
    "deterministic": H(bool, True, "deterministic kernels (bit-identical reruns and resumes on CPU)"),
    # hardware
    "device": H(str, "auto", "auto: the GPUs when there are any", choices=("auto", "cpu", "cuda")),
    "mixed_precision": H(str, "auto", "autocast on GPU (auto: bf16 where supported, else fp16 with loss "
                                      "scaling); always off on CPU", choices=("auto", "bf16", "fp16", "no")),
    "processes_per_host": H(int, 0, "training processes per host; 0: one per GPU, or one on CPU", min=0),
    "num_threads": H(int, 0, "CPU threads per process; 0: the torch default", min=0),
    "eval_batch_size": H(int, 4096, "rows per forward pass in evaluation", min=1),
    # checkpoints and outputs
    "checkpoint_every": H(int, 1, "save a checkpoint every N epochs when a checkpoint dir is set (0: off)", min=0),
    "keep_checkpoints": H(int, 2, "how many checkpoints to keep", min=1),
    "export_format": H(str, "both", "serving artifacts: model.ts (TorchScript), model.pt2 (torch.export)",
                       choices=("both", "torchscript", "export", "none")),
}
# The hyperparameters that define a training run: a checkpoint resumes only a run with the same values.
RUN_DEFINING = ("task", "label_column", "feature_columns", "csv_header", "num_classes", "standardize",
                "validation_fraction", "hidden_sizes", "activation", "dropout", "epochs", "batch_size",
                "learning_rate", "weight_decay", "lr_schedule", "warmup_epochs", "min_lr_ratio", "grad_clip",
                "label_smoothing", "patience", "min_delta", "seed", "mixed_precision")
MASTER_PORT = "7777"  # what the SageMaker PyTorch toolkit uses
DEVICE_DATA_LIMIT = 2 * 2**30  # datasets up to this size are moved to the GPU once, not per batch


def log(message: str, everywhere: bool = False) -> None:
    """Print on rank 0 only (every rank prints the same), unless `everywhere`."""
    if everywhere or int(os.environ.get("RANK", "0")) == 0:
        print(message, flush=True)


def check_hyperparameters(cfg: SimpleNamespace) -> None:
    """Combinations that sm_contract's per-value checks cannot see."""
    if cfg.task == "regression" and cfg.num_classes:
        raise UserError(f"Hyperparameter num_classes={cfg.num_classes} applies to task=classification only; "
                        "remove it or set task=classification.")
    if cfg.task == "regression" and cfg.label_smoothing:
        raise UserError("Hyperparameter label_smoothing applies to task=classification only; remove it.")
    if cfg.num_classes == 1:
        raise UserError("Hyperparameter num_classes=1 is invalid; a classifier needs at least 2 classes "
                        "(use 0 to infer it from the labels).")


# -----------------------------------------------------------------------------------------------
# Hardware decisions. The GPU paths cannot run on this project's CI machines, so every decision is a
# small function of plain inputs (GPU count, bf16 support, environment) that CPU unit tests exercise
# with fake values; the code that acts on them stays trivial.


def visible_gpus(sm_num_gpus: int, cuda_device_count: int) -> int:
    """GPUs this host may use: SM_NUM_GPUS (-1: not set) capped by what torch can see."""
    return cuda_device_count if sm_num_gpus < 0 else min(sm_num_gpus, cuda_device_count)


def choose_device(requested: str, gpus: int, local_rank: int) -> torch.device:
    if requested == "cpu" or (requested == "auto" and gpus == 0):
        return torch.device("cpu")
    if gpus == 0:
        raise UserError("Hyperparameter device=cuda needs a GPU, but none is visible (SM_NUM_GPUS=0 or "
                        "torch.cuda.is_available() is False); use device=auto or a GPU instance type.")
    return torch.device("cuda", local_rank % gpus)


def processes_per_host(requested: int, device_type: str, gpus: int) -> int:
    """One process per GPU (DDP's rule), one per host on CPU, unless the hyperparameter says otherwise."""
    if requested and device_type == "cuda" and requested > gpus:
        raise UserError(f"Hyperparameter processes_per_host={requested} exceeds the {gpus} GPUs of this host; "
                        "use at most one process per GPU (0: one per GPU).")
    if requested:
        return requested
    return gpus if device_type == "cuda" else 1


def choose_backend(device_type: str) -> str:
    return "nccl" if device_type == "cuda" else "gloo"


@dataclass(frozen=True)
class Precision:
    dtype: torch.dtype | None  # autocast dtype; None: full float32
    scaler: bool  # fp16 needs loss scaling (GradScaler); bf16 does not
    note: str = ""


def choose_precision(requested: str, device_type: str, bf16_supported: bool) -> Precision:
    """Mixed precision on GPU only: bf16 where the GPU has it (Ampere and newer), else fp16 + GradScaler."""
    if requested == "no":
        return Precision(None, False)
    if device_type != "cuda":
        note = f"mixed_precision={requested} is ignored on CPU; training in float32" if requested != "auto" else ""
        return Precision(None, False, note)
    if requested == "bf16" and not bf16_supported:
        return Precision(torch.float16, True, "this GPU has no bf16; using fp16 with loss scaling")
    if requested == "bf16" or (requested == "auto" and bf16_supported):
        return Precision(torch.bfloat16, False)
    return Precision(torch.float16, True)


def autocast(precision: Precision, device: torch.device):
    if precision.dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=precision.dtype)


def set_determinism(deterministic: bool, device_type: str) -> None:
    if device_type == "cuda":
        # cuBLAS needs this before its first call to be deterministic (no effect on CPU).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cuda.matmul.allow_tf32 = not deterministic
    torch.use_deterministic_algorithms(deterministic, warn_only=True)


# -----------------------------------------------------------------------------------------------
# Processes: one per GPU (or one per host on CPU), started by torchrun. Either the SageMaker toolkit
# runs torchrun (hyperparameter sagemaker_torch_distributed_enabled) or this script re-runs itself
# under torchrun when the job needs more than one process.


def torchrun_ranks(environ: dict[str, str]) -> tuple[int, int, int, int] | None:
    """(rank, world_size, local_rank, local_world_size) when torchrun started this process."""
    if not all(k in environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK")):
        return None
    world = int(environ["WORLD_SIZE"])
    return int(environ["RANK"]), world, int(environ["LOCAL_RANK"]), int(environ.get("LOCAL_WORLD_SIZE", world))


def node_order(hosts: list[str], environ: dict[str, str]) -> list[str]:
    """Hosts in node-rank order, the master first. The SageMaker toolkit's MASTER_ADDR names its master
    (the first host of resourceconfig.json, which torchrun's node rank 0 must be); without it, the
    first sorted host is the master."""
    ordered = sorted(hosts)
    master = environ.get("MASTER_ADDR")
    if master in ordered:
        ordered.remove(master)
        ordered.insert(0, master)
    return ordered


def launch_command(hosts: list[str], current_host: str, procs_per_host: int, script: str, args: list[str],
                   environ: dict[str, str]) -> list[str] | None:
    """The torchrun command that runs this script on every process of the job, or None if this process
    is the only one or torchrun started it. Node rank 0 is the master host (see node_order), reached at
    MASTER_ADDR (else its name) and MASTER_PORT (else 7777, like the toolkit)."""
    if torchrun_ranks(environ) is not None or len(hosts) * procs_per_host <= 1:
        return None
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs_per_host)]
    if len(hosts) == 1:
        command += ["--standalone"]  # a free local port; nothing to agree on with other hosts
    else:
        ordered = node_order(hosts, environ)
        command += ["--nnodes", str(len(hosts)), "--node_rank", str(ordered.index(current_host)),
                    "--master_addr", environ.get("MASTER_ADDR") or ordered[0],
                    "--master_port", environ.get("MASTER_PORT") or MASTER_PORT]
    return command + [script, *args]


def launch(command: list[str], output_dir: Path | None) -> None:
    """Run torchrun in a child process, passing on SIGTERM/SIGINT (SageMaker stops a job with SIGTERM)."""
    log("launching: " + shlex.join(command), everywhere=True)
    child = subprocess.Popen(command)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda s, _f: child.send_signal(s))
    code = child.wait()
    if code != 0:
        # The process that failed has written its own reason; this one is kept only if it did not.
        smc.write_failure(f"Distributed training exited with code {code} on this host; the first error in the "
                          "job log is the cause.", output_dir)
        raise SystemExit(code if code > 0 else 1)


@dataclass
class Dist:
    """This process's place in the job, and the collectives the script uses (no-ops for one process)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1
    device: torch.device = torch.device("cpu")
    backend: str = "none"

    @property
    def comm_device(self) -> torch.device:
        return self.device if self.backend == "nccl" else torch.device("cpu")

    def reduce(self, values: torch.Tensor) -> torch.Tensor:
        """The sum over all processes."""
        if self.world == 1:
            return values
        tensor = values.detach().to(self.comm_device).clone()
        dist.all_reduce(tensor)
        return tensor.to(values.device)

    def gather(self, obj: Any) -> list[Any]:
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def agree(self, step: Callable[[], Any]) -> Any:
        """Run `step` on every rank; if it fails on any rank, fail on all ranks with that reason, so that
        no rank waits forever in a collective and every host's failure file names the real cause."""
        error = None
        try:
            result = step()
        except UserError as exc:
            error, raised = str(exc), exc
        except Exception as exc:  # noqa: BLE001 - the others must learn of it, then it is re-raised
            error, raised = f"{type(exc).__name__}: {exc}", exc
        first = next(((r, e) for r, e in enumerate(self.gather(error)) if e), None)
        if error is not None:
            raise raised
        if first is not None:
            raise UserError(f"{first[1]} (reported by rank {first[0]})")
        return result


def start_processes(env: smc.TrainingEnv, cfg: SimpleNamespace, gpus: int) -> Dist:
    """Join the process group when torchrun started this process; otherwise this is the only process."""
    ranks = torchrun_ranks(dict(os.environ))
    rank, world, local_rank, local_world = ranks if ranks is not None else (0, 1, 0, 1)
    device = choose_device(cfg.device, gpus, local_rank)
    me = Dist(rank, world, local_rank, local_world, device, choose_backend(device.type) if world > 1 else "none")
    if world > 1:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        interface = os.environ.get("SM_NETWORK_INTERFACE_NAME", "")
        if interface and Path("/sys/class/net", interface).exists():
            os.environ.setdefault("GLOO_SOCKET_IFNAME", interface)  # the toolkit sets only NCCL's
        dist.init_process_group(backend=me.backend)
    log(f"distributed: world_size={me.world} rank={me.rank} backend={me.backend} local_rank={me.local_rank} "
        f"local_world_size={me.local_world} device={me.device} host={env.current_host} hosts={len(env.hosts)}",
        everywhere=True)
    return me


# -----------------------------------------------------------------------------------------------
# Data: every file of a channel (subdirectories too), as .npz (X/y arrays), CSV (optionally gzipped)
# or Parquet, recognised by content. Each process reads only its shard: whole files when there are at
# least as many files as processes, else a contiguous part of the rows (sm_contract.shard/row_range).

NPZ_PAIRS = {
    "train": [("X", "y"), ("X_train", "y_train")],
    "validation": [("X", "y"), ("X_validation", "y_validation"), ("X_val", "y_val")],
    "test": [("X", "y"), ("X_test", "y_test")],
}
ALL_NPZ_PAIRS = [("X", "y"), ("X_train", "y_train"), ("X_validation", "y_validation"), ("X_val", "y_val"),
                 ("X_test", "y_test")]
LABEL_NAMES = ("label", "target", "y")


@dataclass
class Table:
    X: np.ndarray  # float32, [rows, features]
    y: np.ndarray  # [rows]: float64 numbers or object strings
    feature_names: list[str]
    named: bool  # feature names come from the data (header, Parquet schema, npz feature_names)
    source: str

    def take(self, rows: slice | np.ndarray) -> "Table":
        return Table(self.X[rows], self.y[rows], self.feature_names, self.named, self.source)


def file_kind(path: Path) -> str:
    with open(path, "rb") as handle:
        head = handle.read(1024)
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "npz"
    if head[:4] == b"PAR1":
        return "parquet"
    if head[:2] == b"\x1f\x8b":
        return "csv.gz"
    if b"\x00" in head:
        raise UserError(f"File {path} is neither CSV, Parquet nor .npz; remove it from the channel or convert it.")
    return "csv"


def read_file(path: Path, channel: str, cfg: SimpleNamespace) -> Table | None:
    if path.stat().st_size == 0:
        log(f"note: skipping empty file {path}", everywhere=True)
        return None
    kind = file_kind(path)
    if kind == "npz":
        table = read_npz(path, channel)
    else:
        try:
            if kind == "parquet":
                data, header = pq.read_table(path), True
            else:
                data, header = read_csv(path, cfg, gzipped=kind == "csv.gz")
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError, EOFError, UnicodeDecodeError, csv.Error) as exc:
            if kind != "parquet":
                long_line_error(path, gzipped=kind == "csv.gz")
            reason = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise UserError(f"File {path} cannot be read as {'Parquet' if kind == 'parquet' else 'CSV'} "
                            f"({reason}); fix or remove the file.") from None
        if data.num_rows == 0:
            log(f"note: skipping {path}: it has no data rows", everywhere=True)
            return None
        table = columns_to_table(data, header, path, cfg)
    if len(table.y) == 0:
        log(f"note: skipping {path}: it has no rows", everywhere=True)
        return None
    return table


CSV_BLOCK = 1 << 20  # pyarrow.csv's block size: every line must fit in one block


def long_line_error(path: Path, gzipped: bool) -> None:
    """A line longer than a CSV block (a file without line breaks) fails the reader with a misleading
    message ("Empty CSV file or block", "field larger than field limit"): name the line instead."""
    import gzip

    try:
        with (gzip.open(path, "rt", errors="replace") if gzipped else open(path, errors="replace")) as handle:
            long = smc.first_long_line(handle, CSV_BLOCK)
    except (OSError, EOFError):
        return
    if long:
        row, length = long
        raise UserError(f"File {path} has a line of {length:,} characters (line {row}), more than fits in one CSV "
                        f"block ({CSV_BLOCK >> 20} MiB); end every row with a line break (\\n), or store rows that "
                        "wide as Parquet or .npz.")


def read_npz(path: Path, channel: str) -> Table:
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise UserError(f"File {path} stores Python objects (pickled arrays); save X as numbers and y as "
                            "numbers or strings (np.savez(path, X=X.astype('float32'), y=y)).") from None
        raise UserError(f"File {path} cannot be read as .npz ({exc}); write it with np.savez.") from None
    except Exception as exc:  # zipfile.BadZipFile, OSError, EOFError
        raise UserError(f"File {path} cannot be read as .npz ({type(exc).__name__}: {exc}); write it with "
                        "np.savez.") from None
    pairs = [p for p in NPZ_PAIRS[channel] if p[0] in arrays and p[1] in arrays]
    pairs = pairs or [p for p in ALL_NPZ_PAIRS if p[0] in arrays and p[1] in arrays]
    if len(pairs) != 1 and not (pairs and pairs[0] in NPZ_PAIRS[channel]):
        wanted = " or ".join(f"{x}/{y}" for x, y in NPZ_PAIRS[channel])
        raise UserError(f"File {path} has the arrays {sorted(arrays)}, not {wanted}; save the {channel} data "
                        f"with np.savez(path, X=features, y=labels).")
    xkey, ykey = pairs[0]
    X, y = arrays[xkey], arrays[ykey]
    if X.dtype.kind not in "biuf":
        raise UserError(f"Array {xkey} in {path} is not numeric (dtype {X.dtype}); features must be numbers, "
                        "so encode text or categories as numbers first.")
    if X.ndim == 0 or X.shape[0] != (y.shape[0] if y.ndim else -1):
        raise UserError(f"Array {xkey} in {path} has {X.shape[0] if X.ndim else 0} rows but {ykey} has "
                        f"{y.shape[0] if y.ndim else 0}; both need one entry per example.")
    X = X.reshape(len(X), -1)  # 1-D: one feature; 3-D and more (images): flattened per row
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise UserError(f"Array {ykey} in {path} has shape {y.shape}; it must hold one label per row "
                        "(multi-output targets are not supported).")
    if y.dtype.kind in "SU":
        y = np.array([v.decode() if isinstance(v, bytes) else str(v) for v in y.tolist()], dtype=object)
    elif y.dtype.kind in "biuf":
        y = y.astype(np.float64)
    else:
        raise UserError(f"Array {ykey} in {path} has dtype {y.dtype}; labels must be numbers or strings.")
    names = arrays.get("feature_names")
    named = names is not None and names.ndim == 1 and len(names) == X.shape[1]
    feature_names = [str(n) for n in names.tolist()] if named else [f"f{i}" for i in range(X.shape[1])]
    table = Table(X.astype(np.float32), y, feature_names, named, str(path))
    check_finite(table)
    return table


def csv_has_header(path: Path, gzipped: bool) -> bool:
    """A header row has at least one non-empty field that is not a number."""
    import csv
    import gzip

    with (gzip.open(path, "rt") if gzipped else open(path, newline="", encoding="utf-8", errors="replace")) as f:
        first = next(csv.reader(f), [])

    def is_number(text: str) -> bool:
        try:
            float(text)
            return True
        except ValueError:
            return False

    return any(field.strip() and not is_number(field.strip()) for field in first)


def read_csv(path: Path, cfg: SimpleNamespace, gzipped: bool) -> tuple[pa.Table, bool]:
    header = csv_has_header(path, gzipped) if cfg.csv_header == "auto" else cfg.csv_header == "true"
    source = pa.input_stream(str(path), compression="gzip" if gzipped else None)
    options = pacsv.ReadOptions(autogenerate_column_names=not header)
    return pacsv.read_csv(source, read_options=options,
                          convert_options=pacsv.ConvertOptions(strings_can_be_null=True)), header


def label_index(columns: list[str], cfg: SimpleNamespace, header: bool, path: Path) -> int:
    shown = ", ".join(columns[:12]) + (", ..." if len(columns) > 12 else "")
    wanted = cfg.label_column
    if wanted:
        if header and wanted in columns:
            return columns.index(wanted)
        if re.fullmatch(r"-?\d+", wanted) and -len(columns) <= int(wanted) < len(columns):
            return int(wanted) % len(columns)
        raise UserError(f"Label column {wanted!r} is not in {path} (columns: {shown}); set hyperparameter "
                        "label_column to one of them or to a 0-based position.")
    if not header:
        return 0  # the SageMaker convention for CSV without header: the label comes first
    for i, name in enumerate(columns):
        if name.strip().lower() in LABEL_NAMES:
            return i
    raise UserError(f"File {path} has no column named label, target or y (columns: {shown}); set "
                    "hyperparameter label_column to the name of the label column.")


def columns_to_table(data: pa.Table, header: bool, path: Path, cfg: SimpleNamespace) -> Table:
    columns = list(data.column_names)
    if len(columns) < 2 and not cfg.feature_columns:
        raise UserError(f"File {path} has {len(columns)} column; it needs a label column and at least one "
                        "feature column (is the delimiter a comma?).")
    label_at = label_index(columns, cfg, header, path)
    label_name = columns[label_at]
    if cfg.feature_columns:
        missing = [c for c in cfg.feature_columns if c not in columns]
        if missing:
            raise UserError(f"Feature columns {missing} of hyperparameter feature_columns are not in {path} "
                            f"(columns: {', '.join(columns[:12])}); fix the names or drop them.")
        features = [c for c in cfg.feature_columns if c != label_name]
    else:
        features = [c for i, c in enumerate(columns) if i != label_at]
    matrix = np.empty((data.num_rows, len(features)), dtype=np.float32)
    for j, name in enumerate(features):
        matrix[:, j] = numeric_column(data.column(columns.index(name)), name, path)
    y = label_column(data.column(label_at), label_name, path, cfg.task)
    names = features if header else [f"f{i}" for i in range(len(features))]
    table = Table(matrix, y, names, header, str(path))
    check_finite(table)
    return table


def numeric_column(column: pa.ChunkedArray, name: str, path: Path) -> np.ndarray:
    kind = column.type
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
        column = column.cast(kind)
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind) or \
            pa.types.is_decimal(kind):
        return column.cast(pa.float64()).to_numpy(zero_copy_only=False)
    if pa.types.is_null(kind):
        raise UserError(f"Feature column {name!r} in {path} is empty; fill it or leave it out with "
                        "hyperparameter feature_columns.")
    example = next((v for v in column.to_pylist() if v is not None), None)
    raise UserError(f"Feature column {name!r} in {path} is not numeric ({kind}, e.g. {example!r}); encode it as "
                    "numbers or leave it out with hyperparameter feature_columns.")


def label_column(column: pa.ChunkedArray, name: str, path: Path, task: str) -> np.ndarray:
    if column.null_count:
        first = column.is_null().to_numpy(zero_copy_only=False).argmax()
        raise UserError(f"Label column {name!r} in {path} has {column.null_count} missing values (first at data "
                        f"row {first + 1}); drop or fill those rows.")
    kind = column.type.value_type if pa.types.is_dictionary(column.type) else column.type
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind) or \
            pa.types.is_decimal(kind):
        return column.cast(pa.float64()).to_numpy(zero_copy_only=False)
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        values = np.array(column.cast(pa.string()).to_pylist(), dtype=object)
        if task == "regression":
            raise UserError(f"Label column {name!r} in {path} is not numeric (e.g. {values[0]!r}); task=regression "
                            "needs numbers, use task=classification for categories.")
        return values
    raise UserError(f"Label column {name!r} in {path} has type {kind}; labels must be numbers or strings.")


def check_finite(table: Table) -> None:
    bad = ~np.isfinite(table.X)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise UserError(f"File {table.source} has {int(bad.sum())} missing or infinite feature values (first: data "
                        f"row {row + 1}, feature {table.feature_names[col]!r}); fill or drop them before training.")
    if table.y.dtype != object and not np.isfinite(table.y).all():
        row = int(np.argmax(~np.isfinite(table.y)))
        raise UserError(f"File {table.source} has {int((~np.isfinite(table.y)).sum())} NaN or infinite labels "
                        f"(first at data row {row + 1}); drop or fix those rows.")


def concat(tables: list[Table], channel: str) -> Table:
    """One table of a channel's files, with the same features (in the first file's order) in every file."""
    first = tables[0]
    parts = []
    for t in tables:
        if t.X.shape[1] != first.X.shape[1] and not (t.named and first.named):
            raise UserError(f"File {t.source} has {t.X.shape[1]} features but {first.source} has "
                            f"{first.X.shape[1]}; every file of channel '{channel}' needs the same columns.")
        if t.named and first.named and t.feature_names != first.feature_names:
            t = align(t, first.feature_names, f"{first.source}")
        parts.append(t)
    ys = [t.y for t in parts]
    if any(y.dtype == object for y in ys):  # some files have text labels: all labels are text
        ys = [y if y.dtype == object else np.array([label_text(v) for v in y], dtype=object) for y in ys]
    return Table(np.concatenate([t.X for t in parts]), np.concatenate(ys), first.feature_names,
                 any(t.named for t in parts), first.source)


def align(table: Table, names: list[str], reference: str) -> Table:
    missing = [n for n in names if n not in table.feature_names]
    extra = [n for n in table.feature_names if n not in names]
    if missing or extra:
        raise UserError(f"File {table.source} has different feature columns than {reference} (missing: {missing}, "
                        f"extra: {extra}); every file needs the same columns.")
    order = [table.feature_names.index(n) for n in names]
    return Table(table.X[:, order], table.y, list(names), True, table.source)


def label_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def load_channel(env: smc.TrainingEnv, channel: str, me: Dist, cfg: SimpleNamespace, required: bool) -> Table | None:
    """This process's shard of a channel, or None when the channel is absent."""
    files = smc.channel_files(env, channel, required)
    if not files:
        return None
    if env.distribution.get(channel) == "ShardedByS3Key":  # SageMaker split it among hosts already
        part = smc.shard(files, me.local_rank, me.local_world)
    else:
        part = smc.shard(files, me.rank, me.world)
    tables = [t for t in (read_file(f, channel, cfg) for f in part.files) if t is not None]
    if not tables:
        if required:
            raise UserError(f"Channel '{channel}' has only empty files ({len(files)} in {env.channels[channel]}); "
                            "put data in at least one file.")
        return None
    table = concat(tables, channel)
    if cfg.task == "regression" and table.y.dtype == object:
        raise UserError(f"The labels in {table.source} are text (e.g. {table.y[0]!r}); task=regression needs numbers, "
                        "use task=classification for categories.")
    if part.parts > 1:
        table = table.take(slice(*smc.row_range(len(table.y), part.part, part.parts)))
    return table


def class_labels(y: np.ndarray, where: str) -> list:
    """The distinct labels of `y` as plain Python values (int or str), checked for classification."""
    if y.dtype == object:
        return sorted(set(y.tolist()))
    values = np.unique(y)
    fractional = values[values != np.round(values)]
    if len(fractional):
        raise UserError(f"Classification labels must be integers or strings, but {where} has the label "
                        f"{fractional[0]:g}; use task=regression for continuous targets.")
    return [int(v) for v in values]


def encode_labels(y: np.ndarray, classes: list, channel: str) -> np.ndarray:
    if classes and isinstance(classes[0], str) and y.dtype != object:
        y = np.array([label_text(v) for v in y], dtype=object)
    index = {c: i for i, c in enumerate(classes)}
    uniques, inverse = np.unique(y, return_inverse=True)
    keys = uniques.tolist() if y.dtype == object else [int(v) if float(v).is_integer() else float(v) for v in uniques]
    unknown = [k for k in keys if k not in index]
    if unknown:
        shown = ", ".join(repr(c) for c in classes[:20]) + (", ..." if len(classes) > 20 else "")
        raise UserError(f"The {channel} channel has the label {unknown[0]!r}, which the train channel does not have "
                        f"(train labels: {shown}); every class must occur in the training data.")
    return np.array([index[k] for k in keys], dtype=np.int64)[inverse.reshape(-1)]


def standardization(arrays: list[np.ndarray], me: Dist, enabled: bool) -> tuple[np.ndarray, np.ndarray]:
    """Column mean and std over every process's training rows (two passes of all-reduced sums)."""
    width = arrays[0].shape[1]
    if not enabled:
        return np.zeros(width), np.ones(width)
    X = np.concatenate(arrays).astype(np.float64)
    totals = me.reduce(torch.from_numpy(np.concatenate([X.sum(0), [len(X)]])))
    mean = (totals[:-1] / totals[-1]).numpy()
    var = (me.reduce(torch.from_numpy(((X - mean) ** 2).sum(0))) / totals[-1]).numpy()
    std = np.sqrt(var)
    return mean, np.where(std > 1e-12, std, 1.0)  # constant features stay as they are


# -----------------------------------------------------------------------------------------------
# Model: an MLP on standardized features; Predictor adds the preprocessing for serving.

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh, "leaky_relu": nn.LeakyReLU}


class MLP(nn.Module):
    def __init__(self, input_dim: int, hidden_sizes: list[int], output_dim: int, activation: str = "relu",
                 dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = []
        width = input_dim
        for size in hidden_sizes:
            layers += [nn.Linear(width, size), ACTIVATIONS[activation](), nn.Dropout(dropout)]
            width = size
        layers.append(nn.Linear(width, output_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def build_model(config: dict) -> MLP:
    """The MLP described by model-config.json's "model" entry (or the whole config)."""
    spec = config.get("model", config)
    return MLP(int(spec["input_dim"]), [int(h) for h in spec["hidden_sizes"]], int(spec["output_dim"]),
               spec["activation"], float(spec["dropout"]))


class Predictor(nn.Module):
    """Raw features in (columns in model-config.json's feature order); out: class probabilities
    [rows, classes] for classification, predictions in the target's units [rows] for regression."""

    def __init__(self, mlp: MLP, config: dict):
        super().__init__()
        self.mlp = mlp
        self.classification = config["task"] == "classification"
        self.register_buffer("mean", torch.tensor(config["features"]["mean"], dtype=torch.float32))
        self.register_buffer("std", torch.tensor(config["features"]["std"], dtype=torch.float32))
        target = config.get("target") or {"mean": 0.0, "std": 1.0}
        self.target_mean, self.target_std = float(target["mean"]), float(target["std"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.mlp((x - self.mean) / self.std)
        if self.classification:
            return torch.softmax(out, dim=1)
        return out[:, 0] * self.target_std + self.target_mean


def load_model(model_dir: str | Path) -> tuple[Predictor, dict]:
    """Rebuild the trained model from model.pt and model-config.json, without unpickling any object."""
    model_dir = Path(model_dir)
    config = json.loads((model_dir / "model-config.json").read_text())
    mlp = build_model(config)
    mlp.load_state_dict(torch.load(model_dir / "model.pt", map_location="cpu", weights_only=True))
    return Predictor(mlp, config).eval(), config


# -----------------------------------------------------------------------------------------------
# Learning-rate schedule (nanoGPT's get_lr): linear warmup, then cosine or linear decay to min_lr.


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


# -----------------------------------------------------------------------------------------------
# Checkpoints: plain types and tensors only, so torch.load(weights_only=True) reads them.


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


def load_checkpoint(checkpoints: smc.Checkpoints) -> dict | None:
    """The newest checkpoint that loads; a damaged one (disk full, copied in half) is skipped."""
    for epoch, path in reversed(checkpoints.saved()):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if state.get("format") == "smkit-mlp-checkpoint":
                return state
            log(f"warning: {path} is not a checkpoint of this script; skipped")
        except Exception as exc:  # noqa: BLE001 - any damage: fall back to the previous one
            reason = " ".join(str(exc).split())[:300]
            log(f"warning: checkpoint {path} cannot be loaded ({type(exc).__name__}: {reason}); trying an older one")
    if checkpoints.saved():
        log(f"warning: no checkpoint in {checkpoints.directory} could be loaded; training starts from scratch")
    return None


def check_resumable(state: dict, cfg: SimpleNamespace, preprocessing: dict, where: Path | None) -> None:
    for name in RUN_DEFINING:
        if state["hyperparameters"].get(name) != getattr(cfg, name):
            raise UserError(f"The checkpoint in {where} was written with {name}={state['hyperparameters'].get(name)!r} "
                            f"but this run has {name}={getattr(cfg, name)!r}; use the same hyperparameters to resume, "
                            "or empty the checkpoint directory to start over.")
    saved = state["preprocessing"]
    same = saved["feature_names"] == preprocessing["feature_names"] and saved["classes"] == preprocessing["classes"] \
        and all(np.allclose(saved[k], preprocessing[k], rtol=1e-9, atol=1e-12)
                for k in ("feature_mean", "feature_std", "target"))
    if not same:
        raise UserError(f"The checkpoint in {where} was trained on different data (features, labels or their "
                        "statistics differ); resume with the same input data, or empty the checkpoint directory.")


# -----------------------------------------------------------------------------------------------
# Evaluation: sums on every process, all-reduced, so metrics are exact over the whole channel.


@torch.no_grad()
def evaluate(model: nn.Module, X: torch.Tensor, y: torch.Tensor, cfg: SimpleNamespace, me: Dist,
             precision: Precision, num_classes: int, target_std: float) -> tuple[dict[str, float], np.ndarray | None]:
    model.eval()
    classification = cfg.task == "classification"
    sums = torch.zeros(6, dtype=torch.float64, device=me.device)  # loss, n, correct | loss, n, abs, sq, y, y2
    confusion = torch.zeros(num_classes * num_classes if classification else 1, dtype=torch.float64, device=me.device)
    for start in range(0, len(y), cfg.eval_batch_size):
        xb = X[start:start + cfg.eval_batch_size].to(me.device, non_blocking=True)
        yb = y[start:start + cfg.eval_batch_size].to(me.device, non_blocking=True)
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


# -----------------------------------------------------------------------------------------------
# Serving artifacts


def export_for_serving(predictor: Predictor, width: int, stage: Path, fmt: str) -> list[str]:
    """model.ts (TorchScript, loads with torch.jit.load in torch 2.x and TorchServe) and model.pt2
    (torch.export, loads with torch.export.load). A failed export is a warning, not a failed job."""
    written = []
    example = torch.randn(3, width)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch 2.9+ marks TorchScript deprecated
        if fmt in ("both", "torchscript"):
            try:
                torch.jit.trace(predictor, example).save(str(stage / "model.ts"))
                written.append("model.ts")
            except Exception as exc:  # noqa: BLE001
                log(f"warning: TorchScript export failed ({type(exc).__name__}: {exc}); model.pt still loads")
        if fmt in ("both", "export"):
            try:
                program = torch.export.export(predictor, (example,),
                                              dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
                torch.export.save(program, str(stage / "model.pt2"))
                written.append("model.pt2")
            except Exception as exc:  # noqa: BLE001
                log(f"warning: torch.export failed ({type(exc).__name__}: {exc}); model.pt still loads")
    return written


# -----------------------------------------------------------------------------------------------
# The job


@dataclass
class Runtime:
    output_dir: Path | None = None  # known once the environment is read; where the failure file goes


RUNTIME = Runtime()


def main(argv: list[str] | None = None) -> None:
    started = time.time()
    # -- configuration -------------------------------------------------------------------------
    with contextlib.suppress(UserError, KeyError):  # where to report a failure of load_environment itself
        RUNTIME.output_dir = Path(smc.split_cli(list(sys.argv[1:] if argv is None else argv))["output_dir"])
    env = smc.load_environment(HYPERPARAMETERS, CHANNELS, argv)
    RUNTIME.output_dir = env.output_dir
    cfg = SimpleNamespace(**env.hyperparameters)
    check_hyperparameters(cfg)

    # -- processes: torchrun (relaunching this script) when the job needs more than one ------------
    gpus = 0 if cfg.device == "cpu" else visible_gpus(env.num_gpus, torch.cuda.device_count())
    device_type = choose_device(cfg.device, gpus, 0).type
    procs = processes_per_host(cfg.processes_per_host, device_type, gpus)
    command = launch_command(env.hosts, env.current_host, procs, str(Path(__file__).resolve()),
                             list(sys.argv[1:] if argv is None else argv), dict(os.environ))
    if command is not None:
        return launch(command, env.output_dir)
    me = start_processes(env, cfg, gpus)
    try:
        train(env, cfg, me, started)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def train(env: smc.TrainingEnv, cfg: SimpleNamespace, me: Dist, started: float) -> None:
    device = me.device
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    elif device.type == "cpu" and me.local_world > 1:
        torch.set_num_threads(max(1, env.num_cpus // me.local_world))
    set_determinism(cfg.deterministic, device.type)
    precision = choose_precision(cfg.mixed_precision, device.type,
                                 device.type == "cuda" and torch.cuda.is_bf16_supported())
    if precision.note:
        log(f"note: {precision.note}")
    if cfg.batch_size < me.world:
        raise UserError(f"Hyperparameter batch_size={cfg.batch_size} is smaller than the {me.world} training "
                        f"processes; use at least {me.world} (it is the global batch, split among processes).")
    log(f"torch {torch.__version__} on {device}, precision={precision.dtype or 'float32'}, "
        f"threads={torch.get_num_threads()}, hyperparameters: {json.dumps(env.hyperparameters)}")

    # -- data: this process's shard of each channel, checked before any training -----------------
    def read_data():
        train_t = load_channel(env, "train", me, cfg, required=True)
        val_t = load_channel(env, "validation", me, cfg, required=False)
        test_t = load_channel(env, "test", me, cfg, required=False)
        if val_t is None and "validation" not in env.channels and cfg.validation_fraction > 0:
            order = np.random.default_rng([cfg.seed, me.rank]).permutation(len(train_t.y))
            cut = len(order) - int(round(len(order) * cfg.validation_fraction))
            train_t, val_t = train_t.take(order[:cut]), train_t.take(order[cut:])
        if len(train_t.y) == 0:
            raise UserError(f"Process {me.rank} (host {env.current_host}) got no training rows from its share of "
                            f"channel 'train'; use more rows than training processes ({me.world}).")
        return train_t, val_t, test_t

    train_t, val_t, test_t = me.agree(read_data)
    # Every process and channel must have rank 0's training features: aligned by name where the
    # files name their columns, else the same number of them.
    feature_names, named, reference = me.broadcast((train_t.feature_names, train_t.named, train_t.source))

    def conform(table: Table | None) -> Table | None:
        if table is None or table.feature_names == feature_names:
            return table
        if table.named and named:
            return align(table, feature_names, reference)
        if table.X.shape[1] != len(feature_names):
            raise UserError(f"File {table.source} has {table.X.shape[1]} features but {reference} has "
                            f"{len(feature_names)}; every file of every channel needs the training columns.")
        return table

    train_t, val_t, test_t = me.agree(lambda: [conform(t) for t in (train_t, val_t, test_t)])

    # Labels: the classes are the union of every process's training labels, in sorted order.
    classification = cfg.task == "classification"
    if classification:
        local = me.agree(lambda: class_labels(train_t.y, f"channel 'train' ({train_t.source})"))
        gathered = me.gather(local)
        if any(isinstance(v, str) for part in gathered for v in part):
            classes = sorted({v if isinstance(v, str) else str(v) for part in gathered for v in part})
        else:
            classes = sorted({v for part in gathered for v in part})

        def check_classes():
            if len(classes) < 2:
                raise UserError(f"The train channel has only one distinct label ({classes[0]!r}); a classifier "
                                "needs at least 2 classes (use task=regression for a numeric target).")
            if cfg.num_classes and cfg.num_classes != len(classes):
                shown = ", ".join(repr(c) for c in classes[:20]) + (", ..." if len(classes) > 20 else "")
                raise UserError(f"Hyperparameter num_classes={cfg.num_classes}, but the train channel has "
                                f"{len(classes)} distinct labels ({shown}); set num_classes={len(classes)} or 0, "
                                "or check the label column.")
            return [None if t is None else encode_labels(t.y, classes, name)
                    for t, name in ((train_t, "train"), (val_t, "validation"), (test_t, "test"))]

        y_train, y_val, y_test = me.agree(check_classes)
        target_mean, target_std = 0.0, 1.0
    else:  # regression: the target is standardized like the features (statistics over all processes)
        classes = []
        target_mean, target_std = (float(v[0]) for v in standardization([train_t.y[:, None]], me, cfg.standardize))
        y_train, y_val, y_test = [None if t is None else (t.y - target_mean) / target_std
                                  for t in (train_t, val_t, test_t)]

    mean, std = standardization([train_t.X], me, cfg.standardize)
    preprocessing = {"feature_names": feature_names, "feature_mean": mean.tolist(), "feature_std": std.tolist(),
                     "classes": classes, "target": [target_mean, target_std]}

    def tensors(table: Table | None, y: np.ndarray | None):
        if table is None:
            return None
        X = torch.from_numpy(((table.X - mean) / std).astype(np.float32))
        Y = torch.from_numpy(y.astype(np.int64) if classification else y.astype(np.float32))
        if device.type == "cuda" and X.nbytes + Y.nbytes < DEVICE_DATA_LIMIT:
            return X.to(device), Y.to(device)
        return (X.pin_memory(), Y.pin_memory()) if device.type == "cuda" else (X, Y)

    train_data, val_data, test_data = tensors(train_t, y_train), tensors(val_t, y_val), tensors(test_t, y_test)
    counts = me.gather(len(train_t.y))
    val_rows = int(me.reduce(torch.tensor([0 if val_t is None else len(val_t.y)]))[0])
    log(f"data: {sum(counts)} training rows ({counts} per process), {val_rows} validation rows, "
        f"{len(feature_names)} features" + (f", {len(classes)} classes" if classification else ""))

    # -- model ------------------------------------------------------------------------------------
    seed_everything(cfg.seed)  # the same initial weights on every process (DDP also broadcasts rank 0's)
    model_spec = {"input_dim": len(feature_names), "hidden_sizes": list(cfg.hidden_sizes),
                  "output_dim": len(classes) if classification else 1, "activation": cfg.activation,
                  "dropout": cfg.dropout}
    raw_model = build_model(model_spec).to(device)
    model: nn.Module = raw_model
    if me.world > 1:
        model = nn.parallel.DistributedDataParallel(raw_model, device_ids=[device.index] if device.type == "cuda"
                                                    else None)
    seed_everything(cfg.seed + 1_000_003 * me.rank)  # dropout differs between processes
    shuffle = torch.Generator().manual_seed(cfg.seed + 7_919 * (me.rank + 1))

    # -- optimizer and schedule: the same number of steps on every process -----------------------
    decay = [p for p in raw_model.parameters() if p.dim() >= 2]
    no_decay = [p for p in raw_model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.learning_rate)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.scaler)
    # Global batch semantics: steps per epoch from the total rows; each process contributes its share
    # of every step, and the loss is summed over the step's rows on all processes, then divided by
    # their number, so 2 hosts take the same steps with the same gradients (up to dropout) as 1.
    steps_per_epoch = max(1, math.ceil(sum(counts) / cfg.batch_size))
    step_rows = torch.tensor([sum(col) for col in zip(*(chunk_sizes(n, steps_per_epoch) for n in counts))],
                             dtype=torch.float32)
    total_steps = steps_per_epoch * cfg.epochs
    warmup_steps = min(total_steps, int(round(cfg.warmup_epochs * steps_per_epoch)))
    criterion = (lambda out, yb: F.cross_entropy(out, yb, reduction="sum", label_smoothing=cfg.label_smoothing)) \
        if classification else (lambda out, yb: F.mse_loss(out[:, 0], yb, reduction="sum"))

    # -- resume from the newest checkpoint ---------------------------------------------------------
    checkpoints = smc.Checkpoints(env.checkpoint_dir if cfg.checkpoint_every else None, suffix=".pt",
                                  keep=cfg.keep_checkpoints)
    start_epoch, step, history = 0, 0, []
    best = {"loss": math.inf, "epoch": 0, "bad_epochs": 0, "stopped": False, "state": None}
    state = me.broadcast(load_checkpoint(checkpoints) if checkpoints.enabled and me.rank == 0 else None)
    if state is not None:
        check_resumable(state, cfg, preprocessing, env.checkpoint_dir)
        raw_model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if state["grad_scaler"] and precision.scaler:
            scaler.load_state_dict(state["grad_scaler"])
        start_epoch, step, history = state["epoch"], state["scheduler"]["step"], list(state["history"])
        early = state["early_stopping"]
        best = {"loss": early["best_loss"], "epoch": early["best_epoch"], "bad_epochs": early["bad_epochs"],
                "stopped": early["stopped"], "state": early["best_model"]}
        if state["world_size"] == me.world:
            set_rng_state(state["rng"][me.rank], shuffle, device)
        else:  # the random streams cannot be split differently; training goes on, but not bit-identically
            log(f"warning: the checkpoint was written by {state['world_size']} processes, this job has {me.world}; "
                "random streams are re-seeded")
            seed_everything(cfg.seed + 1_000_003 * me.rank + start_epoch)
            shuffle.manual_seed(cfg.seed + 7_919 * (me.rank + 1) + start_epoch)
        log(f"resumed from the checkpoint of epoch {start_epoch} in {env.checkpoint_dir}")
    if val_data is None and cfg.patience:
        log("note: no validation data, so no early stopping (add a validation channel or validation_fraction)")

    # -- training loop ----------------------------------------------------------------------------
    X, Y = train_data
    n_local = len(Y)
    lr = cfg.learning_rate
    for epoch in range(start_epoch, cfg.epochs):
        if best["stopped"]:
            break
        model.train()
        order = torch.randperm(n_local, generator=shuffle)
        if n_local < steps_per_epoch:
            order = order.repeat(math.ceil(steps_per_epoch / n_local))[:steps_per_epoch]
        sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss, rows, correct
        for s, idx in enumerate(torch.tensor_split(order, steps_per_epoch)):
            lr = learning_rate(step, total_steps, warmup_steps, cfg.learning_rate, cfg.lr_schedule, cfg.min_lr_ratio)
            for group in optimizer.param_groups:
                group["lr"] = lr
            idx = idx.to(X.device)
            xb, yb = X[idx].to(device, non_blocking=True), Y[idx].to(device, non_blocking=True)
            with autocast(precision, device):
                out = model(xb)
            loss_sum = criterion(out.float(), yb)
            loss = loss_sum * (me.world / step_rows[s])  # DDP averages over processes: this makes it the step mean
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.grad_clip:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            step += 1
            with torch.no_grad():
                correct = (out.argmax(1) == yb).sum() if classification else torch.zeros((), device=device)
                sums += torch.stack([loss_sum.detach().double(), torch.tensor(float(len(yb)), device=device,
                                     dtype=torch.float64), correct.double()])
        totals = me.reduce(sums).cpu()
        metrics = {"train:loss": float(totals[0] / totals[1])}
        if classification:
            metrics["train:accuracy"] = float(totals[2] / totals[1])
        metrics["train:learning_rate"] = lr
        if not all(torch.isfinite(p).all() for p in raw_model.parameters()):
            raise UserError(f"Training diverged at epoch {epoch + 1}: the weights are no longer finite (train loss "
                            f"{metrics['train:loss']:g}); lower learning_rate (now {cfg.learning_rate:g}) and check "
                            "the features for extreme values.")
        if val_data is not None:
            val_metrics, _ = evaluate(raw_model, *val_data, cfg, me, precision, len(classes), target_std)
            metrics.update({f"validation:{k}": v for k, v in val_metrics.items()})
            if val_metrics["loss"] < best["loss"] - cfg.min_delta:
                best.update(loss=val_metrics["loss"], epoch=epoch + 1, bad_epochs=0,
                            state={k: v.detach().cpu().clone() for k, v in raw_model.state_dict().items()})
            else:
                best["bad_epochs"] += 1
                if cfg.patience and best["bad_epochs"] >= cfg.patience:
                    best["stopped"] = True
        if me.rank == 0:
            smc.log_metrics("epoch", epoch + 1, metrics)
        history.append({"epoch": epoch + 1, **metrics})
        if best["stopped"]:
            log(f"early stopping after epoch {epoch + 1}: validation loss has not improved for {cfg.patience} epochs "
                f"(best {best['loss']:.6g} at epoch {best['epoch']})")

        # -- checkpoint: every process's random state, gathered; rank 0 writes -------------------
        last = epoch + 1 == cfg.epochs or best["stopped"]
        if checkpoints.enabled and ((epoch + 1) % cfg.checkpoint_every == 0 or last):
            rng = me.gather(rng_state(shuffle, device))
            if me.rank == 0:
                state = {
                    "format": "smkit-mlp-checkpoint", "version": 1, "epoch": epoch + 1, "world_size": me.world,
                    "model": raw_model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": {"kind": cfg.lr_schedule, "step": step, "total_steps": total_steps,
                                  "warmup_steps": warmup_steps, "learning_rate": lr},
                    "grad_scaler": scaler.state_dict(), "rng": rng, "history": history,
                    "early_stopping": {"best_loss": best["loss"], "best_epoch": best["epoch"],
                                       "bad_epochs": best["bad_epochs"], "stopped": best["stopped"],
                                       "best_model": best["state"]},
                    "hyperparameters": {k: getattr(cfg, k) for k in RUN_DEFINING},
                    "preprocessing": preprocessing, "torch_version": str(torch.__version__),
                }
                path = checkpoints.save(epoch + 1, lambda tmp: torch.save(state, tmp))
                log(f"checkpoint: epoch {epoch + 1} saved to {path}")

    # -- final evaluation with the weights that are saved ----------------------------------------
    if cfg.restore_best and best["state"] is not None:
        raw_model.load_state_dict(best["state"])
        log(f"restored the weights of epoch {best['epoch']} (best validation loss {best['loss']:.6g})")
    final: dict[str, float] = {}
    confusion: dict[str, Any] = {}
    for name, data in (("train", train_data), ("validation", val_data), ("test", test_data)):
        if data is not None:
            channel_metrics, matrix = evaluate(raw_model, *data, cfg, me, precision, len(classes), target_std)
            final.update({f"{name}:{k}": v for k, v in channel_metrics.items()})
            if matrix is not None:
                confusion[name] = matrix.tolist()
    if me.rank == 0:
        smc.log_metrics("final", best["epoch"] if cfg.restore_best and best["state"] is not None else len(history),
                        final)
        save(env, cfg, me, raw_model, model_spec, preprocessing, classification, final, confusion, history, best,
             started)
    # Every rank leaves only once rank 0 has saved: SageMaker local mode (docker compose
    # --abort-on-container-exit) stops all containers as soon as the first one exits.
    if dist.is_initialized():
        dist.barrier()


def save(env, cfg, me, raw_model, model_spec, preprocessing, classification, final, confusion, history, best,
         started) -> None:
    """model.pt + model-config.json (+ model.ts / model.pt2) and the evaluation, all or nothing."""
    config = {
        "format": "smkit-mlp", "version": 1, "task": cfg.task, "model": model_spec,
        "features": {"names": preprocessing["feature_names"], "mean": preprocessing["feature_mean"],
                     "std": preprocessing["feature_std"]},
        "labels": {"classes": preprocessing["classes"], "column": cfg.label_column or None} if classification else None,
        "target": None if classification else {"mean": preprocessing["target"][0], "std": preprocessing["target"][1]},
        "inputs": "float32 [rows, features], features in features.names order, not standardized",
        "outputs": ("model.pt: MLP state dict (standardized features -> logits); model.ts / model.pt2: "
                    + ("class probabilities [rows, classes], column i is labels.classes[i]" if classification
                       else "predictions [rows] in the target's units")),
        "training": {"hyperparameters": env.hyperparameters, "torch_version": str(torch.__version__),
                     "world_size": me.world, "epochs_run": len(history), "best_epoch": best["epoch"]},
    }
    mlp = build_model(model_spec)
    mlp.load_state_dict({k: v.detach().cpu() for k, v in raw_model.state_dict().items()})
    mlp.eval()
    evaluation = {"task": cfg.task, "metrics": final, "best_epoch": best["epoch"], "epochs_run": len(history),
                  "stopped_early": best["stopped"], "world_size": me.world, "seconds": round(time.time() - started, 3),
                  "history": history}
    if classification:
        evaluation["labels"] = preprocessing["classes"]
        evaluation["confusion_matrix"] = confusion  # rows: true label, columns: predicted, per channel
    with smc.staged_outputs(env.model_dir, env.output_data_dir) as (model_stage, data_stage):
        torch.save(mlp.state_dict(), model_stage / "model.pt")
        config["exports"] = export_for_serving(Predictor(mlp, config).eval(), model_spec["input_dim"], model_stage,
                                               cfg.export_format)
        (model_stage / "model-config.json").write_text(json.dumps(config, indent=2) + "\n")
        (data_stage / "evaluation.json").write_text(json.dumps(evaluation, indent=2) + "\n")
        for channel, matrix in confusion.items():
            labels = [str(c) for c in preprocessing["classes"]]
            rows = ["true\\predicted," + ",".join(labels)]
            rows += [f"{label}," + ",".join(str(v) for v in row) for label, row in zip(labels, matrix)]
            (data_stage / f"confusion_matrix_{channel}.csv").write_text("\n".join(rows) + "\n")
    log(f"saved {', '.join(['model.pt', 'model-config.json', *config['exports']])} to {env.model_dir} and "
        f"evaluation.json to {env.output_data_dir} ({time.time() - started:.1f}s)")


def cli(argv: list[str] | None = None) -> None:
    smc.run(lambda: main(argv), output_dir=lambda: RUNTIME.output_dir)


if __name__ == "__main__":
    cli()
