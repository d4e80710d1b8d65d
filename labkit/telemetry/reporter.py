"""The reporter: a thread inside a replica / coordinator / proxy process that pushes samples.

Owns :func:`start_reporter` and the :class:`ReporterHandle` it returns, and
:class:`EngineActivity`, which turns a vLLM engine's scheduler statistics into the running /
waiting counts a replica reports. It runs inside Ray Serve replicas (``labkit/serve/_replica.py``),
so it imports nothing heavy: psutil and vLLM only inside the functions that need them.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from labkit.errors import ConfigError, MissingDependencyError, TelemetryError
from labkit.telemetry.collector import _current_node_id, _require_ray, get_collector
from labkit.telemetry.samples import ROLES

__all__ = [
    "EngineActivity",
    "ReporterHandle",
    "start_reporter",
]

_KNOWN_STATS = ("running", "waiting", "inflight")


# ---------------------------------------------------------------------------------------------
# Reporter: runs inside a replica / coordinator / proxy process
# ---------------------------------------------------------------------------------------------


class ReporterHandle:
    """A running reporter thread; :meth:`stop` flushes what it holds and joins it."""

    def __init__(
        self,
        thread: threading.Thread,
        stop_event: threading.Event,
        counters: dict[str, Any],
        role: str,
        component_id: str,
    ) -> None:
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
        return (
            f"ReporterHandle(role={self.role!r}, component_id={self.component_id!r}, "
            f"running={self.running}, samples={s['samples']}, batches_sent={s['batches_sent']})"
        )


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
    counters: dict[str, Any] = {
        "samples": 0,
        "batches_sent": 0,
        "samples_dropped": 0,
        "stats_errors": 0,
        "last_error": None,
        "cpu_time_s": 0.0,
        "elapsed_s": 0.0,
    }
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
                batch.append(_reporter_sample(stats_fn, counters, proc, now, node_id, role, component_id, pid))
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


def _reporter_sample(
    stats_fn: Callable[[], Mapping[str, float]],
    counters: dict[str, Any],
    proc: Any,
    now: float,
    node_id: str,
    role: str,
    component_id: str,
    pid: int,
) -> dict[str, Any]:
    sample: dict[str, Any] = {
        "t_s": now,
        "wall_s": time.time(),
        "node_id": node_id,
        "role": role,
        "component_id": component_id,
        "pid": pid,
        "source": "reporter",
    }
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
        self.running_peak = 0  # most requests the engines ran at once since the start

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
        self._by_engine[engine_idx] = (int(scheduler_stats.num_running_reqs), int(scheduler_stats.num_waiting_reqs))
        self.updated_wall_s = time.time()
        self.running_peak = max(self.running_peak, sum(r for r, _ in self._by_engine.values()))

    def stats(self) -> dict[str, int]:
        """Return ``{"running": n, "waiting": m, "running_peak": p}`` summed over engines (zeros before any step)."""
        return {
            "running": sum(r for r, _ in self._by_engine.values()),
            "waiting": sum(w for _, w in self._by_engine.values()),
            "running_peak": self.running_peak,
        }

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

            def record(
                self, scheduler_stats: Any, iteration_stats: Any, mm_cache_stats: Any = None, engine_idx: int = 0
            ) -> None:
                activity.update(scheduler_stats, engine_idx)

            def log_engine_initialized(self) -> None:
                pass

        return _LabkitStatLogger
