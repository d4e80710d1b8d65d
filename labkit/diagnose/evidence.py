"""The evidence of a diagnosis: numbers computed from the records and the telemetry.

Owns the tail attribution (each server timing's share of the tail's excess latency), the
per-replica and per-node shares, and engine activity in the tail window against the whole run.
Every function fills the ``evidence`` dict of :func:`~labkit.diagnose.diagnose`; none decides.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from typing import Any

from labkit import stats
from labkit.contracts import RequestRecord
from labkit.diagnose.results import Thresholds
from labkit.telemetry import TelemetrySample

__all__: list[str] = []

# ---------------------------------------------------------------------------------------------
# Numbers from records (definitions from labkit.stats)
# ---------------------------------------------------------------------------------------------


def _as_records(records: Any) -> list[RequestRecord]:
    items = getattr(records, "records", records)
    return [r if isinstance(r, RequestRecord) else RequestRecord.from_dict(r) for r in items]


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _pcts(values: Sequence[float], qs: Sequence[float]) -> dict[float, float | None]:
    got = stats.percentiles(values, qs)
    return {q: _finite(got[stats.percentile_label(q)]) for q in qs}


def _median(values: Sequence[float]) -> float | None:
    return _pcts(values, (50,))[50]


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b <= 0:
        return None
    return a / b


def _pre_engine(r: RequestRecord) -> float | None:
    """Seconds from client send to engine submit (proxy, router, coordinator, replica)."""
    s = r.server
    parts = [s[k] for k in ("client_to_replica_s", "replica_wait_s") if s.get(k) is not None]
    if parts:
        return float(sum(parts))
    return s.get("coordinator_wait_s")


def _jain(shares: Mapping[str, float]) -> float | None:
    return _finite(stats.load_balance_index(shares)) if shares else None


def _merge(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[tuple[float, float]] = []
    for a, b in sorted(intervals):
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


def _inside(t: float, windows: list[tuple[float, float]]) -> bool:
    i = bisect.bisect_right(windows, (t, math.inf)) - 1
    return i >= 0 and windows[i][0] <= t <= windows[i][1]


def _as_samples(telemetry: Any) -> list[TelemetrySample]:
    items = getattr(telemetry, "samples", telemetry) or []
    return [s if isinstance(s, TelemetrySample) else TelemetrySample.from_dict(s) for s in items]


def _collect_shares(
    ok: list[RequestRecord], samples: list[TelemetrySample], expected_replicas: int | None
) -> dict[str, dict[str, float]]:
    """Shares per replica and node; replicas known to exist but idle get a share of 0."""
    replica = stats.share_by(ok, "replica_id", include_warmup=True)
    tel_replicas = {s.component_id for s in samples if s.role == "replica"}
    if tel_replicas & set(replica):  # pad from telemetry only when the ids clearly match
        replica = {**dict.fromkeys(sorted(tel_replicas), 0.0), **replica}
    if expected_replicas is not None and replica and len(replica) < expected_replicas:
        missing = expected_replicas - len(replica)
        replica.update({f"(idle replica {i + 1})": 0.0 for i in range(missing)})
    return {"replica_id": dict(sorted(replica.items())), "node_id": stats.share_by(ok, "node_id", include_warmup=True)}


def _latency_evidence(ok: list[RequestRecord], ev: dict[str, float | None], notes: list[str], th: Thresholds) -> None:
    for metric in ("e2e", "ttft"):
        values = stats.latency_values(ok, metric, include_failures=False, include_warmup=True)
        pct = _pcts(values, (50, 95, 99))
        for q in (50, 95, 99):
            ev[f"{metric}_p{q}_s"] = pct[q]
        ev[f"{metric}_p99_p50_ratio"] = _ratio(ev[f"{metric}_p99_s"], ev[f"{metric}_p50_s"])
    lag = stats.latency_values(ok, "schedule_lag", include_warmup=True)
    ev["send_lag_p99_s"] = _pcts(lag, (99,))[99]
    if ev["send_lag_p99_s"] is not None and ev["send_lag_p99_s"] > th.max_send_lag_s:
        notes.append(
            f"The load generator sent late (p99 lag {ev['send_lag_p99_s'] * 1e3:.0f} ms > "
            f"max_send_lag_s = {th.max_send_lag_s * 1e3:.0f} ms): it was itself short of CPU, "
            f"and that lag is part of every latency."
        )
    if th.min_requests <= len(ok) < 100:
        notes.append(f"Only {len(ok)} requests: p99 is close to the maximum and moves a lot between runs.")


def _tail_evidence(ok: list[RequestRecord], ev: dict[str, float | None]) -> list[tuple[float, float]]:
    """Attribute the tail's excess latency to server timings; return the tail's time windows."""
    p95 = ev.get("e2e_p95_s")
    if p95 is None:
        return []
    # every successful request has an e2e value, so this list lines up with ``ok``
    e2e = dict(
        zip(map(id, ok), stats.latency_values(ok, "e2e", include_failures=False, include_warmup=True), strict=True)
    )
    tail = [r for r in ok if e2e[id(r)] > p95] or [max(ok, key=lambda r: e2e[id(r)])]
    ev["n_tail"] = float(len(tail))
    med = ev["e2e_p50_s"] or 0.0
    tail_e2e_sum = sum(e2e[id(r)] for r in tail)
    excess = tail_e2e_sum / len(tail) - med
    ev["tail_excess_s"] = excess
    timed = [r for r in ok if _pre_engine(r) is not None or r.server.get("engine_total_s") is not None]
    ev["server_timed_fraction"] = len(timed) / len(ok)
    components = {
        "pre_engine": _pre_engine,
        "coordinator_wait": lambda r: r.server.get("coordinator_wait_s"),
        "engine_queue": lambda r: r.server.get("engine_queue_s"),
        "engine": lambda r: r.server.get("engine_total_s"),
        "send_lag": lambda r: r.sent_s - r.scheduled_s,
    }
    for comp, get in components.items():
        all_v = [v for v in (get(r) for r in ok) if v is not None]
        tail_v = [v for v in (get(r) for r in tail) if v is not None]
        if not tail_v or not all_v:
            ev[f"tail_{comp}_share"] = None
            continue
        ev[f"tail_{comp}_mean_s"] = _mean(tail_v)
        ev[f"tail_{comp}_share"] = ((_mean(tail_v) or 0.0) - (_median(all_v) or 0.0)) / excess if excess > 0 else None
        if comp == "pre_engine" and tail_e2e_sum > 0:
            ev["tail_pre_engine_fraction"] = sum(tail_v) / tail_e2e_sum
    queue = [v for v in (r.server.get("engine_queue_s") for r in ok) if v is not None]
    ev["engine_queue_fraction_median"] = _ratio(_median(queue), med) if queue else None
    pre = [v for v in (_pre_engine(r) for r in ok) if v is not None]
    ev["pre_engine_fraction_median"] = _ratio(_median(pre), med) if pre else None
    return _merge([(r.sent_s, r.done_s) for r in tail])


def _telemetry_evidence(
    samples: list[TelemetrySample],
    tail_windows: list[tuple[float, float]],
    ev: dict[str, float | None],
    engine_capacity: int | None,
) -> None:
    replica = [s for s in samples if s.role == "replica" and s.active is not None]
    in_tail = [s for s in replica if _inside(s.t_s, tail_windows)]
    active_all = [float(s.active or 0) for s in replica]
    active_tail = [float(s.active or 0) for s in in_tail]
    ev["engine_active_mean_all"] = _mean(active_all)
    ev["engine_active_mean_tail"] = _mean(active_tail)
    ev["engine_active_max_tail"] = max(active_tail, default=None)
    ev["engine_active_ratio"] = _ratio(ev["engine_active_mean_tail"], ev["engine_active_mean_all"])
    waiting_all = [s.waiting for s in replica if s.waiting is not None]
    waiting_tail = [s.waiting for s in in_tail if s.waiting is not None]
    ev["engine_waiting_mean_all"] = _mean(waiting_all)
    ev["engine_waiting_mean_tail"] = _mean(waiting_tail)
    ev["engine_waiting_max_tail"] = max(waiting_tail, default=None)
    running_tail = [s.running for s in in_tail if s.running is not None]
    caps = [s.extra["capacity"] for s in replica if "capacity" in s.extra]
    capacity = engine_capacity or (max(caps) if caps else None)
    ev["engine_capacity"] = capacity
    ev["engine_running_fraction_tail"] = _ratio(_mean(running_tail), capacity)
    running_all = [s.running for s in replica if s.running is not None]
    ev["engine_running_fraction_all"] = _ratio(_mean(running_all), capacity)
    for role in ("coordinator", "proxy"):
        rs = [s for s in samples if s.role == role]
        cpu = [s.cpu_percent for s in rs if s.cpu_percent is not None]
        ev[f"{role}_cpu_percent_max"] = max(cpu, default=None)
        waiting = [s.waiting for s in rs if s.waiting is not None and _inside(s.t_s, tail_windows)]
        ev[f"{role}_waiting_mean_tail"] = _mean(waiting)
    gpu = [(s.t_s, float(s.gpu_util_percent)) for s in samples if s.gpu_util_percent is not None]
    ev["gpu_util_mean_all"] = _mean([u for _, u in gpu])
    ev["gpu_util_mean_tail"] = _mean([u for t, u in gpu if _inside(t, tail_windows)])
