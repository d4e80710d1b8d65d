"""Measure what a telemetry reporter costs at 10 Hz (target: < 2 % of one core).

Three numbers, each as a fraction of one core over the measured window:

* ``reporter_thread``: CPU time of the reporter thread itself (``time.thread_time``);
* ``process_extra``: CPU of the whole reporting process with the reporter on, minus the same
  process idle for as long (catches work Ray does on its own threads for the pushes);
* ``collector_extra``: CPU of the collector actor's process, on minus idle.

The cost charged to telemetry is ``max(reporter_thread, process_extra) + collector_extra``.

Usage::

    python benchmarks/bench_telemetry_overhead.py               # with a local Ray and the collector
    python benchmarks/bench_telemetry_overhead.py --no-ray      # reporter thread only
    python benchmarks/bench_telemetry_overhead.py --duration-s 60 --out results.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

TARGET_FRACTION = 0.02


def _cpu_s(proc) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def _window(duration_s: float, procs: dict) -> dict[str, float]:
    before = {k: _cpu_s(p) for k, p in procs.items()}
    t0 = time.perf_counter()
    time.sleep(duration_s)
    elapsed = time.perf_counter() - t0
    return {k: (_cpu_s(p) - before[k]) / elapsed for k, p in procs.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration-s", type=float, default=30.0, help="length of each window")
    parser.add_argument("--interval-s", type=float, default=0.1, help="sampling period (0.1 = 10 Hz)")
    parser.add_argument("--flush-interval-s", type=float, default=0.5, help="batch push period")
    parser.add_argument("--no-ray", action="store_true", help="push into a list instead of the collector")
    parser.add_argument("--out", help="also write the result as JSON to this path")
    args = parser.parse_args(argv)

    import psutil

    from labkit.telemetry import start_reporter

    me = psutil.Process(os.getpid())
    procs = {"process": me}
    sink = None
    ray = None
    if args.no_ray:
        pushed: list = []
        sink = pushed.extend
    else:
        import ray

        from labkit.telemetry import get_collector, kill_collector

        ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)  # a private cluster, never one someone else started
        collector = get_collector(create=True)
        procs["collector"] = psutil.Process(ray.get(collector.stats.remote())["pid"])
    try:
        time.sleep(2.0)  # let start-up work settle
        idle = _window(args.duration_s, procs)
        state = {"running": 0}

        def stats() -> dict[str, int]:  # as cheap as a replica's: read a few ints
            state["running"] = (state["running"] + 1) % 8
            return {"running": state["running"], "waiting": 0, "inflight": state["running"]}

        handle = start_reporter(role="replica", component_id="bench", node_id="bench", stats_fn=stats,
                                interval_s=args.interval_s, flush_interval_s=args.flush_interval_s,
                                sink=sink)
        busy = _window(args.duration_s, procs)
        handle.stop()
        st = handle.stats()
    finally:
        if ray is not None:
            kill_collector()
            ray.shutdown()
    thread = st["cpu_fraction_of_core"]
    process_extra = busy["process"] - idle["process"]
    collector_extra = (busy["collector"] - idle["collector"]) if "collector" in busy else 0.0
    total = max(thread, process_extra) + max(collector_extra, 0.0)
    result = {
        "benchmark": "telemetry_overhead",
        "interval_s": args.interval_s,
        "flush_interval_s": args.flush_interval_s,
        "duration_s": args.duration_s,
        "with_ray_collector": not args.no_ray,
        "samples": st["samples"],
        "batches_sent": st["batches_sent"],
        "samples_dropped": st["samples_dropped"],
        "reporter_thread_fraction_of_core": round(thread, 5),
        "process_idle_fraction_of_core": round(idle["process"], 5),
        "process_extra_fraction_of_core": round(process_extra, 5),
        "collector_extra_fraction_of_core": round(collector_extra, 5),
        "total_fraction_of_core": round(total, 5),
        "target_fraction_of_core": TARGET_FRACTION,
        "meets_target": total < TARGET_FRACTION,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
    return 0 if result["meets_target"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
