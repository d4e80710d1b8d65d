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
    if name is None:
        name = str(getattr(getattr(records, "config", None), "name", "") or "")
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
    queueing = full = rising = False
    if has_tel:
        queueing = check("engine_waiting_mean_tail", ">=", "saturated_waiting_mean") is True
        if ev.get("engine_running_fraction_tail") is not None:
            full = check("engine_running_fraction_tail", ">=", "engine_full_fraction") is True
        rising = check("engine_active_ratio", ">", "flat_activity_ratio_max") is True or queueing or full
    ratio_txt = f"p99 is {_fmt(ev['e2e_p99_p50_ratio'])}x p50 (e2e)"
    if ev.get("ttft_p99_p50_ratio") is not None:
        ratio_txt += f" and {_fmt(ev['ttft_p99_p50_ratio'])}x for TTFT"

    if spiky:
        eng_key = "tail_engine_share"
        if ev.get(eng_key) is None:
            eng_key = "tail_engine_queue_share"
        if ev.get("tail_pre_engine_share") is not None or ev.get(eng_key) is not None:
            pre_ok = check("tail_pre_engine_share", ">=", "pre_engine_share_min")
            if pre_ok and not (queueing or full):
                coord = ev.get("tail_coordinator_wait_share")
                if ev.get("engine_capacity") is None and (coord is None or coord < th.pre_engine_share_min):
                    notes.append(
                        "The pre-engine time is not coordinator wait: it is the proxy or Serve's "
                        "router. If the replicas were at max_ongoing_requests, that is back-"
                        "pressure from full engines; pass engine_capacity to diagnose() to tell."
                    )
                return "coordinator_bottleneck", _why_coordinator(ev, ratio_txt, has_tel)
            if imbalanced:
                return "load_imbalance", _why_imbalance(ev, th, ratio_txt)
            eng_ok = check(eng_key, ">=", "engine_share_min")
            if (eng_ok and (rising or not has_tel)) or (pre_ok and (queueing or full)):
                return "engine_saturation", _why_saturation(ev, ratio_txt)
            notes.append(
                "The tail spikes but neither pre-engine nor engine time explains most of it "
                "(see the tail_*_share evidence), and the engines were not busier: look at "
                "output lengths and the client."
            )
            return "healthy", (
                f"{ratio_txt}, but the extra time of the slowest requests is not spent "
                f"waiting before or inside busier engines; no bottleneck is evident."
            )
        if has_tel and ev.get("engine_active_mean_all") is not None:
            notes.append(
                "No server timings: the pre-engine time was not measured, so the verdict rests "
                "on engine activity alone."
            )
            if not rising:
                return "coordinator_bottleneck", _why_coordinator(ev, ratio_txt, has_tel)
            if imbalanced:
                return "load_imbalance", _why_imbalance(ev, th, ratio_txt)
            return "engine_saturation", _why_saturation(ev, ratio_txt)
        if imbalanced:
            return "load_imbalance", _why_imbalance(ev, th, ratio_txt)
        return "insufficient_data", (
            f"{ratio_txt}: the tail spikes, but without server timings or telemetry the kit cannot "
            f"tell where the time goes. Serve with labkit's timings or record telemetry."
        )
    if imbalanced:
        return "load_imbalance", _why_imbalance(ev, th, ratio_txt)
    if has_tel and check("engine_waiting_mean_all", ">=", "saturated_waiting_mean"):
        return "engine_saturation", (
            f"{ratio_txt}, an even tail, but requests waited in the engines all along "
            f"({_fmt(ev['engine_waiting_mean_all'])} waiting per replica on average): the engines are "
            f"saturated, so every request is slow. Add replicas or lower the load."
        )
    if ev.get("engine_queue_fraction_median") is not None and check(
        "engine_queue_fraction_median", ">=", "engine_share_min"
    ):
        return "engine_saturation", (
            f"{ratio_txt}, an even tail, but the median request spent "
            f"{_fmt_pct(ev['engine_queue_fraction_median'])} of its time queued in the engine: the "
            f"engines are saturated, so every request is slow. Add replicas or lower the load."
        )
    return "healthy", (
        f"{ratio_txt} (under tail_ratio_e2e = {_fmt(th.tail_ratio_e2e)}) and the load is "
        f"spread evenly: no bottleneck at this load."
    )


def _why_coordinator(ev: Mapping[str, float | None], ratio_txt: str, has_tel: bool) -> str:
    pre = ev.get("tail_pre_engine_share")
    coord = ev.get("tail_coordinator_wait_share")
    where = "before the engine (proxy, router, coordinator)"
    if coord is not None and coord > 0.05:
        where += f", {coord:.0%} of it waiting for the coordinator"
    first = f"{ratio_txt}: the slowest 5% took {_ms(ev.get('tail_excess_s'))} more than the median, " + (
        f"and {pre:.0%} of that extra time was spent {where}."
        if pre is not None
        else "while the engines held no more work than usual."
    )
    if has_tel and ev.get("engine_active_mean_tail") is not None:
        second = (
            f" The engines were not busier meanwhile ({_fmt(ev['engine_active_mean_tail'])} "
            f"running+waiting vs {_fmt(ev['engine_active_mean_all'])} on average): the "
            f"coordinator / load balancer is the bottleneck, not engine throughput."
        )
    else:
        second = " The tail is made before the engine: the coordinator / load balancer is the bottleneck."
    return first + second


def _why_saturation(ev: Mapping[str, float | None], ratio_txt: str) -> str:
    eng = ev.get("tail_engine_share")
    first = f"{ratio_txt}: the slowest 5% took {_ms(ev.get('tail_excess_s'))} more than the median"
    first += f", {eng:.0%} of it inside the engines." if eng is not None else "."
    if ev.get("engine_active_mean_tail") is not None:
        second = (
            f" Engine activity rose with the tail ({_fmt(ev['engine_active_mean_tail'])} "
            f"running+waiting vs {_fmt(ev['engine_active_mean_all'])} on average): the engines "
            f"are saturated; add replicas or lower the load."
        )
    else:
        second = " The engines are saturated; add replicas or lower the load."
    return first + second


def _why_imbalance(ev: Mapping[str, float | None], th: Thresholds, ratio_txt: str) -> str:
    n = int(ev.get("n_replicas") or 1)
    return (
        f"One replica served {_fmt_pct(ev.get('replica_share_max'))} of the requests where an even "
        f"split gives {1 / n:.0%} (Jain's index {_fmt(ev.get('balance_index_replica'))} < "
        f"min_balance_index = {_fmt(th.min_balance_index)}); {ratio_txt}. Fix the routing "
        f"before reading the tail."
    )
