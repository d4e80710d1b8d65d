"""Driver-side samplers: this machine's GPUs through NVML and chosen processes' CPU through psutil.

Owns :class:`GpuSampler`, :class:`ProcessSampler` with the :class:`ProcessTarget` entries it
follows, and :func:`find_serve_processes`, which finds the Serve processes on this machine.
pynvml and psutil are imported only when a sampler is built.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from labkit.errors import ConfigError, TelemetryError
from labkit.telemetry.collector import _current_node_id, _require_ray
from labkit.telemetry.samples import TelemetrySample

__all__ = [
    "GpuSampler",
    "ProcessSampler",
    "ProcessTarget",
    "find_serve_processes",
]


# ---------------------------------------------------------------------------------------------
# Driver-side samplers: GPUs (NVML) and processes (psutil)
# ---------------------------------------------------------------------------------------------


class _PeriodicSampler:
    """A daemon thread that calls ``self._sample()`` every ``interval_s`` and keeps the result."""

    def __init__(self, interval_s: float) -> None:
        if not interval_s > 0:
            msg = f"interval_s={interval_s!r} must be a positive number of seconds (e.g. 0.1)."
            raise ConfigError(msg, field="interval_s", value=interval_s)
        self.interval_s = interval_s
        self.samples: list[TelemetrySample] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> list[TelemetrySample]:
        raise NotImplementedError

    def start(self) -> None:
        """Start the sampling thread (no-op when already started)."""
        if self._thread is not None:
            return
        self._stop.clear()

        def loop() -> None:
            next_tick = time.perf_counter()
            while not self._stop.wait(max(0.0, next_tick - time.perf_counter())):
                next_tick = max(next_tick + self.interval_s, time.perf_counter())
                self.samples.extend(self._sample())

        self._thread = threading.Thread(target=loop, name=f"labkit-{type(self).__name__}", daemon=True)
        self._thread.start()

    def stop(self) -> list[TelemetrySample]:
        """Stop the thread and return every sample taken.

        Returns
        -------
        list of TelemetrySample
            All samples, on this process's ``perf_counter`` clock.
        """
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None
        return list(self.samples)


class GpuSampler(_PeriodicSampler):
    """Sample utilization and memory of this machine's GPUs through NVML (``pynvml``).

    Where there is no GPU, no driver or no ``pynvml``, :attr:`available` is False,
    :attr:`reason` says why, and sampling returns nothing.

    Parameters
    ----------
    interval_s : float
        Sampling period in seconds.
    node_id : str, optional
        Node id written into the samples; the Ray node id (or "local") when omitted.
    """

    def __init__(self, interval_s: float = 0.1, node_id: str | None = None) -> None:
        super().__init__(interval_s)
        self.node_id = node_id if node_id is not None else _current_node_id()
        self.available = False
        self.reason = ""
        self._nvml: Any = None
        self._handles: list[Any] = []
        try:
            # pynvml (nvidia-ml-py) loads the driver library: only where GPUs are sampled.
            import pynvml
        except ImportError:
            self.reason = "pynvml is not installed (pip install nvidia-ml-py)"
            return
        try:
            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        except pynvml.NVMLError as err:
            self.reason = f"NVML unavailable: {err}"
            return
        self._nvml = pynvml
        self.available = bool(self._handles)
        self.reason = "" if self.available else "NVML found no GPU"

    def sample_once(self) -> list[TelemetrySample]:
        """Return one sample per GPU now (an empty list where NVML is unavailable).

        Returns
        -------
        list of TelemetrySample
            Role "gpu", ``component_id`` "gpu<index>".
        """
        return self._sample()

    def _sample(self) -> list[TelemetrySample]:
        if not self.available:
            return []
        nvml, out = self._nvml, []
        t_s, wall_s = time.perf_counter(), time.time()
        for index, handle in enumerate(self._handles):
            try:
                util = nvml.nvmlDeviceGetUtilizationRates(handle)
                mem = nvml.nvmlDeviceGetMemoryInfo(handle)
            except nvml.NVMLError:
                continue
            out.append(
                TelemetrySample(
                    t_s=t_s,
                    wall_s=wall_s,
                    node_id=self.node_id,
                    role="gpu",
                    component_id=f"gpu{index}",
                    gpu_util_percent=float(util.gpu),
                    gpu_mem_used_bytes=int(mem.used),
                    gpu_mem_total_bytes=int(mem.total),
                    source="gpu",
                )
            )
        return out


@dataclass(frozen=True)
class ProcessTarget:
    """A process on this machine whose CPU the :class:`ProcessSampler` follows.

    Attributes
    ----------
    pid : int
        Process id (on this machine).
    role : str
        One of :data:`ROLES`.
    component_id : str
        Id written into the samples.
    node_id : str
        Ray node id the process belongs to.
    include_children : bool
        Add the CPU of its child processes (a vLLM replica runs its engine in a child).
    """

    pid: int
    role: str
    component_id: str
    node_id: str = "local"
    include_children: bool = True


class ProcessSampler(_PeriodicSampler):
    """Sample the CPU percent (100 = one core) of given processes with psutil.

    Parameters
    ----------
    targets : sequence of ProcessTarget
        The processes; ones that exit are dropped and noted in :attr:`notes`.
    interval_s : float
        Sampling period in seconds.
    """

    def __init__(self, targets: Sequence[ProcessTarget], interval_s: float = 0.5) -> None:
        super().__init__(interval_s)
        # psutil reads /proc; imported here so that import labkit stays light.
        import psutil

        self._psutil = psutil
        self.targets = list(targets)
        self.notes: list[str] = []
        self._procs: dict[int, Any] = {}
        for target in self.targets:
            self._cpu(target)  # prime the per-process counters

    def _proc(self, pid: int) -> Any:
        proc = self._procs.get(pid)
        if proc is None:
            proc = self._procs[pid] = self._psutil.Process(pid)
            proc.cpu_percent(None)
        return proc

    def _cpu(self, target: ProcessTarget) -> float | None:
        psutil = self._psutil
        try:
            proc = self._proc(target.pid)
            total = proc.cpu_percent(None)
            if target.include_children:
                for child in proc.children(recursive=True):
                    try:
                        total += self._proc(child.pid).cpu_percent(None)
                    except psutil.Error:
                        self._procs.pop(child.pid, None)
        except psutil.Error as err:
            self.notes.append(f"{target.role} {target.component_id} (pid {target.pid}): {err}")
            self.targets = [t for t in self.targets if t.pid != target.pid]
            return None
        return float(total)

    def _sample(self) -> list[TelemetrySample]:
        out = []
        for target in list(self.targets):
            cpu = self._cpu(target)
            if cpu is not None:
                out.append(
                    TelemetrySample(
                        t_s=time.perf_counter(),
                        wall_s=time.time(),
                        node_id=target.node_id,
                        role=target.role,
                        component_id=target.component_id,
                        cpu_percent=cpu,
                        pid=target.pid,
                        source="process",
                    )
                )
        return out


def find_serve_processes() -> list[ProcessTarget]:
    """Find the Serve proxy, controller, replica and coordinator processes on this machine.

    Uses Ray's actor table (a private Ray API, guarded): actors whose class is ``ProxyActor``
    become "proxy", ``ServeController`` "controller", ``ServeReplica:<app>:<deployment>``
    "replica", or "coordinator" when the deployment's name contains "coordinator"
    (``component_id`` is the replica's unique id, the part of the actor name after the last
    ``#``, as ``serve.get_replica_context().replica_id.unique_id`` gives it). Only actors on
    nodes with this machine's IP address are returned (their pids are meaningful here).

    Returns
    -------
    list of ProcessTarget
        Possibly empty.

    Raises
    ------
    TelemetryError
        Ray is not initialized, or its actor table cannot be read.
    """
    ray = _require_ray()
    try:
        # Ray private: the public state API (ray.util.state) needs the dashboard, which the embedded
        # cluster does not start; the GCS actor table does not.
        from ray._private import state as ray_state

        actors = ray_state.actors()
        local_ip = ray.util.get_node_ip_address()
    except (ImportError, AttributeError, RuntimeError) as err:
        msg = (
            f"Cannot read Ray's actor table ({err!r}); pass ProcessTarget(pid, role, ...) "
            f"entries to TelemetryRecorder(processes=...) instead."
        )
        raise TelemetryError(msg) from err
    out = []
    for info in actors.values():
        address = info.get("Address") or {}
        if info.get("State") != "ALIVE" or address.get("IPAddress") != local_ip or not info.get("Pid"):
            continue
        cls_name, name = str(info.get("ActorClassName", "")), str(info.get("Name") or "")
        if cls_name == "ProxyActor":
            role, comp = "proxy", f"proxy-{address.get('NodeID', '')[:8]}"
        elif cls_name == "ServeController":
            role, comp = "controller", "controller"
        elif cls_name.startswith("ServeReplica:") or "coordinator" in cls_name.lower():
            deployment = cls_name.rsplit(":", 1)[-1]
            role = "coordinator" if "coordinator" in deployment.lower() else "replica"
            comp = name.rsplit("#", 1)[-1] or cls_name
        else:
            continue
        out.append(
            ProcessTarget(
                pid=int(info["Pid"]), role=role, component_id=comp, node_id=str(address.get("NodeID", "local"))
            )
        )
    return out
