"""Shape of an embedded cluster: :class:`ClusterConfig`, its validation, and the GPU count.

Owns the node label (``NODE_LABEL``) that names every node and the count of the host's
physical GPUs that ``gpu_mode="physical"`` is checked against.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from labkit.errors import ConfigError

__all__ = ["NODE_LABEL", "ClusterConfig", "count_physical_gpus"]

NODE_LABEL = "labkit.io/node"
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
    cpu_devices_per_node : int
        CPU *device slots* each worker offers to the ranks of a replica split with TP x PP on the
        CPU backend (the custom resource ``labkit_cpu_device``; one rank takes one slot, as one
        GPU rank takes one GPU). 2 lets TP 2 stay inside a node.
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
    worker_niceness : int or None
        Scheduling priority (``nice``, 0..19) of Ray's worker processes: the Serve proxies, replicas and
        their vLLM engines. None keeps Ray's default, 15: below everything else on the machine, the load
        generator and Ray's own raylets and GCS included. 0 runs them at the priority of an ordinary
        program, as vLLM alone runs.
    """

    num_nodes: int = 3
    cpus_per_node: float = 2.0
    head_cpus: float = 1.0
    gpus_per_node: int | tuple[int, ...] = 0
    cpu_devices_per_node: int = 2
    gpu_mode: str = "logical"
    object_store_mb_per_node: int = 256
    memory_gb_per_node: float | None = None
    include_dashboard: bool = False
    temp_dir: str | None = None
    start_timeout_s: float = 60.0
    worker_niceness: int | None = None

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
        if not isinstance(self.cpu_devices_per_node, int) or self.cpu_devices_per_node < 0:
            msg = (
                f"cpu_devices_per_node={self.cpu_devices_per_node!r} must be a whole number >= 0 "
                "(2 lets a CPU replica keep TP 2 inside a node)."
            )
            raise ConfigError(msg, field="cpu_devices_per_node", value=self.cpu_devices_per_node)
        if self.worker_niceness is not None and (
            not isinstance(self.worker_niceness, int) or not 0 <= self.worker_niceness <= 19
        ):
            msg = (
                f"worker_niceness={self.worker_niceness!r} must be a whole number in 0..19 "
                "(0: an ordinary program's priority; None: Ray's default, 15)."
            )
            raise ConfigError(msg, field="worker_niceness", value=self.worker_niceness)
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
