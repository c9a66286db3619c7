"""Run a command in a network namespace of its own that has only loopback: no interface but `lo`, no
route, so no packet can leave the machine, whatever the command (the toolkit, the SDK, docker-compose
and anything they start on this side) tries. The Docker engine is reached through its unix socket, and
the containers get their network from dockerd, which stays outside.

The verdict comes from the namespace, not from a log: `loopback_only(probe)` makes the namespace write
what it offers (its network namespace id, links, routes, and what a connection to a public address
gets) before the command starts, and `assert_no_route_out(probe)` checks it. A command that succeeds in
there made no call that needed the network.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

_PROBE = (
    "import errno, os, socket\n"
    "s = socket.socket(); s.settimeout(3)\n"
    "code = s.connect_ex(('192.0.2.1', 443))\n"  # TEST-NET-1: a public address that is never ours
    "print('ns', os.readlink('/proc/self/ns/net'))\n"
    "print('connect', errno.errorcode.get(code, 'connected'))\n"
    "print('links', ' '.join(sorted(name for _, name in socket.if_nameindex())))\n"
)
_SCRIPT = (
    'ip link set lo up || exit 97\n'
    '{ python3 -c "$SMKIT_NETNS_PROBE"; { ip -4 route; ip -6 route; } | sed "s/^/route /"; } > "$SMKIT_NETNS_FILE" || exit 98\n'
    'exec "$@"\n'
)


def loopback_only(probe_file: Path) -> tuple[list[str], dict[str, str]]:
    """(command prefix, environment additions) that run a command in a loopback-only namespace."""
    if shutil.which("unshare") is None or shutil.which("ip") is None or os.geteuid() != 0:
        pytest.fail("this check needs root, util-linux unshare and iproute2 ip (CI runs as root)")
    return ["unshare", "--net", "sh", "-c", _SCRIPT, "sh"], {"SMKIT_NETNS_PROBE": _PROBE, "SMKIT_NETNS_FILE": str(probe_file)}


def assert_no_route_out(probe_file: Path) -> None:
    """The namespace the command ran in was not this one, had only `lo`, no route but loopback's, and a
    connection to a public address failed with 'network unreachable'."""
    lines = probe_file.read_text().splitlines()
    facts = dict(line.split(" ", 1) for line in lines if not line.startswith("route "))
    routes = [line[len("route "):] for line in lines if line.startswith("route ")]
    assert facts["ns"] != os.readlink("/proc/self/ns/net"), facts
    assert facts["links"] == "lo", facts
    assert all(" dev lo " in f" {route} " and not route.startswith("default") for route in routes), routes
    assert facts["connect"] == "ENETUNREACH", facts
