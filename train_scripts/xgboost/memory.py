"""How the data is held: in memory (read with every core, then a QuantileDMatrix) when it fits the
container's memory, else external memory (read again on every pass, pages on disk); and how large a
batch (`batch_mb`) is. Both come from the container's memory limit (cgroup v2 or v1; the machine's
memory outside a container) and the size of the data, unless the hyperparameters set them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import sm_contract as sm

if TYPE_CHECKING:
    from data_utils import Layout, Source
    from hosts import Cluster

CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max",                      # cgroup v2
                 "/sys/fs/cgroup/memory/memory.limit_in_bytes")    # cgroup v1
# Peak memory of in-memory training per byte of the float32 matrix: the Arrow batches and the float32
# batches made from them (freed as they are converted), and XGBoost's quantized copy with its sketches.
IN_MEMORY_FACTOR = 2.5
# External memory: a batch gets 1/20 of the free memory (the Arrow batch, its float32 copy and XGBoost's page
# are held at once). 1/10 was OOM-killed under 512m with 3.5M x 50 rows (bench xgboost_extmem, 2026-12-05).
EXTERNAL_BATCH_SHARE = 20
DEFAULT_BATCH_MB = 64.0
MIN_BATCH_MB = 4.0


def memory_limit(cgroup_files: tuple[str, ...] = CGROUP_LIMITS) -> int:
    """Bytes this container may use: its cgroup limit, or the machine's memory when there is none."""
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in cgroup_files:
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < physical:  # "max" (v2) or a huge number (v1): no limit
            return int(text)
    return physical


def resident_bytes() -> int:
    """This process's resident memory now (interpreter, numpy, pyarrow, xgboost)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return 0


def matrix_bytes(sources: dict[str, Source], layout: Layout | None) -> int:
    """The float32 size of this host's data, estimated without reading it: Parquet from its metadata,
    text from the file sizes (a CSV value takes 4 bytes as float32 and at least 2 as text)."""
    total = 0
    for source in sources.values():
        size = 0
        for path in source.files:
            if source.format == "parquet" and layout is not None:
                import pyarrow.parquet as pq  # metadata only
                size += pq.ParquetFile(str(path)).metadata.num_rows * len(layout.names) * 4
            else:
                compressed = path.suffix.lower() in (".gz", ".bz2", ".zst", ".lz4")
                size += path.stat().st_size * (8 if compressed else 2)  # compressed text: ~4x its size
        total += size // source.parts  # this host's part of the rows
    return total


def plan(hp: dict, sources: dict[str, Source], layout: Layout | None, cluster: Cluster,
         limit: int | None = None) -> None:
    """Set hp["external_memory"] (True/False) and hp["batch_mb"] for this job; every host alike."""
    free = max(0, (memory_limit() if limit is None else limit) - resident_bytes())
    needed = int(matrix_bytes(sources, layout) * IN_MEMORY_FACTOR)
    if hp["external_memory"] == "auto":
        external = any(cluster.gather(needed > free))  # one kind of DMatrix on every host
        why = f"the data needs about {needed / 2**20:,.0f} MiB in memory, {free / 2**20:,.0f} MiB are free"
    else:
        external, why = hp["external_memory"] == "true", "external_memory=" + hp["external_memory"]
    hp["external_memory"] = external
    if not hp["batch_mb"]:
        share = free / EXTERNAL_BATCH_SHARE if external else free / 4
        hp["batch_mb"] = float(int(max(MIN_BATCH_MB, min(DEFAULT_BATCH_MB, share / 2**20))))
    sm.log(f"Memory: {'external memory' if external else 'in memory'} ({why}); batches of {hp['batch_mb']:g} MiB.")
