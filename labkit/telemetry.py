"""Engine, process and GPU activity sampled during a load run, on the load generator's clock.

Owns the :class:`TelemetrySample` contract and the machinery that fills it::

    replica / coordinator process            driver (notebook, load generator)
    ─────────────────────────────            ──────────────────────────────────
    start_reporter(stats_fn) ──push batches──> TelemetryCollector (Ray actor, "labkit")
                                                     │ drain on exit
    GpuSampler (NVML), ProcessSampler (psutil) ──> TelemetryRecorder ──> .samples (t_s)

Clock: ``t_s`` is on the load generator's clock (``time.perf_counter()`` of the process that
runs the load); samples taken elsewhere carry ``wall_s`` (``time.time()``) and are mapped on
to that clock by the recorder, which notes the offset between the two clocks when it starts.
Across machines this mapping is as good as their wall clocks agree (NTP: about a millisecond).

Cost: a reporter at 10 Hz reads one callback and ``/proc/self/stat`` per tick and pushes one
batch every 0.5 s; ``benchmarks/bench_telemetry_overhead.py`` measures it (target < 2 % of one
core).
"""

from __future__ import annotations

import dataclasses
import html
import math
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from labkit.errors import ConfigError, MissingDependencyError, TelemetryError

__all__ = [
    "COLLECTOR_NAME",
    "COLLECTOR_NAMESPACE",
    "ROLES",
    "EngineActivity",
    "GpuSampler",
    "ProcessSampler",
    "ProcessTarget",
    "ReporterHandle",
    "TelemetryRecorder",
    "TelemetrySample",
    "cpu_samples",
    "find_serve_processes",
    "get_collector",
    "kill_collector",
    "start_reporter",
    "summarize_samples",
]

COLLECTOR_NAME = "labkit-telemetry"
COLLECTOR_NAMESPACE = "labkit"
DEFAULT_MAX_SAMPLES = 200_000  # ~10 components x 10 Hz x 30 min; about 60 MB of dicts at most
ROLES = ("replica", "coordinator", "proxy", "controller", "gpu", "process")
_KNOWN_STATS = ("running", "waiting", "inflight")


@dataclass
class TelemetrySample:
    """One observation of one component at one moment.

    ``role`` is one of :data:`ROLES`. ``running`` / ``waiting`` are the engine's running and
    waiting requests (replicas); for a coordinator ``waiting`` is the requests queued for a
    slot. ``inflight`` is the requests the component holds; ``cpu_percent`` the process CPU
    (100 = one core). ``source`` says who took the sample: "reporter" (inside the component:
    its own process only), "process" (:class:`ProcessSampler`: the process and its children,
    e.g. a replica with its vLLM engine core) or "gpu" (:class:`GpuSampler`). ``extra`` keeps
    any other number a component reports.
    """

    t_s: float
    wall_s: float
    node_id: str
    role: str
    component_id: str
    running: int | None = None
    waiting: int | None = None
    inflight: int | None = None
    cpu_percent: float | None = None
    gpu_util_percent: float | None = None
    gpu_mem_used_bytes: int | None = None
    gpu_mem_total_bytes: int | None = None
    pid: int | None = None
    source: str | None = None
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def active(self) -> int | None:
        """Running plus waiting requests, or None when the component reports neither."""
        if self.running is None and self.waiting is None:
            return None
        return (self.running or 0) + (self.waiting or 0)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TelemetrySample:
        """Build a sample from :meth:`to_dict` output, ignoring unknown keys."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


# ---------------------------------------------------------------------------------------------
# Collector: a Ray actor that holds pushed samples until the recorder drains them
# ---------------------------------------------------------------------------------------------


class _Collector:
    """Bounded buffer of sample dicts; wrapped by ``ray.remote`` in :func:`get_collector`."""

    def __init__(self, max_samples: int = DEFAULT_MAX_SAMPLES) -> None:
        self._buf: deque[dict[str, Any]] = deque(maxlen=max_samples)
        self._pushed = 0
        self._dropped = 0

    def push(self, samples: list[dict[str, Any]]) -> int:
        overflow = len(self._buf) + len(samples) - (self._buf.maxlen or 0)
        if overflow > 0:
            self._dropped += overflow
        self._buf.extend(samples)
        self._pushed += len(samples)
        return len(samples)

    def drain(self, since_wall_s: float | None = None) -> list[dict[str, Any]]:
        out = list(self._buf)
        self._buf.clear()
        if since_wall_s is not None:
            out = [s for s in out if s.get("wall_s", 0.0) >= since_wall_s]
        return out

    def stats(self) -> dict[str, Any]:
        return {"size": len(self._buf), "pushed": self._pushed, "dropped": self._dropped,
                "max_samples": self._buf.maxlen, "pid": os.getpid()}


def _require_ray() -> Any:
    # ray is heavy (about a second to import): only the collector path needs it.
    try:
        import ray
    except ImportError as err:
        msg = "Telemetry collection needs Ray. Run: pip install 'ray[serve]'"
        raise MissingDependencyError(msg) from err
    if not ray.is_initialized():
        msg = ("Ray is not initialized, so there is no telemetry collector to reach. Start the "
               "cluster first (labkit.cluster or ray.init()), or record without the collector: "
               "TelemetryRecorder(use_collector=False).")
        raise TelemetryError(msg)
    return ray


def get_collector(create: bool = True, *, max_samples: int = DEFAULT_MAX_SAMPLES) -> Any:
    """Return the handle of the telemetry collector actor, creating it when asked.

    The collector is a named, detached Ray actor (``num_cpus=0``) in namespace
    :data:`COLLECTOR_NAMESPACE`, so every process of the cluster finds the same one; it lives
    until the cluster stops or :func:`kill_collector` is called.

    Parameters
    ----------
    create : bool
        Create the actor when it does not exist (get-or-create, safe against races).
    max_samples : int
        Size of its ring buffer when it is created; the oldest samples go first.

    Returns
    -------
    ray.actor.ActorHandle or None
        The handle, or None when ``create`` is False and there is no collector.

    Raises
    ------
    TelemetryError
        Ray is not initialized in this process.
    MissingDependencyError
        Ray is not installed.
    ConfigError
        ``max_samples`` is not positive.
    """
    if max_samples < 1:
        msg = f"max_samples={max_samples!r} must be a positive integer, e.g. {DEFAULT_MAX_SAMPLES}."
        raise ConfigError(msg, field="max_samples", value=max_samples)
    ray = _require_ray()
    if not create:
        try:
            return ray.get_actor(COLLECTOR_NAME, namespace=COLLECTOR_NAMESPACE)
        except ValueError:
            return None
    actor_cls = ray.remote(num_cpus=0, max_restarts=0)(_Collector)
    return actor_cls.options(name=COLLECTOR_NAME, namespace=COLLECTOR_NAMESPACE,
                             get_if_exists=True, lifetime="detached").remote(max_samples)


def kill_collector() -> bool:
    """Stop the collector actor if it exists.

    Returns
    -------
    bool
        True when a collector was found and killed.

    Raises
    ------
    TelemetryError
        Ray is not initialized in this process.
    """
    ray = _require_ray()
    handle = get_collector(create=False)
    if handle is None:
        return False
    ray.kill(handle)
    return True


# ---------------------------------------------------------------------------------------------
# Reporter: runs inside a replica / coordinator / proxy process
# ---------------------------------------------------------------------------------------------


class ReporterHandle:
    """A running reporter thread; :meth:`stop` flushes what it holds and joins it."""

    def __init__(self, thread: threading.Thread, stop_event: threading.Event,
                 counters: dict[str, Any], role: str, component_id: str) -> None:
        self._thread = thread
        self._stop = stop_event
        self._counters = counters
        self.role = role
        self.component_id = component_id

    @property
    def running(self) -> bool:
        """Whether the reporter thread is alive."""
        return self._thread.is_alive()

    def stop(self, timeout_s: float = 2.0) -> None:
        """Stop sampling, push the last batch and wait for the thread.

        Parameters
        ----------
        timeout_s : float
            How long to wait for the thread to end.
        """
        self._stop.set()
        self._thread.join(timeout_s)

    def stats(self) -> dict[str, Any]:
        """Return the reporter's own counters and cost.

        Returns
        -------
        dict
            ``samples``, ``batches_sent``, ``samples_dropped``, ``stats_errors``,
            ``last_error``, ``cpu_time_s`` (this thread's CPU), ``elapsed_s`` and
            ``cpu_fraction_of_core`` (cpu_time_s / elapsed_s).
        """
        out = dict(self._counters)
        elapsed = out.get("elapsed_s") or 0.0
        out["cpu_fraction_of_core"] = out["cpu_time_s"] / elapsed if elapsed > 0 else None
        return out

    def __enter__(self) -> ReporterHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        s = self.stats()
        return (f"ReporterHandle(role={self.role!r}, component_id={self.component_id!r}, "
                f"running={self.running}, samples={s['samples']}, batches_sent={s['batches_sent']})")


def _ray_sink() -> Callable[[list[dict[str, Any]]], None]:
    """Return a sink that pushes batches to the collector without waiting for the reply."""
    state: dict[str, Any] = {"handle": None, "pending": deque()}

    def push(batch: list[dict[str, Any]]) -> None:
        ray = _require_ray()
        pending: deque[Any] = state["pending"]
        while pending:  # reap finished pushes; a failed one means the collector went away
            ready, _ = ray.wait([pending[0]], timeout=0)
            if not ready:
                break
            ref = pending.popleft()
            try:
                ray.get(ref)
            except ray.exceptions.RayError:
                state["handle"] = None
        if len(pending) >= 8:
            msg = "the telemetry collector is not keeping up (8 batches in flight); batch dropped"
            raise TelemetryError(msg)
        if state["handle"] is None:
            state["handle"] = get_collector(create=True)
        pending.append(state["handle"].push.remote(batch))

    return push


def start_reporter(
    *,
    role: str,
    component_id: str,
    node_id: str | None = None,
    stats_fn: Callable[[], Mapping[str, float]],
    interval_s: float = 0.1,
    flush_interval_s: float = 0.5,
    sample_cpu: bool = True,
    sink: Callable[[list[dict[str, Any]]], None] | None = None,
) -> ReporterHandle:
    """Start a daemon thread that samples this process and pushes to the collector.

    Every ``interval_s`` it calls ``stats_fn()`` (e.g. ``{"running": 3, "waiting": 1}``),
    adds this process's CPU percent, stamps ``wall_s = time.time()`` and keeps the sample;
    every ``flush_interval_s`` it pushes the batch (fire and forget) to the collector.

    Parameters
    ----------
    role : str
        One of :data:`ROLES`, e.g. "replica" or "coordinator".
    component_id : str
        Stable id of the component; for replicas use the replica id that responses carry, so
        telemetry and request records line up.
    node_id : str, optional
        The Ray node id; detected from the Ray runtime context when omitted.
    stats_fn : callable
        Returns a mapping of numbers; ``running``, ``waiting``, ``inflight`` fill those fields,
        other keys go to ``extra``. Errors it raises are counted, never propagated.
    interval_s : float
        Sampling period in seconds (0.1 = 10 Hz).
    flush_interval_s : float
        How often a batch is pushed, in seconds.
    sample_cpu : bool
        Add ``cpu_percent`` of this process (psutil).
    sink : callable, optional
        Receives each batch (a list of sample dicts) instead of the Ray collector; for tests
        and for use without Ray.

    Returns
    -------
    ReporterHandle
        Stop it with :meth:`ReporterHandle.stop` (or use it as a context manager).

    Raises
    ------
    ConfigError
        Unknown role, or a non-positive interval.
    """
    if role not in ROLES:
        msg = f"Unknown telemetry role {role!r}. Allowed: {list(ROLES)}."
        raise ConfigError(msg, field="role", value=role)
    for name, value in (("interval_s", interval_s), ("flush_interval_s", flush_interval_s)):
        if not value > 0:
            msg = f"{name}={value!r} must be a positive number of seconds (e.g. 0.1 for 10 Hz)."
            raise ConfigError(msg, field=name, value=value)
    if node_id is None:
        node_id = _current_node_id()
    push = sink if sink is not None else _ray_sink()
    stop_event = threading.Event()
    counters: dict[str, Any] = {"samples": 0, "batches_sent": 0, "samples_dropped": 0,
                                "stats_errors": 0, "last_error": None, "cpu_time_s": 0.0,
                                "elapsed_s": 0.0}
    pid = os.getpid()

    def loop() -> None:
        proc = None
        if sample_cpu:
            # psutil reads /proc; imported here so that import labkit stays light.
            import psutil

            proc = psutil.Process(pid)
            proc.cpu_percent(None)  # prime: the first call has nothing to compare with
        cpu0, t0 = time.thread_time(), time.perf_counter()
        batch: list[dict[str, Any]] = []
        next_tick = last_flush = t0
        while True:
            stopping = stop_event.wait(max(0.0, next_tick - time.perf_counter()))
            now = time.perf_counter()
            next_tick = max(next_tick + interval_s, now)
            if not stopping:
                batch.append(_reporter_sample(stats_fn, counters, proc, now, node_id, role,
                                              component_id, pid))
            if batch and (stopping or now - last_flush >= flush_interval_s):
                try:
                    push(batch)
                    counters["batches_sent"] += 1
                # A reporter must never take its host process down: count and go on.
                except Exception as err:  # noqa: BLE001
                    counters["samples_dropped"] += len(batch)
                    counters["last_error"] = f"push: {err!r}"
                batch = []
                last_flush = now
            counters["cpu_time_s"] = time.thread_time() - cpu0
            counters["elapsed_s"] = time.perf_counter() - t0
            if stopping:
                return

    thread = threading.Thread(target=loop, name=f"labkit-telemetry-{role}", daemon=True)
    thread.start()
    return ReporterHandle(thread, stop_event, counters, role, component_id)


def _reporter_sample(stats_fn: Callable[[], Mapping[str, float]], counters: dict[str, Any],
                     proc: Any, now: float, node_id: str, role: str, component_id: str,
                     pid: int) -> dict[str, Any]:
    sample: dict[str, Any] = {"t_s": now, "wall_s": time.time(), "node_id": node_id, "role": role,
                              "component_id": component_id, "pid": pid, "source": "reporter"}
    try:
        stats = dict(stats_fn())
    # stats_fn is the caller's code; one bad read must not stop the sampling.
    except Exception as err:  # noqa: BLE001
        counters["stats_errors"] += 1
        counters["last_error"] = f"stats_fn: {err!r}"
        stats = {}
    for key in _KNOWN_STATS:
        if stats.get(key) is not None:
            sample[key] = int(stats.pop(key))
    extra = {k: float(v) for k, v in stats.items() if isinstance(v, (int, float))}
    if extra:
        sample["extra"] = extra
    if proc is not None:
        sample["cpu_percent"] = proc.cpu_percent(None)
    counters["samples"] += 1
    return sample


def _current_node_id() -> str:
    """Return the Ray node id of this process, or "local" outside Ray."""
    ray = sys.modules.get("ray")  # only consulted when this process already uses Ray
    if ray is not None and ray.is_initialized():
        return str(ray.get_runtime_context().get_node_id())
    return "local"


# ---------------------------------------------------------------------------------------------
# vLLM: running / waiting requests from the engine's own scheduler statistics
# ---------------------------------------------------------------------------------------------


class EngineActivity:
    """Latest running / waiting request counts of a vLLM engine, fed by its stat loggers.

    Pass ``activity.stat_logger_factory()`` to ``AsyncLLM.from_engine_args(...,
    stat_loggers=[...])`` (with stats logging on) and ``activity.stats`` as the reporter's
    ``stats_fn``. These are the same numbers as the ``vllm:num_requests_running`` and
    ``vllm:num_requests_waiting`` Prometheus gauges, read without a metrics server.
    """

    def __init__(self) -> None:
        self._by_engine: dict[int, tuple[int, int]] = {}
        self.updated_wall_s: float | None = None

    def update(self, scheduler_stats: Any, engine_idx: int = 0) -> None:
        """Record one ``SchedulerStats`` (anything with ``num_running_reqs``/``num_waiting_reqs``).

        Parameters
        ----------
        scheduler_stats : object or None
            vLLM's scheduler statistics of one engine step; None is ignored.
        engine_idx : int
            Data-parallel engine index; counts of several engines are summed.
        """
        if scheduler_stats is None:
            return
        self._by_engine[engine_idx] = (int(scheduler_stats.num_running_reqs),
                                       int(scheduler_stats.num_waiting_reqs))
        self.updated_wall_s = time.time()

    def stats(self) -> dict[str, int]:
        """Return ``{"running": n, "waiting": m}`` summed over engines (zeros before any step)."""
        return {"running": sum(r for r, _ in self._by_engine.values()),
                "waiting": sum(w for _, w in self._by_engine.values())}

    def stat_logger_factory(self) -> Callable[..., Any]:
        """Return a vLLM stat-logger factory that feeds this object.

        Returns
        -------
        callable
            ``factory(vllm_config, engine_index) -> StatLoggerBase``.

        Raises
        ------
        MissingDependencyError
            vLLM is not installed.
        """
        try:
            # vllm takes seconds to import: only the serving process that runs it gets here.
            from vllm.v1.metrics.loggers import StatLoggerBase
        except ImportError as err:
            msg = "EngineActivity.stat_logger_factory needs vLLM. Run: pip install vllm"
            raise MissingDependencyError(msg) from err
        activity = self

        class _LabkitStatLogger(StatLoggerBase):
            def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
                self.engine_index = engine_index

            def record(self, scheduler_stats: Any, iteration_stats: Any,
                       mm_cache_stats: Any = None, engine_idx: int = 0) -> None:
                activity.update(scheduler_stats, engine_idx)

            def log_engine_initialized(self) -> None:
                pass

        return _LabkitStatLogger


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

        self._thread = threading.Thread(target=loop, name=f"labkit-{type(self).__name__}",
                                        daemon=True)
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
            out.append(TelemetrySample(t_s=t_s, wall_s=wall_s, node_id=self.node_id, role="gpu",
                                       component_id=f"gpu{index}", gpu_util_percent=float(util.gpu),
                                       gpu_mem_used_bytes=int(mem.used),
                                       gpu_mem_total_bytes=int(mem.total), source="gpu"))
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
                out.append(TelemetrySample(t_s=time.perf_counter(), wall_s=time.time(),
                                           node_id=target.node_id, role=target.role,
                                           component_id=target.component_id, cpu_percent=cpu,
                                           pid=target.pid, source="process"))
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
        # The public state API needs the dashboard; the GCS actor table does not.
        from ray._private import state as ray_state

        actors = ray_state.actors()
        local_ip = ray.util.get_node_ip_address()
    except (ImportError, AttributeError, RuntimeError) as err:
        msg = (f"Cannot read Ray's actor table ({err!r}); pass ProcessTarget(pid, role, ...) "
               f"entries to TelemetryRecorder(processes=...) instead.")
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
        out.append(ProcessTarget(pid=int(info["Pid"]), role=role, component_id=comp,
                                 node_id=str(address.get("NodeID", "local"))))
    return out


# ---------------------------------------------------------------------------------------------
# Recorder: the notebook's context manager around a load run
# ---------------------------------------------------------------------------------------------

_SUMMARY_FIELDS = ("running", "waiting", "active", "inflight", "cpu_percent", "gpu_util_percent")


def cpu_samples(samples: Iterable[TelemetrySample]) -> list[TelemetrySample]:
    """Return the CPU samples of one component, preferring the process sampler's.

    A component may be sampled twice: by its own reporter (its process only) and by a
    :class:`ProcessSampler` (its process and children, e.g. the vLLM engine core). Mixing
    the two would zigzag; the process sampler's view is the complete one.

    Parameters
    ----------
    samples : iterable of TelemetrySample
        Samples of one component.

    Returns
    -------
    list of TelemetrySample
        Those with ``cpu_percent``, from the process sampler when it sampled this component.
    """
    with_cpu = [s for s in samples if s.cpu_percent is not None and s.role != "gpu"]
    process = [s for s in with_cpu if s.source == "process"]
    return process or with_cpu


def summarize_samples(
    samples: Iterable[TelemetrySample],
    *,
    start_s: float | None = None,
    end_s: float | None = None,
    role: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Summarize samples per component over a time window.

    Parameters
    ----------
    samples : iterable of TelemetrySample
        Samples on the load clock.
    start_s, end_s : float, optional
        Window on the load clock (inclusive); open when omitted.
    role : str, optional
        Keep only this role.

    Returns
    -------
    dict
        ``{component_id: {"role", "node_id", "n", "<field>_mean", "<field>_max", ...}}`` for
        running, waiting, active (running + waiting), inflight, cpu_percent and
        gpu_util_percent, where the component reports them. Where a component has CPU samples
        from a :class:`ProcessSampler` (children included) those are used for cpu_percent.
    """
    groups: dict[str, list[TelemetrySample]] = {}
    for s in samples:
        if role is not None and s.role != role:
            continue
        if (start_s is not None and s.t_s < start_s) or (end_s is not None and s.t_s > end_s):
            continue
        groups.setdefault(s.component_id, []).append(s)
    out: dict[str, dict[str, Any]] = {}
    for comp, group in sorted(groups.items()):
        row: dict[str, Any] = {"role": group[0].role, "node_id": group[0].node_id, "n": len(group)}
        for name in _SUMMARY_FIELDS:
            values = [v for v in (getattr(s, name) for s in group) if v is not None]
            if name == "cpu_percent":
                values = [s.cpu_percent for s in cpu_samples(group)]
            if values:
                row[f"{name}_mean"] = sum(values) / len(values)
                row[f"{name}_max"] = max(values)
        out[comp] = row
    return out


class TelemetryRecorder:
    """Record telemetry around a load run and map it on to the load generator's clock.

    Use it as a context manager in the process that runs the load::

        with TelemetryRecorder(processes="serve") as tel:
            result = run_load(...)
        tel.summary()

    On enter it notes the offset between ``time.time()`` and ``time.perf_counter()`` and
    starts the local GPU and process samplers; on exit it stops them, waits ``settle_s`` for
    reporters to push their last batch, drains the collector and maps every sample's
    ``wall_s`` to ``t_s`` on the load clock.

    Parameters
    ----------
    use_collector : bool, optional
        Drain the Ray collector on exit. None (default): when Ray is initialized.
    gpu : bool
        Sample this machine's GPUs through NVML (a note explains when there are none).
    gpu_interval_s : float
        GPU sampling period in seconds.
    processes : sequence of ProcessTarget or "serve", optional
        Processes whose CPU to sample here; "serve" finds the Serve proxies, controller,
        replicas and coordinators on this machine when the recorder starts.
    process_interval_s : float
        Process sampling period in seconds.
    settle_s : float
        Wait on exit before draining, so reporters flush (their flush interval plus margin).
    name : str
        Configuration name, for display.
    """

    def __init__(
        self,
        *,
        use_collector: bool | None = None,
        gpu: bool = True,
        gpu_interval_s: float = 0.1,
        processes: Sequence[ProcessTarget] | str | None = None,
        process_interval_s: float = 0.5,
        settle_s: float = 0.6,
        name: str = "",
    ) -> None:
        if isinstance(processes, str) and processes != "serve":
            msg = f"processes={processes!r} is not understood. Allowed: 'serve' or a list of ProcessTarget."
            raise ConfigError(msg, field="processes", value=processes)
        self.use_collector = use_collector
        self.gpu = gpu
        self.gpu_interval_s = gpu_interval_s
        self.processes = processes
        self.process_interval_s = process_interval_s
        self.settle_s = settle_s
        self.name = name
        self.samples: list[TelemetrySample] = []
        self.notes: list[str] = []
        self.clock_offset_s: float | None = None  # time.time() - time.perf_counter()
        self.start_s: float | None = None
        self.end_s: float | None = None
        self._gpu: GpuSampler | None = None
        self._proc: ProcessSampler | None = None
        self._start_wall_s: float | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> TelemetryRecorder:
        """Note the clock offset and start the local samplers.

        Returns
        -------
        TelemetryRecorder
            self, so that ``rec = TelemetryRecorder().start()`` works.
        """
        self.samples, self.notes = [], []
        self.clock_offset_s = _clock_offset()
        self.start_s = time.perf_counter()
        self._start_wall_s = self.start_s + self.clock_offset_s
        if self.use_collector is None:
            self.use_collector = _ray_running()
            if not self.use_collector:
                self.notes.append("Ray is not initialized: no replica/coordinator telemetry collected.")
        if self.gpu:
            self._gpu = GpuSampler(self.gpu_interval_s)
            if self._gpu.available:
                self._gpu.start()
            else:
                self.notes.append(f"No GPU samples: {self._gpu.reason}.")
        targets = self.processes
        if targets == "serve":
            try:
                targets = find_serve_processes()
            except TelemetryError as err:  # telemetry must not stop the load run it watches
                targets = []
                self.notes.append(f"Serve processes not sampled: {err}")
            if not targets:
                self.notes.append("No Serve processes found on this machine to sample.")
        if targets:
            self._proc = ProcessSampler(list(targets), self.process_interval_s)
            self._proc.start()
        return self

    def stop(self) -> list[TelemetrySample]:
        """Stop sampling, drain the collector and return the samples on the load clock.

        Returns
        -------
        list of TelemetrySample
            Sorted by ``t_s``; also kept in :attr:`samples`.

        Raises
        ------
        TelemetryError
            The recorder was not started. (A collector that cannot be drained only adds a
            note: the load run that the recorder watched must not be lost to telemetry.)
        """
        if self.clock_offset_s is None or self._start_wall_s is None:
            msg = "TelemetryRecorder.stop() called before start(); use it as `with TelemetryRecorder():`."
            raise TelemetryError(msg)
        self.end_s = time.perf_counter()
        local: list[TelemetrySample] = []
        if self._gpu is not None and self._gpu.available:
            local += self._gpu.stop()
        if self._proc is not None:
            local += self._proc.stop()
            self.notes += self._proc.notes
        remote: list[TelemetrySample] = []
        if self.use_collector:
            try:
                remote = self._drain()
            except TelemetryError as err:  # keep the local samples and say what is missing
                self.notes.append(str(err))
        offset = (self.clock_offset_s + _clock_offset()) / 2
        for s in remote:
            s.t_s = s.wall_s - offset
        self.samples = sorted(local + remote, key=lambda s: s.t_s)
        return self.samples

    def _drain(self) -> list[TelemetrySample]:
        ray = _require_ray()
        if self.settle_s > 0:
            time.sleep(self.settle_s)
        handle = get_collector(create=False)
        if handle is None:
            self.notes.append("No telemetry collector exists: no component called start_reporter().")
            return []
        try:
            raw = ray.get(handle.drain.remote(self._start_wall_s), timeout=30)
            info = ray.get(handle.stats.remote(), timeout=30)
        except (ray.exceptions.RayError, TimeoutError) as err:
            msg = f"Could not drain the telemetry collector: {err!r}. Is the cluster still up?"
            raise TelemetryError(msg) from err
        if info.get("dropped"):
            self.notes.append(f"The collector dropped {info['dropped']} samples (buffer full).")
        return [TelemetrySample.from_dict(d) for d in raw]

    def __enter__(self) -> TelemetryRecorder:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- views -------------------------------------------------------------------------------

    def select(self, *, role: str | None = None, component_id: str | None = None) -> list[TelemetrySample]:
        """Return the samples of one role and/or component.

        Parameters
        ----------
        role : str, optional
            Keep only this role.
        component_id : str, optional
            Keep only this component.

        Returns
        -------
        list of TelemetrySample
            In time order.
        """
        return [s for s in self.samples if (role is None or s.role == role)
                and (component_id is None or s.component_id == component_id)]

    def summary(self, *, start_s: float | None = None, end_s: float | None = None,
                role: str | None = None) -> dict[str, dict[str, Any]]:
        """Summarize per component over a window of the load clock (see :func:`summarize_samples`).

        Parameters
        ----------
        start_s, end_s : float, optional
            Window on the load clock; the whole recording when omitted.
        role : str, optional
            Keep only this role.

        Returns
        -------
        dict
            Per component: mean and max of running, waiting, active, inflight, CPU, GPU.
        """
        return summarize_samples(self.samples, start_s=start_s, end_s=end_s, role=role)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict: clock facts, notes and every sample."""
        return {"name": self.name, "clock_offset_s": self.clock_offset_s, "start_s": self.start_s,
                "end_s": self.end_s, "notes": list(self.notes),
                "samples": [s.to_dict() for s in self.samples]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TelemetryRecorder:
        """Rebuild a finished recording from :meth:`to_dict` output.

        Parameters
        ----------
        data : mapping
            Output of :meth:`to_dict`.

        Returns
        -------
        TelemetryRecorder
            A stopped recorder holding the samples and notes.
        """
        rec = cls(use_collector=False, gpu=False, name=str(data.get("name", "")))
        rec.clock_offset_s = data.get("clock_offset_s")
        rec.start_s, rec.end_s = data.get("start_s"), data.get("end_s")
        rec.notes = list(data.get("notes", []))
        rec.samples = [TelemetrySample.from_dict(d) for d in data.get("samples", [])]
        return rec

    def __repr__(self) -> str:
        comps = sorted({(s.role, s.component_id) for s in self.samples})
        dur = (self.end_s - self.start_s) if self.start_s is not None and self.end_s is not None else None
        dur_txt = f"{dur:.1f} s" if dur is not None else "not finished"
        lines = [f"TelemetryRecorder({self.name!r}: {len(self.samples)} samples, "
                 f"{len(comps)} components, {dur_txt})"]
        for comp, row in self.summary().items():
            lines.append("  " + _summary_line(comp, row))
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        rows = []
        for comp, row in self.summary().items():
            cells = [row["role"], comp, str(row["n"])] + [
                _fmt(row.get(f"{f}_mean")) + " / " + _fmt(row.get(f"{f}_max")) for f in _SUMMARY_FIELDS]
            rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
        head = "".join(f"<th>{html.escape(h)}</th>" for h in
                       ["role", "component", "n"] + [f"{f} mean / max" for f in _SUMMARY_FIELDS])
        notes = "".join(f"<li>{html.escape(n)}</li>" for n in self.notes)
        return (f"<div><b>Telemetry {html.escape(self.name)}</b>: {len(self.samples)} samples"
                f"<table><tr>{head}</tr>{''.join(rows)}</table>"
                + (f"<ul>{notes}</ul>" if notes else "") + "</div>")


def _summary_line(comp: str, row: Mapping[str, Any]) -> str:
    parts = [f"{row['role']:<11} {comp:<20} n={row['n']:<5}"]
    for name in _SUMMARY_FIELDS:
        if f"{name}_mean" in row:
            parts.append(f"{name} {_fmt(row[name + '_mean'])}/{_fmt(row[name + '_max'])}")
    return "  ".join(parts)


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def _clock_offset() -> float:
    """Return ``time.time() - time.perf_counter()``, the tightest of five paired reads."""
    best = None
    for _ in range(5):
        a = time.perf_counter()
        w = time.time()
        b = time.perf_counter()
        if best is None or b - a < best[0]:
            best = (b - a, w - (a + b) / 2)
    assert best is not None
    return best[1]


def _ray_running() -> bool:
    ray = sys.modules.get("ray")  # a process that never imported Ray cannot have initialized it
    return ray is not None and bool(ray.is_initialized())
