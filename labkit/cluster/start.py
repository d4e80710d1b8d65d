"""Start an embedded cluster or connect to an existing one; the ``labkit cluster`` command.

Owns the memory check before start, the worker nodes' arguments, the wait for every node to
register (past Ray's own 30 s), the reachability check of a remote address, and
:func:`register_cli`. Before a start it removes what clusters of killed processes left behind
(session folders, a Ray address file naming a dead cluster). Ray and psutil are imported inside
each function, never at import time.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Iterator
from typing import Any

from labkit.cluster.config import _GIB, NODE_LABEL, ClusterConfig
from labkit.cluster.handle import _ACTIVE, ClusterHandle, _install_sigterm_handler, _redact_address
from labkit.cluster.processes import (
    _address_file,
    _live_previous_address,
    _remove_stale_session_dirs,
    _temp_root,
    _wait_for_no_processes,
    _write_owner,
)
from labkit.contracts import COORDINATOR_RESOURCE, CPU_DEVICE_RESOURCE, worker_host_ip
from labkit.errors import ClusterError, ConfigError

__all__ = ["connect_cluster", "start_cluster"]


# Every proxy of the embedded cluster listens on the same host and port (SO_REUSEPORT), so the kernel,
# not a load balancer, hands each client connection to one proxy; with Serve's default preference for
# replicas on the proxy's own node, the few keep-alive connections of one load generator would send
# nearly every request to one replica. On a real cluster a load balancer spreads the connections over
# the nodes' proxies and the preference is left on.
_EMBEDDED_ENV = {"RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING": "0"}


def _node_env(config: ClusterConfig) -> dict[str, str]:
    env = dict(_EMBEDDED_ENV)
    if config.worker_niceness is not None:
        env["RAY_worker_niceness"] = str(config.worker_niceness)  # the raylet starts its workers at it
    return env


def _check_memory(config: ClusterConfig) -> None:
    import psutil

    need = config.num_nodes * (config.object_store_mb_per_node * 1024**2 + 300 * 1024**2)
    avail = psutil.virtual_memory().available
    if need > avail:
        msg = (
            f"An embedded cluster of {config.num_nodes} nodes needs about {need / _GIB:.1f} GiB "
            f"(object stores + raylets) but only {avail / _GIB:.1f} GiB is available. "
            "Lower num_nodes or object_store_mb_per_node, or stop other programs."
        )
        raise ConfigError(msg, field="num_nodes", value=config.num_nodes)


def start_cluster(config: ClusterConfig | None = None, **overrides: Any) -> ClusterHandle:
    """Start an embedded multi-node Ray cluster on this machine and connect to it.

    Parameters
    ----------
    config : ClusterConfig, optional
        The cluster's shape; defaults fit a 2-core, 24 GB machine.
    **overrides
        Fields of :class:`ClusterConfig` to change (``num_nodes=2``...).

    Returns
    -------
    ClusterHandle
        Connected; stop it with ``.stop()`` or use it in ``with``.

    Raises
    ------
    ConfigError
        If the config is invalid (checked before anything starts).
    ClusterError
        If Ray is already connected elsewhere or a node fails to start.
    """
    import dataclasses

    config = dataclasses.replace(config or ClusterConfig(), **overrides)
    config.validate()
    _check_memory(config)
    try:
        import ray
        from ray.cluster_utils import Cluster
    except ImportError as err:
        msg = "Ray is not installed. Run `make setup` (or pip install -r requirements/cpu.txt)."
        raise ClusterError(msg) from err
    if ray.is_initialized():
        msg = "This process is already connected to a Ray cluster. Stop it first (handle.stop() or ray.shutdown())."
        raise ClusterError(msg)
    import uuid

    _remove_stale_session_dirs()  # of kernels killed while their cluster ran
    temp_root = os.path.join(_temp_root(config), uuid.uuid4().hex[:8])
    os.makedirs(temp_root, exist_ok=True)
    _write_owner(temp_root)
    # Ray writes the head's address to a file in its *default* folder (<tmp>/ray) whatever temp_dir
    # says; on a fresh machine that folder does not exist yet and the head fails to start.
    os.makedirs(os.path.dirname(_address_file()), exist_ok=True)
    previous_address = _live_previous_address()  # a stale one is removed
    # Each node's resources: a node-name resource (pin things to a node) and a label.
    head_args: dict[str, Any] = {
        "num_cpus": _whole(config.head_cpus),
        "num_gpus": 0,
        "object_store_memory": config.object_store_mb_per_node * 1024**2,
        "resources": {COORDINATOR_RESOURCE: 1.0, "labkit_node_head": 1.0},
        "labels": {NODE_LABEL: "head"},
        "env_vars": _node_env(config),
        "include_dashboard": config.include_dashboard,
        "temp_dir": temp_root,
    }
    if config.memory_gb_per_node:
        head_args["memory"] = int(config.memory_gb_per_node * _GIB)
    cluster = None
    started = time.monotonic()
    try:
        with _no_address_notice():
            cluster = Cluster(initialize_head=True, connect=False, head_node_args=head_args)
        physical_next = 0
        slow_nodes: list[str] = []
        for i, gpus in enumerate(config.worker_gpus(), start=1):
            args: dict[str, Any] = {
                "num_cpus": _whole(config.cpus_per_node),
                "num_gpus": gpus,
                "object_store_memory": config.object_store_mb_per_node * 1024**2,
                "resources": {
                    f"labkit_node_worker-{i}": 1.0,
                    "labkit_worker": 1.0,
                    **({CPU_DEVICE_RESOURCE: float(slots)} if (slots := config.cpu_devices_per_node) else {}),
                },
                "labels": {NODE_LABEL: f"worker-{i}"},
                # vLLM checks that the ranks of one replica on different nodes have different IP
                # addresses; the nodes of the embedded cluster share a host, so each worker gets its own
                # loopback address (labkit/serve/cpu_ray.py).
                "env_vars": {**_node_env(config), "VLLM_HOST_IP": worker_host_ip(i)},
            }
            if config.memory_gb_per_node:
                args["memory"] = int(config.memory_gb_per_node * _GIB)
            if config.gpu_mode == "physical" and gpus:
                devices = ",".join(str(d) for d in range(physical_next, physical_next + gpus))
                physical_next += gpus
                args["env_vars"]["CUDA_VISIBLE_DEVICES"] = devices
            _add_worker(cluster, args, f"worker-{i}", slow_nodes)
        ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)  # type: ignore[arg-type]  # Ray takes level names too (its default is "info") but annotates int
        handle = ClusterHandle(
            address=cluster.address, embedded=True, config=config, cluster=cluster, temp_dir=temp_root
        )
        handle.previous_address = previous_address
        _ACTIVE.add(handle)
        _install_sigterm_handler()
        _wait_for_nodes(config.num_nodes, config.start_timeout_s, temp_root=temp_root, slow_nodes=slow_nodes)
    except BaseException as err:
        try:
            ray.shutdown()
        finally:
            if cluster is not None:
                cluster.shutdown()
            _wait_for_no_processes(temp_root, timeout_s=10.0)
        if isinstance(err, (KeyboardInterrupt, ConfigError, ClusterError)):
            raise
        msg = f"Starting the embedded cluster ({config.num_nodes} nodes) failed: {err}"
        raise ClusterError(msg) from err
    handle.start_s = time.monotonic() - started
    return handle


@contextlib.contextmanager
def _no_address_notice() -> Iterator[None]:
    """Silence Ray's INFO "Overwriting previous Ray address ..." while the head starts.

    Ray logs it to stderr (red in Jupyter) when its address file names another cluster; the kit
    connects by explicit address and points the file back when it stops, so it is nothing to act on.
    """
    # Ray private: the logger's name is where Ray logs that notice (a name, no API is called).
    logger = logging.getLogger("ray._private.utils")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


# Ray's own wait for a new node is a fixed 30 s (ray._private.node). A raylet whose agents start
# slowly (a busy or freshly booted GPU host) registers later; its processes keep running, so the
# kit waits for it up to start_timeout_s instead of failing at 30 s.
_RAY_NODE_WAIT_MESSAGE = "timed out during startup"


def _whole(cpus: float) -> int | float:
    # A raylet given a float CPU count next to GPUs ("num_cpus": 4.0 with num_gpus=1) exited at
    # start-up without a log line on Ray 2.60 GPU hosts: pass whole numbers as ints.
    return int(cpus) if float(cpus).is_integer() else cpus


def _add_worker(cluster: Any, args: dict[str, Any], name: str, slow_nodes: list[str]) -> None:
    try:
        cluster.add_node(**args)
    except Exception as err:
        if _RAY_NODE_WAIT_MESSAGE not in str(err):
            raise
        slow_nodes.append(name)


def _wait_for_nodes(
    count: int, timeout_s: float, *, temp_root: str | None = None, slow_nodes: list[str] | None = None
) -> None:
    import ray

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if sum(1 for n in ray.nodes() if n.get("Alive")) >= count:
            return
        time.sleep(0.2)
    alive = sum(1 for n in ray.nodes() if n.get("Alive"))
    msg = f"Only {alive} of {count} nodes registered within {timeout_s:g} s."
    if slow_nodes:
        msg += f" Ray's 30 s start-up wait ran out for {', '.join(slow_nodes)}."
    if temp_root:
        msg += (
            f" The raylets' logs are under {temp_root}/session_*/logs (raylet.out, dashboard_agent.log). "
            "Raise start_timeout_s on a slow host, or lower num_nodes / cpus_per_node."
        )
    raise ClusterError(msg)


def _check_reachable(address: str, timeout_s: float) -> None:
    """Fail fast with a clear error when host:port does not answer."""
    target = address.split("://", 1)[-1].rsplit("@", 1)[-1]
    if ":" not in target:
        return
    host, _, port = target.rpartition(":")
    try:
        port_num = int(port)
    except ValueError:
        msg = f"Cluster address '{address}' has no valid port. Use 'auto', 'host:6379' or 'ray://host:10001'."
        raise ConfigError(msg, field="address", value=address) from None
    try:
        with socket.create_connection((host.strip("[]"), port_num), timeout=timeout_s):
            return
    except OSError as err:
        msg = (
            f"Cannot reach the Ray cluster at '{_redact_address(address)}' ({err}). Check that the head is "
            "running (start it with `ray start --head`; `ray status` on the head shows it), the address and "
            "port, and the firewall; or use cluster_address=None for the embedded cluster."
        )
        raise ClusterError(msg, address=_redact_address(address)) from None


def connect_cluster(address: str | None = "auto", *, timeout_s: float = 10.0) -> ClusterHandle:
    """Connect to an existing Ray cluster.

    Parameters
    ----------
    address : str, optional
        ``"auto"`` (a cluster started on this machine with ``ray start``, or ``RAY_ADDRESS``),
        ``"host:port"`` of the GCS, or ``"ray://host:10001"`` for Ray Client. ``None`` reads
        ``RAY_ADDRESS``.
    timeout_s : float
        How long to wait for the address to answer.

    Returns
    -------
    ClusterHandle
        Connected; ``stop()`` only disconnects (the cluster is not the kit's to kill).

    Raises
    ------
    ClusterError
        If the address does not answer or Ray refuses the connection. Clusters with token
        authentication (on by default for local clusters since Ray 2.59) need the same token
        on this machine: ``RAY_AUTH_TOKEN``, or the head's token file copied to
        ``~/.ray/auth_token`` (``ray get-auth-token`` prints it on the head).
    """
    address = address or os.environ.get("RAY_ADDRESS") or "auto"
    if address != "auto":
        _check_reachable(address, timeout_s)
    import ray

    if ray.is_initialized():
        msg = "This process is already connected to a Ray cluster. Call ray.shutdown() first."
        raise ClusterError(msg, address=_redact_address(address))
    try:
        ray.init(address=address, logging_level="WARNING", log_to_driver=False)  # type: ignore[arg-type]  # Ray takes level names too (its default is "info") but annotates int
    except (ConnectionError, RuntimeError, ValueError) as err:
        text = str(err)
        hint = ""
        if "auth" in text.lower() or "token" in text.lower() or "unauthenticated" in text.lower():
            hint = (
                " The cluster uses token authentication: set RAY_AUTH_TOKEN on this machine or copy "
                "the head's token file to ~/.ray/auth_token (`ray get-auth-token` on the head prints it)."
            )
        elif address == "auto":
            hint = (
                " No local cluster was found: start one with `ray start --head`, set RAY_ADDRESS, "
                "or use the embedded cluster."
            )
        first = text.splitlines()[0] if text else repr(err)
        msg = f"Connecting to the Ray cluster at '{_redact_address(address)}' failed: {first}.{hint}"
        raise ClusterError(msg, address=_redact_address(address)) from None
    return ClusterHandle(address=address, embedded=False, config=None)
