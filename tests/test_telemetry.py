"""Tests of labkit.telemetry: reporter, samplers, recorder, and the Ray collector (slow)."""

from __future__ import annotations

import subprocess
import sys
import time
import types

import pytest
from _wait import until as _until

from labkit.errors import ConfigError, TelemetryError
from labkit.telemetry import (
    EngineActivity,
    GpuSampler,
    ProcessSampler,
    ProcessTarget,
    TelemetryRecorder,
    TelemetrySample,
    cpu_samples,
    start_reporter,
    summarize_samples,
)


def _sample(t, comp="r0", role="replica", **kw):
    return TelemetrySample(t_s=t, wall_s=1000.0 + t, node_id="n1", role=role, component_id=comp, **kw)


def test_sample_round_trip_and_active():
    s = _sample(1.5, running=2, waiting=3, extra={"kv": 0.5})
    assert TelemetrySample.from_dict({**s.to_dict(), "unknown": 1}) == s
    assert s.active == 5
    assert _sample(1.0, running=1).active == 1
    assert _sample(1.0, cpu_percent=5.0).active is None


def test_reporter_pushes_batches_with_stats_cpu_and_extra():
    batches = []
    calls = {"n": 0}

    def stats():
        calls["n"] += 1
        return {"running": 2, "waiting": calls["n"] % 2, "kv_usage": 0.25}

    before_wall, before = time.time(), time.perf_counter()
    handle = start_reporter(role="replica", component_id="rep-a", node_id="node-1", stats_fn=stats,
                            interval_s=0.01, flush_interval_s=0.05, sink=batches.append)
    _until(lambda: handle.stats()["samples"] >= 10 and handle.stats()["batches_sent"] >= 2, "10 samples in 2 batches")
    handle.stop(timeout_s=120.0)  # a hang guard
    after_wall, after = time.time(), time.perf_counter()
    assert not handle.running
    samples = [TelemetrySample.from_dict(d) for b in batches for d in b]
    st = handle.stats()
    assert st["samples"] == len(samples) >= 10 and st["batches_sent"] == len(batches) >= 2
    assert st["samples_dropped"] == 0
    s = samples[-1]
    assert (s.role, s.component_id, s.node_id, s.running) == ("replica", "rep-a", "node-1", 2)
    assert s.waiting in (0, 1) and s.extra == {"kv_usage": 0.25}
    assert s.cpu_percent is not None and s.pid is not None
    assert all(a.t_s < b.t_s for a, b in zip(samples, samples[1:], strict=False))
    assert all(before <= x.t_s <= after and before_wall <= x.wall_s <= after_wall for x in samples)
    # a thread's CPU time cannot exceed the wall time it ran for (and this one mostly sleeps)
    assert 0 <= st["cpu_fraction_of_core"] <= 1


def test_reporter_batches_between_flushes():
    """With a flush interval longer than the run, every sample goes in the one batch pushed at stop."""
    batches = []
    handle = start_reporter(role="replica", component_id="rep-b", node_id="node-1", stats_fn=dict,
                            interval_s=0.01, flush_interval_s=3600.0, sink=batches.append, sample_cpu=False)
    _until(lambda: handle.stats()["samples"] >= 5, "5 samples")
    assert batches == []  # nothing pushed before the flush interval
    handle.stop(timeout_s=120.0)
    assert not handle.running
    assert len(batches) == 1 and len(batches[0]) == handle.stats()["samples"] >= 5


def test_reporter_survives_failing_stats_fn_and_sink():
    def bad_stats():
        raise RuntimeError("engine gone")

    def bad_sink(batch):
        raise OSError("collector gone")

    handle = start_reporter(role="coordinator", component_id="c", node_id="n", stats_fn=bad_stats,
                            interval_s=0.01, flush_interval_s=0.02, sink=bad_sink, sample_cpu=False)
    _until(lambda: handle.stats()["stats_errors"] >= 3 and handle.stats()["samples_dropped"] > 0, "3 errors")
    handle.stop(timeout_s=120.0)
    assert not handle.running
    st = handle.stats()
    assert st["stats_errors"] >= 3
    assert st["samples_dropped"] == st["samples"] > 0
    assert "collector gone" in st["last_error"] or "engine gone" in st["last_error"]


@pytest.mark.parametrize("kwargs, field", [
    ({"role": "gpu-ish"}, "role"),
    ({"interval_s": 0}, "interval_s"),
    ({"flush_interval_s": -1}, "flush_interval_s"),
])
def test_reporter_rejects_bad_config(kwargs, field):
    args = {"role": "replica", "component_id": "x", "node_id": "n", "stats_fn": dict,
            "sink": lambda b: None, **kwargs}
    with pytest.raises(ConfigError) as info:
        start_reporter(**args)
    assert info.value.field == field
    assert repr(kwargs[field]) in str(info.value)


def test_summarize_samples_window_and_role():
    samples = [_sample(t, running=t, waiting=0) for t in range(10)]
    samples += [_sample(t, comp="coord", role="coordinator", waiting=2 * t, cpu_percent=50.0)
                for t in range(10)]
    out = summarize_samples(samples, start_s=2, end_s=5, role="replica")
    assert list(out) == ["r0"]
    assert out["r0"]["n"] == 4
    assert out["r0"]["running_mean"] == pytest.approx(3.5)
    assert out["r0"]["active_max"] == 5
    both = summarize_samples(samples)
    assert both["coord"]["waiting_max"] == 18 and both["coord"]["cpu_percent_mean"] == 50.0
    assert "running_mean" not in both["coord"]


def test_engine_activity_sums_engines():
    act = EngineActivity()
    assert act.stats() == {"running": 0, "waiting": 0, "running_peak": 0}
    act.update(types.SimpleNamespace(num_running_reqs=3, num_waiting_reqs=1), engine_idx=0)
    act.update(types.SimpleNamespace(num_running_reqs=2, num_waiting_reqs=0), engine_idx=1)
    act.update(None)
    assert act.stats() == {"running": 5, "waiting": 1, "running_peak": 5}
    act.update(types.SimpleNamespace(num_running_reqs=0, num_waiting_reqs=0), engine_idx=0)
    assert act.stats() == {"running": 2, "waiting": 0, "running_peak": 5}  # the peak stays
    assert act.updated_wall_s is not None


def test_gpu_sampler_without_nvml_says_why(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails
    sampler = GpuSampler(interval_s=0.1, node_id="n")
    assert not sampler.available
    assert "nvidia-ml-py" in sampler.reason
    assert sampler.sample_once() == []


def test_gpu_sampler_with_fake_nvml(monkeypatch):
    class NVMLError(Exception):
        pass

    fake = types.SimpleNamespace(
        NVMLError=NVMLError,
        nvmlInit=lambda: None,
        nvmlDeviceGetCount=lambda: 2,
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetUtilizationRates=lambda h: types.SimpleNamespace(gpu=40 + h, memory=0),
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(used=1 << 30, total=80 << 30),
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    sampler = GpuSampler(interval_s=0.01, node_id="head")
    assert sampler.available
    got = sampler.sample_once()
    assert [(s.component_id, s.gpu_util_percent) for s in got] == [("gpu0", 40.0), ("gpu1", 41.0)]
    assert got[0].gpu_mem_total_bytes == 80 << 30 and got[0].role == "gpu"


def test_process_sampler_follows_children_and_notes_exit():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        sampler = ProcessSampler([ProcessTarget(pid=child.pid, role="proxy", component_id="p0")],
                                 interval_s=0.02)
        sampler.start()
        _until(lambda: len(sampler.samples) >= 1, "a sample of the child")
        child.kill()
        child.wait()
        _until(lambda: sampler.notes, "a note that the child exited")
        samples = sampler.stop()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert samples and all(s.role == "proxy" and s.cpu_percent is not None for s in samples)
    assert sampler.notes and f"pid {child.pid}" in sampler.notes[0]
    assert sampler.targets == []


def test_recorder_without_ray_maps_local_samples(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)
    import os

    target = ProcessTarget(pid=os.getpid(), role="process", component_id="me", include_children=False)
    with TelemetryRecorder(use_collector=False, processes=[target], process_interval_s=0.02,
                           name="unit") as rec:
        _until(lambda: rec._proc.samples, "a process sample")
    after = time.perf_counter()
    assert rec.samples
    # The recorder notes end_s before it stops its samplers: one sample may come just after it.
    assert all(rec.start_s <= s.t_s <= after for s in rec.samples)
    assert any("No GPU samples" in n for n in rec.notes)
    assert rec.summary()["me"]["n"] == len(rec.samples)
    again = TelemetryRecorder.from_dict(rec.to_dict())
    assert again.samples == rec.samples and again.notes == rec.notes
    assert "unit" in repr(rec) and "<table>" in rec._repr_html_()


def test_cpu_samples_prefer_the_process_sampler():
    reporter = [_sample(t, cpu_percent=30.0, running=1) for t in range(5)]
    for s in reporter:
        s.source = "reporter"
    process = [_sample(t + 0.5, cpu_percent=130.0, source="process") for t in range(5)]
    assert cpu_samples(reporter + process) == process
    assert cpu_samples(reporter) == reporter
    row = summarize_samples(reporter + process)["r0"]
    assert row["cpu_percent_mean"] == 130.0 and row["running_mean"] == 1


def test_recorder_notes_telemetry_failures_instead_of_losing_the_run(monkeypatch):
    import labkit.telemetry.recorder as tel  # the module whose TelemetryRecorder.start looks up find_serve_processes

    monkeypatch.setitem(sys.modules, "pynvml", None)

    def no_actor_table():
        raise TelemetryError("Cannot read Ray's actor table")

    def no_collector(self):
        raise TelemetryError("Could not drain the telemetry collector")

    monkeypatch.setattr(tel, "find_serve_processes", no_actor_table)
    monkeypatch.setattr(tel.TelemetryRecorder, "_drain", no_collector)
    with TelemetryRecorder(use_collector=True, processes="serve") as rec:
        pass
    text = " | ".join(rec.notes)
    assert "actor table" in text and "Could not drain" in text and "No GPU samples" in text
    assert rec.samples == []


def test_recorder_rejects_unknown_processes_word():
    with pytest.raises(ConfigError, match="'all'"):
        TelemetryRecorder(processes="all")


def test_recorder_stop_before_start():
    with pytest.raises(TelemetryError, match="before start"):
        TelemetryRecorder(use_collector=False, gpu=False).stop()


# --------------------------------------------------------------------------------------------
# With a real (small, local) Ray: the collector actor
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    for attempt in (1, 2):  # Ray gives a raylet 30 s to register; a busy 2-core box can miss that once
        try:
            ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)  # a private cluster, never one someone else started
            break
        except Exception as err:  # Ray raises a bare Exception for the start-up time-out
            ray.shutdown()
            if attempt == 2 or "timed out during startup" not in str(err):
                raise
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_collector_reporter_recorder_on_ray(local_ray, monkeypatch):
    from labkit.telemetry import find_serve_processes, get_collector, kill_collector

    monkeypatch.setitem(sys.modules, "pynvml", None)
    ray = local_ray
    first = get_collector(create=True, max_samples=50)
    second = get_collector(create=True)
    assert first._actor_id == second._actor_id  # get-or-create, one named actor
    assert ray.get(first.stats.remote())["max_samples"] == 50

    rec = TelemetryRecorder(settle_s=0.3, name="ray").start()
    assert rec.use_collector
    handle = start_reporter(role="replica", component_id="rep-1", stats_fn=lambda: {"running": 1},
                            interval_s=0.02, flush_interval_s=0.1)
    _until(lambda: handle.stats()["samples"] >= 10, "10 reporter samples")
    handle.stop(timeout_s=120.0)  # a hang guard; its last batch is submitted before it returns
    assert not handle.running
    samples = rec.stop()  # Ray runs one caller's calls to an actor in order: every push before the drain
    replica = [s for s in samples if s.role == "replica"]
    assert handle.stats()["samples_dropped"] == 0
    assert len(replica) == min(handle.stats()["samples"], 50) >= 10  # a slow machine may overrun the 50 slots
    assert replica[0].node_id == ray.get_runtime_context().get_node_id()
    # Mapped from the wall clock to the load clock (perf_counter). The mapping is off by at most half
    # the tightest of five paired clock reads plus the wall clock's slew over the run (microseconds);
    # 0.5 s only tells "on this clock" from "on another clock" (the two differ by decades).
    assert all(rec.start_s - 0.5 <= s.t_s <= rec.end_s + 0.5 for s in replica)
    assert find_serve_processes() == []  # no Serve here, nothing wrongly matched

    # a bounded buffer: 100 pushed into 50 empty slots keeps the newest 50 and says so
    ray.get(first.drain.remote())
    dropped_before = ray.get(first.stats.remote())["dropped"]
    ray.get(first.push.remote([{"wall_s": float(i)} for i in range(100)]))
    info = ray.get(first.stats.remote())
    assert info["size"] == 50 and info["dropped"] - dropped_before == 50
    assert [d["wall_s"] for d in ray.get(first.drain.remote(90.0))] == [float(i) for i in range(90, 100)]

    assert kill_collector() is True
    _until(lambda: get_collector(create=False) is None, "the collector gone")


@pytest.mark.slow
def test_engine_activity_as_a_real_vllm_stat_logger():
    pytest.importorskip("vllm")
    from vllm.v1.metrics.loggers import StatLoggerBase
    from vllm.v1.metrics.stats import SchedulerStats

    act = EngineActivity()
    factory = act.stat_logger_factory()
    assert isinstance(factory, type) and issubclass(factory, StatLoggerBase)
    logger = factory(None, 0)  # vLLM calls per-engine factories as factory(vllm_config, engine_index)
    logger.record(scheduler_stats=SchedulerStats(num_running_reqs=4, num_waiting_reqs=2),
                  iteration_stats=None, mm_cache_stats=None, engine_idx=0)
    logger.log_engine_initialized()
    assert act.stats() == {"running": 4, "waiting": 2, "running_peak": 4}
