"""`docker run` options a local job passes through to its containers: --shm-size, --gpus, --network host,
--publish, --memory, --cpus, an ml.* instance type's limits, extra --env.

The direct backend hands them to the Docker API as they are (containers.create keyword arguments). SDK
local mode writes a docker compose file itself, and lets a user change only part of it:

- SDK v2 (sagemaker/local/image.py, `_create_docker_host`): the LocalSession config key
  `local.container_config` is merged into every compose service *before* the SDK's own keys, so
  `shm_size`, `mem_limit`, `cpus` and `ports` go through; `volumes`, `environment`, `networks` and
  `command` are the SDK's and cannot be changed (so no `network_mode: host`: compose refuses it next to
  `networks`). A published port is published by every host, so more than one host cannot publish
  (aws/sagemaker-python-sdk#2729). GPUs: `local_gpu` requests all of them (no device ids).
- SDK v3 (sagemaker/train/local/local_container.py) dropped container_config: only the environment and
  `local_gpu` (all GPUs) remain.
Everything else is refused before the job starts, with the fix: `--backend direct`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

from local_mode.instance_types import InstanceType, lookup
from smkit.errors import ConfigError

_SIZE = re.compile(r"^\d+(\.\d+)?[bkmg]?$", re.IGNORECASE)
DIRECT_FIX = "run it with --backend direct (the Docker API takes every docker run option)"


@dataclass
class RuntimeOptions:
    shm_size: str | None = None  # e.g. "2g"
    gpus: str | None = None  # "all", or device ids "0,1"
    network_host: bool = False
    publish: list[str] = field(default_factory=list)  # HOST_PORT:CONTAINER_PORT or CONTAINER_PORT
    memory: str | None = None  # e.g. "8g"
    cpus: float | None = None
    instance_type: InstanceType | None = None  # an ml.* type rehearsed: its memory and CPU limits
    env: dict[str, str] = field(default_factory=dict)

    # ---- limits -----------------------------------------------------------------------------------
    def memory_limit(self) -> str | int | None:
        """--memory wins over the instance type's memory."""
        if self.memory:
            return self.memory
        return self.instance_type.memory_bytes if self.instance_type else None

    def cpu_limit(self) -> float | None:
        """--cpus wins over the instance type's vCPUs; Docker refuses more CPUs than the machine has,
        so an instance type larger than this machine is capped (and says so: see describe())."""
        if self.cpus:
            return self.cpus
        if self.instance_type:
            return float(min(self.instance_type.vcpus, os.cpu_count() or 1))
        return None

    def ports(self) -> dict[str, Any]:
        """`8888:5678` -> {"5678/tcp": 8888}; `5678` -> {"5678/tcp": None} (a free host port)."""
        ports: dict[str, Any] = {}
        for item in self.publish:
            host, _, container = item.rpartition(":")
            if not container.isdigit() or (host and not host.split(":")[-1].isdigit()):
                raise ConfigError(f"--publish {item!r} is not [HOST_IP:]HOST_PORT:CONTAINER_PORT or CONTAINER_PORT.",
                                  "write e.g. --publish 8888:8888")
            if host.count(":") == 1:  # 127.0.0.1:8888:8888
                ip, _, port = host.partition(":")
                ports[f"{container}/tcp"] = (ip, int(port))
            else:
                ports[f"{container}/tcp"] = int(host) if host else None
        return ports

    def device_requests(self) -> list:
        import docker.types

        if not self.gpus:
            return []
        if self.gpus == "all":
            return [docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])]
        return [docker.types.DeviceRequest(device_ids=self.gpus.split(","), capabilities=[["gpu"]])]

    # ---- backends ---------------------------------------------------------------------------------
    def docker_options(self) -> dict[str, Any]:
        """Keyword arguments for docker's containers.create (the direct backend)."""
        options: dict[str, Any] = {}
        if self.shm_size:
            options["shm_size"] = self.shm_size
        if self.memory_limit():
            options["mem_limit"] = self.memory_limit()
        if self.cpu_limit():
            options["nano_cpus"] = int(self.cpu_limit() * 1e9)
        if self.gpus:
            options["device_requests"] = self.device_requests()
        if self.publish:
            options["ports"] = self.ports()
        if self.network_host:
            # The host's network: the container sees the host's interfaces (VPN, SSO proxies). Its
            # --hostname and --add-host (the job's host name -> 127.0.0.1) stay: the toolkit resolves it.
            options.update(network_mode="host", network=None, networking_config=None)
        return options

    def sdk_container_config(self, sdk_major: int, instance_count: int) -> dict[str, Any]:
        """What SDK local mode can take (see the module docstring): the v2 `local.container_config`
        entries. Raises ConfigError naming each option the SDK cannot pass, with the fix."""
        refused = []
        if self.network_host:
            refused.append("--network host (the SDK always attaches its containers to its own network)")
        if self.gpus and self.gpus != "all":
            refused.append(f"--gpus {self.gpus} (the SDK's local_gpu requests all GPUs; it takes no device ids)")
        if sdk_major >= 3:
            for flag, value in (("--shm-size", self.shm_size), ("--memory", self.memory_limit()),
                                ("--cpus", self.cpu_limit()), ("--publish", self.publish)):
                if value:
                    refused.append(f"{flag} (SDK v3 local mode dropped v2's container_config: no docker option "
                                   "reaches its compose file)")
        elif self.publish and instance_count > 1:
            refused.append("--publish with more than one host (every host would publish the same port: "
                           "aws/sagemaker-python-sdk#2729)")
        if refused:
            raise ConfigError(f"SDK v{sdk_major} local mode cannot pass " + "; ".join(refused) + ".", DIRECT_FIX)
        config: dict[str, Any] = {}
        if self.shm_size:
            config["shm_size"] = self.shm_size
        if self.memory_limit():
            config["mem_limit"] = self.memory_limit()
        if self.cpu_limit():
            config["cpus"] = self.cpu_limit()
        if self.publish:
            config["ports"] = [p for p in self.publish]
        return config

    def describe(self) -> list[str]:
        """One line per option in effect, for the run's header."""
        lines = []
        if self.instance_type:
            t = self.instance_type
            cpus = self.cpu_limit()
            capped = f" (capped at this machine's {cpus:g})" if self.cpus is None and cpus < t.vcpus else ""
            lines.append(f"rehearsing {t.name}: {t.vcpus} vCPUs{capped}, {t.memory_gib:g} GiB"
                         + (f", {t.gpus} GPU(s) (pass --gpus to use this machine's)" if t.gpus else ""))
        for name, value in (("shm size", self.shm_size), ("memory", self.memory), ("cpus", self.cpus),
                            ("gpus", self.gpus), ("publish", ", ".join(self.publish)),
                            ("network", "host" if self.network_host else None)):
            if value:
                lines.append(f"{name}: {value}")
        return lines


def parse_size(text: str | None, option: str) -> str | None:
    if text is None:
        return None
    if not _SIZE.match(text):
        raise ConfigError(f"{option} {text!r} is not a size.", f"write e.g. {option} 2g (b, k, m or g)")
    return text.lower()


def parse_gpus(text: str | None) -> str | None:
    if text is None:
        return None
    text = text.strip()
    if text == "all" or re.fullmatch(r"\d+(,\d+)*", text):
        return text
    if text.startswith("device="):
        return parse_gpus(text[len("device="):].strip('"'))
    raise ConfigError(f"--gpus {text!r} is neither `all` nor device ids.", "write --gpus all or --gpus 0,1")


def from_args(args) -> RuntimeOptions:
    """RuntimeOptions from the run command's arguments (see cli_options.add_runtime_options)."""
    instance_type = getattr(args, "instance_type", None)
    network = getattr(args, "network", None)
    if network not in (None, "host", "bridge"):
        raise ConfigError(f"--network {network!r} is not supported.", "use --network host (or leave it out)")
    cpus = getattr(args, "cpus", None)
    if cpus is not None and cpus <= 0:
        raise ConfigError(f"--cpus {cpus} is not positive.", "write e.g. --cpus 2 or --cpus 0.5")
    return RuntimeOptions(
        shm_size=parse_size(getattr(args, "shm_size", None), "--shm-size"),
        gpus=parse_gpus(getattr(args, "gpus", None)),
        network_host=network == "host",
        publish=list(getattr(args, "publish", None) or []),
        memory=parse_size(getattr(args, "memory", None), "--memory"),
        cpus=cpus,
        # in the cloud any ml.* type runs as itself; locally it must be one whose size the table knows
        instance_type=(lookup(instance_type) if instance_type and instance_type.startswith("ml.")
                       and getattr(args, "backend", None) != "cloud" else None),
    )
