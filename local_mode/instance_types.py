"""The ml.* instance types a local run can rehearse: vCPUs, memory and GPUs of each, in one table.

`run --instance-type ml.m5.large` (direct backend) gives each container that type's CPU and memory limits,
so a job that would run out of memory or crawl on the instance you plan to pay for does so here first.
Figures are AWS's published ones for the SageMaker training instances (GiB = 2**30 bytes); GPUs are not
rehearsed by the type (a GPU cannot be conjured up on a machine without one): pass --gpus as well.
"""

from __future__ import annotations

from dataclasses import dataclass

from smkit.errors import ConfigError


@dataclass(frozen=True)
class InstanceType:
    name: str
    vcpus: int
    memory_gib: float
    gpus: int = 0

    @property
    def memory_bytes(self) -> int:
        return int(self.memory_gib * 2**30)


def _types(*rows: tuple) -> dict[str, InstanceType]:
    return {row[0]: InstanceType(*row) for row in rows}


# name: (vCPUs, memory GiB, GPUs)
INSTANCE_TYPES = _types(
    ("ml.t3.medium", 2, 4), ("ml.t3.large", 2, 8), ("ml.t3.xlarge", 4, 16), ("ml.t3.2xlarge", 8, 32),
    ("ml.m5.large", 2, 8), ("ml.m5.xlarge", 4, 16), ("ml.m5.2xlarge", 8, 32), ("ml.m5.4xlarge", 16, 64),
    ("ml.m5.12xlarge", 48, 192), ("ml.m5.24xlarge", 96, 384),
    ("ml.m6i.large", 2, 8), ("ml.m6i.xlarge", 4, 16), ("ml.m6i.2xlarge", 8, 32), ("ml.m6i.4xlarge", 16, 64),
    ("ml.c5.xlarge", 4, 8), ("ml.c5.2xlarge", 8, 16), ("ml.c5.4xlarge", 16, 32), ("ml.c5.9xlarge", 36, 72),
    ("ml.c5.18xlarge", 72, 144),
    ("ml.c6i.xlarge", 4, 8), ("ml.c6i.2xlarge", 8, 16), ("ml.c6i.4xlarge", 16, 32),
    ("ml.r5.large", 2, 16), ("ml.r5.xlarge", 4, 32), ("ml.r5.2xlarge", 8, 64), ("ml.r5.4xlarge", 16, 128),
    ("ml.g4dn.xlarge", 4, 16, 1), ("ml.g4dn.2xlarge", 8, 32, 1), ("ml.g4dn.4xlarge", 16, 64, 1),
    ("ml.g4dn.12xlarge", 48, 192, 4),
    ("ml.g5.xlarge", 4, 16, 1), ("ml.g5.2xlarge", 8, 32, 1), ("ml.g5.4xlarge", 16, 64, 1),
    ("ml.g5.12xlarge", 48, 192, 4), ("ml.g5.48xlarge", 192, 768, 8),
    ("ml.p3.2xlarge", 8, 61, 1), ("ml.p3.8xlarge", 32, 244, 4), ("ml.p3.16xlarge", 64, 488, 8),
    ("ml.p4d.24xlarge", 96, 1152, 8), ("ml.p5.48xlarge", 192, 2048, 8),
)


def lookup(name: str) -> InstanceType:
    try:
        return INSTANCE_TYPES[name]
    except KeyError:
        families = sorted({n.rsplit(".", 1)[0] for n in INSTANCE_TYPES})
        raise ConfigError(
            f"{name!r} is not an instance type smkit knows the size of.",
            f"use one of {', '.join(families)} (e.g. ml.m5.large), or give the limits yourself with "
            "--memory 8g --cpus 2",
        ) from None
