"""The processes of a job and the hardware they run on.

Processes: one per GPU (or one per host on CPU), started by torchrun. Either the SageMaker toolkit runs
torchrun (hyperparameter sagemaker_torch_distributed_enabled) or this script re-runs itself under
torchrun when the job needs more than one process. `Dist` is this process's place among them, with the
collectives the script uses (sm_contract.Peers: gather, broadcast, agree).

Hardware decisions: the GPU paths cannot run on this project's CI machines, so every decision is a
small function of plain inputs (GPU count, bf16 support, environment) that CPU unit tests exercise with
fake values; the code that acts on them stays trivial.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sm_contract as sm
import torch
import torch.distributed as dist

MASTER_PORT = "7777"  # what the SageMaker PyTorch toolkit uses




def visible_gpus(sm_num_gpus: int, cuda_device_count: int) -> int:
    """GPUs this host may use: SM_NUM_GPUS (-1: not set) capped by what torch can see."""
    return cuda_device_count if sm_num_gpus < 0 else min(sm_num_gpus, cuda_device_count)


def choose_device(requested: str, gpus: int, local_rank: int) -> torch.device:
    if requested == "cpu" or (requested == "auto" and gpus == 0):
        return torch.device("cpu")
    if gpus == 0:
        raise sm.UserError("Hyperparameter device=cuda needs a GPU, but none is visible (SM_NUM_GPUS=0 or "
                        "torch.cuda.is_available() is False); use device=auto or a GPU instance type.")
    return torch.device("cuda", local_rank % gpus)


def processes_per_host(requested: int, device_type: str, gpus: int) -> int:
    """One process per GPU (DDP's rule), one per host on CPU, unless the hyperparameter says otherwise."""
    if requested and device_type == "cuda" and requested > gpus:
        raise sm.UserError(f"Hyperparameter processes_per_host={requested} exceeds the {gpus} GPUs of this host; "
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
    sm.log("launching: " + shlex.join(command), everywhere=True)
    child = subprocess.Popen(command)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda s, _f: child.send_signal(s))
    code = child.wait()
    if code != 0:
        # The process that failed has written its own reason; this one is kept only if it did not.
        sm.write_failure(f"Distributed training exited with code {code} on this host; the first error in the "
                          "job log is the cause.", output_dir)
        raise SystemExit(code if code > 0 else 1)


@dataclass
class Dist(sm.Peers):
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


def parallel(model: torch.nn.Module, me: Dist) -> torch.nn.Module:
    """The model as the training loop calls it: DistributedDataParallel when there are other processes."""
    if me.world == 1:
        return model
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=[me.device.index]
                                                     if me.device.type == "cuda" else None)


def start_processes(env: sm.TrainingEnv, hp: dict, gpus: int) -> Dist:
    """Join the process group when torchrun started this process; otherwise this is the only process."""
    ranks = torchrun_ranks(dict(os.environ))
    rank, world, local_rank, local_world = ranks if ranks is not None else (0, 1, 0, 1)
    device = choose_device(hp["device"], gpus, local_rank)
    me = Dist(rank, world, local_rank, local_world, device, choose_backend(device.type) if world > 1 else "none")
    if world > 1:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        interface = os.environ.get("SM_NETWORK_INTERFACE_NAME", "")
        if interface and Path("/sys/class/net", interface).exists():
            os.environ.setdefault("GLOO_SOCKET_IFNAME", interface)  # the toolkit sets only NCCL's
        dist.init_process_group(backend=me.backend)
    sm.log(f"distributed: world_size={me.world} rank={me.rank} backend={me.backend} local_rank={me.local_rank} "
        f"local_world_size={me.local_world} device={me.device} host={env.current_host} hosts={len(env.hosts)}",
        everywhere=True)
    return me


def configure(hp: dict, me: Dist, num_cpus: int) -> Precision:
    """Threads, determinism and precision of this process; the global batch must cover every process."""
    if hp["num_threads"]:
        torch.set_num_threads(hp["num_threads"])
    elif me.device.type == "cpu" and me.local_world > 1:
        torch.set_num_threads(max(1, num_cpus // me.local_world))
    set_determinism(hp["deterministic"], me.device.type)
    precision = choose_precision(hp["mixed_precision"], me.device.type,
                                 me.device.type == "cuda" and torch.cuda.is_bf16_supported())
    if precision.note:
        sm.log(f"note: {precision.note}")
    if hp["batch_size"] < me.world:
        raise sm.UserError(f"Hyperparameter batch_size={hp['batch_size']} is smaller than the {me.world} training "
                           f"processes; use at least {me.world} (it is the global batch, split among processes).")
    return precision
