"""The connection to a Ray cluster, and the one message that says how to install Ray when it is missing."""

from __future__ import annotations

import logging
from typing import Any

from optim.errors import ConfigError

INSTALL = "pip install -r requirements-scale.txt (or: pip install 'diffusion-optimization-lab[scale]')"
log = logging.getLogger(__name__)


def require_ray() -> Any:
    """The `ray` module, or a `ConfigError` (exit 2, one line) saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(f"--ray needs Ray, which is not installed here: {INSTALL}") from None
    return ray


class Cluster:
    """A connection to a Ray cluster for the length of a `with` block.

    `address`: None or "auto" -> RAY_ADDRESS, else the cluster `ray start` started on this machine, else a new
    local cluster on this machine (ended with the block); "local" -> always a new local one; anything else is a
    cluster's address ("10.0.0.1:6379", "ray://head:10001"). If Ray is already initialized in this process
    (a test, a notebook), that connection is used and left open."""

    def __init__(self, address: str | None = None, **local_options: Any) -> None:
        self.address = address
        self.local_options = local_options
        self.started = False
        self.ray: Any = None

    def __enter__(self) -> Cluster:
        ray = self.ray = require_ray()
        if ray.is_initialized():
            return self
        quiet = {"logging_level": logging.ERROR, "log_to_driver": False}
        address = None if self.address in (None, "", "auto") else self.address
        try:
            if address is None:
                try:
                    ray.init(address="auto", **quiet)
                except ConnectionError:
                    ray.init(address="local", include_dashboard=False, **quiet, **self.local_options)
            elif address == "local":
                ray.init(address="local", include_dashboard=False, **quiet, **self.local_options)
            else:
                ray.init(address=address, **quiet)
        except (ConnectionError, ValueError, RuntimeError) as error:
            raise ConfigError(f"--ray {self.address or 'auto'}: could not connect to a Ray cluster: "
                              f"{str(error).splitlines()[0] if str(error) else type(error).__name__}") from None
        self.started = True
        log.info("connected to Ray (%s)", self.address or "auto")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.started:
            self.ray.shutdown()

    def describe(self) -> dict[str, Any]:
        resources = self.ray.cluster_resources()
        nodes = [node for node in self.ray.nodes() if node.get("Alive")]
        return {"address": self.address or "auto", "nodes": len(nodes), "cpus": resources.get("CPU", 0),
                "gpus": resources.get("GPU", 0)}
