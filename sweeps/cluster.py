"""The Ray side of a sweep's driver: the cluster address (``--address``, ``RAY_ADDRESS``),
connecting to it or starting a local Ray, and whether a trial's resources fit on one node.

Every check fails in seconds with one error line (:class:`ConfigError`), before anything is
written: Ray itself would retry an unreachable address for minutes.
"""

from __future__ import annotations

import os
import re
import socket
import sys
from typing import Any

from smartmixed_core.errors import ConfigError, first_line
from sweeps.spec import SweepSpec

RAY_DASHBOARD_HOST = "127.0.0.1"
"""Where a Ray started here would serve its dashboard (it is not started: include_dashboard
is off); Ray's own gRPC ports are protected by its token authentication."""
_ADDRESS = re.compile(r"^(?:ray://)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.\-]*[A-Za-z0-9])?)"
                      r":(\d{1,5})$")
_ray_owned = False
"""Whether this module started or connected Ray (and so shuts it down after the sweep)."""


def check_address(address: str | None) -> None:
    """``--address`` is ``auto``, ``local``, ``HOST:PORT`` or ``ray://HOST:PORT``."""
    if address is None or address in ("auto", "local"):
        return
    m = _ADDRESS.match(address)
    if not m or not 1 <= int(m.group(2)) <= 65535:
        raise ConfigError("address", f"{address!r} is not a Ray address; allowed: auto, local, "
                          "HOST:PORT (e.g. 10.0.0.5:6379) or ray://HOST:PORT (Ray client)")


def cluster_address(address: str | None) -> str | None:
    """``--address``, or else the ``RAY_ADDRESS`` environment variable (which Ray itself would
    read), checked now: its syntax, and that something listens there, so that a stale or
    garbled variable is one error line before anything is written."""
    if address is not None or not os.environ.get("RAY_ADDRESS", "").strip():
        check_address(address)
        return address
    env = os.environ["RAY_ADDRESS"].strip()
    try:
        check_address(env)
        if env != "local":
            _probe(env)
    except ConfigError as exc:
        raise ConfigError("RAY_ADDRESS", f"(environment variable) {exc.message}; unset it for "
                          "a local Ray, or pass --address") from None
    return env


def _probe(address: str) -> None:
    """Fail in seconds, not minutes, when nothing listens at ``address`` (Ray retries for
    minutes and prints a line per retry).  ``auto`` is not probed: only Ray can resolve it
    (from the cluster file ``ray start`` writes; no public API gives it), so ``ray.init``
    finds the cluster or says it found none."""
    if address == "auto":
        return
    target = address.removeprefix("ray://")
    host, _, port = target.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except (OSError, ValueError) as exc:
        raise ConfigError("address", f"cannot connect to the Ray cluster at {address!r} "
                          f"({target}: {getattr(exc, 'strerror', None) or exc}); is "
                          "`ray start --head` running there?") from None


def _init_ray(address: str | None) -> bool:
    """Connect to ``address`` or start a local Ray with this machine's CPUs (no dashboard).
    True when this module started or connected it (and so shuts it down after the sweep)."""
    global _ray_owned
    import ray

    remote = bool(address) and address != "local"
    if remote:
        check_address(address)
        _probe(address)  # also when Ray is up already: a wrong address is an error anyway
    if ray.is_initialized():
        return _ray_owned
    # Trials find their package through the editable install, not a shipped working dir.
    # The trials' warnings reach the console (a tracking server that became unreachable);
    # their INFO notices are kept out by MLFLOW_LOGGING_LEVEL without --verbose.
    kwargs: dict[str, Any] = {"log_to_driver": True, "configure_logging": False}
    if remote:
        try:
            ray.init(address=address, **kwargs)
        except Exception as exc:  # ConnectionError, auth failure, version mismatch, ...
            raise ConfigError("address", f"cannot connect to the Ray cluster at {address!r}: "
                              f"{first_line(exc)}") from None
    else:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False,
                 dashboard_host=RAY_DASHBOARD_HOST, **kwargs)
    _ray_owned = True
    return True


def release_ray() -> None:
    """Shut down the Ray that this module started or connected, if any."""
    global _ray_owned
    if _ray_owned:
        import ray

        ray.shutdown()
        _ray_owned = False


def check_resources(spec: SweepSpec, address: str | None) -> None:
    """A trial must fit on one node: ``resources`` against this machine (local Ray) or the
    largest live node of the cluster (``--address``, connecting to it, or a Ray already
    initialised in this process)."""
    need = spec.resources
    ray_mod = sys.modules.get("ray")
    if (address and address != "local") or (ray_mod is not None and ray_mod.is_initialized()):
        import ray

        _init_ray(address)
        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        cpus = max((n.get("CPU", 0.0) for n in nodes), default=0.0)
        gpus = max((n.get("GPU", 0.0) for n in nodes), default=0.0)
        where = "the largest node of the Ray cluster has"
    else:
        import torch

        cpus, gpus = float(os.cpu_count() or 1), float(torch.cuda.device_count())
        where = "this machine has"
    if need.gpu > gpus:
        allowed = (f"allowed: 0 to {gpus:g} (a fraction such as 0.25 shares one GPU between "
                   "trials)" if gpus else "allowed: 0 here; for GPUs run on a cluster that "
                   "has them (--address)")
        raise ConfigError("resources.gpu", f"{need.gpu:g} GPU per trial, but {where} "
                          f"{gpus:g}; {allowed}")
    if need.cpu > cpus:
        raise ConfigError("resources.cpu", f"{need.cpu:g} CPUs per trial, but {where} "
                          f"{cpus:g}; allowed: more than 0, at most {cpus:g}")
