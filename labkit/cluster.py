"""Ray clusters: an embedded multi-node cluster on one machine, or an existing cluster.

Owns starting, describing and stopping the cluster. The embedded cluster is a real Ray
cluster: one head and N worker *raylets*, each a separate node with its own node id, CPUs,
memory, object store, custom resources and labels (``labkit.io/node``), and optionally a
number of GPUs: *logical* GPUs on a CPU box (Ray only counts them, so placement can be taught
without hardware) or *physical* ones split between the nodes through ``CUDA_VISIBLE_DEVICES``
(several simulated nodes on one GPU host).

Teardown is complete: :meth:`ClusterHandle.stop` disconnects the driver and kills every raylet,
GCS and worker process the cluster started; it also runs on an exception inside ``with``, on a
Jupyter interrupt (``KeyboardInterrupt`` is an exception) and at interpreter exit.
"""

from __future__ import annotations

import atexit
import os
import socket
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from labkit.errors import ClusterError, ConfigError

__all__ = [
    "ClusterConfig",
    "ClusterHandle",
    "NodeInfo",
    "connect_cluster",
    "find_ray_processes",
    "kill_leftovers",
    "list_session_dirs",
    "register_cli",
    "start_cluster",
]

NODE_LABEL = "labkit.io/node"
_RAY_PROCESS_NAMES = (
    "raylet",
    "gcs_server",
    "plasma_store",
    "dashboard",
    "ray::",
    "ray_client_server",
    "log_monitor",
    "monitor.py",
    "dashboard_agent",
    "runtime_env_agent",
)
_GIB = 1024**3


@dataclass(frozen=True)
class ClusterConfig:
    """Shape of the embedded cluster. Defaults fit a 2-core, 24 GB machine.

    Attributes
    ----------
    num_nodes : int
        Nodes in all, the head included (the chapter's default: 3).
    cpus_per_node : float
        Logical CPUs each node offers to Ray (may exceed the real cores: the replicas mostly
        wait on each other; one vLLM replica takes 1).
    head_cpus : float
        Logical CPUs of the head node (Serve's controller and proxies take none).
    gpus_per_node : int or tuple of int
        GPUs per *worker* node, one number for all or one per worker; the head has none.
    gpu_mode : str
        ``"logical"``: counted by Ray only; ``"physical"``: each worker gets real devices through
        ``CUDA_VISIBLE_DEVICES`` (needs that many GPUs on the host).
    object_store_mb_per_node : int
        Object store size of each node, MiB.
    memory_gb_per_node : float or None
        Memory Ray may schedule on each node, GiB; None lets Ray decide.
    include_dashboard : bool
        Start Ray's dashboard on the head (costs memory; off by default).
    temp_dir : str or None
        Ray's session folder root; default ``$TMPDIR/labkit-ray``.
    start_timeout_s : float
        How long to wait for every node to register.
    """

    num_nodes: int = 3
    cpus_per_node: float = 2.0
    head_cpus: float = 1.0
    gpus_per_node: int | tuple[int, ...] = 0
    gpu_mode: str = "logical"
    object_store_mb_per_node: int = 256
    memory_gb_per_node: float | None = None
    include_dashboard: bool = False
    temp_dir: str | None = None
    start_timeout_s: float = 60.0

    def worker_gpus(self) -> list[int]:
        """Return the GPU count of each worker node."""
        workers = self.num_nodes - 1
        if isinstance(self.gpus_per_node, int):
            return [self.gpus_per_node] * workers
        return list(self.gpus_per_node)

    def validate(self) -> None:
        """Raise :class:`ConfigError` if a field has a value the cluster cannot use."""
        if not isinstance(self.num_nodes, int) or self.num_nodes < 1:
            msg = (
                f"num_nodes={self.num_nodes!r} is not allowed: a cluster needs at least 1 node (the head). "
                "Use num_nodes=3 for the chapter's layout."
            )
            raise ConfigError(msg, field="num_nodes", value=self.num_nodes)
        if self.cpus_per_node <= 0 or self.head_cpus < 0:
            msg = (
                f"cpus_per_node={self.cpus_per_node!r}, head_cpus={self.head_cpus!r}: "
                "cpus_per_node must be > 0 and head_cpus >= 0."
            )
            raise ConfigError(msg, field="cpus_per_node", value=self.cpus_per_node)
        if self.gpu_mode not in ("logical", "physical"):
            msg = f"gpu_mode={self.gpu_mode!r} is unknown. Available: ['logical', 'physical']"
            raise ConfigError(msg, field="gpu_mode", value=self.gpu_mode)
        gpus = self.worker_gpus()
        workers = self.num_nodes - 1
        if len(gpus) != workers:
            msg = (
                f"gpus_per_node={self.gpus_per_node!r} names {len(gpus)} worker nodes but the cluster has "
                f"{workers} (num_nodes={self.num_nodes} minus the head). Give one number for all workers "
                f"or exactly {workers}."
            )
            raise ConfigError(msg, field="gpus_per_node", value=self.gpus_per_node)
        if any((not isinstance(g, int)) or g < 0 for g in gpus):
            msg = f"gpus_per_node={self.gpus_per_node!r}: GPU counts must be whole numbers >= 0."
            raise ConfigError(msg, field="gpus_per_node", value=self.gpus_per_node)
        if sum(gpus) and workers == 0:
            msg = "GPUs go on worker nodes; num_nodes=1 has none. Use num_nodes >= 2."
            raise ConfigError(msg, field="num_nodes", value=self.num_nodes)
        if self.gpu_mode == "physical":
            have = count_physical_gpus()
            if sum(gpus) > have:
                msg = (
                    f"gpus_per_node={self.gpus_per_node!r} asks for {sum(gpus)} physical GPUs in all but this "
                    f"machine has {have}. Lower gpus_per_node, or use gpu_mode='logical' to only count them."
                )
                raise ConfigError(msg, field="gpus_per_node", value=self.gpus_per_node)
        if self.object_store_mb_per_node < 75:
            msg = f"object_store_mb_per_node={self.object_store_mb_per_node} is below Ray's minimum (75 MiB)."
            raise ConfigError(msg, field="object_store_mb_per_node", value=self.object_store_mb_per_node)

    def to_dict(self) -> dict[str, Any]:
        """Return the config as a JSON-ready dict."""
        data = asdict(self)
        data["gpus_per_node"] = list(self.worker_gpus())
        return data


@dataclass(frozen=True)
class NodeInfo:
    """One node of the cluster as Ray reports it."""

    node_id: str
    name: str
    is_head: bool
    alive: bool
    cpus: float
    gpus: float
    memory_bytes: int
    object_store_bytes: int
    labels: dict[str, str] = field(default_factory=dict)
    resources: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return the node as a JSON-ready dict."""
        return asdict(self)


def count_physical_gpus() -> int:
    """Return the number of NVIDIA GPUs visible through NVML (0 when none or no driver)."""
    try:
        import pynvml  # optional: only where nvidia-ml-py is installed
    except ImportError:
        return 0
    try:
        pynvml.nvmlInit()
        try:
            return int(pynvml.nvmlDeviceGetCount())
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - NVML raises its own error types for "no driver"
        return 0


class ClusterHandle:
    """A connected Ray cluster: its topology, and (when the kit started it) its teardown.

    Use it as a context manager, or call :meth:`stop`.
    """

    def __init__(
        self,
        *,
        address: str,
        embedded: bool,
        config: ClusterConfig | None,
        cluster: Any = None,
        temp_dir: str | None = None,
    ) -> None:
        self.address = address
        self.temp_dir = temp_dir
        self.embedded = embedded
        self.config = config
        self._cluster = cluster
        self._stopped = False
        self.started_at = time.time()

    # -- topology --------------------------------------------------------------------------
    def nodes(self) -> list[NodeInfo]:
        """Return the alive nodes, head first, then by name.

        Returns
        -------
        list of NodeInfo
            One entry per node.
        """
        import ray  # heavy: only when a cluster exists

        result = []
        for node in ray.nodes():
            if not node.get("Alive", False):
                continue
            res = dict(node.get("Resources", {}))
            labels = dict(node.get("Labels", {}) or {})
            is_head = "node:__internal_head__" in res
            name = labels.get(NODE_LABEL) or ("head" if is_head else node["NodeID"][:8])
            result.append(
                NodeInfo(
                    node_id=node["NodeID"],
                    name=name,
                    is_head=is_head,
                    alive=True,
                    cpus=res.get("CPU", 0.0),
                    gpus=res.get("GPU", 0.0),
                    memory_bytes=int(res.get("memory", 0)),
                    object_store_bytes=int(res.get("object_store_memory", 0)),
                    labels={k: v for k, v in labels.items() if not k.startswith("ray.io/")},
                    resources={k: v for k, v in res.items() if not k.startswith("node:")},
                )
            )
        result.sort(key=lambda n: (not n.is_head, n.name))
        return result

    def describe(self) -> dict[str, Any]:
        """Return the topology as a JSON-ready dict (what a verification log records).

        Returns
        -------
        dict
            ``address`` kind, ``embedded``, ``config``, ``nodes`` and totals.
        """
        nodes = self.nodes()
        return {
            "embedded": self.embedded,
            "address": "embedded" if self.embedded else _redact_address(self.address),
            "config": self.config.to_dict() if self.config else None,
            "num_nodes": len(nodes),
            "total_cpus": sum(n.cpus for n in nodes),
            "total_gpus": sum(n.gpus for n in nodes),
            "nodes": [n.to_dict() for n in nodes],
        }

    def node_names(self) -> dict[str, str]:
        """Return ``{node_id: name}`` for display (``head``, ``worker-1``...)."""
        return {n.node_id: n.name for n in self.nodes()}

    def __repr__(self) -> str:
        try:
            nodes = self.nodes()
        except Exception:  # noqa: BLE001 - repr must never raise
            return f"ClusterHandle(stopped={self._stopped})"
        lines = [f"ClusterHandle({'embedded' if self.embedded else 'external'}, {len(nodes)} nodes)"]
        lines += [
            f"  {n.name:<10} {n.node_id[:12]}  CPU {n.cpus:g}  GPU {n.gpus:g}  "
            f"mem {n.memory_bytes / _GIB:.1f} GiB  store {n.object_store_bytes / _GIB:.2f} GiB"
            + ("  (head)" if n.is_head else "")
            for n in nodes
        ]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        import html

        rows = "".join(
            f"<tr><td>{html.escape(n.name)}</td><td><code>{n.node_id[:12]}</code></td>"
            f"<td>{'yes' if n.is_head else ''}</td><td>{n.cpus:g}</td><td>{n.gpus:g}</td>"
            f"<td>{n.memory_bytes / _GIB:.1f}</td><td>{n.object_store_bytes / _GIB:.2f}</td></tr>"
            for n in self.nodes()
        )
        return (
            "<table><tr><th>node</th><th>id</th><th>head</th><th>CPU</th><th>GPU</th><th>memory GiB</th>"
            f"<th>object store GiB</th></tr>{rows}</table>"
        )

    def to_dict(self) -> dict[str, Any]:
        """Return :meth:`describe`."""
        return self.describe()

    # -- teardown --------------------------------------------------------------------------
    def stop(self) -> None:
        """Disconnect and, for an embedded cluster, kill every process it started. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        import ray

        # Processes the session's workers started themselves (vLLM's EngineCore and its workers) are
        # not Ray processes and can outlive a killed replica: note them now, kill survivors below.
        descendants = _session_descendants(self._session_marker()) if self._cluster is not None else []
        try:
            from ray import serve

            if self.embedded and ray.is_initialized():
                serve.shutdown()
        except Exception:  # noqa: BLE001 - best effort: the processes are killed below anyway
            pass
        ray.shutdown()
        if self._cluster is not None:
            self._cluster.shutdown()
            _wait_for_no_processes(self._session_marker(), timeout_s=15.0)
            _kill_survivors(descendants)
        _ACTIVE.discard(self)
        if self.temp_dir:
            import shutil

            shutil.rmtree(self.temp_dir, ignore_errors=True)

    def _session_marker(self) -> str:
        # Each embedded cluster has its own folder under the kit's root, so stopping one cluster
        # never touches another one running on the same machine.
        return self.temp_dir or _temp_root(self.config)

    def __enter__(self) -> ClusterHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


_ACTIVE: set[ClusterHandle] = set()


def _stop_all_at_exit() -> None:
    import contextlib

    for handle in list(_ACTIVE):
        with contextlib.suppress(Exception):  # interpreter exit: nothing to report to
            handle.stop()


atexit.register(_stop_all_at_exit)


def _temp_root(config: ClusterConfig | None) -> str:
    if config and config.temp_dir:
        return config.temp_dir
    import tempfile

    return os.path.join(tempfile.gettempdir(), "labkit-ray")


def _redact_address(address: str) -> str:
    # Keep the scheme and port, never credentials that a ray:// URL may carry.
    if "@" in address:
        address = address.split("://", 1)[0] + "://<redacted>@" + address.rsplit("@", 1)[1]
    return address


def find_ray_processes(marker: str | None = None) -> list[dict[str, Any]]:
    """Return Ray processes of this user, optionally only those whose command line has ``marker``.

    Parameters
    ----------
    marker : str, optional
        A substring of the command line, e.g. the kit's session folder.

    Returns
    -------
    list of dict
        ``pid``, ``name`` and the first 200 characters of the command line.
    """
    import psutil  # heavy-ish; only for teardown checks

    found = []
    me = os.getpid()
    for proc in psutil.process_iter(["pid", "name", "cmdline", "uids"]):
        try:
            if proc.info["pid"] == me or proc.info["uids"] is None or proc.info["uids"].real != os.getuid():
                continue
            cmd = " ".join(proc.info["cmdline"] or [])
            name = proc.info["name"] or ""
            if not any(key in name or key in cmd for key in _RAY_PROCESS_NAMES):
                continue
            if marker is not None and marker not in cmd:
                continue
            found.append({"pid": proc.info["pid"], "name": name, "cmdline": cmd[:200]})
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _session_descendants(marker: str) -> list[Any]:
    import psutil

    found = []
    for item in find_ray_processes(marker):
        try:
            found.extend(psutil.Process(item["pid"]).children(recursive=True))
        except psutil.NoSuchProcess:
            continue
    return found


def _kill_survivors(processes: list[Any]) -> None:
    import psutil

    for proc in processes:
        try:
            if proc.is_running():
                proc.kill()
        except psutil.NoSuchProcess:
            continue


def _wait_for_no_processes(marker: str, timeout_s: float) -> None:
    import psutil

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        left = find_ray_processes(marker)
        if not left:
            return
        time.sleep(0.2)
    for item in find_ray_processes(marker):
        try:
            psutil.Process(item["pid"]).kill()
        except psutil.NoSuchProcess:
            continue


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

    temp_root = os.path.join(_temp_root(config), uuid.uuid4().hex[:8])
    os.makedirs(temp_root, exist_ok=True)
    # Ray writes the head's address to a file in its *default* folder (<tmp>/ray) whatever temp_dir
    # says; on a fresh machine that folder does not exist yet and the head fails to start.
    os.makedirs(os.path.dirname(ray._private.utils.get_ray_address_file(None)), exist_ok=True)
    # Each node's resources: a node-name resource (pin things to a node) and a label.
    head_args: dict[str, Any] = {
        "num_cpus": _whole(config.head_cpus),
        "num_gpus": 0,
        "object_store_memory": config.object_store_mb_per_node * 1024**2,
        "resources": {"labkit_head": 1.0, "labkit_node_head": 1.0},
        "labels": {NODE_LABEL: "head"},
        "include_dashboard": config.include_dashboard,
        "temp_dir": temp_root,
    }
    if config.memory_gb_per_node:
        head_args["memory"] = int(config.memory_gb_per_node * _GIB)
    cluster = None
    started = time.monotonic()
    try:
        cluster = Cluster(initialize_head=True, connect=False, head_node_args=head_args)
        physical_next = 0
        slow_nodes: list[str] = []
        for i, gpus in enumerate(config.worker_gpus(), start=1):
            args: dict[str, Any] = {
                "num_cpus": _whole(config.cpus_per_node),
                "num_gpus": gpus,
                "object_store_memory": config.object_store_mb_per_node * 1024**2,
                "resources": {f"labkit_node_worker-{i}": 1.0, "labkit_worker": 1.0},
                "labels": {NODE_LABEL: f"worker-{i}"},
            }
            if config.memory_gb_per_node:
                args["memory"] = int(config.memory_gb_per_node * _GIB)
            if config.gpu_mode == "physical" and gpus:
                devices = ",".join(str(d) for d in range(physical_next, physical_next + gpus))
                physical_next += gpus
                args["env_vars"] = {"CUDA_VISIBLE_DEVICES": devices}
            _add_worker(cluster, args, f"worker-{i}", slow_nodes)
        ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
        handle = ClusterHandle(
            address=cluster.address, embedded=True, config=config, cluster=cluster, temp_dir=temp_root
        )
        _ACTIVE.add(handle)
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
        ray.init(address=address, logging_level="WARNING", log_to_driver=False)
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


def register_cli(subparsers: Any) -> None:
    """Add the ``cluster`` subcommand (start an embedded cluster, print it, stop it).

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        The CLI's subparsers.
    """
    parser = subparsers.add_parser("cluster", help="start the embedded cluster, print its topology, stop it")
    parser.add_argument("--nodes", type=int, default=ClusterConfig.num_nodes)
    parser.add_argument("--gpus-per-node", type=int, default=0)
    parser.set_defaults(func=_cli_cluster)


def _cli_cluster(args: Any) -> int:
    with start_cluster(num_nodes=args.nodes, gpus_per_node=args.gpus_per_node) as handle:
        print(repr(handle))
    left = find_ray_processes(_temp_root(None))
    print(f"stopped; Ray processes left: {len(left)}")
    return 0 if not left else 1


def kill_leftovers(marker: str | None = None) -> int:
    """Kill Ray processes that an embedded cluster of the kit left behind (e.g. after a crash).

    Parameters
    ----------
    marker : str, optional
        Substring of their command line; default the kit's Ray session folder.

    Returns
    -------
    int
        How many processes were killed.
    """
    import psutil

    found = find_ray_processes(marker or _temp_root(None))
    for item in found:
        try:
            psutil.Process(item["pid"]).kill()
        except psutil.NoSuchProcess:
            continue
    return len(found)


def list_session_dirs() -> set[str]:
    """Return the folders of the kit's embedded clusters on this machine (one per cluster).

    Returns
    -------
    set of str
        Absolute paths under the kit's Ray root (``$TMPDIR/labkit-ray``).
    """
    root = _temp_root(None)
    try:
        return {os.path.join(root, name) for name in os.listdir(root)}
    except FileNotFoundError:
        return set()
