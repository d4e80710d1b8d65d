"""The verdict: :func:`diagnose` gathers the evidence, compares it with the thresholds and explains.

Owns the decision between coordinator bottleneck, engine saturation, load imbalance, health and
insufficient data, and the plain-language explanation of each.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from labkit.diagnose.evidence import (
    _as_records,
    _as_samples,
    _collect_shares,
    _jain,
    _latency_evidence,
    _tail_evidence,
    _telemetry_evidence,
)
from labkit.diagnose.results import Check, Diagnosis, Thresholds, _fmt, _fmt_pct, _ms
from labkit.errors import ConfigError

__all__ = ["diagnose"]

# ---------------------------------------------------------------------------------------------
# The diagnosis
# ---------------------------------------------------------------------------------------------


def diagnose(
    records: Any,
    telemetry: Any = None,
    *,
    thresholds: Thresholds | None = None,
    name: str | None = None,
    engine_capacity: int | None = None,
    expected_replicas: int | None = None,
) -> Diagnosis:
    """Tell a coordinator / load-balancer bottleneck from engine saturation, imbalance or health.

    Parameters
    ----------
    records : list of RequestRecord, or a LoadResult
        The run's records (dicts from JSONL work too); warm-up requests are left out.
    telemetry : TelemetryRecorder or list of TelemetrySample, optional
        Samples on the same clock as the records. Without it the verdict rests on the
        server timings alone.
    thresholds : Thresholds, optional
        The named thresholds; ``Thresholds()`` when omitted.
    name : str, optional
        The configuration's name (default: ``records.config.name`` when there is one).
    engine_capacity : int, optional
        Requests one replica runs at once (Serve ``max_ongoing_requests`` or vLLM
        ``max_num_seqs``); lets the diagnosis see full engines behind router queueing.
    expected_replicas : int, optional
        Replicas deployed; replicas that served nothing count as zero share.

    Returns
    -------
    Diagnosis
        The verdict with its evidence, checks and notes.

    Raises
    ------
    ConfigError
        ``engine_capacity`` or ``expected_replicas`` is not a positive integer.
    """
    th = thresholds if thresholds is not None else Thresholds()
    for pname, pval in (("engine_capacity", engine_capacity), ("expected_replicas", expected_replicas)):
        if pval is not None and not (isinstance(pval, int) and pval > 0):
            msg = f"{pname}={pval!r} must be a positive integer or None."
            raise ConfigError(msg, field=pname, value=pval)
    name = name or ""  # a LoadResult's config has no name: the caller names the run
    all_records = [r for r in _as_records(records) if not r.warmup]
    ok = [r for r in all_records if r.status == "ok"]
    samples = _as_samples(telemetry)
    ev: dict[str, float | None] = {}
    notes: list[str] = []
    checks: list[Check] = []

    def check(key: str, op: str, tname: str) -> bool | None:
        value, limit = ev.get(key), float(getattr(th, tname))
        passed = (
            None
            if value is None
            else {">=": value >= limit, ">": value > limit, "<=": value <= limit, "<": value < limit}[op]
        )
        checks.append(Check(key, op, tname, value, limit, passed))
        return passed

    ev["n_requests"] = len(all_records)
    ev["n_ok"] = len(ok)
    ev["error_rate"] = (1 - len(ok) / len(all_records)) if all_records else None
    if ev["error_rate"] is not None and ev["error_rate"] > th.max_error_rate:
        notes.append(
            f"{ev['error_rate']:.0%} of requests failed (above max_error_rate = "
            f"{th.max_error_rate:.0%}): the latencies describe only the ones that succeeded."
        )
    served = {r.replica_id for r in ok if r.replica_id}
    others = {s.component_id for s in samples if s.role == "replica"} - served
    if expected_replicas and others and len(served) >= expected_replicas:
        # every replica of this deployment served requests: the others are another application's
        samples = [s for s in samples if s.role != "replica" or s.component_id in served]
        notes.append(
            f"Telemetry of {len(others)} replica(s) that served none of these requests (another "
            f"application's: {expected_replicas} replicas were expected and all served) is left out."
        )
    shares = _collect_shares(ok, samples, expected_replicas)
    _latency_evidence(ok, ev, notes, th)
    tail_windows = _tail_evidence(ok, ev)
    _telemetry_evidence(samples, tail_windows, ev, engine_capacity)
    ev["n_replicas"] = float(len(shares["replica_id"])) if shares["replica_id"] else None
    ev["n_nodes"] = float(len(shares["node_id"])) if shares["node_id"] else None
    ev["replica_share_max"] = max(shares["replica_id"].values()) if shares["replica_id"] else None
    ev["balance_index_replica"] = _jain(shares["replica_id"])
    ev["balance_index_node"] = _jain(shares["node_id"])
    if not samples:
        notes.append("No telemetry: engine activity was not observed; the verdict rests on server timings.")

    verdict, why = _decide(ev, th, check, bool(samples), notes)
    return Diagnosis(
        verdict=verdict,
        explanation=why,
        evidence=ev,
        checks=tuple(checks),
        thresholds=th,
        shares=shares,
        notes=tuple(notes),
        name=name,
    )


def _decide(
    ev: dict[str, float | None], th: Thresholds, check: Any, has_tel: bool, notes: list[str]
) -> tuple[str, str]:
    n_ok = int(ev["n_ok"] or 0)
    if not check("n_ok", ">=", "min_requests"):
        return "insufficient_data", (
            f"Only {n_ok} requests succeeded (min_requests = {th.min_requests}): too few to have a "
            f"tail to explain. Run longer or at a higher rate."
        )
    spiky_e2e = check("e2e_p99_p50_ratio", ">=", "tail_ratio_e2e")
    spiky_ttft = check("ttft_p99_p50_ratio", ">=", "tail_ratio_ttft")
    spiky = bool(spiky_e2e or spiky_ttft)
    n_rep = int(ev.get("n_replicas") or 0)
    imbalanced = False
    if n_rep >= 2 and n_ok >= th.min_requests * n_rep:
        imbalanced = check("balance_index_replica", "<", "min_balance_index") is True
    elif n_rep >= 2:
        notes.append(
            f"Balance not judged: {n_ok} requests over {n_rep} replicas is fewer than "
            f"min_requests = {th.min_requests} per replica."
        )
    # Saturated engines have no room: requests wait inside them, or every slot is in use. Activity
    # alone is no tell: a request in flight is itself running in an engine, so engines are always
    # "busier" while the slowest requests run.
    full: list[str] = []
    if has_tel:
        for key, tname in (
            ("engine_waiting_mean_tail", "saturated_waiting_mean"),
            ("engine_waiting_mean_all", "saturated_waiting_mean"),
            ("engine_running_fraction_tail", "engine_full_fraction"),
            ("engine_running_fraction_all", "engine_full_fraction"),
        ):
            if ev.get(key) is not None and check(key, ">=", tname):
                full.append(key)
    queued = []
    if ev.get("engine_queue_fraction_median") is not None and check(
        "engine_queue_fraction_median", ">=", "engine_share_min"
    ):
        queued.append("engine_queue_fraction_median")
    if (
        spiky
        and not has_tel
        and ev.get("tail_engine_queue_share") is not None
        and check("tail_engine_queue_share", ">=", "engine_share_min")
    ):
        queued.append("tail_engine_queue_share")
    ratio_txt = f"p99 is {_fmt(ev['e2e_p99_p50_ratio'])}x p50 (e2e)"
    if ev.get("ttft_p99_p50_ratio") is not None:
        ratio_txt += f" and {_fmt(ev['ttft_p99_p50_ratio'])}x for TTFT"

    if full or queued:
        if imbalanced:
            return "load_imbalance", _why_imbalance(ev, th, ratio_txt) + " " + _engines_full(ev, th, full, queued)
        return "engine_saturation", _why_saturation(ev, th, ratio_txt, full, queued)
    if spiky:
        pre = ev.get("tail_pre_engine_share")
        if pre is not None:
            if check("tail_pre_engine_share", ">=", "pre_engine_share_min"):
                coord = ev.get("tail_coordinator_wait_share")
                if ev.get("engine_capacity") is None and (coord is None or coord < th.pre_engine_share_min):
                    notes.append(
                        "The pre-engine time is not coordinator wait: it is the proxy or Serve's "
                        "router. If the replicas were at max_ongoing_requests, that is back-"
                        "pressure from full engines; pass engine_capacity to diagnose() to tell."
                    )
                return "coordinator_bottleneck", _why_coordinator(ev, th, ratio_txt, has_tel)
            if imbalanced:
                return "load_imbalance", _why_imbalance(ev, th, ratio_txt)
            notes.append(
                "The tail spikes but is not made before the engine, and the engines had room: look at "
                "output lengths, the client, and other programs competing for the CPU."
            )
            return "healthy", (
                f"{ratio_txt}, but only {_fmt_pct(pre)} of the slowest requests' extra time was spent "
                f"before the engine (pre_engine_share_min = {_fmt_pct(th.pre_engine_share_min)}) and "
                f"{_room(ev, th, has_tel)}: no coordinator or engine bottleneck explains the tail."
            )
        if has_tel and ev.get("engine_active_mean_all") is not None:
            notes.append(
                "No server timings: the pre-engine time was not measured, so the verdict rests "
                "on engine activity alone."
            )
            if imbalanced:
                return "load_imbalance", _why_imbalance(ev, th, ratio_txt)
            return "coordinator_bottleneck", _why_coordinator(ev, th, ratio_txt, has_tel)
        if imbalanced:
            return "load_imbalance", _why_imbalance(ev, th, ratio_txt)
        return "insufficient_data", (
            f"{ratio_txt}: the tail spikes, but without server timings or telemetry the kit cannot "
            f"tell where the time goes. Serve with labkit's timings or record telemetry."
        )
    # every request waiting before engines that had room is the gate, whatever the split between replicas
    if ev.get("pre_engine_fraction_median") is not None and check(
        "pre_engine_fraction_median", ">=", "pre_engine_share_min"
    ):
        return "coordinator_bottleneck", (
            f"{ratio_txt}, an even tail, but the median request spent "
            f"{_fmt_pct(ev['pre_engine_fraction_median'])} of its time before the engine (proxy, router, "
            f"coordinator) while {_room(ev, th, has_tel)}: every request queues before the engines; the "
            f"coordinator / load balancer is the bottleneck, not engine throughput."
        )
    if imbalanced:
        return "load_imbalance", _why_imbalance(ev, th, ratio_txt)
    return "healthy", (
        f"{ratio_txt} (under tail_ratio_e2e = {_fmt(th.tail_ratio_e2e)} and tail_ratio_ttft = "
        f"{_fmt(th.tail_ratio_ttft)}), the load is spread evenly and {_room(ev, th, has_tel)}: "
        f"no bottleneck at this load."
    )


def _room(ev: Mapping[str, float | None], th: Thresholds, has_tel: bool) -> str:
    """Say, with the numbers, that the engines had room (the caller checked that they did)."""
    if not has_tel or ev.get("engine_waiting_mean_all") is None:
        queue = ev.get("engine_queue_fraction_median")
        if queue is None:
            return "engine occupancy was not observed"
        return f"the median request spent {_fmt_pct(queue)} of its time queued in the engine"
    text = (
        f"the engines had room ({_fmt(ev.get('engine_waiting_mean_tail'))} requests waiting per engine "
        f"while the slowest requests ran, under saturated_waiting_mean = {_fmt(th.saturated_waiting_mean)}"
    )
    frac = ev.get("engine_running_fraction_tail")
    if frac is not None:
        text += f"; {_fmt_pct(frac)} of their {int(ev.get('engine_capacity') or 0)} slots in use"
    return text + ")"


def _activity(ev: Mapping[str, float | None], th: Thresholds) -> str:
    """Engine activity while the tail ran against the whole run, worded by the numbers."""
    tail, whole = ev.get("engine_active_mean_tail"), ev.get("engine_active_mean_all")
    if tail is None or whole is None:
        return ""
    nums = f"{_fmt(tail)} running+waiting per engine vs {_fmt(whole)} over the run"
    if whole > 0 and tail > whole * th.flat_activity_ratio_max:
        return (
            f" Engine activity was higher while the slowest requests ran ({nums}), but below the point where "
            "requests wait."
        )
    return f" Engine activity was no higher while the slowest requests ran ({nums})."


def _why_coordinator(ev: Mapping[str, float | None], th: Thresholds, ratio_txt: str, has_tel: bool) -> str:
    pre = ev.get("tail_pre_engine_share")
    coord = ev.get("tail_coordinator_wait_share")
    where = "before the engine (proxy, router, coordinator)"
    if coord is not None and coord > 0.05:
        where += f", {coord:.0%} of it waiting for the coordinator"
    first = f"{ratio_txt}: the slowest 5% took {_ms(ev.get('tail_excess_s'))} more than the median" + (
        f", and {pre:.0%} of that extra time was spent {where}." if pre is not None else "."
    )
    if has_tel and ev.get("engine_waiting_mean_all") is not None:
        second = (
            f" Meanwhile {_room(ev, th, has_tel)}.{_activity(ev, th)} The wait is before the engines: the "
            f"coordinator / load balancer is the bottleneck, not engine throughput."
        )
    else:
        second = " The tail is made before the engine: the coordinator / load balancer is the bottleneck."
    return first + second


def _engines_full(ev: Mapping[str, float | None], th: Thresholds, full: list[str], queued: list[str]) -> str:
    """Say which numbers showed full engines (the caller found at least one)."""
    parts = []
    for key in full:
        value = ev.get(key)
        if key.startswith("engine_waiting"):
            when = "while the slowest requests ran" if key.endswith("tail") else "over the run"
            parts.append(
                f"{_fmt(value)} requests waiting per engine {when} (>= saturated_waiting_mean = "
                f"{_fmt(th.saturated_waiting_mean)})"
            )
        else:
            when = "while the slowest requests ran" if key.endswith("tail") else "over the run"
            parts.append(
                f"{_fmt_pct(value)} of their {int(ev.get('engine_capacity') or 0)} slots in use {when} "
                f"(>= engine_full_fraction = {_fmt_pct(th.engine_full_fraction)})"
            )
    for key in queued:
        value = ev.get(key)
        if key == "engine_queue_fraction_median":
            parts.append(f"the median request spent {_fmt_pct(value)} of its time queued in the engine")
        else:
            parts.append(f"{_fmt_pct(value)} of the slowest requests' extra time was spent queued in the engine")
    return "The engines were full: " + "; ".join(parts) + "."


def _why_saturation(
    ev: Mapping[str, float | None], th: Thresholds, ratio_txt: str, full: list[str], queued: list[str]
) -> str:
    return (
        f"{ratio_txt}. {_engines_full(ev, th, full, queued)} Requests wait for engine capacity: the "
        f"engines are saturated; add replicas or lower the load."
    )


def _why_imbalance(ev: Mapping[str, float | None], th: Thresholds, ratio_txt: str) -> str:
    n = int(ev.get("n_replicas") or 1)
    return (
        f"One replica served {_fmt_pct(ev.get('replica_share_max'))} of the requests where an even "
        f"split gives {1 / n:.0%} (Jain's index {_fmt(ev.get('balance_index_replica'))} < "
        f"min_balance_index = {_fmt(th.min_balance_index)}); {ratio_txt}. Fix the routing "
        f"before reading the tail."
    )
