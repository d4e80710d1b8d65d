"""A verdict on a load run, with the numbers behind it.

Owns the question of the chapter: when p99 spikes, is it the coordinator / load balancer
(time spent *before* the engine while the engines sit no busier), engine saturation (engine
queue and activity rise with the tail), load imbalance (one replica gets more than its share),
or nothing at all (healthy)?

How the tail is attributed: the tail is the requests above p95 of end-to-end latency. Their
mean latency minus the median latency is the *excess*; each server timing (pre-engine,
coordinator wait, engine queue, engine total) gets a *share of the excess* in the same way
(tail mean minus overall median, divided by the excess). Telemetry adds engine activity
(running + waiting requests per replica) in the *tail window*, the moments when tail requests
were in flight, against the whole run.

Latency numbers are of successful requests (``labkit.stats`` definitions, e.g. ``e2e`` from
the intended send); failures show as ``error_rate`` and a note. Every threshold is a named
field of :class:`Thresholds`; every comparison that decided the verdict is kept as a
:class:`Check` and shown with the evidence.
"""

from __future__ import annotations

import bisect
import dataclasses
import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from labkit import stats
from labkit.errors import ConfigError
from labkit.load import RequestRecord
from labkit.telemetry import TelemetrySample

__all__ = ["VERDICTS", "Check", "Diagnosis", "DiagnosisComparison", "Thresholds", "compare", "diagnose"]

VERDICTS = ("coordinator_bottleneck", "engine_saturation", "load_imbalance", "healthy",
            "insufficient_data")


@dataclass(frozen=True)
class Thresholds:
    """The named thresholds of :func:`diagnose`, with the reason for each default.

    Attributes
    ----------
    min_requests : int
        Fewest successful requests to judge at all (20). With fewer, p95 has no request above
        it and "the tail" is a single number. Below 100 requests p99 is close to the maximum,
        which the diagnosis notes.
    tail_ratio_e2e : float
        p99 / p50 of end-to-end latency at or above which the tail "spikes" (2.0). The lab's
        workload has fixed prompt and output lengths, so a run without queueing has nearly
        constant latency (p99/p50 about 1.1 to 1.5); doubling is queueing, not noise. With
        very variable output lengths use TTFT (next field) or raise this.
    tail_ratio_ttft : float
        p99 / p50 of time to first token at or above which the tail spikes (3.0). The TTFT
        median is small (one prefill), so a few milliseconds of jitter move its ratio more.
    pre_engine_share_min : float
        Share of the tail's excess latency spent before the engine (proxy, router,
        coordinator) at or above which the tail "is made of" pre-engine time (0.5: most of it).
    engine_share_min : float
        Share of the tail's excess spent inside the engine (queue plus compute) at or above
        which the tail is made of engine time (0.5).
    flat_activity_ratio_max : float
        Engine activity (running + waiting) in the tail window divided by its mean over the
        run, at or below which the engines count as "flat" (1.25). With a handful of requests
        per replica one more request is +25 % or more, so below this the engines held about
        the same work when the tail happened as on average.
    saturated_waiting_mean : float
        Mean waiting requests per replica at or above which the engines are queueing (1.0).
        vLLM keeps a request waiting only when its batch or KV cache is full, so one waiting
        request on average means requests routinely wait for engine capacity.
    engine_full_fraction : float
        Running requests / engine capacity at or above which an engine is full (0.9). Used
        only when the capacity is known (``engine_capacity`` or a ``capacity`` telemetry
        field): a full engine pushes waiting back into Serve's router, which then looks like
        pre-engine time although the engines are the limit.
    min_balance_index : float
        Jain's fairness index of the per-replica request counts below which the load is
        imbalanced (0.9; 1.0 is perfectly even). For 2 replicas 0.9 is a 66/34 split.
        Balance is judged only with at least ``min_requests`` requests per replica: then an
        even random router stays above 0.9 about 95 % of the time.
    max_send_lag_s : float
        p99 of (actual send - intended send) above which the load generator fell behind
        (0.05 s); latencies measured from the intended send then include its lag (a note).
    max_error_rate : float
        Failed / all requests above which the diagnosis warns that the latencies describe
        only the survivors (0.05).
    """

    min_requests: int = 20
    tail_ratio_e2e: float = 2.0
    tail_ratio_ttft: float = 3.0
    pre_engine_share_min: float = 0.5
    engine_share_min: float = 0.5
    flat_activity_ratio_max: float = 1.25
    saturated_waiting_mean: float = 1.0
    engine_full_fraction: float = 0.9
    min_balance_index: float = 0.9
    max_send_lag_s: float = 0.05
    max_error_rate: float = 0.05

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not (isinstance(value, (int, float)) and value >= 0 and math.isfinite(value)):
                msg = (f"Thresholds.{f.name}={value!r} must be a finite number >= 0 "
                       f"(default {f.default!r}).")
                raise ConfigError(msg, field=f.name, value=value)

    def to_dict(self) -> dict[str, float]:
        """Return the thresholds as a dict."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Check:
    """One comparison of an evidence number with a named threshold.

    Attributes
    ----------
    evidence : str
        Key in :attr:`Diagnosis.evidence`.
    op : str
        ">=", ">", "<=" or "<".
    threshold : str
        Field of :class:`Thresholds`.
    value : float or None
        The evidence value (None: not measured).
    limit : float
        The threshold value.
    passed : bool or None
        The comparison's outcome (None when the value was not measured).
    """

    evidence: str
    op: str
    threshold: str
    value: float | None
    limit: float
    passed: bool | None

    def __str__(self) -> str:
        mark = {True: "yes", False: "no", None: "n/a"}[self.passed]
        return f"{self.evidence} = {_fmt(self.value)} {self.op} {self.threshold} = {_fmt(self.limit)}: {mark}"


@dataclass(frozen=True)
class Diagnosis:
    """A verdict on one run, its evidence, the checks that decided it and the thresholds.

    Attributes
    ----------
    verdict : str
        One of :data:`VERDICTS`.
    explanation : str
        One or two plain sentences for the learner.
    evidence : dict
        Named numbers (seconds, ratios, shares, counts); None where not measured.
    checks : tuple of Check
        The threshold comparisons, in the order they were made.
    thresholds : Thresholds
        The thresholds used.
    shares : dict
        ``{"replica_id": {id: share}, "node_id": {id: share}}`` of successful requests.
    notes : tuple of str
        Caveats (few requests, errors, a lagging load generator, missing data).
    name : str
        The configuration's name.
    """

    verdict: str
    explanation: str
    evidence: dict[str, float | None]
    checks: tuple[Check, ...]
    thresholds: Thresholds
    shares: dict[str, dict[str, float]] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    name: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict of the diagnosis."""
        return {"name": self.name, "verdict": self.verdict, "explanation": self.explanation,
                "evidence": dict(self.evidence), "checks": [dataclasses.asdict(c) for c in self.checks],
                "thresholds": self.thresholds.to_dict(), "shares": self.shares,
                "notes": list(self.notes)}

    def __repr__(self) -> str:
        lines = [f"Diagnosis({self.name or 'run'}): {self.verdict}", f"  {self.explanation}"]
        lines += ["  checks:"] + [f"    {c}" for c in self.checks]
        lines += ["  evidence:"] + [f"    {k} = {_fmt(v)}" for k, v in self.evidence.items()
                                    if v is not None]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        esc = html.escape
        checks = "".join(
            f"<tr><td>{esc(c.evidence)}</td><td>{esc(_fmt(c.value))}</td><td>{esc(c.op)}</td>"
            f"<td>{esc(c.threshold)} = {esc(_fmt(c.limit))}</td>"
            f"<td>{ {True: '&#10003;', False: '&#10007;', None: 'n/a'}[c.passed]}</td></tr>"
            for c in self.checks)
        ev = "".join(f"<tr><td>{esc(k)}</td><td>{esc(_fmt(v))}</td></tr>"
                     for k, v in self.evidence.items() if v is not None)
        notes = "".join(f"<li>{esc(n)}</li>" for n in self.notes)
        return (f"<div><p><b>{esc(self.name or 'run')}: {esc(self.verdict.replace('_', ' '))}</b></p>"
                f"<p>{esc(self.explanation)}</p>"
                f"<table><tr><th>evidence</th><th>value</th><th></th><th>threshold</th><th>met</th></tr>"
                f"{checks}</table>"
                f"<details><summary>all evidence</summary><table>{ev}</table></details>"
                + (f"<ul>{notes}</ul>" if notes else "") + "</div>")


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
        passed = None if value is None else {">=": value >= limit, ">": value > limit,
                                             "<=": value <= limit, "<": value < limit}[op]
        checks.append(Check(key, op, tname, value, limit, passed))
        return passed

    ev["n_requests"] = len(all_records)
    ev["n_ok"] = len(ok)
    ev["error_rate"] = (1 - len(ok) / len(all_records)) if all_records else None
    if ev["error_rate"] is not None and ev["error_rate"] > th.max_error_rate:
        notes.append(f"{ev['error_rate']:.0%} of requests failed (above max_error_rate = "
                     f"{th.max_error_rate:.0%}): the latencies describe only the ones that succeeded.")
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
    return Diagnosis(verdict=verdict, explanation=why, evidence=ev, checks=tuple(checks),
                     thresholds=th, shares=shares, notes=tuple(notes), name=name)


def _collect_shares(ok: list[RequestRecord], samples: list[TelemetrySample],
                    expected_replicas: int | None) -> dict[str, dict[str, float]]:
    """Shares per replica and node; replicas known to exist but idle get a share of 0."""
    replica = stats.share_by(ok, "replica_id", include_warmup=True)
    tel_replicas = {s.component_id for s in samples if s.role == "replica"}
    if tel_replicas & set(replica):  # pad from telemetry only when the ids clearly match
        replica = {**dict.fromkeys(sorted(tel_replicas), 0.0), **replica}
    if expected_replicas is not None and replica and len(replica) < expected_replicas:
        missing = expected_replicas - len(replica)
        replica.update({f"(idle replica {i + 1})": 0.0 for i in range(missing)})
    return {"replica_id": dict(sorted(replica.items())),
            "node_id": stats.share_by(ok, "node_id", include_warmup=True)}


def _latency_evidence(ok: list[RequestRecord], ev: dict[str, float | None], notes: list[str],
                      th: Thresholds) -> None:
    for metric in ("e2e", "ttft"):
        values = stats.latency_values(ok, metric, include_failures=False, include_warmup=True)
        pct = _pcts(values, (50, 95, 99))
        for q in (50, 95, 99):
            ev[f"{metric}_p{q}_s"] = pct[q]
        ev[f"{metric}_p99_p50_ratio"] = _ratio(ev[f"{metric}_p99_s"], ev[f"{metric}_p50_s"])
    lag = stats.latency_values(ok, "schedule_lag", include_warmup=True)
    ev["send_lag_p99_s"] = _pcts(lag, (99,))[99]
    if ev["send_lag_p99_s"] is not None and ev["send_lag_p99_s"] > th.max_send_lag_s:
        notes.append(f"The load generator sent late (p99 lag {ev['send_lag_p99_s'] * 1e3:.0f} ms > "
                     f"max_send_lag_s = {th.max_send_lag_s * 1e3:.0f} ms): it was itself short of CPU, "
                     f"and that lag is part of every latency.")
    if th.min_requests <= len(ok) < 100:
        notes.append(f"Only {len(ok)} requests: p99 is close to the maximum and moves a lot between runs.")


def _tail_evidence(ok: list[RequestRecord], ev: dict[str, float | None]) -> list[tuple[float, float]]:
    """Attribute the tail's excess latency to server timings; return the tail's time windows."""
    p95 = ev.get("e2e_p95_s")
    if p95 is None:
        return []
    # every successful request has an e2e value, so this list lines up with ``ok``
    e2e = dict(zip(map(id, ok), stats.latency_values(ok, "e2e", include_failures=False,
                                                     include_warmup=True), strict=True))
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
        ev[f"tail_{comp}_share"] = ((_mean(tail_v) or 0.0) - (_median(all_v) or 0.0)) / excess \
            if excess > 0 else None
        if comp == "pre_engine" and tail_e2e_sum > 0:
            ev["tail_pre_engine_fraction"] = sum(tail_v) / tail_e2e_sum
    queue = [v for v in (r.server.get("engine_queue_s") for r in ok) if v is not None]
    ev["engine_queue_fraction_median"] = _ratio(_median(queue), med) if queue else None
    return _merge([(r.sent_s, r.done_s) for r in tail])


def _telemetry_evidence(samples: list[TelemetrySample], tail_windows: list[tuple[float, float]],
                        ev: dict[str, float | None], engine_capacity: int | None) -> None:
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
    for role in ("coordinator", "proxy"):
        rs = [s for s in samples if s.role == role]
        cpu = [s.cpu_percent for s in rs if s.cpu_percent is not None]
        ev[f"{role}_cpu_percent_max"] = max(cpu, default=None)
        waiting = [s.waiting for s in rs if s.waiting is not None and _inside(s.t_s, tail_windows)]
        ev[f"{role}_waiting_mean_tail"] = _mean(waiting)
    gpu = [(s.t_s, float(s.gpu_util_percent)) for s in samples if s.gpu_util_percent is not None]
    ev["gpu_util_mean_all"] = _mean([u for _, u in gpu])
    ev["gpu_util_mean_tail"] = _mean([u for t, u in gpu if _inside(t, tail_windows)])


def _decide(ev: dict[str, float | None], th: Thresholds, check: Any, has_tel: bool,
            notes: list[str]) -> tuple[str, str]:
    n_ok = int(ev["n_ok"] or 0)
    if not check("n_ok", ">=", "min_requests"):
        return "insufficient_data", (
            f"Only {n_ok} requests succeeded (min_requests = {th.min_requests}): too few to have a "
            f"tail to explain. Run longer or at a higher rate.")
    spiky_e2e = check("e2e_p99_p50_ratio", ">=", "tail_ratio_e2e")
    spiky_ttft = check("ttft_p99_p50_ratio", ">=", "tail_ratio_ttft")
    spiky = bool(spiky_e2e or spiky_ttft)
    n_rep = int(ev.get("n_replicas") or 0)
    imbalanced = False
    if n_rep >= 2 and n_ok >= th.min_requests * n_rep:
        imbalanced = check("balance_index_replica", "<", "min_balance_index") is True
    elif n_rep >= 2:
        notes.append(f"Balance not judged: {n_ok} requests over {n_rep} replicas is fewer than "
                     f"min_requests = {th.min_requests} per replica.")
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
                    notes.append("The pre-engine time is not coordinator wait: it is the proxy or Serve's "
                                 "router. If the replicas were at max_ongoing_requests, that is back-"
                                 "pressure from full engines; pass engine_capacity to diagnose() to tell.")
                return "coordinator_bottleneck", _why_coordinator(ev, ratio_txt, has_tel)
            if imbalanced:
                return "load_imbalance", _why_imbalance(ev, th, ratio_txt)
            eng_ok = check(eng_key, ">=", "engine_share_min")
            if (eng_ok and (rising or not has_tel)) or (pre_ok and (queueing or full)):
                return "engine_saturation", _why_saturation(ev, ratio_txt)
            notes.append("The tail spikes but neither pre-engine nor engine time explains most of it "
                         "(see the tail_*_share evidence), and the engines were not busier: look at "
                         "output lengths and the client.")
            return "healthy", (f"{ratio_txt}, but the extra time of the slowest requests is not spent "
                               f"waiting before or inside busier engines; no bottleneck is evident.")
        if has_tel and ev.get("engine_active_mean_all") is not None:
            notes.append("No server timings: the pre-engine time was not measured, so the verdict rests "
                         "on engine activity alone.")
            if not rising:
                return "coordinator_bottleneck", _why_coordinator(ev, ratio_txt, has_tel)
            if imbalanced:
                return "load_imbalance", _why_imbalance(ev, th, ratio_txt)
            return "engine_saturation", _why_saturation(ev, ratio_txt)
        if imbalanced:
            return "load_imbalance", _why_imbalance(ev, th, ratio_txt)
        return "insufficient_data", (
            f"{ratio_txt}: the tail spikes, but without server timings or telemetry the kit cannot "
            f"tell where the time goes. Serve with labkit's timings or record telemetry.")
    if imbalanced:
        return "load_imbalance", _why_imbalance(ev, th, ratio_txt)
    if has_tel and check("engine_waiting_mean_all", ">=", "saturated_waiting_mean"):
        return "engine_saturation", (
            f"{ratio_txt}, an even tail, but requests waited in the engines all along "
            f"({_fmt(ev['engine_waiting_mean_all'])} waiting per replica on average): the engines are "
            f"saturated, so every request is slow. Add replicas or lower the load.")
    if ev.get("engine_queue_fraction_median") is not None and check(
            "engine_queue_fraction_median", ">=", "engine_share_min"):
        return "engine_saturation", (
            f"{ratio_txt}, an even tail, but the median request spent "
            f"{_fmt_pct(ev['engine_queue_fraction_median'])} of its time queued in the engine: the "
            f"engines are saturated, so every request is slow. Add replicas or lower the load.")
    return "healthy", (f"{ratio_txt} (under tail_ratio_e2e = {_fmt(th.tail_ratio_e2e)}) and the load is "
                       f"spread evenly: no bottleneck at this load.")


def _why_coordinator(ev: Mapping[str, float | None], ratio_txt: str, has_tel: bool) -> str:
    pre = ev.get("tail_pre_engine_share")
    coord = ev.get("tail_coordinator_wait_share")
    where = "before the engine (proxy, router, coordinator)"
    if coord is not None and coord > 0.05:
        where += f", {coord:.0%} of it waiting for the coordinator"
    first = (f"{ratio_txt}: the slowest 5% took {_ms(ev.get('tail_excess_s'))} more than the median, "
             + (f"and {pre:.0%} of that extra time was spent {where}." if pre is not None
                else "while the engines held no more work than usual."))
    if has_tel and ev.get("engine_active_mean_tail") is not None:
        second = (f" The engines were not busier meanwhile ({_fmt(ev['engine_active_mean_tail'])} "
                  f"running+waiting vs {_fmt(ev['engine_active_mean_all'])} on average): the "
                  f"coordinator / load balancer is the bottleneck, not engine throughput.")
    else:
        second = " The tail is made before the engine: the coordinator / load balancer is the bottleneck."
    return first + second


def _why_saturation(ev: Mapping[str, float | None], ratio_txt: str) -> str:
    eng = ev.get("tail_engine_share")
    first = f"{ratio_txt}: the slowest 5% took {_ms(ev.get('tail_excess_s'))} more than the median"
    first += f", {eng:.0%} of it inside the engines." if eng is not None else "."
    if ev.get("engine_active_mean_tail") is not None:
        second = (f" Engine activity rose with the tail ({_fmt(ev['engine_active_mean_tail'])} "
                  f"running+waiting vs {_fmt(ev['engine_active_mean_all'])} on average): the engines "
                  f"are saturated; add replicas or lower the load.")
    else:
        second = " The engines are saturated; add replicas or lower the load."
    return first + second


def _why_imbalance(ev: Mapping[str, float | None], th: Thresholds, ratio_txt: str) -> str:
    n = int(ev.get("n_replicas") or 1)
    return (f"One replica served {_fmt_pct(ev.get('replica_share_max'))} of the requests where an even "
            f"split gives {1 / n:.0%} (Jain's index {_fmt(ev.get('balance_index_replica'))} < "
            f"min_balance_index = {_fmt(th.min_balance_index)}); {ratio_txt}. Fix the routing "
            f"before reading the tail.")


# ---------------------------------------------------------------------------------------------
# Side by side
# ---------------------------------------------------------------------------------------------

_COMPARE_KEYS = ("n_ok", "e2e_p50_s", "e2e_p99_s", "e2e_p99_p50_ratio", "ttft_p99_p50_ratio",
                 "tail_excess_s", "tail_pre_engine_share", "tail_coordinator_wait_share",
                 "tail_engine_queue_share", "tail_engine_share", "engine_active_mean_all",
                 "engine_active_mean_tail", "engine_waiting_mean_tail", "balance_index_replica")


@dataclass(frozen=True)
class DiagnosisComparison:
    """Several diagnoses side by side (configurations as columns)."""

    diagnoses: dict[str, Diagnosis]
    keys: tuple[str, ...] = _COMPARE_KEYS

    def rows(self) -> list[tuple[str, list[Any]]]:
        """Return ``[(row name, [value per configuration]), ...]``, verdict first.

        Returns
        -------
        list of tuple
            The table's rows.
        """
        out: list[tuple[str, list[Any]]] = [("verdict", [d.verdict for d in self.diagnoses.values()])]
        out += [(k, [d.evidence.get(k) for d in self.diagnoses.values()]) for k in self.keys]
        return out

    def to_dict(self) -> dict[str, Any]:
        """Return ``{name: diagnosis.to_dict()}``."""
        return {name: d.to_dict() for name, d in self.diagnoses.items()}

    def __repr__(self) -> str:
        names = list(self.diagnoses)
        width = max([len(n) for n in names] + [len(d.verdict) for d in self.diagnoses.values()] + [10])
        lines = [f"{'':<28}" + "".join(f"{n:>{width + 2}}" for n in names)]
        for key, values in self.rows():
            cells = [v if isinstance(v, str) else _fmt(v) for v in values]
            lines.append(f"{key:<28}" + "".join(f"{c:>{width + 2}}" for c in cells))
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        esc = html.escape
        head = "".join(f"<th>{esc(n)}</th>" for n in self.diagnoses)
        body = "".join(
            f"<tr><td>{esc(k)}</td>" + "".join(
                f"<td>{esc(v if isinstance(v, str) else _fmt(v))}</td>" for v in values) + "</tr>"
            for k, values in self.rows())
        expl = "".join(f"<li><b>{esc(n)}</b>: {esc(d.explanation)}</li>" for n, d in self.diagnoses.items())
        return f"<div><table><tr><th></th>{head}</tr>{body}</table><ul>{expl}</ul></div>"


def compare(diagnoses: Mapping[str, Diagnosis] | Sequence[Diagnosis]) -> DiagnosisComparison:
    """Put several diagnoses side by side.

    Parameters
    ----------
    diagnoses : mapping of name to Diagnosis, or a sequence of Diagnosis
        A sequence is keyed by each diagnosis's ``name``.

    Returns
    -------
    DiagnosisComparison
        Displays as a table (text or HTML); ``to_dict()`` for logs.

    Raises
    ------
    ConfigError
        Empty input, or a sequence whose names are not unique.
    """
    if not isinstance(diagnoses, Mapping):
        items = list(diagnoses)
        names = [d.name or f"run {i + 1}" for i, d in enumerate(items)]
        if len(set(names)) != len(names):
            msg = f"Diagnoses to compare need unique names, got {names}. Pass a dict {{name: diagnosis}}."
            raise ConfigError(msg, field="diagnoses", value=names)
        diagnoses = dict(zip(names, items, strict=True))
    if not diagnoses:
        msg = "compare() got no diagnoses. Pass {name: diagnose(records)} for two or more runs."
        raise ConfigError(msg, field="diagnoses", value=diagnoses)
    return DiagnosisComparison(dict(diagnoses))


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if value != 0 and abs(value) < 0.01:
            return f"{value:.2g}"
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def _fmt_pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.0f} ms"


# ---------------------------------------------------------------------------------------------
# Command line: ``labkit diagnose RECORDS.jsonl``
# ---------------------------------------------------------------------------------------------


def register_cli(subparsers: Any) -> None:
    """Add the ``diagnose`` subcommand.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        From ``parser.add_subparsers()``.
    """
    p = subparsers.add_parser(
        "diagnose", help="Diagnose a load run: coordinator bottleneck, engine saturation, imbalance?",
        description="Read a run's records (JSONL) and optional telemetry (JSON from "
                    "TelemetryRecorder.to_dict()), print the verdict with its evidence.")
    p.add_argument("records", help="records file written by `labkit load` / run_load (JSONL)")
    p.add_argument("--telemetry", default=None, help="telemetry JSON (TelemetryRecorder.to_dict())")
    p.add_argument("--name", default=None, help="configuration name (default: the file's stem)")
    p.add_argument("--engine-capacity", type=int, default=None,
                   help="requests one replica runs at once (max_ongoing_requests / max_num_seqs)")
    p.add_argument("--expected-replicas", type=int, default=None, help="replicas deployed")
    p.add_argument("--threshold", action="append", default=[], metavar="NAME=VALUE",
                   help=f"override a threshold, e.g. tail_ratio_e2e=3 (names: "
                        f"{', '.join(f.name for f in dataclasses.fields(Thresholds))})")
    p.add_argument("--json", dest="json_out", default=None, help="also write the diagnosis as JSON here")
    p.set_defaults(func=_cmd_diagnose)


def _parse_thresholds(items: Sequence[str]) -> Thresholds:
    names = {f.name: f.type for f in dataclasses.fields(Thresholds)}
    values: dict[str, float] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or key not in names:
            msg = f"--threshold {item!r} is not NAME=VALUE with NAME in {sorted(names)}."
            raise ConfigError(msg, field="threshold", value=item)
        try:
            values[key] = int(raw) if key == "min_requests" else float(raw)
        except ValueError:
            msg = f"--threshold {item!r}: {raw!r} is not a number. Example: tail_ratio_e2e=3."
            raise ConfigError(msg, field=key, value=raw) from None
    return Thresholds(**values)


def _cmd_diagnose(args: Any) -> int:
    import json
    from pathlib import Path

    from labkit.load import read_records
    from labkit.telemetry import TelemetryRecorder

    records = read_records(args.records)
    telemetry = None
    if args.telemetry:
        try:
            data = json.loads(Path(args.telemetry).read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            msg = f"Cannot read telemetry '{args.telemetry}': {err}. Pass a TelemetryRecorder.to_dict() JSON."
            raise ConfigError(msg, field="telemetry", value=args.telemetry) from None
        telemetry = TelemetryRecorder.from_dict(data)
    result = diagnose(records, telemetry, thresholds=_parse_thresholds(args.threshold),
                      name=args.name or Path(args.records).stem, engine_capacity=args.engine_capacity,
                      expected_replicas=args.expected_replicas)
    print(repr(result))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
    return 0
