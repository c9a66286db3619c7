"""The job's hosts, joined in XGBoost's collective (Rabit).

With more than one host the first sorted host runs XGBoost's tracker, and every host joins the
collective once the tracker accepts connections. The data-reading steps run through `agree`
(sm_contract.Peers) so that a bad input on one host fails every host with the same reason instead of
leaving the others waiting.
"""

from __future__ import annotations

import re
import socket
import time
from typing import Any

import numpy as np
import sm_contract as sm
import xgboost as xgb
from xgboost import collective

from params import xgboost_message


class HostsFailed(sm.UserError):
    """A bad input that every host reports (Cluster.agree)."""


class Cluster(sm.Peers):
    """This host among the job's hosts: `with Cluster(env, port, timeout) as cluster:` joins the others."""

    def __init__(self, env: sm.TrainingEnv, port: int, timeout: int):
        self.hosts, self.host = env.hosts, env.current_host
        self.rank, self.world = env.host_rank, len(env.hosts)
        self.port, self.timeout = port, timeout
        self.tracker: Any = None
        self.context: Any = None
        self.active = False

    def __enter__(self) -> Cluster:
        if self.world == 1:
            return self
        master_ip = resolve(self.hosts[0], self.timeout)
        if self.rank == 0:
            self.start_tracker(master_ip)
        else:
            wait_for_tracker(master_ip, self.port, self.timeout)
        args = {"dmlc_tracker_uri": master_ip, "dmlc_tracker_port": self.port, "dmlc_task_id": f"{self.rank:06d}",
                "dmlc_retry": 8}
        self.context = collective.CommunicatorContext(**args)  # also finds NCCL for GPU builds
        try:
            self.context.__enter__()
        except xgb.core.XGBoostError as exc:
            raise sm.UserError(f"Host {self.host} could not join XGBoost's tracker at {master_ip}:{self.port} "
                               f"({xgboost_message(exc)[:200]}); check that the hosts can reach each other.") from None
        self.active = True
        if collective.get_rank() != self.rank or collective.get_world_size() != self.world:
            raise sm.UserError(f"XGBoost's tracker gave host {self.host} rank {collective.get_rank()} of "
                               f"{collective.get_world_size()}, expected {self.rank} of {self.world}.")
        sm.log(f"Joined the collective as rank {self.rank} of {self.world}.")
        return self

    def start_tracker(self, master_ip: str) -> None:
        from xgboost.tracker import RabitTracker
        try:
            self.tracker = RabitTracker(n_workers=self.world, host_ip=master_ip, port=self.port, sortby="task",
                                        timeout=self.timeout)
            self.tracker.start()
        except xgb.core.XGBoostError as exc:
            raise sm.UserError(f"XGBoost's tracker cannot listen on {master_ip}:{self.port} "
                               f"({xgboost_message(exc)}); pick a free tracker_port.") from None
        sm.log(f"Tracker listening on {master_ip}:{self.port} for {self.world} hosts.")

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        if not self.active:
            return False
        if exc_type is None or issubclass(exc_type, HostsFailed):  # every host is here: leave together
            self.context.__exit__(None, None, None)
            if self.tracker is not None:
                self.tracker.wait_for(self.timeout)
        else:
            # This host alone failed. Its exit closes its sockets, so the others fail at their next collective
            # step ("lost contact"); XGBoost's teardown must not run (it waits for the tracker, or crashes).
            sm.exit_hard_after_failure()
        return False

    def gather(self, obj: Any) -> list:
        if not self.active:
            return [obj]
        return [collective.broadcast((obj,) if r == self.rank else None, r)[0] for r in range(self.world)]

    def broadcast(self, obj: Any) -> Any:
        return collective.broadcast((obj,) if self.rank == 0 else None, 0)[0] if self.active else obj

    def sum(self, value: float) -> float:
        if not self.active:
            return value
        return float(collective.allreduce(np.array([value], dtype=np.float64), collective.Op.SUM)[0])

    def failed(self, rank: int, reason: str, here: BaseException | None) -> BaseException:
        # Every host, the one that failed too, reports which host it was.
        return HostsFailed(reason if self.world == 1 else f"Host {self.hosts[rank]}: {reason}")


class xgboost_errors:
    """An XGBoostError (from the data, the collective or training) as one sentence in output/failure."""

    def __init__(self, cluster: Cluster):
        self.cluster = cluster

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        if exc_type is not None and issubclass(exc_type, xgb.core.XGBoostError):
            raise sm.UserError(training_failure(exc, self.cluster)) from None
        return False


def training_failure(exc: BaseException, cluster: Cluster) -> str:
    text = xgboost_message(exc)
    if cluster.world > 1 and re.search(r"allreduce|allgather|broadcast|socket|EOF|tracker|connect", text, re.I):
        return ("Training lost contact with another host (it failed or was stopped; see its failure reason) "
                f"({text[:200]}).")
    return f"XGBoost failed ({text}); check the labels against the objective and the hyperparameters."


def resolve(host: str, timeout: float) -> str:
    """The host's IPv4 address; retried while the job's DNS comes up."""
    deadline = time.time() + timeout
    while True:
        try:
            return socket.gethostbyname(host)
        except OSError:
            if time.time() > deadline:
                raise sm.UserError(f"Host {host!r} does not resolve to an address after {timeout}s; check the job's "
                                   "hosts (SM_HOSTS) and network.") from None
            time.sleep(1)


def wait_for_tracker(address: str, port: int, timeout: float, poll: float = 0.1) -> None:
    """Block until the tracker on the first host accepts TCP connections.

    XGBoost's own connect loop backs off exponentially (1 s, 2 s, 4 s ...) when the tracker is not up yet,
    so a worker that starts a moment before the first host loses seconds; polling here every 0.1 s joins
    as soon as the tracker listens. The probe connection is closed at once; the tracker drops it with one
    harmless warning in the first host's log ("Failed to initialize worker proxy ... Failed to verify")."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((address, port), timeout=min(2.0, timeout)) as probe:
                probe.shutdown(socket.SHUT_RDWR)
                return
        except OSError as exc:
            if time.monotonic() > deadline:
                raise sm.UserError(f"XGBoost's tracker on the first host ({address}:{port}) did not accept connections "
                                   f"within tracker_timeout={timeout:g}s ({exc.strerror or exc}); check that the first "
                                   "host started and that tracker_port is open between the hosts.") from None
            time.sleep(poll)
