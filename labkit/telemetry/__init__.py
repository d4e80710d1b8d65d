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

Layout: ``samples`` (the :class:`TelemetrySample` contract and its summaries), ``collector``
(the Ray actor), ``reporter`` (:func:`start_reporter`, :class:`EngineActivity`), ``samplers``
(:class:`GpuSampler`, :class:`ProcessSampler`) and ``recorder`` (:class:`TelemetryRecorder`).
Every name in ``__all__`` is importable as ``labkit.telemetry.<name>``; none of these modules
imports Ray, psutil, pynvml or vLLM at import time.
"""

from __future__ import annotations

from labkit.telemetry.collector import (
    COLLECTOR_NAME,
    COLLECTOR_NAMESPACE,
    get_collector,
    kill_collector,
)

# DEFAULT_MAX_SAMPLES is not in __all__, but labkit.telemetry exported it before the split.
from labkit.telemetry.collector import DEFAULT_MAX_SAMPLES as DEFAULT_MAX_SAMPLES
from labkit.telemetry.recorder import TelemetryRecorder
from labkit.telemetry.reporter import EngineActivity, ReporterHandle, start_reporter
from labkit.telemetry.samplers import GpuSampler, ProcessSampler, ProcessTarget, find_serve_processes
from labkit.telemetry.samples import ROLES, TelemetrySample, cpu_samples, summarize_samples

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
